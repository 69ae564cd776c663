#pragma once
// Is the agent idle? The answer of one check, and the "idle continuously for `quiet`" rule.

#include "duration.h"

#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <cstddef>
#include <optional>
#include <string>
#include <vector>

namespace sentinel {

struct HttpAnswer;      // health_probe.h
struct IdleHttpConfig;  // config.h

/// One answer of an idle source.
struct IdleAnswer {
  enum class State { idle, busy, unknown };
  State state = State::unknown;
  std::string reason;  // what a user can act on: "idle command says busy",
                       // "1 active session of agent=leopard (http://...)", "... (treated as busy)"
  bool capped = false;  // the idle URL's list was as long as its cap: it may have been cut short
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

/// The largest idle-URL answer read; a longer one is unknown, never truncated and parsed.
inline constexpr std::size_t kIdleHttpBodyLimit = 1024 * 1024;

/// Reads the idle URL's answer as `config` says (see IdleHttpConfig): busy while the array at
/// `config.pointer` holds an object whose `match_field` equals `match_equals` (a number or
/// bool member is compared by its JSON text, e.g. "3" or "true"), or any element at all when
/// `match_field` is empty; idle when no element matches. Unknown (with a reason naming the
/// URL and the problem) for a failed request, a non-2xx status, a body that is not JSON, a
/// pointer that is not valid, leads nowhere or to something other than an array; unknown and
/// `capped` as well for an array of `config.cap` or more elements none of which matches (the
/// service may have left a busy session out). Pure.
IdleAnswer idle_answer_from_http(const HttpAnswer& answer, const IdleHttpConfig& config);

/// GETs `config.url` (at most `kIdleHttpBodyLimit` bytes, within `timeout`) and answers as
/// `idle_answer_from_http`; a URL that is not plain http:// is unknown. Never throws for
/// network failures. `config` is taken by value so the coroutine owns it.
boost::asio::awaitable<IdleAnswer> check_idle_http(IdleHttpConfig config, Duration timeout);

/// The agent's state from every idle source's answer: idle only when all are idle (no answers
/// = idle, "no idle source configured"); else busy when any is busy, with the busy reasons
/// joined by "; "; else unknown, with the unknown reasons joined by "; ".
IdleAnswer combine_idle(const std::vector<IdleAnswer>& answers);

}  // namespace sentinel
