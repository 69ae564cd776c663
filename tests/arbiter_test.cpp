// The precedence rules between deploys, cycles and recoveries, and the clocks they read, on a
// fake clock.
#include "arbiter.h"

#include <doctest/doctest.h>

using namespace sentinel;
using namespace std::chrono_literals;
using Action = Decision::Action;
using State = IdleAnswer::State;
using Clock = std::chrono::steady_clock;

namespace {

const Clock::time_point t0{};

/// Facts of a quiet moment: production healthy, the agent idle, nothing staged, no cycle due.
Facts calm() {
  Facts f;
  f.healthy = true;
  f.agent = State::idle;
  return f;
}

}  // namespace

TEST_CASE("the first cycle falls due `every` after start-up, not at start-up") {
  CycleSchedule schedule(2h, 0s, 1);
  schedule.start(t0);
  CHECK_FALSE(schedule.due(t0));
  CHECK_FALSE(schedule.due(t0 + 2h - 1ms));
  CHECK(schedule.due(t0 + 2h));
}

TEST_CASE("a cycle that could not start when due stays due until it starts, and is not doubled") {
  CycleSchedule schedule(2h, 0s, 1);
  schedule.start(t0);
  CHECK(schedule.due(t0 + 5h));  // two intervals passed while it was held off: still one cycle
  schedule.started(t0 + 5h);
  CHECK_FALSE(schedule.due(t0 + 5h + 1s));
  CHECK(schedule.next_due() == t0 + 7h);
}

TEST_CASE("jitter adds a random part of itself to each interval, reproducibly for a seed") {
  CycleSchedule a(1h, 10min, 42), b(1h, 10min, 42);
  a.start(t0);
  b.start(t0);
  CHECK(a.next_due() == b.next_due());
  for (int i = 0; i < 50; ++i) {
    a.started(t0);
    CHECK(a.next_due() >= t0 + 1h);
    CHECK(a.next_due() <= t0 + 1h + 10min);
  }
}

TEST_CASE("a cycle owed after a recovery is due at once and stands for the scheduled one") {
  CycleSchedule schedule(2h, 0s, 1);
  schedule.start(t0);
  schedule.owe();
  CHECK(schedule.due(t0 + 1min));
  schedule.started(t0 + 1min);
  CHECK_FALSE(schedule.owed());
  CHECK_FALSE(schedule.due(t0 + 2h));  // the scheduled one moved on: not run twice
  CHECK(schedule.due(t0 + 1min + 2h));
}

TEST_CASE("production is down after `failures` failed probes in a row, and back at the first healthy one") {
  HealthMonitor monitor(3, 3, 1h);
  CHECK(monitor.observe(false, "connection refused", t0) == HealthMonitor::Change::none);
  CHECK(monitor.observe(false, "connection refused", t0 + 1s) == HealthMonitor::Change::none);
  CHECK(monitor.observe(false, "HTTP 503", t0 + 2s) == HealthMonitor::Change::went_down);
  CHECK(monitor.down());
  CHECK(monitor.failing_since() == t0);
  CHECK(monitor.failed_probes() == 3);
  CHECK(monitor.last_reason() == "HTTP 503");
  CHECK(monitor.observe(false, "HTTP 503", t0 + 3s) == HealthMonitor::Change::none);  // logged once
  CHECK(monitor.observe(true, "HTTP 200", t0 + 4s) == HealthMonitor::Change::came_back);
  CHECK_FALSE(monitor.down());
}

TEST_CASE("a healthy probe between failures starts the count again") {
  HealthMonitor monitor(2, 3, 1h);
  monitor.observe(false, "timed out", t0);
  CHECK(monitor.observe(true, "HTTP 200", t0 + 1s) == HealthMonitor::Change::none);
  CHECK(monitor.observe(false, "timed out", t0 + 2s) == HealthMonitor::Change::none);
  CHECK_FALSE(monitor.down());
}

TEST_CASE("at most max_recoveries recoveries within the window; older ones no longer count") {
  HealthMonitor monitor(1, 2, 1h);
  CHECK(monitor.may_recover(t0));
  monitor.recovery_started(t0);
  CHECK(monitor.may_recover(t0 + 1min));
  monitor.recovery_started(t0 + 10min);
  CHECK_FALSE(monitor.may_recover(t0 + 20min));
  CHECK(monitor.may_recover(t0 + 1h));  // the first one left the window
}

TEST_CASE("quarantine stops everything, recovery included") {
  Facts f = calm();
  f.quarantined = true;
  f.production_down = true;
  f.deploy_pending = true;
  f.cycle_due = true;
  CHECK(decide(f).action == Action::wait);
}

TEST_CASE("a down production with nothing staged is recovered without waiting for idle") {
  Facts f = calm();
  f.production_down = true;
  f.agent = State::busy;
  f.cycle_due = true;
  const Decision d = decide(f);
  CHECK(d.action == Action::recover);
  CHECK(d.why.find("no cycle to protect") != std::string::npos);
}

TEST_CASE("a down production with a staged deploy is deployed at once, not restarted on the unrecorded commit") {
  Facts f = calm();
  f.production_down = true;
  f.deploy_pending = true;
  f.may_recover = false;  // the flap limit does not hold off a deploy that may be the fix
  CHECK(decide(f).action == Action::deploy_now);
}

TEST_CASE("too many recoveries within the window make the sentinel give up and alert") {
  Facts f = calm();
  f.production_down = true;
  f.may_recover = false;
  CHECK(decide(f).action == Action::give_up);
}

TEST_CASE("a staged deploy takes precedence over a cycle that is due") {
  Facts f = calm();
  f.deploy_pending = true;
  f.cycle_due = true;
  CHECK(decide(f).action == Action::deploy);
}

TEST_CASE("a cycle due while production is unhealthy waits") {
  Facts f = calm();
  f.cycle_due = true;
  f.healthy = false;
  CHECK(decide(f).action == Action::wait);
}

TEST_CASE("a cycle due while the agent is busy, or may be, waits") {
  Facts f = calm();
  f.cycle_due = true;
  f.agent = State::busy;
  CHECK(decide(f).action == Action::wait);
  f.agent = State::unknown;
  CHECK(decide(f).action == Action::wait);
}

TEST_CASE("before a cycle the health and then the agent are asked, in that order") {
  Facts f;
  f.cycle_due = true;
  CHECK(decide(f).action == Action::probe_health);
  f.healthy = true;
  CHECK(decide(f).action == Action::ask_agent);
  f.agent = State::idle;
  CHECK(decide(f).action == Action::start_cycle);
}

TEST_CASE("nothing due and nothing staged: wait, and ask nobody") {
  Facts f;
  CHECK(decide(f).action == Action::wait);
}

// ---- operator controls: pause, deploy window, min_interval ----

TEST_CASE("a pause holds a due cycle, and says who paused and why") {
  Facts f = calm();
  f.cycle_due = true;
  f.paused = "paused by ops@host until resumed: migration";
  const Decision d = decide(f);
  CHECK(d.action == Action::wait);
  CHECK(d.why == "cycle due, waiting: paused by ops@host until resumed: migration");
  f.cycle_due = false;
  CHECK(decide(f).why == "paused by ops@host until resumed: migration");
}

TEST_CASE("a staged deploy is claimed during a pause or outside the window, never left or dropped") {
  Facts f = calm();
  f.deploy_pending = true;
  f.paused = "paused by ops@host until resumed";
  f.deploy_held = "waiting for the deploy window: opens Tue 22:00 CET (in 5h 12m)";
  CHECK(decide(f).action == Action::deploy);
}

TEST_CASE("recovery of a down production ignores the pause") {
  Facts f = calm();
  f.production_down = true;
  f.paused = "paused by ops@host until resumed";
  CHECK(decide(f).action == Action::recover);
}

TEST_CASE("a claimed deploy restarts only when neither a pause nor the window nor min_interval holds it") {
  Facts f = calm();
  f.deploy_pending = true;
  CHECK(decide_restart(f).action == Action::deploy);
  f.deploy_held = "waiting for the deploy window: opens Tue 22:00 CET (in 5h 12m)";
  CHECK(decide_restart(f).action == Action::wait);
  CHECK(decide_restart(f).why == "waiting for the deploy window: opens Tue 22:00 CET (in 5h 12m)");
  // The pause is named first: resuming alone would not be enough, but it is what an operator set.
  f.paused = "paused by ops@host until resumed: migration";
  CHECK(decide_restart(f).why == "waiting: paused by ops@host until resumed: migration");
  f.deploy_held = "";
  CHECK(decide_restart(f).action == Action::wait);
}

TEST_CASE("a down production deploys its staged commit at once, outside the window and during a pause, and says so") {
  Facts f = calm();
  f.deploy_pending = true;
  f.production_down = true;
  f.deploy_held = "waiting for min_interval";
  f.paused = "paused by ops@host until resumed";
  const Decision d = decide_restart(f);
  CHECK(d.action == Action::deploy_now);
  CHECK(d.why == "production is down: deploying the staged commit now, ignoring the pause (paused by ops@host until "
                 "resumed) and waiting for min_interval (a down service is worse than an off-hours restart)");
  f.quarantined = true;
  CHECK(decide_restart(f).action == Action::wait);
}
