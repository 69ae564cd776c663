#pragma once
// Running one command as a child process: its own process group, a deadline, output to the log.

#include "duration.h"

#include <boost/asio/awaitable.hpp>

#include <cstddef>
#include <filesystem>
#include <functional>
#include <string>
#include <sys/types.h>
#include <utility>
#include <vector>

namespace sentinel {

/// What to run and how patiently.
struct RunSpec {
  std::vector<std::string> argv;   // argv[0] is looked up in PATH (execvp rules); no shell
  std::filesystem::path cwd;       // empty = inherit
  Duration timeout{90'000};
  Duration kill_grace{5'000};      // between SIGTERM and SIGKILL to the group at the deadline
  std::string log_tag;             // "prod restart": each output line is logged as "[prod restart] …"
                                   // at info; empty = logged at debug as "[argv0] …"
  std::size_t tail_lines = 20;     // how many last output lines the result keeps
  std::function<void()> on_started;  // runs right after the child exists (e.g. to fsync a record)
  std::function<void(pid_t)> on_pid;  // then this, with the child's pid (= its process group)
  std::vector<std::string> env;    // the child's whole environment, "KEY=value"; empty = the daemon's
};

/// How a run ended.
struct RunResult {
  enum class End { exited, signaled, timed_out, not_started };
  End end = End::not_started;
  int code = 0;                    // exit status, signal number, or errno when not started
  Duration elapsed{0};
  Duration timeout{0};             // the limit it ran under
  std::string program;             // argv[0]
  std::vector<std::string> tail;   // the last output lines (stdout and stderr interleaved)

  /// Exited with status 0.
  bool ok() const { return end == End::exited && code == 0; }
  /// One phrase for logs and markers: "exited with status 1", "killed by SIGSEGV",
  /// "timed out after 90s; its process group was killed", "could not start git: No such file ...".
  std::string describe() const;
};

/// The minimal environment for a configured command: PATH, HOME and LANG as the sentinel has
/// them (a standard PATH, "/" and C.UTF-8 when unset), then `extra` in order, replacing an entry
/// of the same name. Nothing else of the sentinel's own environment (NOTIFY_SOCKET, credentials
/// of the shell that started it) reaches production.
std::vector<std::string> command_environment(const std::vector<std::pair<std::string, std::string>>& extra);

/// Starts `spec.argv` with posix_spawn in a new process group (stdin /dev/null, stdout and
/// stderr into one pipe that is logged line by line) and waits for it on the current executor.
/// At `spec.timeout` the whole group gets SIGTERM, and SIGKILL `kill_grace` later; the child
/// is always reaped. A child that exits on its own leaves its group alone (a restart script may
/// legitimately leave a daemon behind). Never throws for failures of the command itself.
/// Cancelling the awaiting coroutine kills the group and reaps the child.
boost::asio::awaitable<RunResult> run_command(RunSpec spec);

}  // namespace sentinel
