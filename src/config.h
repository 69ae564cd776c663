#pragma once
// The configuration file: what targets exist, how to restart, verify and revert them.

#include "duration.h"

#include <chrono>
#include <cstdint>
#include <cstddef>
#include <filesystem>
#include <optional>
#include <sys/types.h>
#include <utility>
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

/// `[target.health] confirm`: how a healthy probe is known to come from the process the restart
/// started, not from an old one that outlived it.
struct ConfirmConfig {
  enum class Kind {
    none,      // any healthy answer counts
    listener,  // the process listening on the URL's port must have started after the restart began
    pointer,   // the health JSON's value at `pointer` must be `equals`, with {commit} the deployed commit
  };
  Kind kind = Kind::none;
  std::string pointer;
  std::string equals;
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
  ConfirmConfig confirm;             // default: listener when `url` names a local address, else none
};

/// `[target.idle.http]`: GET `url`, read the JSON answer, find the array at `pointer`; the agent
/// is busy while any element has `match_field` equal to `match_equals` (any element at all when
/// no match is given). Unreachable, non-2xx or malformed answers are "unknown", never idle.
struct IdleHttpConfig {
  std::string url;
  std::string pointer;       // RFC 6901 JSON pointer, "" = the whole document
  std::string match_field;   // empty = every element counts
  std::string match_equals;
  /// The most elements the service ever lists (botical's /status/data lists at most 20 sessions,
  /// newest first): an array this long may have been cut short and is "unknown", never idle.
  std::optional<std::size_t> cap;
};

/// What a deploy waiting for idle does once it has waited `max_wait`.
enum class OnMaxWait { keep_waiting, deploy };

/// `[target.idle]`: the agent is idle when every configured source says so: `command` exits 0
/// (1 = busy, anything else = unknown), `http` lists no matching active session, and no lease
/// is held in `lease_file`. Idle must hold for `quiet` before a restart.
struct IdleConfig {
  std::vector<std::string> command;     // empty = no idle command
  std::optional<IdleHttpConfig> http;
  std::filesystem::path lease_file;     // empty = no lease; absolute otherwise
  Duration interval = 5s;               // between checks of command and http
  Duration quiet = 30s;
  Duration timeout = 30s;               // one run of the idle command or one HTTP request
  std::optional<Duration> max_wait;     // none = wait as long as it takes, silently
  OnMaxWait on_max_wait = OnMaxWait::keep_waiting;
};

/// `[target.cycle]`: how the sentinel starts the agent's improvement cycles.
struct CycleConfig {
  CommandSpec command;          // `command`, `timeout`, `kill_grace`
  Duration every = 2h;
  Duration jitter = 0s;         // each interval is `every` plus a random part of `jitter`
  bool after_recovery = true;   // one cycle once production is healthy after a revert or recovery
};

/// `[target.monitor]`: health between deploys, and what to do when production goes down.
struct MonitorConfig {
  Duration interval = 30s;      // between probes (each probe uses [target.health].timeout)
  int failures = 3;             // consecutive failed probes that make production "down"
  int max_recoveries = 3;       // recoveries allowed within `window`; one more quarantines
  Duration window = 1h;
};

/// `[target.window]`: when deploy restarts may start. A window opens at `start` (local time in
/// `time_zone`) on each of `days` and lasts until the next `end`, past midnight when `end` is not
/// after `start` (`start == end` is a whole day). Recovery of a down production ignores it.
struct WindowConfig {
  unsigned days = 0x7f;              // bit N = weekday N (0 = Sunday): the day a window starts on
  std::chrono::seconds start{0};     // since local midnight
  std::chrono::seconds end{0};
  std::string time_zone;             // IANA name; "" = the system's local zone
};

/// `[target.preflight]`: boot the staged commit once, sandboxed, on a copy of production's data,
/// before production is restarted onto it. `{port}` and `{data}` in `env` values, `health` and
/// `snapshot_command` stand for the shadow's port and its private data directory.
struct PreflightConfig {
  std::vector<std::string> command;                         // the service in the foreground, cwd = checkout
  std::vector<std::pair<std::string, std::string>> env;     // added to the target's env; placeholders allowed
  std::vector<std::filesystem::path> snapshot;              // copied whole into {data}
  std::vector<std::string> snapshot_command;                // or this, run before the start
  std::string health;                                       // http:// URL with {port}
  Duration timeout = 2s;                                    // one probe
  Duration grace = 1s;     // before the first probe, and between SIGTERM and SIGKILL when stopping it
  Duration interval = 500ms;
  int successes = 2;
  Duration deadline = 60s;  // from the shadow's start
  bool isolate = true;      // own network, PID and mount namespaces (bubblewrap)
};

/// `[target.hooks]`: programs run once per outcome, detached from the deploy (never awaited by it),
/// with DEPLOY_TARGET, DEPLOY_COMMIT, DEPLOY_PREVIOUS, DEPLOY_REASON (and DEPLOY_RESULT) in their
/// environment. Empty argv = no hook for that outcome.
struct HooksConfig {
  std::vector<std::string> on_deployed;
  std::vector<std::string> on_reverted;
  std::vector<std::string> on_failed;
  std::vector<std::string> on_recovered;
  Duration timeout = 30s;  // then its process group is killed (SIGTERM, SIGKILL 2 s later)
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
  std::optional<CycleConfig> cycle;  // none = the sentinel starts no cycles
  std::optional<MonitorConfig> monitor;  // none = health is checked only around deploys
  std::optional<PreflightConfig> preflight;  // none = production is restarted without a pre-flight
  /// `env`: added to (or replacing) the minimal environment every command of the target gets:
  /// PATH, HOME and LANG from the sentinel's own environment.
  std::vector<std::pair<std::string, std::string>> env;
  /// `allowed_owners`: uids whose markers are accepted; empty = the marker directory's owner and root.
  std::vector<uid_t> allowed_owners;
  std::optional<WindowConfig> window;    // none = deploys restart at any time
  Duration min_interval{0};              // between two deploy restarts (recovery exempt); 0 = none
  std::optional<HooksConfig> hooks;  // `[target.hooks]`
};

/// `[fleet]`: several sentinels, one per host, deploy the same service and share its restart
/// slots in etcd: at most `max_restarting` hosts of `group` restart at once, and a commit
/// reverted on one host is refused by the others.
struct EtcdEndpoint {
  std::string url;  // as written: "http://etcd-1.example:2379"
  bool tls = false; // https
  std::string host;
  std::uint16_t port = 2379;
};

struct FleetConfig {
  std::vector<EtcdEndpoint> etcd;  // endpoints of etcd's HTTP/JSON gateway, tried in turn
  std::string group;              // the service the hosts share; names the keys in etcd
  std::string host;               // this host in the group; default: the machine's host name
  int max_restarting = 1;
  Duration lease_ttl = 30s;       // a dead holder's slot frees itself this long after its last renewal
  Duration timeout = 5s;          // one request to etcd
  std::filesystem::path ca_file;    // https: the CA that signed etcd's certificate (default: the system's)
  std::filesystem::path cert_file;  // https: this host's client certificate and key, both or neither
  std::filesystem::path key_file;
};

/// The whole file.
struct Config {
  std::filesystem::path source;      // the file it was read from (absolute)
  std::filesystem::path state_dir;   // absolute
  std::string log_level = "info";    // trace, debug, info, warn, error, critical, off
  std::filesystem::path metrics_file;  // `[sentinel] metrics_file`: Prometheus text; empty = none
  std::vector<TargetConfig> targets;
  std::optional<FleetConfig> fleet;  // none = this sentinel deploys on its own

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
