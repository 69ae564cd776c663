#pragma once
// Is the agent idle? The answer of one check, and the "idle continuously for `quiet`" rule.

#include "duration.h"

#include <chrono>
#include <optional>
#include <string>

namespace sentinel {

/// One answer of an idle source.
struct IdleAnswer {
  enum class State { idle, busy, unknown };
  State state = State::unknown;
  std::string reason;  // "idle command exited 0", "idle command exited 1", "idle command timed out ..."
};

/// Decides when the agent has been idle long enough: idle must be seen continuously for
/// `quiet`; any busy or unknown answer starts the count again. Pure: time is passed in.
class QuietTracker {
 public:
  using Clock = std::chrono::steady_clock;
  explicit QuietTracker(Duration quiet) : quiet_(quiet) {}

  /// Records an answer seen at `now`; true when idle has now held for at least `quiet`.
  bool observe(IdleAnswer::State state, Clock::time_point now);
  /// Since when the agent has been idle without a break, if it is.
  std::optional<Clock::time_point> idle_since() const { return idle_since_; }
  /// How much longer idle must hold from `now` (zero when enough).
  Duration remaining(Clock::time_point now) const;

 private:
  Duration quiet_;
  std::optional<Clock::time_point> idle_since_;
};

/// Maps the idle command's exit status to an answer: 0 idle, 1 busy, anything else unknown.
IdleAnswer idle_answer_from_exit(bool exited, int code, const std::string& description);

}  // namespace sentinel
