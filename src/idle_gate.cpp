#include "idle_gate.h"

namespace sentinel {

bool QuietTracker::observe(IdleAnswer::State state, Clock::time_point now) {
  if (state != IdleAnswer::State::idle) {
    idle_since_.reset();
    return false;
  }
  if (!idle_since_) idle_since_ = now;
  return now - *idle_since_ >= quiet_;
}

Duration QuietTracker::remaining(Clock::time_point now) const {
  if (!idle_since_) return quiet_;
  auto held = std::chrono::duration_cast<Duration>(now - *idle_since_);
  return held >= quiet_ ? Duration::zero() : quiet_ - held;
}

IdleAnswer idle_answer_from_exit(bool exited, int code, const std::string& description) {
  if (exited && code == 0) return {IdleAnswer::State::idle, "idle command says idle"};
  if (exited && code == 1) return {IdleAnswer::State::busy, "idle command says busy"};
  return {IdleAnswer::State::unknown, "idle command " + description + " (treated as busy)"};
}

}  // namespace sentinel
