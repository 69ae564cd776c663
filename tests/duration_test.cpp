#include "duration.h"

#include <doctest/doctest.h>

#include <limits>

namespace sentinel {
namespace {

using namespace std::chrono_literals;

TEST_CASE("each unit parses on its own") {
  CHECK(parse_duration("250ms") == 250ms);
  CHECK(parse_duration("30s") == 30s);
  CHECK(parse_duration("10m") == 10min);
  CHECK(parse_duration("2h") == 2h);
  CHECK(parse_duration("1d") == 24h);
  CHECK(parse_duration("2w") == 14 * 24h);
}

TEST_CASE("parts combine into one duration") {
  CHECK(parse_duration("1h30m") == 90min);
  CHECK(parse_duration("1d2h3m4s5ms") == 24h + 2h + 3min + 4s + 5ms);
  CHECK(parse_duration("1m30s") == 90s);
}

TEST_CASE("zero and leading zeros are accepted") {
  CHECK(parse_duration("0s") == 0ms);
  CHECK(parse_duration("05s") == 5s);
}

TEST_CASE("text that is not a duration is rejected") {
  for (const char* text : {"", "5", "s", "ms", "5 s", " 5s", "5s ", "1h 30m", "-5s", "+5s", "1.5s",
                           "5S", "5sec", "5mm", "5x", "h1", "1h30", "5s-"}) {
    CAPTURE(text);
    CHECK_FALSE(parse_duration(text).has_value());
  }
}

TEST_CASE("a duration too long for the clock is rejected, not wrapped") {
  const auto max = std::numeric_limits<Duration::rep>::max();
  CHECK(parse_duration(std::to_string(max) + "ms") == Duration{max});
  CHECK_FALSE(parse_duration("9223372036854775808ms").has_value());
  CHECK_FALSE(parse_duration("99999999999999999999999s").has_value());
  CHECK_FALSE(parse_duration("106751991168d").has_value());
  CHECK_FALSE(parse_duration(std::to_string(max) + "ms1ms").has_value());
}

TEST_CASE("under a second is shown in milliseconds") {
  CHECK(format_duration(0ms) == "0ms");
  CHECK(format_duration(850ms) == "850ms");
  CHECK(format_duration(999ms) == "999ms");
}

TEST_CASE("under a minute is shown in seconds with one decimal, or whole when it has none") {
  CHECK(format_duration(1s) == "1s");
  CHECK(format_duration(1200ms) == "1.2s");
  CHECK(format_duration(1299ms) == "1.2s");
  CHECK(format_duration(1050ms) == "1s");
  CHECK(format_duration(30s) == "30s");
  CHECK(format_duration(59999ms) == "59.9s");
}

TEST_CASE("under an hour is shown in minutes and two-digit seconds") {
  CHECK(format_duration(1min) == "1m 00s");
  CHECK(format_duration(4min + 5s) == "4m 05s");
  CHECK(format_duration(4min + 5s + 999ms) == "4m 05s");
  CHECK(format_duration(59min + 59s) == "59m 59s");
}

TEST_CASE("under a day is shown in hours and two-digit minutes") {
  CHECK(format_duration(1h) == "1h 00m");
  CHECK(format_duration(2h + 10min) == "2h 10m");
  CHECK(format_duration(2h + 5min + 59s) == "2h 05m");
}

TEST_CASE("a day or more is shown in days and hours") {
  CHECK(format_duration(24h) == "1d 0h");
  CHECK(format_duration(3 * 24h + 4h) == "3d 4h");
  CHECK(format_duration(400 * 24h + 23h + 59min) == "400d 23h");
}

TEST_CASE("a negative duration is shown with a minus sign") {
  CHECK(format_duration(-850ms) == "-850ms");
  CHECK(format_duration(-1500ms) == "-1.5s");
  CHECK(format_duration(Duration::min()).starts_with("-"));
}

}  // namespace
}  // namespace sentinel
