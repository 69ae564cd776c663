#pragma once
// Who gets production's time between a staged deploy, the agent's next cycle and a sick
// service: the precedence rules of one target, and the two clocks they read (the cycle
// schedule and the health monitor). Pure: facts and time are passed in, so every rule is
// tested on a fake clock; the deploy machine gathers the facts and carries out the decision.

#include "duration.h"
#include "idle_gate.h"

#include <chrono>
#include <cstdint>
#include <deque>
#include <optional>
#include <random>
#include <string>

namespace sentinel {

/// When the agent's next cycle falls due. The first comes `every` after start(); each one
/// after that `every` after the previous one started, plus a random part of `jitter`. A
/// recovery can owe one cycle, which is due at once and stands for any scheduled one that fell
/// due meanwhile: a cycle that cannot start when due stays due (never skipped, never doubled).
class CycleSchedule {
 public:
  using Clock = std::chrono::steady_clock;
  CycleSchedule(Duration every, Duration jitter, std::uint64_t seed);

  void start(Clock::time_point now);
  /// True when a cycle should start now, if the way is clear.
  bool due(Clock::time_point now) const { return owed_ || now >= next_; }
  /// When the next scheduled cycle falls due (an owed one is due already).
  Clock::time_point next_due() const { return next_; }
  /// Owes one cycle, to run once production is healthy (after a revert or a recovery).
  void owe() { owed_ = true; }
  bool owed() const { return owed_; }
  /// A cycle was started at `now`: it pays what was owed and schedules the next.
  void started(Clock::time_point now);

 private:
  Clock::time_point after(Clock::time_point t);

  Duration every_;
  Duration jitter_;
  std::mt19937_64 random_;
  Clock::time_point next_ = Clock::time_point::max();
  bool owed_ = false;
};

/// Production's health between deploys, from the monitor's probes: down after `failures`
/// failed probes in a row, up again at the first healthy one; and the flap limit of at most
/// `max_recoveries` recoveries within any `window`.
class HealthMonitor {
 public:
  using Clock = std::chrono::steady_clock;
  HealthMonitor(int failures, int max_recoveries, Duration window);

  enum class Change { none, went_down, came_back };
  /// Records one probe. `went_down` once when the failures reach the limit, `came_back` once
  /// at the first healthy probe after that.
  Change observe(bool healthy, const std::string& reason, Clock::time_point now);

  bool down() const { return down_; }
  /// The first failed probe of the current run of failures.
  Clock::time_point failing_since() const { return failing_since_; }
  int failed_probes() const { return failed_; }
  const std::string& last_reason() const { return last_reason_; }

  /// False once `max_recoveries` recoveries happened within the last `window`.
  bool may_recover(Clock::time_point now);
  void recovery_started(Clock::time_point now) { recoveries_.push_back(now); }
  /// Forgets the current run of failures (after a recovery brought production back).
  void reset();

 private:
  int failures_;
  int max_recoveries_;
  Duration window_;
  int failed_ = 0;
  bool down_ = false;
  Clock::time_point failing_since_{};
  std::string last_reason_;
  std::deque<Clock::time_point> recoveries_;
};

/// The facts of one moment, as the deploy machine has gathered them.
struct Facts {
  bool quarantined = false;     // `.deploy-failed` exists
  bool deploy_pending = false;  // `.deploy-ready` or `.deploy-in-progress` exists
  bool production_down = false; // the monitor says so
  bool may_recover = true;      // the flap limit is not reached
  bool cycle_due = false;
  std::optional<bool> healthy;              // nullopt: not probed just now
  std::optional<IdleAnswer::State> agent;   // nullopt: not asked just now
  std::string paused;       // an operator's pause in force ("paused by ops@host ...: reason"), or ""
  std::string deploy_held;  // why a deploy restart may not start yet (the window, min_interval), or ""
};

/// What to do now, and why in one sentence (for the log and `status`).
struct Decision {
  enum class Action {
    wait,          // nothing may happen now
    deploy,        // carry out the staged deploy (its idle gate decides when to restart)
    deploy_now,    // carry out the staged deploy without waiting for idle: production is down
    recover,       // restart production, then revert if that does not help
    give_up,       // too many recoveries: quarantine and alert
    probe_health,  // ask the health probe, then decide again
    ask_agent,     // ask the idle sources, then decide again
    start_cycle,
  };
  Action action = Action::wait;
  std::string why;
};

/// The precedence rules: quarantine stops everything; a down production is recovered first (by
/// its staged deploy when there is one, since restarting the checkout would deploy it
/// unrecorded); a staged deploy goes before the next cycle; a cycle starts only when production
/// is healthy and the agent idle, and not while the target is paused. A staged deploy is claimed
/// (`deploy`) whatever holds its restart: decide_restart() says when it may go.
Decision decide(const Facts& facts);

/// Whether a claimed deploy may restart production now: a down production goes at once (`deploy_now`:
/// recovery ignores the pause, the window and min_interval, since a down service is worse than an
/// off-hours restart); otherwise a pause, then the window or min_interval hold it (`wait`, with
/// the reason); else `deploy` (the idle gate, if any, comes next).
Decision decide_restart(const Facts& facts);

}  // namespace sentinel
