#pragma once
// Pre-flight: boot the staged commit once, sandboxed beside production on a copy of its data,
// and probe it, before production is restarted onto it.

#include "config.h"
#include "duration.h"

#include <boost/asio/awaitable.hpp>

#include <filesystem>
#include <functional>
#include <string>
#include <sys/types.h>
#include <utility>
#include <vector>

namespace sentinel {

/// One pre-flight of one target's checkout.
struct PreflightRun {
  const PreflightConfig* config = nullptr;
  std::string commit;                   // for the log
  std::string target;                   // names {data}: <state_dir>/preflight/<target>-XXXXXX
  std::filesystem::path checkout;       // the shadow's working directory
  std::filesystem::path state_dir;
  std::vector<std::pair<std::string, std::string>> env;  // the target's env, before the pre-flight's own
  /// Runs once the shadow exists, with its pid (bwrap's when isolated) and {data}: for the record
  /// that lets the next start clean up after a crash.
  std::function<void(pid_t, const std::filesystem::path&)> on_started;
};

/// How a pre-flight ended.
struct PreflightResult {
  bool healthy = false;
  std::string reason;               // one sentence: "it exited with status 3 at start-up"
  std::vector<std::string> output;  // the last lines the shadow printed
  Duration elapsed{0};              // from the shadow's start to the verdict
};

/// Makes {data} (mode 0700), fills it from `snapshot` or `snapshot_command`, starts the shadow
/// (inside bubblewrap when `isolate`: own network, PID, IPC and UTS namespaces, the whole file
/// system read-only except {data} and a private /tmp) and probes `health` inside its network
/// namespace until `successes` healthy answers in a row or `deadline`. The shadow and everything
/// it started are stopped (SIGTERM, SIGKILL after `grace`, reaped) and {data} removed before it
/// returns, also when the awaiting coroutine is cancelled. Never throws for the shadow's failures.
boost::asio::awaitable<PreflightResult> run_preflight(PreflightRun run);

/// Why an isolated pre-flight cannot work here, or "" when it can: runs `bwrap --unshare-net
/// --unshare-pid --ro-bind / / true` once (bwrap missing, namespaces forbidden), then enters a
/// sandbox's network namespace as the probe would (setns needs CAP_SYS_ADMIN: an unprivileged
/// sentinel can start bwrap through a user namespace but never probe it).
boost::asio::awaitable<std::string> isolation_problem();

/// `text` with {port} and {data} replaced.
std::string expand_placeholders(std::string text, int port, const std::string& data);

/// The directory pre-flights of `target` make their {data} in, and the prefix of those names.
std::filesystem::path preflight_dir(const std::filesystem::path& state_dir);

/// After a crash: kills the shadow `pid` if it still runs with `start_time` (clock ticks since
/// boot; 0 = unknown, then it is left alone) and removes every `<state_dir>/preflight/<target>-*`.
/// Returns how many directories it removed.
int clean_up_preflights(const std::filesystem::path& state_dir, const std::string& target, pid_t pid,
                        unsigned long long start_time);

}  // namespace sentinel
