#pragma once
// Durations as people write them in the config: "500ms", "30s", "10m", "2h", "1h30m", "2w".

#include <chrono>
#include <optional>
#include <string>
#include <string_view>

namespace sentinel {

using Duration = std::chrono::milliseconds;

/// Parses a non-negative duration made of one or more `<integer><unit>` parts, unit one of
/// ms, s, m, h, d, w ("1h30m", "250ms", "2w"). Returns nullopt for anything else (empty text, a bare
/// number, an unknown unit, overflow); never throws.
std::optional<Duration> parse_duration(std::string_view text);

/// Formats a duration the way the log and status show it: "850ms", "1.2s", "4m 05s", "2h 10m".
std::string format_duration(Duration d);

}  // namespace sentinel
