// libFuzzer target: parse_duration and format_duration on arbitrary bytes. Every input must give
// a non-negative duration or nullopt; formatting any duration must not fail.
#include "duration.h"
#include "fuzz_check.h"

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using sentinel::fuzz::expect;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  if (const std::optional<sentinel::Duration> parsed = sentinel::parse_duration(text)) {
    expect(parsed->count() >= 0, "a parsed duration is not negative");
    expect(!sentinel::format_duration(*parsed).empty(), "a duration formats as text");
  }
  // The raw bytes as a count of milliseconds, including negative ones and the extremes.
  if (size >= sizeof(sentinel::Duration::rep)) {
    sentinel::Duration::rep count;
    std::memcpy(&count, data, sizeof count);
    expect(!sentinel::format_duration(sentinel::Duration{count}).empty(), "any duration formats as text");
  }
  return 0;
}
