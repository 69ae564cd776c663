// The daemon end to end: the real binary, real inotify, a real git checkout, the real
// fake-service as production on 127.0.0.1, real subprocesses.
#include "harness.h"

#include <boost/json.hpp>
#include <doctest/doctest.h>

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

using namespace sentinel::test;
using namespace std::chrono_literals;
namespace fs = std::filesystem;
namespace json = boost::json;

namespace {

json::object json_file(const fs::path& file) { return json::parse(read_file(file)).as_object(); }

std::string known_good(Production& prod) {
  return read_file(prod.state / "targets" / "prod" / "known-good").substr(0, 40);
}

}  // namespace

TEST_CASE("a marker renamed in is deployed once") {
  Production prod;
  auto& daemon = prod.start_watching();
  std::string sha = prod.commit("healthy");
  prod.stage_by_rename();
  REQUIRE(daemon.wait_for_line("deployed " + short_sha(sha)) >= 0);
  CHECK(daemon.stop() == 0);
  CHECK(prod.restarts().size() == 2);  // production's own start, then this deploy
  CHECK(known_good(prod) == sha);
  CHECK_FALSE(prod.has(".deploy-in-progress"));
  CHECK_FALSE(prod.has(".deploy-ready"));
}

TEST_CASE("a marker written in place is deployed once, after it is closed") {
  Production prod;
  auto& daemon = prod.start_watching();
  std::string sha = prod.commit("healthy");
  prod.stage_in_place("{\"commit\": \"" + sha + "\", \"message\": \"in place\"}");
  REQUIRE(daemon.wait_for_line("deployed " + short_sha(sha)) >= 0);
  CHECK(daemon.stop() == 0);
  CHECK(prod.restarts().size() == 2);
  CHECK(daemon.count_lines("refused") == 0);
}

TEST_CASE("the restart command inherits no file descriptor of the daemon but stdin, stdout and stderr") {
  Production prod;
  auto& daemon = prod.start_watching();
  std::string sha = prod.commit("healthy");
  prod.stage_by_rename();
  REQUIRE(daemon.wait_for_line("deployed " + short_sha(sha)) >= 0);
  std::istringstream fds(read_file(prod.service_dir / "restart.fds"));
  std::vector<std::string> unexpected;
  for (std::string line; std::getline(fds, line);) {
    int fd = std::stoi(line);
    bool listing = line.find("/proc/") != std::string::npos && line.find("/fd") != std::string::npos;
    if (fd > 2 && !listing) unexpected.push_back(line);
  }
  for (const auto& line : unexpected) INFO("leaked: " << line);
  CHECK_MESSAGE(unexpected.empty(), "leaked fds: " << unexpected.size() << " first: " << (unexpected.empty() ? "" : unexpected.front()));
  CHECK(read_file(prod.service_dir / "restart.fds").find("0 -> /dev/null") != std::string::npos);
}

TEST_CASE("under systemd the log carries journal priority prefixes instead of timestamps") {
  Production prod;
  auto& daemon = prod.start_daemon(true);
  int line = daemon.wait_for_line("prod: watching");
  REQUIRE(line >= 0);
  CHECK(daemon.lines()[static_cast<std::size_t>(line)].starts_with("<6>prod: watching"));
  fs::remove_all(prod.markers);
  line = daemon.wait_for_line("disappeared");
  REQUIRE(line >= 0);
  CHECK(daemon.lines()[static_cast<std::size_t>(line)].starts_with("<4>prod: marker directory"));
}

TEST_CASE("a marker already there at start-up is deployed") {
  Production prod;
  std::string sha = prod.commit("healthy");
  prod.stage_by_rename();
  auto& daemon = prod.start_daemon();
  REQUIRE(daemon.wait_for_line("deployed " + short_sha(sha)) >= 0);
  CHECK(known_good(prod) == sha);
}

TEST_CASE("a marker that arrives during a deploy is deployed after it, not lost") {
  Production prod;
  auto& daemon = prod.start_watching();
  std::string first = prod.commit("slow:700");
  prod.stage_by_rename();
  REQUIRE(daemon.wait_for_line("verifying health") >= 0);
  std::string second = prod.commit("healthy");
  prod.stage_by_rename();
  int line = daemon.wait_for_line("deployed " + short_sha(first));
  REQUIRE(line >= 0);
  REQUIRE(daemon.wait_for_line("deployed " + short_sha(second), 10s, line) >= 0);
  CHECK(daemon.stop() == 0);
  CHECK(prod.restarts().size() == 3);
  CHECK(known_good(prod) == second);
}

TEST_CASE("an unhealthy commit is reverted to the last known-good commit, the build is rerun, and .deploy-reverted "
          "says why") {
  Production::Options options;
  options.with_build = true;
  options.deadline = "1s";
  Production prod(options);
  auto& daemon = prod.start_watching();
  std::string good = prod.commit("healthy");
  prod.stage_by_rename();
  REQUIRE(daemon.wait_for_line("deployed " + short_sha(good)) >= 0);

  prod.commit("healthy");  // committed but never deployed: HEAD~1 of the broken one
  std::string bad = prod.commit("unhealthy");
  prod.stage_by_rename();
  REQUIRE(daemon.wait_for_line("reverted " + short_sha(bad)) >= 0);
  CHECK(prod.head() == good);
  CHECK(known_good(prod) == good);
  CHECK(prod.healthy());
  auto reverted = json_file(prod.marker(".deploy-reverted"));
  CHECK(reverted["failed_commit"].as_string() == bad);
  CHECK(reverted["reverted_to"].as_string() == good);
  CHECK(std::string(reverted["reason"].as_string()).find("HTTP 503") != std::string::npos);
  CHECK(read_file(prod.tmp / "build.log") == "built " + good + "\n");

  auto status = json::parse(prod.cli({"status", "--json"}).out).as_object();
  auto target = status["targets"].as_array().at(0).as_object();
  CHECK(target["last_outcome"].as_object()["result"].as_string() == "reverted");
  CHECK(target["last_known_good"].as_string() == good);
}

TEST_CASE("a service that crashes soon after it started is not healthy, and is reverted") {
  Production::Options options;
  options.deadline = "1s";
  Production prod(options);
  auto& daemon = prod.start_watching();
  std::string good = prod.head();
  std::string bad = prod.commit("crash:1");  // answers one probe, then exits
  prod.stage_by_rename();
  REQUIRE(daemon.wait_for_line("reverted " + short_sha(bad)) >= 0);
  auto reverted = json_file(prod.marker(".deploy-reverted"));
  CHECK(reverted["reverted_to"].as_string() == good);
  CHECK(std::string(reverted["reason"].as_string()).find("connection refused") != std::string::npos);
  CHECK(prod.healthy());
}

TEST_CASE("a daemon killed with SIGKILL while verifying verifies again after its restart, without restarting "
          "production twice") {
  Production prod;
  auto& first = prod.start_watching();
  std::string sha = prod.commit("slow:1500");  // keeps the deploy in "verifying" for 1.5 s
  prod.stage_by_rename();
  REQUIRE(first.wait_for_line("verifying health") >= 0);
  first.kill_hard();
  CHECK(read_file(prod.marker(".deploy-in-progress")).find("\"phase\":\"verifying\"") != std::string::npos);

  auto& second = prod.start_daemon();
  REQUIRE(second.wait_for_line("verifying it again without another restart") >= 0);
  REQUIRE(second.wait_for_line("deployed " + short_sha(sha)) >= 0);
  CHECK(prod.restarts().size() == 2);  // production's own start, then this deploy's one restart
  CHECK(known_good(prod) == sha);
}

TEST_CASE("SIGTERM during a restart lets the restart finish, exits 0, and the next start verifies without "
          "restarting again") {
  Production::Options options;
  options.restart_delay = "1";
  Production prod(options);
  auto& first = prod.start_watching();
  std::string sha = prod.commit("healthy");
  prod.stage_by_rename();
  REQUIRE(first.wait_for_line("restarting production on " + short_sha(sha)) >= 0);
  CHECK(first.stop() == 0);
  CHECK(first.count_lines("[prod restart] restarted") == 1);  // it was not killed half-way
  CHECK(first.count_lines("the deploy in progress stays recorded") == 1);
  CHECK(prod.restarts().size() == 2);

  auto& second = prod.start_daemon();
  REQUIRE(second.wait_for_line("verifying it again without another restart") >= 0);
  REQUIRE(second.wait_for_line("deployed " + short_sha(sha)) >= 0);
  CHECK(prod.restarts().size() == 2);
}

TEST_CASE("a restart that hangs and ignores SIGTERM is killed with its whole process group at its timeout") {
  Production::Options options;
  options.restart_timeout = "1s";
  Production prod(options);
  auto& daemon = prod.start_watching();
  std::string bad = prod.commit("hang");
  prod.stage_by_rename();
  REQUIRE(daemon.wait_for_line("sending SIGKILL to process group") >= 0);
  REQUIRE(daemon.wait_for_line("reverted " + short_sha(bad)) >= 0);
  std::ifstream pids(prod.service_dir / "hang.pids");
  int n = 0;
  for (pid_t pid; pids >> pid; ++n) CHECK(process_gone(pid));
  CHECK(n == 3);  // the hanging command and the two children it forked
  auto reverted = json_file(prod.marker(".deploy-reverted"));
  CHECK(std::string(reverted["reason"].as_string()).find("timed out after 1s") != std::string::npos);
  CHECK(prod.healthy());
}

TEST_CASE("no restart while the idle command says busy; the restart comes after it has said idle for quiet") {
  Production::Options options;
  options.with_idle = true;
  Production prod(options);
  write_file(prod.tmp / "busy", "");
  auto& daemon = prod.start_watching();
  std::string sha = prod.commit("healthy");
  prod.stage_by_rename();
  int line = daemon.wait_for_line("idle command says busy");
  REQUIRE(line >= 0);
  for (int check = 0; check < 5; ++check) {  // five more busy answers, and still no restart
    line = daemon.wait_for_line("idle-check", 5s, line + 1);
    REQUIRE(line >= 0);
  }
  CHECK(daemon.count_lines("restarting production") == 0);
  CHECK(prod.restarts().size() == 1);
  fs::remove(prod.tmp / "busy");
  int idle_line = daemon.wait_for_line("idle command says idle");
  REQUIRE(idle_line >= 0);
  int quiet_line = daemon.wait_for_line("agent idle for 300ms", 5s, idle_line);
  REQUIRE(quiet_line >= 0);
  REQUIRE(daemon.wait_for_line("deployed " + short_sha(sha), 10s, quiet_line) >= 0);
  CHECK(prod.restarts().size() == 2);
}

TEST_CASE("hostile markers (symlink, FIFO, directory, hard link, socket, 1 GiB, garbage, deep JSON, bad SHA, foreign "
          "owner) are each refused with a reason and the daemon keeps running") {
  Production prod;
  auto& daemon = prod.start_watching();
  int from = 0;
  auto refused = [&](const std::string& reason_part) {
    int line = daemon.wait_for_line("refused the staged deploy", 5s, from);
    REQUIRE(line >= 0);
    from = line + 1;
    CHECK(daemon.lines()[static_cast<std::size_t>(line)].find(reason_part) != std::string::npos);
    auto rejected = json_file(prod.marker(".deploy-rejected"));
    CHECK(std::string(rejected["reason"].as_string()).find(reason_part) != std::string::npos);
    CHECK_FALSE(prod.has(".deploy-in-progress"));
    CHECK(prod.has(".deploy-rejected.marker"));
  };

  write_file(prod.tmp / "elsewhere", "");
  fs::create_symlink(prod.tmp / "elsewhere", prod.marker(".deploy-ready"));
  refused("symbolic link");

  REQUIRE(::mkfifo(prod.marker(".deploy-ready").c_str(), 0600) == 0);
  refused("FIFO");

  fs::create_directory(prod.marker(".deploy-ready"));
  refused("directory");

  prod.stage_by_rename(std::string(70 * 1024, ' '));
  refused("at most 65536");

  prod.stage_by_rename("{not json");
  refused("neither empty nor valid JSON");

  write_file(prod.tmp / "secret", "{\"commit\": \"0123456\"}");
  fs::create_hard_link(prod.tmp / "secret", prod.marker(".deploy-ready"));
  refused("hard link");
  CHECK(read_file(prod.marker(".deploy-rejected")).find("0123456") == std::string::npos);  // not leaked

  {
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    const std::string path = prod.marker(".deploy-ready").string();
    REQUIRE(path.size() < sizeof addr.sun_path);
    std::copy(path.begin(), path.end(), addr.sun_path);
    REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    refused("socket");
    ::close(fd);
  }

  {
    const fs::path tmp = prod.marker(".big");
    write_file(tmp, "");
    fs::resize_file(tmp, 1ULL << 30);  // sparse: costs no disk
    fs::rename(tmp, prod.marker(".deploy-ready"));
    refused("1073741824 bytes");
  }

  prod.stage_by_rename(std::string("\x7f" "ELF\x02\x01\x01\0\0\0\xff\xfe garbage", 20));
  refused("neither empty nor valid JSON");

  prod.stage_by_rename(std::string(5000, '[') + std::string(5000, ']'));
  refused("too deep");

  prod.stage_by_rename("{\"commit\": \"$(reboot)\"}");
  refused("is not a 7-40 digit hex SHA");

  write_file(prod.marker(".foreign"), "");
  REQUIRE(::chown(prod.marker(".foreign").c_str(), 4242, 4242) == 0);  // not the marker dir's owner, not root
  fs::rename(prod.marker(".foreign"), prod.marker(".deploy-ready"));
  refused("owned by uid 4242");

  std::string sha = prod.commit("healthy");
  prod.stage_by_rename();
  REQUIRE(daemon.wait_for_line("deployed " + short_sha(sha), 10s, from) >= 0);
  CHECK(prod.restarts().size() == 2);
}

TEST_CASE("when the revert fails too the target is quarantined until .deploy-failed is removed, and other targets "
          "go on") {
  Production::Options options;
  options.with_build = true;
  options.deadline = "600ms";
  Production prod(options);
  Production::Options other_options;
  other_options.name = "other";
  Production other(other_options);
  write_file(prod.config, "[sentinel]\nstate_dir = \"" + prod.state.string() + "\"\n\n" + prod.target_section +
                              other.target_section);
  auto& daemon = prod.start_daemon();
  REQUIRE(daemon.wait_for_line("other: watching") >= 0);
  REQUIRE(daemon.wait_for_line("prod: watching") >= 0);

  write_file(prod.tmp / "build-fails", "");
  std::string bad = prod.commit("unhealthy");
  prod.stage_by_rename();
  REQUIRE(daemon.wait_for_line("the revert failed too") >= 0);
  auto failed = json_file(prod.marker(".deploy-failed"));
  CHECK(failed["failed_commit"].as_string() == bad);
  CHECK(std::string(failed["revert_error"].as_string()).find("the build of") != std::string::npos);

  std::string fine = other.commit("healthy");  // the other target is not held up
  other.stage_by_rename();
  REQUIRE(daemon.wait_for_line("other: deployed " + short_sha(fine)) >= 0);

  std::string next = prod.commit("healthy");  // staged while quarantined: kept, not deployed
  prod.stage_by_rename();
  auto status = json::parse(prod.cli({"status", "--json"}).out).as_object();
  CHECK(status["targets"].as_array().at(0).as_object()["phase"].as_string() == "quarantined");
  CHECK(status["targets"].as_array().at(0).as_object()["quarantined"].as_bool());

  fs::remove(prod.tmp / "build-fails");
  fs::remove(prod.marker(".deploy-failed"));
  int lifted = daemon.wait_for_line("prod: quarantine lifted");
  REQUIRE(lifted >= 0);
  int claimed = daemon.wait_for_line("prod: claimed deploy of " + short_sha(next));
  CHECK(claimed > lifted);  // it waited on disk the whole time, and went once allowed
  REQUIRE(daemon.wait_for_line("prod: deployed " + short_sha(next)) >= 0);
}

TEST_CASE("the marker directory removed and created again is watched again") {
  Production prod;
  auto& daemon = prod.start_watching();
  fs::remove_all(prod.markers);
  REQUIRE(daemon.wait_for_line("disappeared") >= 0);
  fs::create_directory(prod.markers);
  REQUIRE(daemon.wait_for_line("is back") >= 0);
  std::string sha = prod.commit("healthy");
  prod.stage_by_rename();
  REQUIRE(daemon.wait_for_line("deployed " + short_sha(sha)) >= 0);
}

TEST_CASE("stage writes the checkout's HEAD as a full SHA and status reports the deploy") {
  Production prod;
  auto& daemon = prod.start_watching();
  std::string sha = prod.commit("healthy");
  auto staged = prod.cli({"stage", "--message", "faster search", "--commit", sha.substr(0, 8)});
  REQUIRE(staged.status == 0);
  CHECK(staged.out.find(sha) != std::string::npos);
  REQUIRE(daemon.wait_for_line("deployed " + short_sha(sha)) >= 0);
  CHECK(daemon.count_lines("faster search") >= 1);

  auto status = json::parse(prod.cli({"status", "--json"}).out).as_object();
  CHECK(status["running"].as_bool());
  auto target = status["targets"].as_array().at(0).as_object();
  CHECK(target["name"].as_string() == "prod");
  CHECK(target["last_known_good"].as_string() == sha);
  CHECK(target["last_outcome"].as_object()["result"].as_string() == "deployed");
  CHECK(target["last_outcome"].as_object()["commit"].as_string() == sha);

  auto wrong = prod.cli({"stage", "--commit", "0000000"});
  CHECK(wrong.status != 0);
  CHECK(wrong.err.find("is not the checkout's HEAD") != std::string::npos);

  CHECK(daemon.stop() == 0);
  auto stopped = json::parse(prod.cli({"status", "--json"}).out).as_object();
  CHECK_FALSE(stopped["running"].as_bool());
  CHECK(prod.cli({"status"}).out.find("not running") != std::string::npos);
}

TEST_CASE("a second daemon on the same state_dir exits at once and names the pid that runs") {
  Production prod;
  auto& daemon = prod.start_watching();
  auto second = prod.cli({"run"});
  CHECK(second.status == 1);
  CHECK(second.err.find("already running as pid " + std::to_string(daemon.pid())) != std::string::npos);
}

TEST_CASE("check-config reports a typo'd key and a bad duration with FILE:LINE:COL and exit 78") {
  TempDir tmp;
  const auto file = tmp / "bad.toml";
  write_file(file,
             "[sentinel]\nstate_dir = \"/tmp/x\"\n\n[[target]]\nname = \"prod\"\nmarker_dir = \"/tmp\"\n"
             "checkout = \"/tmp\"\nrestart = { command = [\"true\"] }\nhelth = 1\n");
  auto typo = run_program({SENTINEL_BIN, "check-config", file.string()});
  CHECK(typo.status == 78);
  CHECK(typo.err.find(file.string() + ":9:1: target[1].helth: unknown key") == 0);

  write_file(file,
             "[[target]]\nname = \"prod\"\nmarker_dir = \"/tmp\"\ncheckout = \"/tmp\"\n"
             "restart = { command = [\"true\"], timeout = \"5 seconds\" }\n[target.health]\ncommand = [\"true\"]\n");
  auto duration = run_program({SENTINEL_BIN, "check-config", file.string()});
  CHECK(duration.status == 78);
  CHECK(duration.err.find(file.string() + ":5:") == 0);
  CHECK(duration.err.find("expected a duration") != std::string::npos);

  write_file(file, "[[target]]\nname = \"prod\"\nmarker_dir = \"/tmp\"\ncheckout = \"/tmp\"\n"
                   "restart = { command = [\"true\"] }\n[target.health]\ncommand = [\"true\"]\n");
  auto good = run_program({SENTINEL_BIN, "check-config", file.string()});
  CHECK(good.status == 0);
}

TEST_CASE("a marker directory swapped for a symbolic link is not followed, and deploys again once it is a directory") {
  Production prod;
  auto& daemon = prod.start_watching();
  const fs::path elsewhere = prod.tmp / "elsewhere";
  fs::create_directory(elsewhere);
  fs::rename(prod.markers, prod.tmp / "markers.old");
  REQUIRE(daemon.wait_for_line("disappeared") >= 0);
  fs::create_directory_symlink(elsewhere, prod.markers);
  REQUIRE(daemon.wait_for_line("came back as a symbolic link") >= 0);
  std::string sha = prod.commit("healthy");
  write_file(elsewhere / ".deploy-ready", "");  // through the link: must not be taken

  fs::remove(prod.markers);
  fs::create_directory(prod.markers);
  REQUIRE(daemon.wait_for_line("is back") >= 0);
  prod.stage_by_rename();
  REQUIRE(daemon.wait_for_line("deployed " + short_sha(sha)) >= 0);
  CHECK(fs::exists(elsewhere / ".deploy-ready"));  // never claimed through the link
  CHECK(prod.restarts().size() == 2);
}
