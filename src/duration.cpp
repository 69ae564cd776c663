#include "duration.h"

#include <cstdint>
#include <limits>

namespace sentinel {

namespace {

using Rep = Duration::rep;

constexpr Rep kMillisPerSecond = 1000;
constexpr Rep kMillisPerMinute = 60 * kMillisPerSecond;
constexpr Rep kMillisPerHour = 60 * kMillisPerMinute;
constexpr Rep kMillisPerDay = 24 * kMillisPerHour;
constexpr Rep kMillisPerWeek = 7 * kMillisPerDay;

bool is_digit(char c) { return c >= '0' && c <= '9'; }

/// Milliseconds per one of `unit`, or nullopt for an unknown unit.
std::optional<Rep> millis_per_unit(std::string_view unit) {
  if (unit == "ms") return 1;
  if (unit == "s") return kMillisPerSecond;
  if (unit == "m") return kMillisPerMinute;
  if (unit == "h") return kMillisPerHour;
  if (unit == "d") return kMillisPerDay;
  if (unit == "w") return kMillisPerWeek;
  return std::nullopt;
}

std::string two_digits(std::uint64_t n) { return (n < 10 ? "0" : "") + std::to_string(n); }

}  // namespace

std::optional<Duration> parse_duration(std::string_view text) {
  constexpr Rep kMax = std::numeric_limits<Rep>::max();
  if (text.empty()) return std::nullopt;

  Rep total = 0;
  std::size_t i = 0;
  while (i < text.size()) {
    if (!is_digit(text[i])) return std::nullopt;
    Rep count = 0;
    for (; i < text.size() && is_digit(text[i]); ++i) {
      const Rep digit = text[i] - '0';
      if (count > (kMax - digit) / 10) return std::nullopt;
      count = count * 10 + digit;
    }

    const std::size_t unit_begin = i;
    while (i < text.size() && !is_digit(text[i])) ++i;
    const std::optional<Rep> unit = millis_per_unit(text.substr(unit_begin, i - unit_begin));
    if (!unit) return std::nullopt;

    if (count > kMax / *unit) return std::nullopt;
    const Rep part = count * *unit;
    if (total > kMax - part) return std::nullopt;
    total += part;
  }
  return Duration{total};
}

std::string format_duration(Duration d) {
  const bool negative = d.count() < 0;
  // Computed on the magnitude as unsigned so that the most negative value has one too.
  const std::uint64_t ms =
      negative ? 0 - static_cast<std::uint64_t>(d.count()) : static_cast<std::uint64_t>(d.count());
  const std::string sign = negative ? "-" : "";

  if (ms < kMillisPerSecond) return sign + std::to_string(ms) + "ms";
  if (ms < kMillisPerMinute) {
    const std::uint64_t seconds = ms / kMillisPerSecond;
    const std::uint64_t tenths = ms % kMillisPerSecond / 100;
    if (tenths == 0) return sign + std::to_string(seconds) + "s";
    return sign + std::to_string(seconds) + "." + std::to_string(tenths) + "s";
  }
  if (ms < kMillisPerHour) {
    return sign + std::to_string(ms / kMillisPerMinute) + "m " +
           two_digits(ms % kMillisPerMinute / kMillisPerSecond) + "s";
  }
  if (ms < kMillisPerDay) {
    return sign + std::to_string(ms / kMillisPerHour) + "h " +
           two_digits(ms % kMillisPerHour / kMillisPerMinute) + "m";
  }
  return sign + std::to_string(ms / kMillisPerDay) + "d " +
         std::to_string(ms % kMillisPerDay / kMillisPerHour) + "h";
}

}  // namespace sentinel
