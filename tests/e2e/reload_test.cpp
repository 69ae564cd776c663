// SIGHUP: the config is read again; a bad one is refused with its position, a good one applied.
#include "harness.h"

#include <doctest/doctest.h>

#include <signal.h>

#include <algorithm>

using namespace sentinel::test;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

TEST_CASE("SIGHUP with a broken config logs FILE:LINE:COL and keeps the running config, which still deploys") {
  Production prod;
  auto& daemon = prod.start_watching();
  const std::string good = read_file(prod.config);
  write_file(prod.config, good + "\n[[target]]\nname = \"broken\"\nrestart = 5\n");
  REQUIRE(::kill(daemon.pid(), SIGHUP) == 0);
  const auto header_line = std::count(good.begin(), good.end(), '\n') + 2;  // the new [[target]]
  const int refused = daemon.wait_for_line("SIGHUP: keeping the running config: " + prod.config.string() + ":" +
                                           std::to_string(header_line) + ":1: target[2].marker_dir: required key missing");
  REQUIRE(refused >= 0);

  std::string sha = prod.commit("healthy");
  prod.stage_by_rename();
  REQUIRE(daemon.wait_for_line("deployed " + short_sha(sha), 10s, refused) >= 0);
  CHECK(daemon.count_lines("watching 1 target") == 1);  // never restarted its targets
}

TEST_CASE("SIGHUP with a valid config applies it in the same process: a new target is watched and deploys") {
  Production prod;
  Production::Options other_options;
  other_options.name = "other";
  Production other(other_options);
  auto& daemon = prod.start_watching();
  const pid_t pid = daemon.pid();

  write_file(prod.config, "[sentinel]\nstate_dir = \"" + prod.state.string() + "\"\nlog_level = \"debug\"\n\n" +
                              prod.target_section + other.target_section);
  REQUIRE(::kill(pid, SIGHUP) == 0);
  const int applied = daemon.wait_for_line("SIGHUP: " + prod.config.string() + " is valid");
  REQUIRE(applied >= 0);
  REQUIRE(daemon.wait_for_line("watching 2 targets", 10s, applied) >= 0);
  REQUIRE(daemon.wait_for_line("other: watching", 10s, applied) >= 0);
  CHECK(daemon.pid() == pid);

  std::string sha = other.commit("healthy");
  other.stage_by_rename();
  REQUIRE(daemon.wait_for_line("other: deployed " + short_sha(sha), 10s, applied) >= 0);
  CHECK(other.restarts().size() == 2);  // the first start, and this deploy
}

TEST_CASE("SIGHUP during a restart lets it finish, then the reloaded daemon verifies it without restarting again") {
  Production::Options options;
  options.restart_delay = "1";
  Production prod(options);
  auto& daemon = prod.start_watching();
  std::string sha = prod.commit("healthy");
  prod.stage_by_rename();
  REQUIRE(daemon.wait_for_line("restarting production on " + short_sha(sha)) >= 0);
  REQUIRE(::kill(daemon.pid(), SIGHUP) == 0);
  REQUIRE(daemon.wait_for_line("verifying it again without another restart") >= 0);
  REQUIRE(daemon.wait_for_line("deployed " + short_sha(sha)) >= 0);
  CHECK(daemon.count_lines("[prod restart] restarted") == 1);  // not killed half-way
  CHECK(prod.restarts().size() == 2);
}

TEST_CASE("SIGTERM after SIGHUP stops the daemon instead of reloading, with exit 0") {
  Production::Options options;
  options.restart_delay = "1";
  Production prod(options);
  auto& daemon = prod.start_watching();
  std::string sha = prod.commit("healthy");
  prod.stage_by_rename();
  REQUIRE(daemon.wait_for_line("restarting production on " + short_sha(sha)) >= 0);
  REQUIRE(::kill(daemon.pid(), SIGHUP) == 0);
  REQUIRE(daemon.wait_for_line("is valid; applying it") >= 0);
  CHECK(daemon.stop() == 0);
  CHECK(daemon.count_lines("stopping instead of reloading") == 1);
  CHECK(daemon.count_lines("watching 1 target") == 1);
}

TEST_CASE("SIGHUP with a config that parses but cannot run goes on with the config that ran") {
  Production prod;
  auto& daemon = prod.start_watching();
  const std::string good = read_file(prod.config);
  const std::string missing = (prod.tmp / "no-such-dir").string();
  std::string broken = good;
  broken.replace(broken.find(prod.markers.string()), prod.markers.string().size(), missing);
  write_file(prod.config, broken);
  REQUIRE(::kill(daemon.pid(), SIGHUP) == 0);
  const int fell_back = daemon.wait_for_line("SIGHUP: cannot apply " + prod.config.string());
  REQUIRE(fell_back >= 0);
  CHECK(daemon.lines()[static_cast<std::size_t>(fell_back)].find(missing) != std::string::npos);
  REQUIRE(daemon.wait_for_line("prod: watching " + prod.markers.string(), 10s, fell_back) >= 0);

  std::string sha = prod.commit("healthy");
  prod.stage_by_rename();
  REQUIRE(daemon.wait_for_line("deployed " + short_sha(sha), 10s, fell_back) >= 0);
}
