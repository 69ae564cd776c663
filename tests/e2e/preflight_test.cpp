// Pre-flight end to end: the real daemon, real bubblewrap sandboxes, the real fake-service as
// production and as its shadow, real git and real files.
#include "harness.h"

#include <boost/json.hpp>
#include <doctest/doctest.h>

#include <sstream>
#include <thread>

using namespace sentinel::test;
using namespace std::chrono_literals;
namespace fs = std::filesystem;
namespace json = boost::json;

namespace {

json::object json_object(const fs::path& file) { return json::parse(read_file(file)).as_object(); }

std::string text(const json::object& obj, std::string_view key) {
  auto it = obj.find(key);
  return it != obj.end() && it->value().is_string() ? std::string(it->value().as_string()) : "";
}

/// The last line of the target's history, as JSON.
json::object last_outcome(Production& prod) {
  std::istringstream lines(read_file(prod.state / "targets" / "prod" / "history.jsonl"));
  std::string line, last;
  while (std::getline(lines, line)) last = line;
  return json::parse(last).as_object();
}

/// A [target.preflight] whose shadow runs `before` (shell) and then the fake-service in the mode
/// `mode` (a shell word: "$(cat service-mode)" is the mode of the staged commit).
std::string preflight_section(const std::string& before, const std::string& mode = "$(cat service-mode)",
                              const std::string& deadline = "10s") {
  return "\n[target.preflight]\ncommand = [\"sh\", \"-c\", \"" + before + "exec " + shadow_service() +
         " serve --port $PORT --mode " + mode + "\"]\nenv = { PORT = \"{port}\" }\n"
         "health = \"http://127.0.0.1:{port}/health\"\ngrace = \"100ms\"\ninterval = \"50ms\"\nsuccesses = 2\n"
         "deadline = \"" + deadline + "\"\n";
}

/// Polls `done` until it holds or `limit` passes.
template <typename F>
bool eventually(F done, std::chrono::milliseconds limit = 5s) {
  const auto until = std::chrono::steady_clock::now() + limit;
  while (!done()) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(10ms);
  }
  return true;
}

std::string service_pid(Production& prod) {
  const std::string pid = read_file(prod.service_dir / "service.pid");
  return pid.substr(0, pid.find('\n'));
}

}  // namespace

TEST_CASE("a commit whose service exits at start-up is rejected by pre-flight: production is never restarted, the "
          "checkout is back on known-good and built, and .deploy-rejected carries the output") {
  Production::Options options;
  options.with_build = true;
  options.extra = preflight_section("echo shadow of $(git rev-parse --short HEAD) starting; ");
  Production prod(options);
  auto& daemon = prod.start_watching();
  const std::string good = prod.commit("healthy");
  prod.stage_by_rename();
  REQUIRE(daemon.wait_for_line("pre-flight of " + short_sha(good) + " healthy after", 20s) >= 0);
  REQUIRE(daemon.wait_for_line("deployed " + short_sha(good), 20s) >= 0);
  const std::size_t restarts = prod.restarts().size();
  const std::string production_pid = service_pid(prod);
  std::error_code ignored;
  fs::remove(prod.tmp / "build.log", ignored);

  const std::string bad = prod.commit("broken");  // fake-service refuses an unknown mode and exits 64
  prod.stage_by_rename();
  REQUIRE(daemon.wait_for_line("rejected " + short_sha(bad) + " after its pre-flight", 20s) >= 0);
  CHECK(prod.restarts().size() == restarts);
  CHECK(service_pid(prod) == production_pid);
  CHECK(prod.healthy());
  CHECK(prod.head() == good);
  CHECK(read_file(prod.tmp / "build.log") == "built " + good + "\n");
  CHECK(!prod.has(".deploy-in-progress"));

  const json::object rejected = json_object(prod.marker(".deploy-rejected"));
  CHECK(text(rejected, "commit") == bad);
  CHECK(text(rejected, "phase") == "preflight");
  CHECK(text(rejected, "reason").find("exited with status 64 at start-up") != std::string::npos);
  const std::string output = json::serialize(rejected.at("output"));
  CHECK(output.find("unknown mode 'broken'") != std::string::npos);
  CHECK(output.find("shadow of " + bad.substr(0, 7)) != std::string::npos);

  const json::object outcome = last_outcome(prod);
  CHECK(text(outcome, "result") == "rejected");
  CHECK(text(outcome, "commit") == bad);
  auto status = json::parse(prod.cli({"status", "--json"}).out).as_object();
  auto target = status["targets"].as_array().at(0).as_object();
  CHECK(target["last_outcome"].as_object()["result"].as_string() == "rejected");
  CHECK(target["last_known_good"].as_string() == good);
  CHECK(fs::is_empty(prod.state / "preflight"));
}

TEST_CASE("a commit that starts but never becomes healthy is rejected at the pre-flight deadline, and a child it "
          "started with setsid() is gone too") {
  Production::Options options;
  options.extra = preflight_section("setsid sleep 318.25 & ", "$(cat service-mode)", "2s");
  Production prod(options);
  auto& daemon = prod.start_watching();
  const std::string bad = prod.commit("unhealthy");
  prod.stage_by_rename();
  REQUIRE(daemon.wait_for_line("[prod preflight] fake-service: pid", 20s) >= 0);
  CHECK(eventually([] { return !processes_with("sleep 318.25").empty(); }));
  REQUIRE(daemon.wait_for_line("rejected " + short_sha(bad) + " after its pre-flight", 20s) >= 0);
  CHECK(daemon.count_lines("not healthy within 2s (last probe: HTTP 503)") == 1);
  CHECK(eventually([] { return processes_with("sleep 318.25").empty(); }));
  CHECK(prod.restarts().size() == 1);
}

TEST_CASE("an isolated shadow cannot reach production on the host's 127.0.0.1 nor write to the checkout or to "
          "production's data, and production's data is unchanged") {
  // Production's data outside /tmp, so that the sandbox's private /tmp does not simply hide it.
  const fs::path data = fs::path(shadow_service()).parent_path() / ("e2e-prod-data-" + std::to_string(::getpid()));
  fs::create_directories(data);
  write_file(data / "app.db", "production rows\n");
  Production prod;  // a server on the host's 127.0.0.1 for the shadow to try
  Production::Options isolated;
  isolated.extra = preflight_section(
      "(echo hi > /dev/tcp/127.0.0.1/" + std::to_string(prod.port) +
      ") 2>/dev/null \\u0026\\u0026 echo HOST-REACHED || echo HOST-UNREACHABLE; "
      "mount -o remount,rw,bind / 2>/dev/null \\u0026\\u0026 echo REMOUNTED; "
      "touch written 2>\\u00261 | grep -q Read-only \\u0026\\u0026 echo CHECKOUT-EROFS; "
      "(echo changed >> " + (data / "app.db").string() +
      ") 2>\\u00261 | grep -q Read-only \\u0026\\u0026 echo PRODUCTION-EROFS; "
      "grep -q 'production rows' $DATA/" + data.filename().string() + "/app.db \\u0026\\u0026 echo COPY-PRESENT; ");
  isolated.extra += "snapshot = [\"" + data.string() + "\"]\n";
  isolated.extra.replace(isolated.extra.find("env = { PORT = \"{port}\" }"), 25,
                         "env = { PORT = \"{port}\", DATA = \"{data}\" }");
  isolated.extra.replace(isolated.extra.find("\"sh\", \"-c\""), 10, "\"bash\", \"-c\"");
  Production shadowed(isolated);
  auto& daemon = shadowed.start_watching();
  const std::string sha = shadowed.commit("healthy");
  shadowed.stage_by_rename();
  REQUIRE(daemon.wait_for_line("deployed " + short_sha(sha), 20s) >= 0);
  CHECK(daemon.count_lines("[prod preflight] HOST-UNREACHABLE") == 1);
  CHECK(daemon.count_lines("[prod preflight] HOST-REACHED") == 0);
  CHECK(daemon.count_lines("[prod preflight] REMOUNTED") == 0);
  CHECK(daemon.count_lines("[prod preflight] CHECKOUT-EROFS") == 1);
  CHECK(daemon.count_lines("[prod preflight] PRODUCTION-EROFS") == 1);
  CHECK(daemon.count_lines("[prod preflight] COPY-PRESENT") == 1);
  CHECK(!fs::exists(shadowed.checkout / "written"));
  CHECK(read_file(data / "app.db") == "production rows\n");
  std::error_code ignored;
  fs::remove_all(data, ignored);
}

TEST_CASE("a good commit passes pre-flight while the agent is busy, and is restarted as soon as the agent is idle") {
  Production::Options options;
  options.with_idle = true;
  options.quiet = "300ms";
  options.extra = preflight_section("");
  Production prod(options);
  write_file(prod.tmp / "busy", "");
  auto& daemon = prod.start_watching();
  const std::string sha = prod.commit("healthy");
  prod.stage_by_rename();
  const int healthy = daemon.wait_for_line("pre-flight of " + short_sha(sha) + " healthy after", 20s);
  REQUIRE(healthy >= 0);
  CHECK(prod.restarts().size() == 1);  // still busy: production untouched
  const auto idle_at = std::chrono::steady_clock::now();
  fs::remove(prod.tmp / "busy");
  REQUIRE(daemon.wait_for_line("restarting production on " + short_sha(sha), 10s, healthy) >= 0);
  const auto waited = std::chrono::steady_clock::now() - idle_at;
  // quiet (300 ms) plus a few idle checks (50 ms apart); a pre-flight after idle would add its own seconds
  CHECK(waited < 1500ms);
  CHECK(daemon.count_lines("waiting for idle once more") == 0);
  REQUIRE(daemon.wait_for_line("deployed " + short_sha(sha), 10s, healthy) >= 0);
  CHECK(prod.restarts().size() == 2);
}

TEST_CASE("a daemon killed with SIGKILL during a pre-flight leaves no shadow and no data behind after its restart, "
          "and the deploy goes on") {
  Production::Options options;
  options.extra = preflight_section("", "slow:60000", "30s");  // never listens within the test
  Production prod(options);
  auto& daemon = prod.start_watching();
  const std::string sha = prod.commit("healthy");
  prod.stage_by_rename();
  REQUIRE(daemon.wait_for_line("pre-flight of the checkout on port", 20s) >= 0);
  json::object record;
  REQUIRE(eventually([&] {
    boost::system::error_code ec;  // until the record is written, this is the claimed (empty) marker
    json::value doc = json::parse(read_file(prod.marker(".deploy-in-progress")), ec);
    if (ec || !doc.is_object()) return false;
    record = doc.as_object();
    return record.contains("preflight_pid");
  }));
  const pid_t shadow = static_cast<pid_t>(record.at("preflight_pid").as_int64());
  const fs::path data = text(record, "preflight_data");
  CHECK(fs::is_directory(data));
  CHECK(!processes_with("slow:60000").empty());
  daemon.kill_hard();

  // The same target, now with a shadow that comes up.
  std::string config = read_file(prod.config);
  config.replace(config.find("slow:60000"), 10, "healthy");
  write_file(prod.config, config);
  auto& again = prod.start_daemon();
  REQUIRE(again.wait_for_line("deployed " + short_sha(sha), 20s) >= 0);
  CHECK(process_gone(shadow));
  CHECK(processes_with("slow:60000").empty());
  CHECK(!fs::exists(data));
  CHECK(fs::is_empty(prod.state / "preflight"));
  CHECK(prod.restarts().size() == 2);
}

TEST_CASE("a failed pre-flight while the agent is busy says so at once, and puts the checkout back only once the "
          "agent is idle, so its uncommitted work is not reset under it") {
  Production::Options options;
  options.with_idle = true;
  options.extra = preflight_section("");
  Production prod(options);
  write_file(prod.tmp / "busy", "");
  auto& daemon = prod.start_watching();
  const std::string good = prod.head();
  const std::string bad = prod.commit("broken");
  prod.stage_by_rename();
  const int failed = daemon.wait_for_line("pre-flight of " + short_sha(bad) + " failed", 20s);
  REQUIRE(failed >= 0);
  REQUIRE(daemon.wait_for_line("putting the checkout back on " + short_sha(good) + " once the agent is idle", 10s,
                               failed) >= 0);
  write_file(prod.checkout / "agent-scratch.txt", "the agent's uncommitted work\n");
  CHECK(prod.head() == bad);  // not reset while the agent works
  CHECK(prod.restarts().size() == 1);

  fs::remove(prod.tmp / "busy");
  REQUIRE(daemon.wait_for_line("rejected " + short_sha(bad) + " after its pre-flight", 20s, failed) >= 0);
  CHECK(prod.head() == good);
  CHECK(prod.restarts().size() == 1);
  CHECK(!prod.has(".deploy-in-progress"));
  CHECK(daemon.wait_for_line("restarting production", 500ms) < 0);
}

TEST_CASE("after a failed pre-flight, commits the agent made on top of the refused one are not reset") {
  Production::Options options;
  options.with_idle = true;
  options.extra = preflight_section("");
  Production prod(options);
  write_file(prod.tmp / "busy", "");
  auto& daemon = prod.start_watching();
  const std::string bad = prod.commit("broken");
  prod.stage_by_rename();
  REQUIRE(daemon.wait_for_line("once the agent is idle", 20s) >= 0);
  const std::string fix = prod.commit("healthy");  // the agent's next commit, not staged yet
  fs::remove(prod.tmp / "busy");
  REQUIRE(daemon.wait_for_line("HEAD moved from " + short_sha(bad) + " to " + short_sha(fix), 20s) >= 0);
  REQUIRE(daemon.wait_for_line("rejected " + short_sha(bad) + " after its pre-flight", 20s) >= 0);
  CHECK(prod.head() == fix);
}

TEST_CASE("a newer marker staged during a pre-flight cancels it and the new commit gets its own pre-flight") {
  Production::Options options;
  // The first commit's shadow waits 60 s before it listens; the second one listens at once.
  options.extra = preflight_section("", "$(cat service-mode)", "30s");
  Production prod(options);
  auto& daemon = prod.start_watching();
  const std::string first = prod.commit("slow:60000");
  prod.stage_by_rename();
  REQUIRE(daemon.wait_for_line("pre-flight of the checkout on port", 20s) >= 0);
  REQUIRE(eventually([] { return !processes_with("slow:60000").empty(); }));
  const std::string second = prod.commit("healthy");
  prod.stage_by_rename();
  REQUIRE(daemon.wait_for_line("deployed " + short_sha(second), 20s) >= 0);
  CHECK(daemon.count_lines("the deploy of " + short_sha(first) + " was replaced by a newer staged marker") == 1);
  CHECK(daemon.count_lines("pre-flight of " + short_sha(second) + " healthy after") == 1);
  CHECK(processes_with("slow:60000").empty());
  CHECK(prod.restarts().size() == 2);
}

TEST_CASE("a target with an isolated pre-flight is refused at start-up when namespaces cannot be created") {
  Production::Options options;
  options.extra = preflight_section("");
  Production prod(options);
  // A bwrap that fails as it does without the privilege to create namespaces, first in PATH.
  fs::create_directories(prod.tmp / "bin");
  write_file(prod.tmp / "bin" / "bwrap", "#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n");
  fs::permissions(prod.tmp / "bin" / "bwrap", fs::perms::owner_all);
  prod.daemon_env.push_back("PATH=" + (prod.tmp / "bin").string() + ":/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin");
  auto& daemon = prod.start_daemon();
  REQUIRE(daemon.wait_for_line("prod: refused: [target.preflight] needs namespaces", 10s) >= 0);
  CHECK(daemon.count_lines("No permissions to create new namespace") >= 1);
  const std::string sha = prod.commit("healthy");
  prod.stage_by_rename();
  CHECK(daemon.wait_for_line("restarting production", 1s) < 0);
  CHECK(daemon.count_lines("pre-flight of") == 0);
  CHECK(prod.restarts().size() == 1);
  auto status = json::parse(prod.cli({"status", "--json"}).out).as_object();
  CHECK(status["targets"].as_array().at(0).as_object()["phase"].as_string() == "quarantined");
}

namespace {

/// Stops the daemon with SIGTERM while a pre-flight that never comes up runs, and checks that it
/// went cleanly.
void stop_during_preflight(bool with_idle) {
  Production::Options options;
  options.with_idle = with_idle;
  options.extra = preflight_section("", "slow:60000", "30s");
  Production prod(options);
  write_file(prod.tmp / "busy", "");
  auto& daemon = prod.start_watching();
  prod.commit("healthy");
  prod.stage_by_rename();
  REQUIRE(daemon.wait_for_line("pre-flight of the checkout on port", 20s) >= 0);
  REQUIRE(eventually([] { return !processes_with("slow:60000").empty(); }));
  const auto asked = std::chrono::steady_clock::now();
  CHECK(daemon.stop() == 0);
  CHECK(std::chrono::steady_clock::now() - asked < 5s);  // not after the 30 s deadline
  CHECK(daemon.count_lines("internal error") == 0);
  CHECK(daemon.count_lines("the deploy in progress stays recorded") == 1);
  const bool gone = eventually([] { return processes_with("slow:60000").empty(); });
  if (!gone) for (const auto& l : daemon.lines()) if (l.find("idle-check") == std::string::npos) MESSAGE(l);
  CHECK(gone);
  CHECK(fs::is_empty(prod.state / "preflight"));
  CHECK(prod.has(".deploy-in-progress"));
  CHECK(prod.restarts().size() == 1);
}

}  // namespace

TEST_CASE("SIGTERM during a pre-flight beside the idle wait stops the shadow at once, exits 0 and keeps the deploy for the next start") {
  stop_during_preflight(true);
}

TEST_CASE("SIGTERM during a pre-flight without an idle wait stops the shadow at once, exits 0 and keeps the deploy for the next start") {
  stop_during_preflight(false);
}

TEST_CASE("an agent idle before the pre-flight's verdict is checked again after it, and the deploy goes on") {
  Production::Options options;
  options.with_idle = true;
  options.quiet = "100ms";
  options.extra = preflight_section("", "slow:1500");  // listens 1.5 s after its start
  Production prod(options);
  auto& daemon = prod.start_watching();
  const std::string sha = prod.commit("healthy");
  prod.stage_by_rename();
  const int healthy = daemon.wait_for_line("pre-flight of " + short_sha(sha) + " healthy after", 20s);
  REQUIRE(healthy >= 0);
  // Idle came first (100 ms of quiet against 1.5 s of start-up): the lease permit was let go.
  CHECK(daemon.wait_for_line("agent idle for 100ms", 0ms) >= 0);
  CHECK(daemon.wait_for_line("agent idle for 100ms", 0ms) < healthy);
  REQUIRE(daemon.wait_for_line("waiting for idle once more", 5s, healthy) >= 0);
  REQUIRE(daemon.wait_for_line("deployed " + short_sha(sha), 10s, healthy) >= 0);
  CHECK(prod.restarts().size() == 2);
}
