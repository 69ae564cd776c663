#pragma once
// The cycle lease: a file an agent (or a person) writes with `deploy-sentinel hold` to say "do not
// restart production before this time", removed with `release`. `hold` and the daemon decide under
// one flock on `<lease_file>.lock`, so a lease is never granted while a restart is under way.

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>

namespace sentinel {

class StateStore;

/// What a lease file says. `pid_start` is the holder's start time (/proc/PID/stat field 22) when
/// the lease was taken, so a pid reused by another process is not mistaken for the holder.
struct Lease {
  std::string reason;
  std::chrono::system_clock::time_point expires_at;
  std::optional<pid_t> pid;
  std::optional<unsigned long long> pid_start;
  std::string held_by;  // "user@host"
  std::string held_at;  // UTC, ISO 8601
};

/// `held` and `unreadable` mean "busy" for the daemon; `none`, `expired` and `holder_gone` mean free.
enum class LeaseState { none, held, expired, holder_gone, unreadable };

/// A lease file as read at one moment. `describe` is one phrase for logs and status, e.g.
/// "lease 'cycle 812' held by pid 4411 until 14:05:00Z" or "lease file /x/y is unreadable: ...".
struct LeaseView {
  LeaseState state = LeaseState::none;
  Lease lease;  // as much as could be read; empty when `none` or `unreadable`
  std::string describe;
};

/// Reads the lease at `file` as of `now`. Never throws. A missing file is `none`. Anything that is
/// not a regular file of at most 64 KiB (a symlink is not followed) holding a JSON object with
/// an `expires_at` like "2026-11-25T14:05:00Z" (and, if present, an integer `pid` and `pid_start`)
/// is `unreadable`, whose `describe` names the file and says to `release` it. A lease past
/// `expires_at` is `expired`; a lease whose pid no longer runs, or now runs a process that started
/// at another time than `pid_start`, is `holder_gone`.
LeaseView read_lease(const std::filesystem::path& file, std::chrono::system_clock::time_point now);

/// Writes `lease` to `file` as JSON through a temporary file, fsync and rename (and fsyncs the
/// directory), so readers see the old lease or the new one and a power cut cannot lose it.
std::error_code write_lease(const std::filesystem::path& file, const Lease& lease);

/// The start time of process `pid` in clock ticks since boot (/proc/PID/stat field 22), or
/// nullopt when no such process runs or it is a zombie.
std::optional<unsigned long long> process_start_time(pid_t pid);

/// The inverse of format_utc: "2026-11-25T14:05:00Z" exactly (UTC, whole seconds), or nullopt for
/// anything else, including impossible dates such as February 30 and times the clock cannot hold
/// (system_clock counts nanoseconds in 64 bits: 1677-09-21 to 2262-04-11).
std::optional<std::chrono::system_clock::time_point> parse_utc(std::string_view text);

/// What is wrong with lease lock file `lock` that could not be opened (`ec`), and the fix.
std::string lease_lock_problem(const std::filesystem::path& lock, const std::error_code& ec);

/// The lock file that serialises `hold` and the daemon: `lease_file` + ".lock", in the same directory.
std::filesystem::path lease_lock_file(const std::filesystem::path& lease_file);

/// An exclusive flock on lease_lock_file(lease_file), created mode 0664 when missing (the agent's
/// user and the sentinel's user may share a group). Released when the object is destroyed. Like
/// every flock it belongs to one open file description: a second LeaseLock excludes the first
/// even in the same process.
class LeaseLock {
 public:
  /// Takes the lock without blocking. nullopt with `ec` clear when someone else holds it; nullopt
  /// with `ec` set when the lock file cannot be opened or locked.
  static std::optional<LeaseLock> try_acquire(const std::filesystem::path& lease_file, std::error_code& ec);
  /// Waits for the lock. Throws StartupError naming the lock file and what to fix when it cannot
  /// be opened (a missing directory, no permission, not a regular file).
  static LeaseLock acquire(const std::filesystem::path& lease_file);

  ~LeaseLock();
  LeaseLock(LeaseLock&& other) noexcept;
  LeaseLock& operator=(LeaseLock&& other) noexcept;
  LeaseLock(const LeaseLock&) = delete;
  LeaseLock& operator=(const LeaseLock&) = delete;

 private:
  explicit LeaseLock(int fd) : fd_(fd) {}
  int fd_ = -1;
};

/// True for the phases during which production is being replaced or checked — restarting,
/// verifying, reverting, rebuilding — when `hold` must not grant a lease.
bool phase_blocks_hold(std::string_view phase);

/// Why a lease on `target` cannot be granted now, as one sentence ("prod is restarting (since
/// 14:02:11, commit 3f2c1a9)"), or nullopt when it can: the daemon running on the store's
/// state_dir reports a phase that blocks holds. The status left behind by a daemon that no longer
/// runs blocks nothing. Call it while holding the LeaseLock so the answer stays true until the
/// lease is written. Throws StartupError naming the file when the status or the daemon's lock
/// file exists but this user may not read it (no answer is not "free").
std::optional<std::string> hold_refusal(const StateStore& store, const std::string& target);

/// Lets `hold --wait` sleep until the daemon's status for one target may have changed: inotify on
/// the target's status directory and on state_dir (the daemon's lock file is closed when it
/// exits). Events are only hints; callers re-read the status after every wake-up.
class StatusWatch {
 public:
  /// Never throws: without inotify (or without the directories yet) waits fall back to the timeout.
  StatusWatch(const StateStore& store, const std::string& target);
  ~StatusWatch();
  StatusWatch(const StatusWatch&) = delete;
  StatusWatch& operator=(const StatusWatch&) = delete;

  /// Returns after something changed in the watched directories or after `fallback`, whichever
  /// is first (the fallback notices a daemon that died without a word).
  void wait(std::chrono::milliseconds fallback);

  /// Why waits fall back to the timeout (inotify unavailable, a watch limit reached), or "".
  const std::string& warning() const { return warning_; }

 private:
  void add_watches();
  std::filesystem::path status_dir_, state_dir_;
  std::string warning_;
  int fd_ = -1;
  int status_wd_ = -1, state_wd_ = -1;
};

}  // namespace sentinel
