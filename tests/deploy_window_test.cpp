// The deploy window on a fake clock: within, before, after, past midnight, across both
// daylight-saving changes, and a list of days.

#include "config.h"
#include "deploy_window.h"

#include <date/date.h>
#include <doctest/doctest.h>

using namespace sentinel;
using namespace std::chrono;

namespace {

/// A UTC moment, as the fake clock.
system_clock::time_point utc(int y, unsigned m, unsigned d, int h, int min = 0, int s = 0) {
  return date::sys_days{date::year{y} / m / d} + hours(h) + minutes(min) + seconds(s);
}

WindowConfig window(std::string_view start, std::string_view end, std::string zone,
                    std::initializer_list<std::string_view> days = {}) {
  WindowConfig config;
  config.start = *parse_time_of_day(start);
  config.end = *parse_time_of_day(end);
  config.time_zone = std::move(zone);
  if (days.size() > 0) {
    config.days = 0;
    for (auto day : days) config.days |= 1u << *parse_weekday(day);
  }
  return config;
}

}  // namespace

TEST_CASE("a window of one day is open within it and shut before and after, saying when it changes") {
  const DeployWindow w(window("09:00", "17:00", "UTC"));
  const auto before = w.at(utc(2026, 12, 1, 8, 59, 59));
  CHECK_FALSE(before.open);
  CHECK(before.changes_at == utc(2026, 12, 1, 9));
  const auto within = w.at(utc(2026, 12, 1, 9));
  CHECK(within.open);
  CHECK(within.changes_at == utc(2026, 12, 1, 17));
  const auto after = w.at(utc(2026, 12, 1, 17));
  CHECK_FALSE(after.open);
  CHECK(after.changes_at == utc(2026, 12, 2, 9));
}

TEST_CASE("a window past midnight opens in the evening and stays open into the next morning") {
  // Mon-Fri 22:00 -> 05:00 in Berlin (CET, UTC+1, in December). 2026-12-01 is a Tuesday.
  const DeployWindow w(window("22:00", "05:00", "Europe/Berlin", {"mon", "tue", "wed", "thu", "fri"}));
  // Tuesday 03:00 local: the window that Monday opened.
  CHECK(w.at(utc(2026, 12, 1, 2)).open);
  CHECK(w.at(utc(2026, 12, 1, 2)).changes_at == utc(2026, 12, 1, 4));  // 05:00 CET
  // Tuesday noon: shut until 22:00 CET.
  const auto noon = w.at(utc(2026, 12, 1, 11));
  CHECK_FALSE(noon.open);
  CHECK(noon.changes_at == utc(2026, 12, 1, 21));
  CHECK(w.at(utc(2026, 12, 1, 21)).open);
  // Saturday 01:00 local belongs to Friday's window; Sunday 01:00 to no window (Saturday is not listed).
  CHECK(w.at(utc(2026, 12, 5, 0)).open);
  const auto sunday = w.at(utc(2026, 12, 6, 0));
  CHECK_FALSE(sunday.open);
  CHECK(sunday.changes_at == utc(2026, 12, 7, 21));  // Monday 22:00 CET
}

TEST_CASE("a day in the list names the day the window starts on") {
  // Only Friday: open from Friday 22:00 into Saturday 05:00, not from Thursday into Friday.
  const DeployWindow w(window("22:00", "05:00", "UTC", {"fri"}));
  CHECK_FALSE(w.at(utc(2026, 12, 4, 1)).open);   // Friday 01:00
  CHECK(w.at(utc(2026, 12, 4, 22)).open);        // Friday 22:00
  CHECK(w.at(utc(2026, 12, 5, 4, 59)).open);     // Saturday 04:59
  CHECK_FALSE(w.at(utc(2026, 12, 5, 5)).open);   // Saturday 05:00
  CHECK(w.at(utc(2026, 12, 5, 5)).changes_at == utc(2026, 12, 11, 22));
}

TEST_CASE("a start time that the spring change skips opens the window when the clocks jump") {
  // 2026-03-29 in Berlin: 02:00 CET becomes 03:00 CEST (01:00 UTC). 02:30 does not exist that night.
  const DeployWindow w(window("02:30", "04:00", "Europe/Berlin"));
  const auto before = w.at(utc(2026, 3, 29, 0, 59));
  CHECK_FALSE(before.open);
  CHECK(before.changes_at == utc(2026, 3, 29, 1));
  const auto open = w.at(utc(2026, 3, 29, 1));
  CHECK(open.open);
  CHECK(open.changes_at == utc(2026, 3, 29, 2));  // 04:00 CEST
  // The night before, in winter time, the same window is 01:30 to 03:00 UTC.
  CHECK(w.at(utc(2026, 3, 28, 1, 30)).open);
  CHECK(w.at(utc(2026, 3, 28, 1, 30)).changes_at == utc(2026, 3, 28, 3));
}

TEST_CASE("a window across the autumn change lasts an hour longer in real time") {
  // 2026-10-25 in Berlin: 03:00 CEST becomes 02:00 CET. 01:00 -> 04:00 local is 4 real hours.
  const DeployWindow w(window("01:00", "04:00", "Europe/Berlin"));
  const auto open = w.at(utc(2026, 10, 24, 23));  // 01:00 CEST
  CHECK(open.open);
  CHECK(open.changes_at == utc(2026, 10, 25, 3));  // 04:00 CET
  CHECK(w.at(utc(2026, 10, 25, 2, 30)).open);      // 02:30 CET, the second 02:30 of the night
  CHECK_FALSE(w.at(utc(2026, 10, 25, 3)).open);
  // An ambiguous start (02:30 happens twice) opens the first time.
  const DeployWindow twice(window("02:30", "03:30", "Europe/Berlin"));
  CHECK(twice.at(utc(2026, 10, 25, 0)).changes_at == utc(2026, 10, 25, 0, 30));  // 02:30 CEST
}

TEST_CASE("a window from a time to the same time is a whole day, and whole days in a row are one window") {
  const DeployWindow w(window("00:00", "00:00", "UTC", {"sat", "sun"}));
  const auto saturday = w.at(utc(2026, 12, 5, 10));
  CHECK(saturday.open);
  CHECK(saturday.changes_at == utc(2026, 12, 7, 0));  // closes Monday 00:00, not Sunday 00:00
  CHECK_FALSE(w.at(utc(2026, 12, 7, 0)).open);
}

TEST_CASE("a shut window says when it opens in its own zone and how long that is from now") {
  const DeployWindow w(window("22:00", "05:00", "Europe/Berlin", {"tue"}));
  // Tuesday 2026-12-01 16:48 CET (15:48 UTC): opens at 22:00 CET, 5h 12m later.
  CHECK(w.why_shut(utc(2026, 12, 1, 15, 48)) == "waiting for the deploy window: opens Tue 22:00 CET (in 5h 12m)");
  CHECK(w.why_shut(utc(2026, 12, 1, 21)) == "");
}

TEST_CASE("times of day and day names parse as people write them, and nothing else does") {
  CHECK(parse_time_of_day("22:00") == hours(22));
  CHECK(parse_time_of_day("05:00:30") == hours(5) + seconds(30));
  CHECK(parse_time_of_day("00:00") == seconds(0));
  CHECK_FALSE(parse_time_of_day("24:00"));
  CHECK_FALSE(parse_time_of_day("7:00"));
  CHECK_FALSE(parse_time_of_day("07:60"));
  CHECK_FALSE(parse_time_of_day("07-00"));
  CHECK(parse_weekday("mon") == 1u);
  CHECK(parse_weekday("Sunday") == 0u);
  CHECK(parse_weekday("SAT") == 6u);
  CHECK_FALSE(parse_weekday("mo"));
  CHECK_FALSE(parse_weekday("weekday"));
}
