#pragma once
// The configuration file: what targets exist, how to restart, verify and revert them.

#include "duration.h"

#include <filesystem>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace sentinel {

using namespace std::chrono_literals;

/// A start-up problem a user can act on (bad config, missing directory, no permission).
/// `main` prints `what()` and exits with `exit_code()`.
class StartupError : public std::runtime_error {
 public:
  explicit StartupError(const std::string& message, int exit_code = 1)
      : std::runtime_error(message), exit_code_(exit_code) {}
  int exit_code() const { return exit_code_; }

 private:
  int exit_code_;
};

/// A config file that cannot be used; the message is "FILE:LINE:COL: key: what to do".
/// Exit code 78 (EX_CONFIG).
class ConfigError : public StartupError {
 public:
  static constexpr int kExitCode = 78;
  explicit ConfigError(const std::string& message) : StartupError(message, kExitCode) {}
};

/// A program to run: argv (looked up in PATH like execvp, no shell) and how long it may take.
/// At `timeout` its process group gets SIGTERM, and SIGKILL `kill_grace` later.
struct CommandSpec {
  std::vector<std::string> argv;
  Duration timeout = 90s;
  Duration kill_grace = 5s;
};

/// `[target.health]`: exactly one of `url` (HTTP GET, 2xx = healthy) or `command` (exit 0).
struct HealthConfig {
  std::string url;                   // empty when `command` is used
  std::vector<std::string> command;  // empty when `url` is used
  Duration timeout = 2s;             // one probe
  Duration grace = 2s;               // before the first probe
  Duration interval = 1s;            // between probes
  int successes = 3;                 // consecutive healthy probes needed
  Duration deadline = 60s;           // from the end of the restart; not healthy by then = failed
};

/// `[target.idle]`: the agent is idle when `command` exits 0 (1 = busy, anything else = error,
/// treated as busy). Idle must hold for `quiet` before a restart.
struct IdleConfig {
  std::vector<std::string> command;
  Duration interval = 5s;
  Duration quiet = 30s;
  Duration timeout = 30s;  // one run of the idle command
};

/// One `[[target]]`: a production service with its marker directory and checkout.
struct TargetConfig {
  std::string name;
  std::filesystem::path marker_dir;  // absolute (relative paths are resolved against the config's dir)
  std::filesystem::path checkout;    // absolute; git work tree; working dir of every command
  CommandSpec restart;
  std::optional<CommandSpec> build;  // run after a revert, before the restart
  HealthConfig health;
  std::optional<IdleConfig> idle;    // none = always idle
};

/// The whole file.
struct Config {
  std::filesystem::path source;      // the file it was read from (absolute)
  std::filesystem::path state_dir;   // absolute
  std::string log_level = "info";    // trace, debug, info, warn, error, critical, off
  std::vector<TargetConfig> targets;

  /// The target named `name`, or nullptr.
  const TargetConfig* find_target(std::string_view name) const;
};

/// Reads and validates `path`. Throws ConfigError ("FILE:LINE:COL: key: message") for the first
/// problem found: a syntax error, an unknown key, a missing required key, a wrong type, a bad
/// duration, a duplicate target name. Does not touch the file system beyond reading `path`.
Config load_config(const std::filesystem::path& path);

/// The same for text already in memory; `source` names it in messages and anchors relative paths.
Config parse_config(std::string_view text, const std::filesystem::path& source);

}  // namespace sentinel
