// Never kill a cycle, end to end: the lease against the real daemon, the production monitor's
// recoveries and the cycle scheduler, with the real binary, real inotify, real processes and the
// real fake-service on 127.0.0.1.
#include "harness.h"

#include <doctest/doctest.h>

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

using namespace sentinel::test;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

/// A target whose idle gate is a lease in the marker directory, and nothing else.
Production::Options leased(std::string more = "") {
  Production::Options o;
  o.extra = "[target.idle]\nlease_file = \"markers/.cycle.lease\"\nquiet = \"0s\"\n" + std::move(more);
  return o;
}

/// A process that runs until killed: the holder of a lease taken with --pid.
class Sleeper {
 public:
  Sleeper() {
    char sh[] = "sleep";
    char arg[] = "600";
    char* argv[] = {sh, arg, nullptr};
    REQUIRE(posix_spawnp(&pid_, "sleep", nullptr, nullptr, argv, environ) == 0);
  }
  ~Sleeper() { end(); }
  void end() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
};

}  // namespace

TEST_CASE("a held lease holds a staged deploy off, and releasing it deploys at once") {
  Production prod(leased());
  auto& daemon = prod.start_watching();
  REQUIRE(prod.cli({"hold", "--for", "10m", "--reason", "cycle 812"}).status == 0);
  const std::string sha = prod.commit("healthy");
  prod.stage_by_rename();
  REQUIRE(daemon.wait_for_line("lease 'cycle 812'") >= 0);
  const auto status = prod.cli({"status"});
  CHECK(status.out.find("deploy of " + short_sha(sha) + " waiting: lease 'cycle 812'") != std::string::npos);
  CHECK(prod.restarts().size() == 1);  // only production's own start
  REQUIRE(prod.cli({"release"}).status == 0);
  REQUIRE(daemon.wait_for_line("deployed " + short_sha(sha)) >= 0);
  CHECK(prod.restarts().size() == 2);
}

TEST_CASE("hold is refused while the daemon restarts production, and granted once it is done") {
  Production::Options o = leased();
  o.restart_delay = "1";  // the restart takes a second: time enough to try a hold during it
  Production prod(o);
  auto& daemon = prod.start_watching();
  const std::string sha = prod.commit("healthy");
  prod.stage_by_rename();
  REQUIRE(daemon.wait_for_line("restarting production on " + short_sha(sha)) >= 0);
  const auto refused = prod.cli({"hold", "--for", "10m", "--reason", "cycle 813"});
  CHECK(refused.status == 75);
  CHECK(refused.err.find("prod is restarting") != std::string::npos);
  CHECK_FALSE(prod.has(".cycle.lease"));
  REQUIRE(daemon.wait_for_line("deployed " + short_sha(sha)) >= 0);
  CHECK(prod.cli({"hold", "--for", "10m", "--reason", "cycle 813"}).status == 0);
}

TEST_CASE("hold --wait during a restart holds as soon as the deploy is done") {
  Production::Options o = leased();
  o.restart_delay = "1";
  Production prod(o);
  auto& daemon = prod.start_watching();
  const std::string sha = prod.commit("healthy");
  prod.stage_by_rename();
  REQUIRE(daemon.wait_for_line("restarting production on " + short_sha(sha)) >= 0);
  CHECK(prod.cli({"hold", "--wait", "--for", "10m", "--reason", "cycle 814"}).status == 0);
  CHECK(daemon.count_lines("deployed " + short_sha(sha)) == 1);  // the wait ended after the deploy
  CHECK(prod.has(".cycle.lease"));
}

TEST_CASE("a lease whose holder process exits counts as released") {
  Production prod(leased());
  auto& daemon = prod.start_watching();
  Sleeper holder;
  REQUIRE(prod.cli({"hold", "--for", "1h", "--reason", "cycle 815", "--pid", std::to_string(holder.pid())}).status == 0);
  const std::string sha = prod.commit("healthy");
  prod.stage_by_rename();
  REQUIRE(daemon.wait_for_line("lease 'cycle 815' held by pid") >= 0);
  CHECK(prod.restarts().size() == 1);
  holder.end();  // the holder's exit wakes the daemon (pidfd); nothing is polled
  REQUIRE(daemon.wait_for_line("deployed " + short_sha(sha)) >= 0);
  CHECK(daemon.count_lines("is gone; ignoring it") == 1);
}

TEST_CASE("an expired lease is logged once and ignored") {
  Production prod(leased());
  auto& daemon = prod.start_watching();
  REQUIRE(prod.cli({"hold", "--for", "1s", "--reason", "short cycle"}).status == 0);
  const std::string sha = prod.commit("healthy");
  prod.stage_by_rename();
  REQUIRE(daemon.wait_for_line("deployed " + short_sha(sha), 15s) >= 0);
  CHECK(daemon.count_lines("lease 'short cycle' expired") == 1);
  CHECK(daemon.count_lines("ignoring it") == 1);
}

TEST_CASE("production that dies between deploys is restarted at once, and one cycle follows once it is healthy") {
  Production::Options o;
  o.extra = "[target.monitor]\ninterval = \"100ms\"\nfailures = 2\n"
            "[target.cycle]\ncommand = [\"sh\", \"-c\", \"echo cycle >> ../cycles.log\"]\nevery = \"1h\"\n";
  Production prod(o);
  auto& daemon = prod.start_watching();
  REQUIRE(run_program({FAKE_SERVICE, "stop", "--state", prod.service_dir.string()}).status == 0);
  REQUIRE(daemon.wait_for_line("prod: unhealthy since") >= 0);
  REQUIRE(daemon.wait_for_line("healthy again after") >= 0);
  REQUIRE(daemon.wait_for_line("cycle started") >= 0);
  CHECK(daemon.count_lines("no cycle to protect") == 1);
  CHECK(daemon.count_lines("unhealthy since") == 1);  // a transition is logged once
  CHECK(read_file(prod.tmp / "cycles.log") == "cycle\n");
  CHECK(prod.healthy());
  CHECK(prod.restarts().size() == 2);
}

TEST_CASE("production that a restart does not bring back is reverted to the last known-good commit") {
  Production::Options o;
  o.extra = "[target.monitor]\ninterval = \"100ms\"\nfailures = 2\n";
  Production prod(o);
  const std::string good = prod.head();
  auto& daemon = prod.start_watching();
  // The agent committed a broken change and did not stage it; then production died.
  const std::string bad = prod.commit("unhealthy");
  REQUIRE(run_program({FAKE_SERVICE, "stop", "--state", prod.service_dir.string()}).status == 0);
  REQUIRE(daemon.wait_for_line("reverted " + short_sha(bad) + " to " + short_sha(good), 20s) >= 0);
  CHECK(prod.head() == good);
  CHECK(prod.healthy());
  CHECK(prod.has(".deploy-reverted"));
  CHECK(read_file(prod.marker(".deploy-reverted")).find("restarting it did not help") != std::string::npos);
}

TEST_CASE("production that keeps going down is given up on after max_recoveries, with .deploy-failed saying why") {
  Production::Options o;
  o.extra = "[target.monitor]\ninterval = \"100ms\"\nfailures = 2\nmax_recoveries = 1\nwindow = \"1h\"\n";
  Production prod(o);
  auto& daemon = prod.start_watching();
  REQUIRE(run_program({FAKE_SERVICE, "stop", "--state", prod.service_dir.string()}).status == 0);
  REQUIRE(daemon.wait_for_line("healthy again after") >= 0);
  REQUIRE(run_program({FAKE_SERVICE, "stop", "--state", prod.service_dir.string()}).status == 0);
  REQUIRE(daemon.wait_for_line("it is flapping") >= 0);
  CHECK(prod.has(".deploy-failed"));
  CHECK(read_file(prod.marker(".deploy-failed")).find("1 recoveries within 1h") != std::string::npos);
  CHECK(prod.restarts().size() == 2);  // one recovery, then hands off
  CHECK(prod.cli({"status"}).out.find("QUARANTINED") != std::string::npos);
}

TEST_CASE("cycles start every `every`, the first one `every` after start-up") {
  Production::Options o;
  o.extra = "[target.cycle]\ncommand = [\"sh\", \"-c\", \"echo cycle >> ../cycles.log\"]\nevery = \"300ms\"\n";
  Production prod(o);
  auto& daemon = prod.start_watching();
  const int first = daemon.wait_for_line("cycle started");
  REQUIRE(first >= 0);
  REQUIRE(daemon.wait_for_line("cycle started", 10s, first + 1) >= 0);
  CHECK(daemon.count_lines("starting a cycle") >= 2);
}

TEST_CASE("the botical example (prod with idle gate, cycles and monitor; dev without) passes check-config") {
  const auto r = run_program({SENTINEL_BIN, "check-config", std::string(SENTINEL_SOURCE_DIR) + "/examples/botical.toml"});
  CHECK(r.status == 0);
  CHECK(r.out.find("ok, 2 targets") != std::string::npos);
}
