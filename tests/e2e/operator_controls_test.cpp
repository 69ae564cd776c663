// The operator's controls end to end with the real daemon: a deploy window, min_interval, pause
// and resume (across a restart of the daemon), and an idle list cut short at its cap.
#include "harness.h"

#include "lease.h"
#include "state_store.h"

#include <doctest/doctest.h>

#include <ctime>

using namespace sentinel::test;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

/// "HH:MM:SS" in UTC, `ahead` from now.
std::string utc_time_of_day(std::chrono::seconds ahead) {
  const std::time_t t = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now() + ahead);
  std::tm tm{};
  ::gmtime_r(&t, &tm);
  char text[16];
  std::strftime(text, sizeof text, "%H:%M:%S", &tm);
  return text;
}

/// The session list botical's /status/data would serve, with one session per agent named.
std::string sessions(std::initializer_list<std::string_view> agents) {
  std::string list;
  for (auto agent : agents) list += std::string(list.empty() ? "" : ",") + R"({"agent":")" + std::string(agent) + "\"}";
  return R"({"data":{"activeSessions":[)" + list + "]}}";
}

}  // namespace

TEST_CASE("a deploy staged before the deploy window opens is claimed, waits, and goes when the window opens") {
  Production::Options options;
  // Opens a few seconds from now (UTC), so the wait is real but short.
  options.extra = "[target.window]\nstart = \"" + utc_time_of_day(6s) + "\"\nend = \"" + utc_time_of_day(3600s) +
                  "\"\ntime_zone = \"UTC\"\n";
  Production prod(options);
  auto& daemon = prod.start_watching();
  const std::string sha = prod.commit("healthy");
  prod.stage_by_rename();
  const int held = daemon.wait_for_line("deploy of " + short_sha(sha) + " waiting for the deploy window: opens");
  REQUIRE(held >= 0);
  CHECK(daemon.lines()[static_cast<std::size_t>(held)].find(" UTC (in ") != std::string::npos);
  CHECK(prod.has(".deploy-in-progress"));  // claimed, never lost
  CHECK_FALSE(prod.has(".deploy-ready"));
  const auto status = prod.cli({"status"});
  CHECK(status.out.find("prod: held") != std::string::npos);
  CHECK(status.out.find("waiting for the deploy window: opens") != std::string::npos);
  CHECK(prod.restarts().size() == 1);  // production's own start only

  const int go = daemon.wait_for_line("the deploy of " + short_sha(sha) + " may go now", 10s, held);
  REQUIRE(go >= 0);
  REQUIRE(daemon.wait_for_line("deployed " + short_sha(sha), 10s, go) >= 0);
  CHECK(prod.restarts().size() == 2);
}

TEST_CASE("a second deploy waits for min_interval after the first deploy restart, then goes") {
  Production prod;
  // A key of the target itself, so it goes before the target's first sub-table.
  std::string config = read_file(prod.config);
  config.replace(config.find("[target.health]"), 0, "min_interval = \"2s\"\n\n");
  write_file(prod.config, config);
  auto& daemon = prod.start_watching();
  const std::string first = prod.commit("healthy");
  prod.stage_by_rename();
  const int deployed = daemon.wait_for_line("deployed " + short_sha(first));
  REQUIRE(deployed >= 0);
  const std::string second = prod.commit("healthy");
  prod.stage_by_rename();
  const int held = daemon.wait_for_line("deploy of " + short_sha(second) + " waiting for min_interval (2s between deploy "
                                        "restarts", 10s, deployed);
  REQUIRE(held >= 0);
  CHECK(prod.restarts().size() == 2);
  REQUIRE(daemon.wait_for_line("deployed " + short_sha(second), 10s, held) >= 0);
  CHECK(prod.restarts().size() == 3);
}

TEST_CASE("a pause survives a restart of the daemon, and resume deploys what waited") {
  Production prod;
  auto& daemon = prod.start_watching();
  auto paused = prod.cli({"pause", "--reason", "database migration", "--for", "2w"});
  REQUIRE_MESSAGE(paused.status == 0, paused.err);
  CHECK(paused.out.find("prod: paused by ") != std::string::npos);
  REQUIRE(daemon.wait_for_line(": database migration; staged deploys and cycles wait") >= 0);

  const std::string sha = prod.commit("healthy");
  prod.stage_by_rename();
  REQUIRE(daemon.wait_for_line("deploy of " + short_sha(sha) + " waiting: paused by ") >= 0);
  CHECK(daemon.stop() == 0);
  CHECK(prod.has(".deploy-in-progress"));
  CHECK(prod.restarts().size() == 1);

  auto& again = prod.start_watching();
  REQUIRE(again.wait_for_line("deploy of " + short_sha(sha) + " waiting: paused by ") >= 0);
  CHECK(again.count_lines("database migration; staged deploys and cycles wait") == 1);  // logged once
  const auto status = prod.cli({"status"});
  CHECK(status.out.find("PAUSED: paused by ") != std::string::npos);
  CHECK(status.out.find(": database migration (deploy-sentinel resume ends it)") != std::string::npos);
  CHECK(prod.restarts().size() == 1);

  auto resumed = prod.cli({"resume"});
  REQUIRE_MESSAGE(resumed.status == 0, resumed.err);
  CHECK(resumed.out.find("prod: resumed (was paused by ") != std::string::npos);
  REQUIRE(again.wait_for_line("deployed " + short_sha(sha)) >= 0);
  CHECK(again.count_lines("prod: resumed (was paused by ") == 1);
  CHECK(prod.restarts().size() == 2);
  CHECK(prod.cli({"resume"}).out == "prod was not paused\n");
}

TEST_CASE("pause is refused with exit 75 while the daemon is restarting the target, and writes nothing") {
  Production prod;
  sentinel::StateStore store(prod.state);
  store.prepare({"prod"});
  sentinel::InstanceLock daemon(prod.state);  // this process plays the running daemon
  sentinel::TargetStatus restarting;
  restarting.phase = "restarting";
  restarting.since = "2026-11-25T14:02:11Z";
  restarting.commit = prod.head();
  REQUIRE_FALSE(store.write_status("prod", restarting));
  auto r = prod.cli({"pause", "--reason", "migration"});
  CHECK(r.status == 75);
  CHECK(r.err.find("cannot pause now: prod is restarting (since 14:02:11") != std::string::npos);
  CHECK_FALSE(fs::exists(store.pause_file("prod")));
}

TEST_CASE("an idle list as long as its cap blocks the restart until it shrinks, and is logged once") {
  Production::Options options;
  Production prod(options);
  // The service lists at most 3 sessions: with 3 of other agents, leopard's may be cut off.
  write_file(prod.service_dir / "sessions.json", sessions({"tiger", "lynx", "puma"}));
  write_file(prod.config, read_file(prod.config) + "[target.idle]\ninterval = \"50ms\"\nquiet = \"200ms\"\n"
                                                   "[target.idle.http]\nurl = \"http://127.0.0.1:" +
                                                   std::to_string(prod.port) + "/status/data\"\n"
                                                   "pointer = \"/data/activeSessions\"\n"
                                                   "match = { field = \"agent\", equals = \"leopard\" }\ncap = 3\n");
  auto& daemon = prod.start_watching();
  const std::string sha = prod.commit("healthy");
  prod.stage_by_rename();
  const int capped = daemon.wait_for_line("lists 3 elements, as many as it ever lists (cap = 3)");
  REQUIRE(capped >= 0);
  // Idle would have held for `quiet` five times over: still no restart.
  CHECK(daemon.wait_for_line("restarting production", 1s, capped) < 0);
  CHECK(prod.restarts().size() == 1);

  write_file(prod.service_dir / "sessions.json", sessions({"tiger", "lynx"}));
  const int shorter = daemon.wait_for_line("the idle URL's list is shorter than its cap again", 10s, capped);
  REQUIRE(shorter >= 0);
  REQUIRE(daemon.wait_for_line("deployed " + short_sha(sha), 10s, shorter) >= 0);
  CHECK(daemon.count_lines("the agent counts as busy until the list is shorter") == 1);  // warned once
  CHECK(prod.restarts().size() == 2);
}
