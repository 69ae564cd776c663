#include "deploy_window.h"

#include "config.h"
#include "duration.h"

#include <date/tz.h>

#include <algorithm>
#include <array>
#include <cctype>

namespace sentinel {

using namespace std::chrono;

const date::time_zone* find_time_zone(std::string_view name, std::string& error) {
  try {
    if (name.empty()) return date::current_zone();
    return date::locate_zone(name);
  } catch (const std::exception& e) {
    error = e.what();
    return nullptr;
  }
}

std::optional<seconds> parse_time_of_day(std::string_view text) {
  // HH:MM or HH:MM:SS, two digits each.
  if (text.size() != 5 && text.size() != 8) return std::nullopt;
  auto two = [&](std::size_t at) -> std::optional<int> {
    if (!std::isdigit(static_cast<unsigned char>(text[at])) || !std::isdigit(static_cast<unsigned char>(text[at + 1]))) {
      return std::nullopt;
    }
    return (text[at] - '0') * 10 + (text[at + 1] - '0');
  };
  const auto h = two(0), m = two(3);
  std::optional<int> s = 0;
  if (text[2] != ':') return std::nullopt;
  if (text.size() == 8) {
    if (text[5] != ':') return std::nullopt;
    s = two(6);
  }
  if (!h || !m || !s || *h > 23 || *m > 59 || *s > 59) return std::nullopt;
  return hours(*h) + minutes(*m) + seconds(*s);
}

std::optional<unsigned> parse_weekday(std::string_view text) {
  static constexpr std::array<std::string_view, 7> kNames{"sunday", "monday", "tuesday", "wednesday",
                                                          "thursday", "friday", "saturday"};
  std::string lower(text);
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
  for (unsigned i = 0; i < kNames.size(); ++i) {
    if (lower == kNames[i] || lower == kNames[i].substr(0, 3)) return i;
  }
  return std::nullopt;
}

DeployWindow::DeployWindow(const WindowConfig& config)
    : days_(config.days), start_(config.start), end_(config.end) {
  std::string error;
  zone_ = find_time_zone(config.time_zone, error);
  if (zone_ == nullptr) {
    throw StartupError("time zone " + (config.time_zone.empty() ? std::string("of this system") : config.time_zone) +
                       ": " + error);
  }
}

DeployWindow::State DeployWindow::at(TimePoint now) const {
  const auto today = floor<days>(zone_->to_local(floor<seconds>(now)));
  // A window lasts at most a day (and an hour, across a daylight-saving change): one that began
  // two local days ago has ended; a week ahead holds every day of the list.
  const seconds length = end_ > start_ ? end_ - start_ : days(1) - start_ + end_;
  State state;
  for (int d = -2; d <= 8; ++d) {
    const date::local_days day = today + days(d);
    if ((days_ & (1u << date::weekday(day).c_encoding())) == 0) continue;
    const auto opens = zone_->to_sys(day + start_, date::choose::earliest);
    const auto closes = zone_->to_sys(day + start_ + length, date::choose::earliest);
    if (state.open) {
      if (opens > state.changes_at) break;  // a gap: the window closes at changes_at
      state.changes_at = std::max<TimePoint>(state.changes_at, closes);
      continue;
    }
    if (now < opens) return State{false, opens};
    if (now < closes) state = State{true, closes};
  }
  return state;
}

std::string DeployWindow::local_time(TimePoint t) const {
  const auto at = date::make_zoned(zone_, floor<seconds>(t));
  const bool whole_minute = floor<minutes>(at.get_local_time()) == at.get_local_time();
  return date::format(whole_minute ? "%a %H:%M %Z" : "%a %H:%M:%S %Z", at);
}

std::string DeployWindow::why_shut(TimePoint now) const {
  const State state = at(now);
  if (state.open) return "";
  if (state.changes_at == TimePoint::max()) return "waiting for the deploy window: it never opens (no day listed)";
  const auto in = ceil<seconds>(state.changes_at - now);
  return "waiting for the deploy window: opens " + local_time(state.changes_at) + " (in " +
         format_duration(duration_cast<Duration>(in)) + ")";
}

}  // namespace sentinel
