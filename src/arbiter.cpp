#include "arbiter.h"

namespace sentinel {

using Action = Decision::Action;

CycleSchedule::CycleSchedule(Duration every, Duration jitter, std::uint64_t seed)
    : every_(every), jitter_(jitter), random_(seed) {}

CycleSchedule::Clock::time_point CycleSchedule::after(Clock::time_point t) {
  Duration extra{0};
  if (jitter_.count() > 0) {
    std::uniform_int_distribution<Duration::rep> pick(0, jitter_.count());
    extra = Duration(pick(random_));
  }
  return t + every_ + extra;
}

void CycleSchedule::start(Clock::time_point now) {
  next_ = after(now);
  owed_ = false;
}

void CycleSchedule::started(Clock::time_point now) {
  owed_ = false;
  next_ = after(now);
}

HealthMonitor::HealthMonitor(int failures, int max_recoveries, Duration window)
    : failures_(failures), max_recoveries_(max_recoveries), window_(window) {}

HealthMonitor::Change HealthMonitor::observe(bool healthy, const std::string& reason, Clock::time_point now) {
  if (healthy) {
    const bool was_down = down_;
    reset();
    return was_down ? Change::came_back : Change::none;
  }
  if (failed_ == 0) failing_since_ = now;
  ++failed_;
  last_reason_ = reason;
  if (!down_ && failed_ >= failures_) {
    down_ = true;
    return Change::went_down;
  }
  return Change::none;
}

bool HealthMonitor::may_recover(Clock::time_point now) {
  while (!recoveries_.empty() && now - recoveries_.front() >= window_) recoveries_.pop_front();
  return static_cast<int>(recoveries_.size()) < max_recoveries_;
}

void HealthMonitor::reset() {
  failed_ = 0;
  down_ = false;
  last_reason_.clear();
}

Decision decide(const Facts& f) {
  if (f.quarantined) return {Action::wait, "quarantined: remove .deploy-failed in the marker directory to go on"};
  if (f.production_down) {
    if (f.deploy_pending) {
      return {Action::deploy_now,
              "production is down: deploying the staged commit without waiting for idle (a dead service has no "
              "cycle to protect)"};
    }
    if (!f.may_recover) return {Action::give_up, "production is down and the recovery limit is reached"};
    return {Action::recover,
            "production is down: restarting it without waiting for idle (a dead service has no cycle to protect)"};
  }
  if (f.deploy_pending) return {Action::deploy, "a deploy is staged"};
  if (!f.paused.empty()) return {Action::wait, (f.cycle_due ? "cycle due, waiting: " : "") + f.paused};
  if (!f.cycle_due) return {Action::wait, "watching"};
  if (!f.healthy) return {Action::probe_health, "cycle due: checking health first"};
  if (!*f.healthy) return {Action::wait, "cycle due, waiting: production is not healthy"};
  if (!f.agent) return {Action::ask_agent, "cycle due: checking that the agent is idle"};
  if (*f.agent == IdleAnswer::State::busy) return {Action::wait, "cycle due, waiting: the agent is busy"};
  if (*f.agent == IdleAnswer::State::unknown) {
    return {Action::wait, "cycle due, waiting: cannot tell whether the agent is idle"};
  }
  return {Action::start_cycle, "cycle due, production healthy and the agent idle"};
}

Decision decide_restart(const Facts& f) {
  if (f.quarantined) return {Action::wait, "quarantined: remove .deploy-failed in the marker directory to go on"};
  if (f.production_down) {
    std::string ignoring;
    if (!f.paused.empty()) ignoring = "the pause (" + f.paused + ")";
    if (!f.deploy_held.empty()) ignoring += (ignoring.empty() ? "" : " and ") + f.deploy_held;
    return {Action::deploy_now,
            "production is down: deploying the staged commit now" +
                (ignoring.empty() ? std::string() : ", ignoring " + ignoring) +
                " (a down service is worse than an off-hours restart)"};
  }
  if (!f.paused.empty()) return {Action::wait, "waiting: " + f.paused};
  if (!f.deploy_held.empty()) return {Action::wait, f.deploy_held};
  return {Action::deploy, "nothing holds the restart"};
}

}  // namespace sentinel
