#pragma once
// When deploy restarts may start: the `[target.window]` of a target, in its time zone, with
// daylight-saving changes taken from the system's zoneinfo (Howard Hinnant's date library).
// Pure: the time is passed in, so every rule is tested on a fake clock.

#include <chrono>
#include <optional>
#include <string>
#include <string_view>

namespace date {
class time_zone;
}

namespace sentinel {

struct WindowConfig;

/// The time zone named `name` ("" = the system's local zone), or nullopt with `error` saying why
/// (an unknown name, no zoneinfo, no local zone set).
const date::time_zone* find_time_zone(std::string_view name, std::string& error);

/// "22:00" or "22:00:30" as seconds since midnight (00:00:00 to 23:59:59), or nullopt.
std::optional<std::chrono::seconds> parse_time_of_day(std::string_view text);

/// 0 (Sunday) to 6 for "sun".."sat" or "sunday".."saturday" (any case), or nullopt.
std::optional<unsigned> parse_weekday(std::string_view text);

/// A target's deploy window. A start time that a daylight-saving change skips opens the window
/// when the clocks jump (02:30 on the spring day opens at 03:00); one that happens twice opens it
/// the first time.
class DeployWindow {
 public:
  using TimePoint = std::chrono::system_clock::time_point;

  /// Throws StartupError when the config's time zone cannot be found (a config that loaded has
  /// been checked already).
  explicit DeployWindow(const WindowConfig& config);

  /// Whether the window is open at `now`, and when that changes: when open, the moment it closes
  /// (windows that touch count as one); when shut, the moment it next opens.
  struct State {
    bool open = false;
    TimePoint changes_at = TimePoint::max();
  };
  State at(TimePoint now) const;

  /// `t` as the window's zone shows it: "Tue 22:00 CET".
  std::string local_time(TimePoint t) const;
  /// "waiting for the deploy window: opens Tue 22:00 CET (in 5h 12m)" when shut at `now`, else "".
  std::string why_shut(TimePoint now) const;

 private:
  unsigned days_;
  std::chrono::seconds start_;
  std::chrono::seconds end_;
  const date::time_zone* zone_;
};

}  // namespace sentinel
