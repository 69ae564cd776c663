#pragma once
// The end-to-end rig: a real git checkout, the real fake-service as production, the real
// daemon binary with its log read line by line, all in a temp dir on 127.0.0.1.

#include "test_support.h"

#include <sys/types.h>

#include <chrono>
#include <csignal>
#include <filesystem>
#include <string>
#include <vector>

namespace sentinel::test {

/// What a finished command printed and how it ended.
struct CommandOutput {
  int status = -1;  // exit status, or 128 + signal
  std::string out;
  std::string err;
};

/// Runs argv to completion (no shell), in `cwd` when given.
CommandOutput run_program(const std::vector<std::string>& argv, const std::filesystem::path& cwd = {});

/// The first 12 hex digits of a SHA, as the daemon logs commits.
inline std::string short_sha(const std::string& sha) { return sha.substr(0, 12); }

/// A TCP port on 127.0.0.1 that was free a moment ago.
int free_port();

/// The daemon as a child process; its stderr and stdout are read as log lines.
class DaemonProcess {
 public:
  /// With `as_journal`, JOURNAL_STREAM names the log pipe, as systemd does for a unit whose
  /// stderr is the journal.
  /// `env` entries ("NAME=value") come before, and so win over, this process's environment.
  DaemonProcess(const std::filesystem::path& config, const std::filesystem::path& log_copy, bool as_journal = false,
                std::vector<std::string> env = {});
  ~DaemonProcess();
  DaemonProcess(const DaemonProcess&) = delete;
  DaemonProcess& operator=(const DaemonProcess&) = delete;

  /// Waits until a log line contains `text` (lines already seen count, from `from` on); returns
  /// its index, or -1 after `timeout` or if the daemon exited.
  int wait_for_line(const std::string& text, std::chrono::milliseconds timeout = std::chrono::seconds(10),
                    int from = 0);
  /// How many log lines contain `text` so far.
  int count_lines(const std::string& text);
  /// SIGTERM, then waits for exit; returns the exit status (128 + signal if killed).
  int stop() { return signal_and_wait(SIGTERM); }
  /// Sends `signo` (none for 0), then reads the log until the daemon exits; returns its exit status.
  int signal_and_wait(int signo);
  /// SIGKILL, as a crash or the OOM killer would, and reaps it.
  void kill_hard();
  pid_t pid() const { return pid_; }
  const std::vector<std::string>& lines() const { return lines_; }

 private:
  bool read_more(std::chrono::milliseconds timeout);
  pid_t pid_ = -1;
  int fd_ = -1;
  std::string partial_;
  std::vector<std::string> lines_;
  std::filesystem::path log_copy_;
  int exit_status_ = -1;
};

/// One production target: checkout, marker dir, state dir, a service on a free port.
class Production {
 public:
  struct Options {
    std::string name = "prod";
    std::string restart_timeout = "5s";
    std::string restart_delay;  // e.g. "1": the restart command sleeps this many seconds first
    std::string deadline = "3s";
    bool with_build = false;  // the build fails while the file `build-fails` exists beside the checkout
    std::string build_delay;  // e.g. "0.5": the build sleeps this many seconds first
    bool with_idle = false;
    std::string quiet = "300ms";
    std::string extra;  // more of the target's table, TOML, appended after [target.health]
    std::string fleet;  // top-level TOML (a [fleet] table), appended at the end, after every table of the target
    // When set, the restart command appends "start LABEL EPOCH-NS PGID" before it (and before
    // restart_delay) and "end LABEL EPOCH-NS" after it to this file, which several hosts may share.
    std::filesystem::path restart_trace;
    std::string trace_label;
  };
  explicit Production(Options options);
  Production() : Production(Options{}) {}
  ~Production();

  /// Commits a change that makes the service run in `mode` (healthy, unhealthy, hang, slow:MS, ...);
  /// returns the full SHA.
  std::string commit(const std::string& mode);
  std::string head();
  /// Stages like most agents: write a temp file, rename it to .deploy-ready.
  void stage_by_rename(const std::string& text = "");
  /// Stages by writing .deploy-ready in place (open, write, close).
  void stage_in_place(const std::string& text = "");
  /// Runs `deploy-sentinel ARGS... --config CONFIG`.
  CommandOutput cli(std::vector<std::string> args);
  /// Restart lines the service wrote ("<mode> <pid>"), one per restart.
  std::vector<std::string> restarts();
  /// GET /health once; true on 200.
  bool healthy();

  DaemonProcess& start_daemon(bool as_journal = false);
  /// Starts the daemon and waits until this target has finished starting up ("NAME: watching");
  /// throws if it does not within 10 s.
  DaemonProcess& start_watching();
  DaemonProcess& daemon() { return *daemon_; }
  bool daemon_started() const { return daemon_ != nullptr; }

  std::filesystem::path marker(const std::string& name) const { return markers / name; }
  bool has(const std::string& name) const;

  TempDir tmp;
  std::filesystem::path checkout, markers, state, service_dir, config;
  std::vector<std::string> daemon_env;  // for start_daemon: "NAME=value", over this process's environment
  std::string target_section;  // this target's [[target]] table, to combine several in one config
  int port = 0;

 private:
  std::unique_ptr<DaemonProcess> daemon_;
  std::string name_;
};

}  // namespace sentinel::test
