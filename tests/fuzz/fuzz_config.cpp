// libFuzzer target: parse_config on arbitrary bytes, as a mistyped or damaged config file (or a
// SIGHUP reload of one) hands them over. A ConfigError is the expected answer to bad input; any
// other exception, a crash, a sanitizer report, a hang or runaway memory is a bug.
#include "config.h"
#include "fuzz_check.h"

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace {

using sentinel::fuzz::expect;

constexpr std::string_view kSource = "/etc/deploy-sentinel/fuzz.toml";

/// True for "FILE:LINE:COL: ..." with this file and a line and column from 1.
bool names_a_position(std::string_view message) {
  if (!message.starts_with(kSource) || !message.substr(kSource.size()).starts_with(':')) return false;
  message.remove_prefix(kSource.size() + 1);
  for (int field = 0; field < 2; ++field) {
    std::size_t digits = 0;
    while (digits < message.size() && message[digits] >= '0' && message[digits] <= '9') ++digits;
    if (digits == 0 || message[0] == '0' || digits == message.size() || message[digits] != ':') return false;
    message.remove_prefix(digits + 1);
  }
  return message.starts_with(' ');
}

/// Deadlines are now() plus a duration in 64-bit nanoseconds: a century leaves room either way.
constexpr sentinel::Duration kLongest = std::chrono::days(36500);

bool fits_the_clocks(sentinel::Duration d) { return d.count() >= 0 && d <= kLongest; }

void check_command(const sentinel::CommandSpec& spec) {
  expect(!spec.argv.empty() && !spec.argv.front().empty(), "a command has a program");
  expect(spec.timeout.count() > 0, "a command's timeout is longer than zero");
  expect(fits_the_clocks(spec.timeout) && fits_the_clocks(spec.kill_grace), "a command's durations fit the clocks");
}

void check_config(const sentinel::Config& config) {
  expect(config.source.is_absolute() && config.state_dir.is_absolute(), "the config's paths are absolute");
  expect(!config.targets.empty(), "a config has a target");
  for (const sentinel::TargetConfig& target : config.targets) {
    expect(!target.name.empty() && target.name.size() <= 64 && target.name != "." && target.name != ".." &&
               target.name.find('/') == std::string::npos,
           "a target name can be used as a file name");
    expect(target.marker_dir.is_absolute() && target.checkout.is_absolute(), "a target's paths are absolute");
    check_command(target.restart);
    if (target.build) check_command(*target.build);
    const sentinel::HealthConfig& health = target.health;
    expect(health.url.empty() != health.command.empty(), "health has a url or a command, not both");
    expect(health.successes >= 1 && health.timeout.count() > 0 && health.interval.count() > 0 &&
               health.deadline.count() > 0 && health.grace.count() >= 0,
           "health timings are usable");
    expect(fits_the_clocks(health.timeout) && fits_the_clocks(health.interval) && fits_the_clocks(health.deadline) &&
               fits_the_clocks(health.grace),
           "health durations fit the clocks");
    if (target.idle) {
      expect(!target.idle->command.empty() || target.idle->http || !target.idle->lease_file.empty(),
             "idle has a source");
      const sentinel::IdleConfig& idle = *target.idle;
      expect(idle.interval.count() > 0 && idle.timeout.count() > 0, "idle timings are usable");
      expect(fits_the_clocks(idle.interval) && fits_the_clocks(idle.timeout) && fits_the_clocks(idle.quiet) &&
                 (!idle.max_wait || fits_the_clocks(*idle.max_wait)),
             "idle durations fit the clocks");
    }
    if (target.cycle) {
      check_command(target.cycle->command);
      expect(target.cycle->every.count() > 0, "a cycle has a period");
      expect(fits_the_clocks(target.cycle->every) && fits_the_clocks(target.cycle->jitter),
             "cycle durations fit the clocks");
    }
    if (target.monitor) {
      expect(target.monitor->failures >= 1 && target.monitor->max_recoveries >= 1 &&
                 target.monitor->interval.count() > 0,
             "monitor settings are usable");
      expect(fits_the_clocks(target.monitor->interval) && fits_the_clocks(target.monitor->window),
             "monitor durations fit the clocks");
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    check_config(sentinel::parse_config(text, std::string(kSource)));
  } catch (const sentinel::ConfigError& error) {
    expect(names_a_position(error.what()), "a config error starts with FILE:LINE:COL:");
    expect(sentinel::fuzz::is_one_printable_line(error.what()),
           "a config error is one printable line (a reload that fails logs it as one line)");
  }
  return 0;
}
