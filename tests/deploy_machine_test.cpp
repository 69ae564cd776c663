// The deploy policy with scripted answers from the outside world, on real files in a temp dir.
#include "deploy_machine.h"
#include "marker.h"
#include "test_support.h"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/json.hpp>
#include <doctest/doctest.h>

#include <deque>
#include <fstream>
#include <functional>

using namespace sentinel;
using namespace std::chrono_literals;
using sentinel::test::TempDir;
namespace asio = boost::asio;
namespace fs = std::filesystem;

namespace {

const std::string kGood = "1111111111111111111111111111111111111111";
const std::string kBad = "2222222222222222222222222222222222222222";
const std::string kNext = "3333333333333333333333333333333333333333";

RunResult exited(int code) {
  RunResult r;
  r.end = RunResult::End::exited;
  r.code = code;
  r.tail = {"line from the command"};
  return r;
}

/// Answers like a checkout whose code decides its health: by default a commit is healthy
/// unless listed in `broken`. Everything asked is appended to `calls`.
struct ScriptedWorld final : TargetActions {
  std::string head_commit = kGood;
  std::vector<std::string> broken;
  std::deque<IdleAnswer::State> idle_answers;  // then idle forever
  std::deque<bool> probe_answers;              // overrides the broken list while non-empty
  std::string body;                            // every probe's answer body
  std::deque<int> restart_statuses;  // then 0
  int reset_status = 0;
  std::function<void()> during_restart;
  bool throw_on_restart = false;
  std::vector<std::string> calls;

  bool is_broken(const std::string& c) const { return std::find(broken.begin(), broken.end(), c) != broken.end(); }

  asio::awaitable<RunResult> restart(std::function<void()> on_started) override {
    calls.push_back("restart " + head_commit.substr(0, 4));
    if (std::exchange(throw_on_restart, false)) throw std::runtime_error("simulated internal error");
    on_started();
    if (during_restart) std::exchange(during_restart, nullptr)();
    int status = 0;
    if (!restart_statuses.empty()) {
      status = restart_statuses.front();
      restart_statuses.pop_front();
    }
    co_return exited(status);
  }
  asio::awaitable<RunResult> build() override {
    calls.push_back("build " + head_commit.substr(0, 4));
    co_return exited(0);
  }
  asio::awaitable<ProbeResult> probe() override {
    bool healthy = !is_broken(head_commit);
    if (!probe_answers.empty()) {
      healthy = probe_answers.front();
      probe_answers.pop_front();
    }
    calls.push_back(healthy ? "probe ok" : "probe bad");
    co_return ProbeResult{healthy, healthy ? "HTTP 200" : "HTTP 503", body};
  }
  asio::awaitable<IdleAnswer> idle() override {
    auto state = IdleAnswer::State::idle;
    if (!idle_answers.empty()) {
      state = idle_answers.front();
      idle_answers.pop_front();
    }
    calls.push_back(state == IdleAnswer::State::idle ? "idle" : "busy");
    co_return IdleAnswer{state, state == IdleAnswer::State::idle ? "idle" : "busy"};
  }
  Listeners listening{Listeners::Result::error, {}, {}, "not scripted"};
  Listeners listeners(std::uint16_t) override {
    calls.push_back("listeners");
    return listening;
  }
  int leases_held = 0;  // how many times permit_restart refuses before it grants
  RestartPermit permit_restart(bool ignore_lease) override {
    if (!ignore_lease && leases_held > 0) {
      --leases_held;
      calls.push_back("permit refused");
      return {false, "lease 'cycle 1' held", nullptr};
    }
    return {};
  }
  std::deque<int> cycle_statuses;  // then 0
  asio::awaitable<RunResult> start_cycle() override {
    calls.push_back("cycle");
    int status = 0;
    if (!cycle_statuses.empty()) {
      status = cycle_statuses.front();
      cycle_statuses.pop_front();
    }
    co_return exited(status);
  }
  asio::awaitable<HeadCommit> head() override { co_return HeadCommit{head_commit, {}}; }
  asio::awaitable<RunResult> reset_to(std::string commit) override {
    calls.push_back("reset " + commit.substr(0, 4));
    if (reset_status == 0) head_commit = commit;
    co_return exited(reset_status);
  }

  int count(const std::string& call) const { return static_cast<int>(std::count(calls.begin(), calls.end(), call)); }
};

/// An idle gate of one (scripted) idle command.
IdleConfig idle_config(Duration interval, Duration quiet) {
  IdleConfig idle;
  idle.command = {"agent-idle"};
  idle.interval = interval;
  idle.quiet = quiet;
  return idle;
}

/// One target with tiny durations, its marker and state directories, and a running machine.
struct Rig {
  TempDir tmp;
  TargetConfig target;
  StateStore store{tmp / "state"};
  ScriptedWorld world;
  asio::io_context ctx;
  std::shared_ptr<DeployMachine> machine;
  bool finished = false;  // run() returned

  Rig() {
    target.name = "prod";
    target.marker_dir = tmp / "markers";
    target.checkout = tmp.path();
    target.restart.argv = {"restart"};
    target.health.url = "http://127.0.0.1:1/health";
    target.health.grace = 0ms;
    target.health.interval = 1ms;
    target.health.successes = 2;
    target.health.deadline = 30ms;
    fs::create_directories(target.marker_dir);
    store.prepare({"prod"});
  }

  fs::path marker(std::string_view name) const { return target.marker_dir / name; }
  bool has(std::string_view name) const { return fs::exists(fs::symlink_status(marker(name))); }
  void stage(const std::string& text = "") { sentinel::test::write_file(marker(marker_file::ready), text); }

  void start() {
    machine = std::make_shared<DeployMachine>(target, store, world, ctx.get_executor());
    machine->set_retry_after(5ms);
    auto run = [](std::shared_ptr<DeployMachine> m) -> asio::awaitable<void> { co_await m->run(); };
    asio::co_spawn(ctx, run(machine), [this](std::exception_ptr e) {
      finished = true;
      if (e) std::rethrow_exception(e);
    });
  }

  /// Runs the loop until `done()` or 5 s; false on timeout.
  bool run_until(const std::function<bool()>& done) {
    const auto deadline = std::chrono::steady_clock::now() + 5s;
    while (!done()) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      ctx.run_one_for(10ms);
    }
    return true;
  }

  /// The machine has finished everything on disk and waits for news.
  bool settled() const {
    return machine->phase() == DeployMachine::Phase::watching && !has(marker_file::ready) &&
           !has(marker_file::in_progress);
  }

  boost::json::object json_of(std::string_view name) const {
    return boost::json::parse(sentinel::test::read_file(marker(name))).as_object();
  }
  std::string last_result() const {
    auto s = store.read_status("prod");
    return s && s->last_outcome ? s->last_outcome->result : "";
  }
};

}  // namespace

TEST_CASE("a staged deploy is restarted, verified and recorded as the known-good commit") {
  Rig rig;
  rig.store.set_known_good("prod", kGood);
  rig.world.head_commit = kNext;
  rig.stage();
  rig.start();
  REQUIRE(rig.run_until([&] { return rig.settled(); }));
  CHECK(rig.world.calls == std::vector<std::string>{"restart 3333", "probe ok", "probe ok"});
  CHECK(rig.store.known_good("prod") == kNext);
  CHECK(rig.last_result() == "deployed");
  CHECK_FALSE(rig.has(marker_file::reverted));
}

TEST_CASE("an unhealthy commit is reverted to the last known-good commit, rebuilt, and the agent is told why") {
  Rig rig;
  rig.target.build = CommandSpec{{"build"}};
  rig.store.set_known_good("prod", kGood);
  rig.world.head_commit = kBad;
  rig.world.broken = {kBad};
  rig.stage();
  rig.start();
  REQUIRE(rig.run_until([&] { return rig.settled() && rig.last_result() == "reverted"; }));
  const auto& calls = rig.world.calls;
  auto at = [&](const std::string& c) { return std::find(calls.begin(), calls.end(), c) - calls.begin(); };
  CHECK(at("restart 2222") < at("reset 1111"));
  CHECK(at("reset 1111") < at("build 1111"));
  CHECK(at("build 1111") < at("restart 1111"));
  CHECK(rig.world.count("probe bad") >= 1);
  auto reverted = rig.json_of(marker_file::reverted);
  CHECK(reverted["failed_commit"].as_string() == kBad);
  CHECK(reverted["reverted_to"].as_string() == kGood);
  CHECK(std::string(reverted["reason"].as_string()).find("not healthy within") != std::string::npos);
  CHECK(rig.store.known_good("prod") == kGood);
}

TEST_CASE("the revert goes to the recorded known-good commit, not to the commit before the broken one") {
  Rig rig;
  rig.store.set_known_good("prod", kGood);
  rig.world.head_commit = kBad;  // kNext was never deployed: HEAD~1 would be wrong
  rig.world.broken = {kBad, kNext};
  rig.stage();
  rig.start();
  REQUIRE(rig.run_until([&] { return rig.settled() && rig.last_result() == "reverted"; }));
  CHECK(rig.world.count("reset 1111") == 1);
  CHECK(rig.world.head_commit == kGood);
}

TEST_CASE("a restart command that fails counts as a failed deploy and is reverted without probing it") {
  Rig rig;
  rig.store.set_known_good("prod", kGood);
  rig.world.head_commit = kBad;
  rig.world.restart_statuses = {1};
  rig.stage();
  rig.start();
  REQUIRE(rig.run_until([&] { return rig.settled(); }));
  CHECK(rig.world.calls.front() == "restart 2222");
  CHECK(rig.world.calls.at(1) == "reset 1111");
  auto reverted = rig.json_of(marker_file::reverted);
  CHECK(std::string(reverted["reason"].as_string()) == "the restart command exited with status 1");
  CHECK(reverted["output"].as_array().size() == 1);
}

TEST_CASE("a flapping service is not healthy: successes must come in a row") {
  Rig rig;
  rig.store.set_known_good("prod", kGood);
  rig.world.head_commit = kNext;
  rig.target.health.successes = 3;
  rig.target.health.deadline = 40ms;
  rig.world.broken = {kNext};  // once the scripted flaps run out, it stays unhealthy
  rig.world.probe_answers = {true, false, true, true, false, true, false, true, true, false};
  rig.stage();
  rig.start();
  REQUIRE(rig.run_until([&] { return rig.settled() && rig.last_result() == "reverted"; }));
  CHECK(rig.world.count("restart 3333") == 1);
  CHECK(rig.world.count("reset 1111") == 1);
}

TEST_CASE("when the revert fails too the target is quarantined, and later markers wait until it is lifted") {
  Rig rig;
  rig.store.set_known_good("prod", kGood);
  rig.world.head_commit = kBad;
  rig.world.broken = {kBad};
  rig.world.reset_status = 128;
  rig.stage();
  rig.start();
  REQUIRE(rig.run_until([&] { return rig.machine->phase() == DeployMachine::Phase::quarantined; }));
  auto failed = rig.json_of(marker_file::failed);
  CHECK(failed["failed_commit"].as_string() == kBad);
  CHECK(std::string(failed["revert_error"].as_string()).find("git reset --hard") != std::string::npos);
  CHECK(rig.last_result() == "failed");
  CHECK_FALSE(rig.has(marker_file::in_progress));

  rig.world.reset_status = 0;
  rig.world.head_commit = kNext;
  rig.stage();
  rig.machine->poke();
  rig.ctx.poll();
  CHECK(rig.has(marker_file::ready));  // kept, not claimed, not lost
  CHECK(rig.world.count("restart 3333") == 0);

  fs::remove(rig.marker(marker_file::failed));
  rig.machine->poke();
  REQUIRE(rig.run_until([&] { return rig.settled(); }));
  CHECK(rig.world.count("restart 3333") == 1);
  CHECK(rig.last_result() == "deployed");
}

TEST_CASE("a target whose revert fails is still quarantined after the daemon restarts") {
  Rig rig;
  rig.store.set_known_good("prod", kGood);
  sentinel::test::write_file(rig.marker(marker_file::failed), "{}");
  rig.stage();
  rig.start();
  REQUIRE(rig.run_until([&] { return rig.machine->phase() == DeployMachine::Phase::quarantined; }));
  CHECK(rig.has(marker_file::ready));
  CHECK(rig.world.calls.empty());
}

TEST_CASE("a marker that arrives during a deploy is deployed after it, not lost") {
  Rig rig;
  rig.store.set_known_good("prod", kGood);
  rig.world.head_commit = kNext;
  rig.world.during_restart = [&] {
    rig.world.head_commit = kBad;  // the agent commits again and stages while we restart
    rig.stage("{\"commit\":\"" + kBad + "\"}");
    rig.machine->poke();
  };
  rig.stage();
  rig.start();
  REQUIRE(rig.run_until([&] { return rig.settled() && rig.world.count("restart 2222") == 1; }));
  CHECK(rig.store.known_good("prod") == kBad);
}

TEST_CASE("a marker naming another commit than HEAD is refused, moved aside, and the machine goes on") {
  Rig rig;
  rig.store.set_known_good("prod", kGood);
  rig.world.head_commit = kNext;
  rig.stage("{\"commit\":\"2222222\"}");
  rig.start();
  REQUIRE(rig.run_until([&] { return rig.has(marker_file::rejected) && rig.settled(); }));
  CHECK(rig.world.count("restart 3333") == 0);
  CHECK(rig.has(marker_file::rejected_marker));
  auto rejected = rig.json_of(marker_file::rejected);
  CHECK(std::string(rejected["reason"].as_string()).find("HEAD is " + kNext) != std::string::npos);

  rig.stage("{\"commit\":\"3333333\"}");  // an abbreviated SHA of HEAD is fine
  rig.machine->poke();
  REQUIRE(rig.run_until([&] { return rig.world.count("restart 3333") == 1 && rig.settled(); }));
}

TEST_CASE("no restart while the agent is busy; the restart comes after idle has held for quiet") {
  Rig rig;
  rig.store.set_known_good("prod", kGood);
  rig.world.head_commit = kNext;
  rig.target.idle = idle_config(1ms, 5ms);
  rig.world.idle_answers = {IdleAnswer::State::busy, IdleAnswer::State::idle, IdleAnswer::State::busy,
                            IdleAnswer::State::unknown, IdleAnswer::State::busy};
  rig.stage();
  rig.start();
  REQUIRE(rig.run_until([&] { return rig.settled(); }));
  const auto& calls = rig.world.calls;
  auto restart = std::find(calls.begin(), calls.end(), "restart 3333");
  REQUIRE(restart != calls.end());
  CHECK(std::count(calls.begin(), restart, "busy") == 4);  // unknown counts as busy
  CHECK(std::count(calls.begin(), restart, "idle") >= 3);  // idle twice in a row at least, then once more
  CHECK(*(restart - 1) == "idle");
  CHECK(*(restart - 2) == "idle");
}

TEST_CASE("a deploy left in progress by a previous run is resumed, not lost") {
  Rig rig;
  rig.store.set_known_good("prod", kGood);
  rig.world.head_commit = kNext;
  sentinel::test::write_file(rig.marker(marker_file::in_progress),
                             "{\"phase\":\"restarting\",\"commit\":\"" + kNext + "\",\"pid\":1}");
  rig.start();
  REQUIRE(rig.run_until([&] { return rig.settled(); }));
  CHECK(rig.world.count("restart 3333") == 1);
  CHECK(rig.store.known_good("prod") == kNext);
}

TEST_CASE("a healthy production at first start records HEAD as known-good, so the first bad deploy can revert") {
  Rig rig;
  rig.start();
  REQUIRE(rig.run_until([&] { return rig.machine->phase() == DeployMachine::Phase::watching; }));
  CHECK(rig.store.known_good("prod") == kGood);

  rig.world.head_commit = kBad;
  rig.world.broken = {kBad};
  rig.stage();
  rig.machine->poke();
  REQUIRE(rig.run_until([&] { return rig.settled() && rig.last_result() == "reverted"; }));
  CHECK(rig.world.head_commit == kGood);
}

TEST_CASE("with no known-good commit a failed deploy is quarantined with that reason instead of guessing") {
  Rig rig;
  rig.world.head_commit = kBad;
  rig.world.broken = {kBad};
  rig.stage();  // staged before the first start: HEAD may not be what runs
  rig.start();
  REQUIRE(rig.run_until([&] { return rig.machine->phase() == DeployMachine::Phase::quarantined; }));
  auto failed = rig.json_of(marker_file::failed);
  CHECK(std::string(failed["revert_error"].as_string()) == "no known-good commit exists to revert to");
  CHECK(rig.world.count("reset 1111") == 0);
}

TEST_CASE("a marker found while its writer is still writing it is given a moment, not refused as broken") {
  Rig rig;
  rig.store.set_known_good("prod", kGood);
  rig.world.head_commit = kNext;
  std::ofstream writer(rig.marker(marker_file::ready));
  writer << "{\"commit\": \"3333" << std::flush;  // found by the start-up scan, half written
  rig.start();
  REQUIRE(rig.run_until([&] { return rig.has(marker_file::in_progress); }));
  rig.ctx.poll();
  writer << "333\", \"message\": \"slow writer\"}" << std::flush;  // the same open file, now renamed
  writer.close();
  REQUIRE(rig.run_until([&] { return rig.settled(); }));
  CHECK_FALSE(rig.has(marker_file::rejected));
  CHECK(rig.world.count("restart 3333") == 1);
}

TEST_CASE("a truncated marker that nobody finishes writing is refused once it has settled") {
  Rig rig;
  rig.store.set_known_good("prod", kGood);
  sentinel::test::write_file(rig.marker(marker_file::ready), "{\"commit\": \"3333");
  rig.start();
  REQUIRE(rig.run_until([&] { return rig.has(marker_file::rejected) && rig.settled(); }));
  CHECK(rig.world.calls.empty());
}

namespace {

void write_record(Rig& rig, const std::string& phase, const std::string& commit, const std::string& extra = "") {
  sentinel::test::write_file(rig.marker(marker_file::in_progress),
                             "{\"phase\":\"" + phase + "\",\"commit\":\"" + commit +
                                 "\",\"previous_known_good\":\"" + kGood + "\",\"pid\":1" + extra + "}");
}

}  // namespace

TEST_CASE("a run that stopped while verifying verifies again without restarting production once more") {
  Rig rig;
  rig.store.set_known_good("prod", kGood);
  rig.world.head_commit = kNext;
  write_record(rig, "verifying", kNext);
  rig.start();
  REQUIRE(rig.run_until([&] { return rig.settled(); }));
  CHECK(rig.world.count("restart 3333") == 0);
  CHECK(rig.world.count("probe ok") == 2);
  CHECK(rig.store.known_good("prod") == kNext);
  CHECK(rig.last_result() == "deployed");
}

TEST_CASE("a run that stopped while verifying a broken commit reverts it after verifying again") {
  Rig rig;
  rig.store.set_known_good("prod", kGood);
  rig.world.head_commit = kBad;
  rig.world.broken = {kBad};
  write_record(rig, "verifying", kBad);
  rig.start();
  REQUIRE(rig.run_until([&] { return rig.settled() && rig.last_result() == "reverted"; }));
  CHECK(rig.world.count("restart 2222") == 0);
  CHECK(rig.world.count("restart 1111") == 1);
}

TEST_CASE("a run that stopped during a revert redoes the whole revert and still tells the agent why") {
  Rig rig;
  rig.target.build = CommandSpec{{"build"}};
  rig.store.set_known_good("prod", kGood);
  rig.world.head_commit = kBad;  // stopped before the reset happened
  rig.world.broken = {kBad};
  write_record(rig, "rebuilding", kBad, ",\"reason\":\"not healthy within 60s (last probe: HTTP 503)\"");
  rig.start();
  REQUIRE(rig.run_until([&] { return rig.settled() && rig.last_result() == "reverted"; }));
  CHECK(rig.world.calls == std::vector<std::string>{"reset 1111", "build 1111", "restart 1111", "probe ok", "probe ok"});
  auto reverted = rig.json_of(marker_file::reverted);
  CHECK(reverted["failed_commit"].as_string() == kBad);
  CHECK(reverted["reverted_to"].as_string() == kGood);
  CHECK(reverted["reason"].as_string() == "not healthy within 60s (last probe: HTTP 503)");
}

TEST_CASE("a deploy that was still waiting for idle when the run stopped waits for idle again") {
  Rig rig;
  rig.store.set_known_good("prod", kGood);
  rig.world.head_commit = kNext;
  rig.target.idle = idle_config(1ms, 2ms);
  rig.world.idle_answers = {IdleAnswer::State::busy};
  write_record(rig, "waiting-idle", kNext);
  rig.start();
  REQUIRE(rig.run_until([&] { return rig.settled(); }));
  CHECK(rig.world.calls.front() == "busy");
  CHECK(rig.world.count("restart 3333") == 1);
}

TEST_CASE("a stop requested while waiting for idle ends the run at once and keeps the deploy recorded") {
  Rig rig;
  rig.store.set_known_good("prod", kGood);
  rig.world.head_commit = kNext;
  rig.target.idle = idle_config(1h, 1h);  // would wait an hour
  rig.stage();
  rig.start();
  REQUIRE(rig.run_until([&] { return rig.machine->phase() == DeployMachine::Phase::waiting_idle; }));
  rig.machine->request_stop();
  REQUIRE(rig.run_until([&] { return rig.finished; }));
  CHECK(rig.world.count("restart 3333") == 0);
  CHECK(rig.json_of(marker_file::in_progress)["phase"].as_string() == "waiting-idle");
}

TEST_CASE("a stop requested while watching ends the run") {
  Rig rig;
  rig.store.set_known_good("prod", kGood);
  rig.start();
  REQUIRE(rig.run_until([&] { return rig.machine->phase() == DeployMachine::Phase::watching; }));
  rig.machine->request_stop();
  REQUIRE(rig.run_until([&] { return rig.finished; }));
}

TEST_CASE("an internal error does not stop the target for good: it starts over and resumes the deploy") {
  Rig rig;
  rig.store.set_known_good("prod", kGood);
  rig.world.head_commit = kNext;
  rig.world.throw_on_restart = true;
  rig.stage();
  rig.start();
  REQUIRE(rig.run_until([&] { return rig.settled() && rig.last_result() == "deployed"; }));
  CHECK(rig.world.count("restart 3333") == 2);  // the record said "restarting": restart once more
  CHECK_FALSE(rig.finished);
}

// ---- deploys, cycles and recoveries together ----

namespace {

MonitorConfig fast_monitor() {
  MonitorConfig monitor;
  monitor.interval = 1ms;
  monitor.failures = 2;
  return monitor;
}

CycleConfig cycle_every(Duration every) {
  CycleConfig cycle;
  cycle.command.argv = {"start-cycle"};
  cycle.every = every;
  return cycle;
}

/// The position of the first `call` in `calls` at or after `from`, or -1.
long find_call(const std::vector<std::string>& calls, const std::string& call, long from = 0) {
  auto it = std::find(calls.begin() + from, calls.end(), call);
  return it == calls.end() ? -1 : it - calls.begin();
}

}  // namespace

TEST_CASE("a deploy waiting for a busy agent goes at once when the monitor finds production down") {
  Rig rig;
  rig.store.set_known_good("prod", kGood);
  rig.world.head_commit = kNext;
  rig.target.idle = idle_config(1ms, 1h);
  rig.world.idle_answers.assign(100000, IdleAnswer::State::busy);
  rig.target.monitor = fast_monitor();
  rig.world.probe_answers = {true, false, false};  // then healthy: kNext is not broken
  rig.stage();
  rig.start();
  REQUIRE(rig.run_until([&] { return rig.world.count("restart 3333") == 1 && rig.settled(); }));
  CHECK(rig.last_result() == "deployed");
  CHECK(rig.world.count("restart 1111") == 0);  // not restarted on the checkout as a recovery
}

TEST_CASE("a staged deploy goes before a cycle that falls due, and the cycle follows it") {
  Rig rig;
  rig.store.set_known_good("prod", kGood);
  rig.world.head_commit = kNext;
  rig.target.cycle = cycle_every(1ms);
  rig.stage();
  rig.start();
  REQUIRE(rig.run_until([&] { return rig.world.count("cycle") >= 1; }));
  const long restart = find_call(rig.world.calls, "restart 3333");
  REQUIRE(restart >= 0);
  CHECK(find_call(rig.world.calls, "cycle") > restart);
}

TEST_CASE("a cycle due while the agent is busy waits, and starts once the agent is idle") {
  Rig rig;
  rig.store.set_known_good("prod", kGood);
  rig.target.idle = idle_config(1ms, 1h);
  rig.world.idle_answers = {IdleAnswer::State::busy, IdleAnswer::State::unknown, IdleAnswer::State::busy};
  rig.target.cycle = cycle_every(1ms);
  rig.start();
  REQUIRE(rig.run_until([&] { return rig.world.count("cycle") >= 1; }));
  const long cycle = find_call(rig.world.calls, "cycle");
  REQUIRE(cycle >= 2);
  CHECK(rig.world.calls[cycle - 1] == "idle");  // asked right before, and idle
  CHECK(rig.world.count("busy") == 3);          // each busy or unknown answer held it off
}

TEST_CASE("a cycle due while production is unhealthy waits until it is healthy") {
  Rig rig;
  rig.store.set_known_good("prod", kGood);
  rig.target.cycle = cycle_every(1ms);
  rig.world.probe_answers = {false, false};
  rig.start();
  REQUIRE(rig.run_until([&] { return rig.world.count("cycle") >= 1; }));
  const long cycle = find_call(rig.world.calls, "cycle");
  CHECK(rig.world.calls[cycle - 1] == "probe ok");
  CHECK(rig.world.count("probe bad") == 2);
}

TEST_CASE("after a reverted deploy one cycle starts once production is healthy") {
  Rig rig;
  rig.store.set_known_good("prod", kGood);
  rig.world.head_commit = kBad;
  rig.world.broken = {kBad};
  rig.target.cycle = cycle_every(1h);
  rig.stage();
  rig.start();
  REQUIRE(rig.run_until([&] { return rig.world.count("cycle") == 1; }));
  CHECK(rig.last_result() == "reverted");
  CHECK(find_call(rig.world.calls, "cycle") > find_call(rig.world.calls, "restart 1111"));
}

TEST_CASE("a down production is restarted, then reverted when the restart does not help") {
  Rig rig;
  rig.store.set_known_good("prod", kGood);
  rig.world.head_commit = kBad;  // committed, never staged, and broken
  rig.world.broken = {kBad};
  rig.target.monitor = fast_monitor();
  rig.target.cycle = cycle_every(1h);
  rig.world.probe_answers = {false, false};
  rig.start();
  REQUIRE(rig.run_until([&] { return rig.world.count("cycle") == 1; }));
  CHECK(rig.world.count("restart 2222") == 1);  // the recovery's restart, on the checkout as it is
  CHECK(rig.world.count("reset 1111") == 1);
  CHECK(rig.world.count("restart 1111") == 1);
  CHECK(rig.last_result() == "reverted");
  CHECK(rig.has(marker_file::reverted));
}

TEST_CASE("a production that keeps going down is quarantined after max_recoveries within the window") {
  Rig rig;
  rig.store.set_known_good("prod", kGood);
  rig.target.monitor = fast_monitor();
  rig.target.monitor->max_recoveries = 2;
  // Each recovery's restart verifies healthy (2 in a row), then production goes down again.
  rig.world.probe_answers = {false, false, true, true, false, false, true, true, false, false};
  rig.start();
  REQUIRE(rig.run_until([&] { return rig.has(marker_file::failed); }));
  CHECK(rig.world.count("restart 1111") == 2);
  CHECK(rig.last_result() == "failed");
  CHECK(rig.json_of(marker_file::failed).at("reason").as_string().find("flapping") != std::string::npos);
}

TEST_CASE("with on_max_wait = deploy a deploy that waited max_wait for a busy agent goes anyway") {
  Rig rig;
  rig.store.set_known_good("prod", kGood);
  rig.world.head_commit = kNext;
  rig.target.idle = idle_config(1ms, 1h);
  rig.target.idle->max_wait = 20ms;
  rig.target.idle->on_max_wait = OnMaxWait::deploy;
  rig.world.idle_answers.assign(100000, IdleAnswer::State::busy);
  rig.stage();
  rig.start();
  REQUIRE(rig.run_until([&] { return rig.world.count("restart 3333") == 1 && rig.settled(); }));
  CHECK(rig.last_result() == "deployed");
}

TEST_CASE("with on_max_wait = deploy a held lease still holds the restart off") {
  Rig rig;
  rig.store.set_known_good("prod", kGood);
  rig.world.head_commit = kNext;
  rig.target.idle = idle_config(1ms, 1h);
  rig.target.idle->max_wait = 1ms;
  rig.target.idle->on_max_wait = OnMaxWait::deploy;
  rig.world.idle_answers.assign(100000, IdleAnswer::State::busy);
  rig.world.leases_held = 5;  // the permit is refused five times, then granted
  rig.stage();
  rig.start();
  REQUIRE(rig.run_until([&] { return rig.world.count("restart 3333") == 1 && rig.settled(); }));
  CHECK(rig.world.count("permit refused") == 5);
  CHECK(find_call(rig.world.calls, "permit refused", 0) < find_call(rig.world.calls, "restart 3333"));
}

TEST_CASE("a cycle whose command fails stays due and is tried again, then waits for the next interval") {
  Rig rig;
  rig.store.set_known_good("prod", kGood);
  rig.world.head_commit = kBad;
  rig.world.broken = {kBad};
  rig.target.cycle = cycle_every(1h);
  rig.world.cycle_statuses = {22, 22};  // the agent's API answers 503 twice (curl -f exits 22)
  rig.stage();  // a revert owes one cycle
  rig.start();
  REQUIRE(rig.run_until([&] { return rig.world.count("cycle") == 3; }));
  CHECK(rig.last_result() == "reverted");
}

TEST_CASE("a due cycle held off by a busy agent waits the idle interval before asking again, not a tight loop") {
  Rig rig;
  rig.store.set_known_good("prod", kGood);
  rig.target.idle = idle_config(1h, 1h);
  rig.world.idle_answers.assign(100, IdleAnswer::State::busy);
  rig.target.cycle = cycle_every(1ms);
  rig.start();
  REQUIRE(rig.run_until([&] { return rig.world.count("busy") >= 1; }));
  for (int i = 0; i < 50; ++i) rig.ctx.run_one_for(1ms);  // 50 ms in which nothing is due
  CHECK(rig.world.count("busy") == 1);
  CHECK(rig.world.count("probe ok") == 1);
  CHECK(rig.world.count("cycle") == 0);
}

TEST_CASE("a listener whose owner cannot be seen three times in a row falls back to no confirmation, and the deploy goes on") {
  Rig rig;
  rig.store.set_known_good("prod", kGood);
  rig.world.head_commit = kNext;
  rig.target.health.confirm.kind = ConfirmConfig::Kind::listener;
  rig.world.listening = {Listeners::Result::hidden, {}, {42}, "permission denied reading /proc/7/fd"};
  rig.stage();
  rig.start();
  REQUIRE(rig.run_until([&] { return rig.world.count("restart 3333") == 1 && rig.settled(); }));
  CHECK(rig.last_result() == "deployed");
  CHECK(rig.world.count("listeners") == 3);  // three unseeable answers in a row, then given up for this target
  CHECK(rig.store.read_status("prod")->confirm.starts_with("none: cannot see which process listens on port 1"));
}

TEST_CASE("a socket held by pid 1 (socket activation) cannot tell old from new: fall back, deploy goes on") {
  Rig rig;
  rig.store.set_known_good("prod", kGood);
  rig.world.head_commit = kNext;
  rig.target.health.confirm.kind = ConfirmConfig::Kind::listener;
  rig.world.listening = {Listeners::Result::found, {{1, 5, "systemd"}}, {42}, ""};
  rig.stage();
  rig.start();
  REQUIRE(rig.run_until([&] { return rig.world.count("restart 3333") == 1 && rig.settled(); }));
  CHECK(rig.last_result() == "deployed");
  CHECK(rig.store.read_status("prod")->confirm.find("socket activation") != std::string::npos);
}

TEST_CASE("a listener that started before the restart makes the deploy fail and revert, naming its pid") {
  Rig rig;
  rig.store.set_known_good("prod", kGood);
  rig.world.head_commit = kNext;
  rig.target.health.confirm.kind = ConfirmConfig::Kind::listener;
  rig.world.listening = {Listeners::Result::found, {{4242, 1, "botical"}}, {42}, ""};  // started at boot
  rig.stage();
  rig.start();
  REQUIRE(rig.run_until([&] { return rig.has(marker_file::failed) || rig.last_result() == "reverted"; }));
  // The revert's restart is not confirmed either (the same old process): quarantined, saying why.
  CHECK(rig.has(marker_file::failed));
  const auto failed = rig.json_of(marker_file::failed);
  CHECK(std::string(failed.at("reason").as_string()).find("port 1 is still served by pid 4242 (botical)") !=
        std::string::npos);
  CHECK(std::string(failed.at("revert_error").as_string()).find("look at the process") != std::string::npos);
}

TEST_CASE("confirm by pointer: a health answer reporting another commit is not healthy") {
  Rig rig;
  rig.store.set_known_good("prod", kGood);
  rig.world.head_commit = kNext;
  rig.target.health.confirm = {ConfirmConfig::Kind::pointer, "/version", "{commit}"};
  rig.world.body = R"({"version":"1111111"})";  // the old commit, abbreviated
  rig.stage();
  rig.start();
  REQUIRE(rig.run_until([&] { return rig.last_result() == "reverted" && rig.settled(); }));
  CHECK(std::string(rig.json_of(marker_file::reverted).at("reason").as_string()).find(R"(/version is "1111111", not 333333333333)") != std::string::npos);
}

TEST_CASE("a new process beside an old owner of the socket (a child the old server forked) is not confirmed") {
  Rig rig;
  rig.store.set_known_good("prod", kGood);
  rig.world.head_commit = kNext;
  rig.target.health.confirm.kind = ConfirmConfig::Kind::listener;
  const unsigned long long after_boot_forever = ~0ULL >> 1;
  rig.world.listening = {Listeners::Result::found, {{4242, 1, "server"}, {5000, after_boot_forever, "server"}}, {42}, ""};
  rig.stage();
  rig.start();
  REQUIRE(rig.run_until([&] { return rig.has(marker_file::failed); }));
  CHECK(std::string(rig.json_of(marker_file::failed).at("reason").as_string()).find("still served by pid 4242") !=
        std::string::npos);
}

// ---- operator controls: pause, min_interval ----

namespace {

void pause(Rig& rig) {
  REQUIRE_FALSE(rig.store.write_pause("prod", Pause{"migration", "ops@host", "2026-12-01T09:00:00Z", ""}));
}

std::string status_detail(const Rig& rig) {
  auto s = rig.store.read_status("prod");
  return s ? s->detail : "";
}

}  // namespace

TEST_CASE("a pause holds a claimed deploy and a due cycle until it is removed, then both go") {
  Rig rig;
  rig.store.set_known_good("prod", kGood);
  rig.world.head_commit = kNext;
  rig.target.cycle = cycle_every(1ms);
  pause(rig);
  rig.stage();
  rig.start();
  REQUIRE(rig.run_until([&] { return rig.machine->phase() == DeployMachine::Phase::held; }));
  CHECK(rig.has(marker_file::in_progress));  // claimed, not lost
  CHECK(status_detail(rig) == "deploy of 333333333333 waiting: paused by ops@host at 2026-12-01T09:00:00Z until "
                              "resumed: migration");
  rig.ctx.run_for(30ms);  // nothing to wait for: the machine must simply not act
  CHECK(rig.world.calls.empty());

  fs::remove(rig.store.pause_file("prod"));
  rig.machine->poke();  // the daemon's inotify watch on the pause file does this
  REQUIRE(rig.run_until([&] { return rig.world.count("cycle") >= 1; }));
  CHECK(rig.last_result() == "deployed");
  CHECK(find_call(rig.world.calls, "restart 3333") < find_call(rig.world.calls, "cycle"));
}

TEST_CASE("a down production is recovered during a pause") {
  Rig rig;
  rig.store.set_known_good("prod", kGood);
  rig.target.monitor = fast_monitor();
  rig.target.cycle = cycle_every(1h);
  pause(rig);
  rig.world.probe_answers = {false, false};
  rig.start();
  REQUIRE(rig.run_until([&] { return rig.last_result() == "recovered"; }));
  CHECK(rig.world.count("restart 1111") == 1);
  rig.ctx.run_for(30ms);  // unpaused, the owed cycle would start within a few milliseconds
  CHECK(rig.world.count("cycle") == 0);  // the cycle owed after the recovery waits for the end of the pause
}

TEST_CASE("min_interval holds a deploy after a recent deploy restart and says until when") {
  Rig rig;
  rig.store.set_known_good("prod", kGood);
  rig.world.head_commit = kNext;
  rig.target.min_interval = 1h;
  REQUIRE_FALSE(rig.store.set_last_deploy_restart("prod", std::chrono::system_clock::now()));
  rig.stage();
  rig.start();
  REQUIRE(rig.run_until([&] { return rig.machine->phase() == DeployMachine::Phase::held; }));
  CHECK(status_detail(rig).find("deploy of 333333333333 waiting for min_interval (1h 00m between deploy restarts; "
                                "the last began at ") == 0);
  CHECK(rig.world.calls.empty());
}

TEST_CASE("a deploy restart records its time for min_interval, and a second deploy right after it waits") {
  Rig rig;
  rig.store.set_known_good("prod", kGood);
  rig.world.head_commit = kNext;
  rig.target.min_interval = 1h;
  rig.stage();
  rig.start();
  REQUIRE(rig.run_until([&] { return rig.last_result() == "deployed"; }));
  CHECK(rig.store.last_deploy_restart("prod").has_value());
  rig.stage();
  rig.machine->poke();
  REQUIRE(rig.run_until([&] { return rig.machine->phase() == DeployMachine::Phase::held; }));
  CHECK(rig.world.count("restart 3333") == 1);
}
