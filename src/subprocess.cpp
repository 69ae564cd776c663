#include "subprocess.h"

#include "marker.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/process/v2/process.hpp>
#include <boost/system/system_error.hpp>
#include <spdlog/spdlog.h>

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <optional>

extern char** environ;

namespace sentinel {
namespace asio = boost::asio;
namespace bp = boost::process::v2;
using namespace asio::experimental::awaitable_operators;
using asio::as_tuple;
using asio::use_awaitable;

namespace {

/// Owns a file descriptor.
class UniqueFd {
 public:
  explicit UniqueFd(int fd = -1) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&&) = delete;
  ~UniqueFd() { reset(); }
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }
  void reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_;
};

/// posix_spawn attributes and file actions, freed on scope exit.
struct SpawnSetup {
  posix_spawnattr_t attr;
  posix_spawn_file_actions_t actions;
  SpawnSetup() {
    posix_spawnattr_init(&attr);
    posix_spawn_file_actions_init(&actions);
  }
  ~SpawnSetup() {
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
  }
  SpawnSetup(const SpawnSetup&) = delete;
  SpawnSetup& operator=(const SpawnSetup&) = delete;
};

/// Spawns the child into its own process group with default signal dispositions and an empty
/// mask, whatever the daemon has blocked or ignored. Returns the pid, or -errno.
pid_t spawn(const RunSpec& spec, int output_fd) {
  SpawnSetup setup;
  sigset_t empty, all;
  sigemptyset(&empty);
  sigfillset(&all);
  posix_spawnattr_setflags(&setup.attr,
                           POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  posix_spawnattr_setpgroup(&setup.attr, 0);
  posix_spawnattr_setsigmask(&setup.attr, &empty);
  posix_spawnattr_setsigdefault(&setup.attr, &all);
  posix_spawn_file_actions_addopen(&setup.actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&setup.actions, output_fd, STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&setup.actions, output_fd, STDERR_FILENO);
  if (!spec.cwd.empty()) posix_spawn_file_actions_addchdir_np(&setup.actions, spec.cwd.c_str());
  // Our own fds are close-on-exec, but Asio opens sockets without SOCK_CLOEXEC: a health probe
  // of another target could be open right now.
  posix_spawn_file_actions_addclosefrom_np(&setup.actions, STDERR_FILENO + 1);

  std::vector<char*> argv;
  for (const auto& arg : spec.argv) argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);
  std::vector<char*> envp;
  for (const auto& entry : spec.env) envp.push_back(const_cast<char*>(entry.c_str()));
  envp.push_back(nullptr);
  pid_t pid = -1;
  int err = posix_spawnp(&pid, argv[0], &setup.actions, &setup.attr, argv.data(),
                         spec.env.empty() ? environ : envp.data());
  return err == 0 ? pid : -err;
}

/// Splits the child's output into lines, logs each, and keeps the last few.
class OutputLines {
 public:
  OutputLines(const RunSpec& spec)
      : tag_(spec.log_tag.empty() ? spec.argv.front() : spec.log_tag),
        level_(spec.log_tag.empty() ? spdlog::level::debug : spdlog::level::info),
        keep_(spec.tail_lines) {}

  void feed(std::string_view data) {
    partial_.append(data);
    std::size_t start = 0;
    for (std::size_t nl; (nl = partial_.find('\n', start)) != std::string::npos; start = nl + 1) {
      emit(std::string_view(partial_).substr(start, nl - start));
    }
    partial_.erase(0, start);
    if (partial_.size() > kMaxLine) {
      emit(partial_);
      partial_.clear();
    }
  }

  std::vector<std::string> finish() {
    if (!partial_.empty()) emit(partial_);
    partial_.clear();
    report_dropped();
    return {lines_.begin(), lines_.end()};
  }

 private:
  static constexpr std::size_t kMaxLine = 4096;
  // A command may log a burst of this many lines, then this many a second: a build's output
  // goes through, 100 MB of it does not flood the journal.
  static constexpr double kBurstLines = 1000;
  static constexpr double kLinesPerSecond = 100;

  /// True when one more line may be logged now.
  bool take_token() {
    const auto now = std::chrono::steady_clock::now();
    tokens_ = std::min(kBurstLines, tokens_ + kLinesPerSecond * std::chrono::duration<double>(now - refilled_).count());
    refilled_ = now;
    if (tokens_ < 1) return false;
    tokens_ -= 1;
    return true;
  }

  void report_dropped() {
    if (dropped_ == 0) return;
    spdlog::log(level_, "[{}] ... {} line{} not logged (more than {} lines a second)", tag_, dropped_,
                dropped_ == 1 ? "" : "s", static_cast<int>(kLinesPerSecond));
    dropped_ = 0;
  }

  void emit(std::string_view raw) {
    if (!raw.empty() && raw.back() == '\r') raw.remove_suffix(1);
    std::string line = to_valid_utf8(raw);  // it ends up in JSON files the agent parses
    if (take_token()) {
      report_dropped();
      spdlog::log(level_, "[{}] {}", tag_, line);
    } else {
      ++dropped_;
    }
    if (keep_ == 0) return;
    if (lines_.size() == keep_) lines_.pop_front();
    lines_.push_back(std::move(line));
  }

  std::string tag_;
  spdlog::level::level_enum level_;
  std::size_t keep_;
  std::string partial_;
  std::deque<std::string> lines_;
  double tokens_ = kBurstLines;
  std::chrono::steady_clock::time_point refilled_ = std::chrono::steady_clock::now();
  std::size_t dropped_ = 0;
};

/// Logs what comes through the pipe until every writer has closed it.
asio::awaitable<void> read_until_eof(asio::posix::stream_descriptor& pipe, OutputLines& out) {
  char buf[4096];
  for (;;) {
    auto [ec, n] = co_await pipe.async_read_some(asio::buffer(buf), as_tuple(use_awaitable));
    if (ec) co_return;
    out.feed(std::string_view(buf, n));
  }
}

/// Reads the pipe until EOF, then waits to be cancelled: the caller decides when the run is
/// over (a daemon the command left behind may hold the pipe open forever).
asio::awaitable<void> pump(asio::posix::stream_descriptor& pipe, OutputLines& out) {
  co_await read_until_eof(pipe, out);
  asio::steady_timer never(co_await asio::this_coro::executor, asio::steady_timer::time_point::max());
  co_await never.async_wait(as_tuple(use_awaitable));
}

/// Goes on logging what a daemon left behind by the command writes, until it closes the pipe:
/// closing our end would kill it with SIGPIPE at its next write.
asio::awaitable<void> follow(asio::posix::stream_descriptor pipe, OutputLines out) {
  boost::system::error_code ec;
  pipe.non_blocking(false, ec);  // drain() set it; async reads must wait, not fail with EAGAIN
  co_await read_until_eof(pipe, out);
}

/// Reads whatever the pipe still holds without blocking.
void drain(asio::posix::stream_descriptor& pipe, OutputLines& out) {
  if (!pipe.is_open()) return;
  boost::system::error_code ec;
  pipe.non_blocking(true, ec);
  char buf[4096];
  for (;;) {
    std::size_t n = pipe.read_some(asio::buffer(buf), ec);
    if (ec || n == 0) break;
    out.feed(std::string_view(buf, n));
  }
}

/// Waits for `proc` to exit, or for `d`; true when it exited.
asio::awaitable<bool> exits_within(bp::process& proc, Duration d) {
  asio::steady_timer timer(co_await asio::this_coro::executor, d);
  auto wait_exit = proc.async_wait(as_tuple(use_awaitable));
  auto wait_timer = timer.async_wait(as_tuple(use_awaitable));
  auto first = co_await (std::move(wait_exit) || std::move(wait_timer));
  co_return first.index() == 0;
}

/// Kills a group with SIGKILL and reaps the leader if a cancelled run leaves it behind.
struct GroupReaper {
  pid_t pgid;
  bool armed = true;
  ~GroupReaper() {
    if (!armed) return;
    ::kill(-pgid, SIGKILL);
    int status = 0;
    while (::waitpid(pgid, &status, 0) == -1 && errno == EINTR) {
    }
  }
};

}  // namespace

std::vector<std::string> command_environment(const std::vector<std::pair<std::string, std::string>>& extra) {
  auto ours = [](const char* name, const char* fallback) {
    const char* value = std::getenv(name);
    return std::string(name) + "=" + (value != nullptr ? value : fallback);
  };
  std::vector<std::string> env{ours("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
                               ours("HOME", "/"), ours("LANG", "C.UTF-8")};
  for (const auto& [name, value] : extra) {
    const std::string prefix = name + "=";
    std::erase_if(env, [&](const std::string& entry) { return entry.starts_with(prefix); });
    env.push_back(prefix + value);
  }
  return env;
}

std::string RunResult::describe() const {
  switch (end) {
    case End::exited:
      return "exited with status " + std::to_string(code);
    case End::signaled:
      return std::string("killed by ") + (sigabbrev_np(code) ? "SIG" + std::string(sigabbrev_np(code))
                                                             : "signal " + std::to_string(code));
    case End::timed_out:
      return "timed out after " + format_duration(timeout) + "; its process group was killed";
    case End::not_started:
      return "could not start " + program + ": " + std::strerror(code) +
             (code == ENOENT ? " (is it installed and in PATH, and does the working directory exist?)" : "");
  }
  return "unknown";
}

asio::awaitable<RunResult> run_command(RunSpec spec) {
  RunResult result;
  result.timeout = spec.timeout;
  result.program = spec.argv.empty() ? std::string() : spec.argv.front();
  auto executor = co_await asio::this_coro::executor;
  if (spec.argv.empty() || spec.argv.front().empty()) {
    result.code = EINVAL;
    co_return result;
  }
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) {
    result.code = errno;
    co_return result;
  }
  UniqueFd read_end(fds[0]);
  UniqueFd write_end(fds[1]);

  const auto started = std::chrono::steady_clock::now();
  pid_t pid = spawn(spec, write_end.get());
  write_end.reset();
  if (pid < 0) {
    result.code = -pid;
    co_return result;
  }
  GroupReaper reaper{pid};
  // The child has exec'd but is still loading: on a busy machine the daemon's bookkeeping that
  // follows would take the CPU it needs to reach main(). Let it go first.
  ::sched_yield();
  if (spec.on_started) spec.on_started();
  if (spec.on_pid) spec.on_pid(pid);
  std::optional<bp::process> attached;
  try {
    attached.emplace(executor, pid);  // pidfd_open: fails only when out of fds or forbidden
  } catch (const boost::system::system_error& e) {
    spdlog::error("[{}] cannot wait for pid {}: {}; killing it", spec.argv.front(), pid, e.what());
    result.code = e.code().value();
    co_return result;
  }
  bp::process& proc = *attached;
  asio::posix::stream_descriptor pipe(executor, read_end.release());
  OutputLines output(spec);

  auto wait_all = [&]() -> asio::awaitable<void> {
    bool timed_out = !(co_await exits_within(proc, spec.timeout));
    if (timed_out) {
      result.end = RunResult::End::timed_out;
      spdlog::warn("[{}] timed out after {}: sending SIGTERM to process group {}",
                   spec.log_tag.empty() ? spec.argv.front() : spec.log_tag,
                   format_duration(spec.timeout), pid);
      ::kill(-pid, SIGTERM);
      if (!(co_await exits_within(proc, spec.kill_grace))) {
        spdlog::warn("[{}] still running {} after SIGTERM: sending SIGKILL to process group {}",
                     spec.log_tag.empty() ? spec.argv.front() : spec.log_tag,
                     format_duration(spec.kill_grace), pid);
        ::kill(-pid, SIGKILL);
        co_await proc.async_wait(as_tuple(use_awaitable));
      }
      // Children that ignored SIGTERM outlive their leader: the group goes as a whole.
      ::kill(-pid, SIGKILL);
    }
  };
  co_await (wait_all() || pump(pipe, output));
  // Cancelled, the waits above complete as if the child had exited: leave through the reaper.
  asio::cancellation_state cancel_state = co_await asio::this_coro::cancellation_state;
  if (cancel_state.cancelled() != asio::cancellation_type::none) {
    throw boost::system::system_error(asio::error::operation_aborted, "run_command");
  }
  reaper.armed = false;
  drain(pipe, output);

  result.elapsed = std::chrono::duration_cast<Duration>(std::chrono::steady_clock::now() - started);
  result.tail = output.finish();
  asio::co_spawn(executor, follow(std::move(pipe), std::move(output)), asio::detached);
  if (result.end != RunResult::End::timed_out) {
    int status = proc.native_exit_code();
    if (WIFSIGNALED(status)) {
      result.end = RunResult::End::signaled;
      result.code = WTERMSIG(status);
    } else {
      result.end = RunResult::End::exited;
      result.code = WEXITSTATUS(status);
    }
  }
  proc.detach();
  co_return result;
}

}  // namespace sentinel
