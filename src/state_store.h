#pragma once
// What the daemon remembers across restarts, in state_dir: per target the last known-good
// commit, the current status and the history of outcomes; and the single-instance lock.

#include <boost/system/error_code.hpp>

#include <chrono>
#include <filesystem>
#include <optional>
#include <string>
#include <sys/types.h>
#include <vector>

namespace sentinel {

/// How one deploy ended.
struct Outcome {
  std::string result;  // "deployed", "reverted", "failed", "rejected", "recovered" (the monitor's restart),
                       // "cycle" (the cycle command started one), "cycle-failed" (it could not)
  std::string commit;  // full SHA (the marker's, as written, for "rejected"; may be empty)
  std::string reason;  // one sentence; empty for "deployed"
  std::string at;      // UTC, ISO 8601
  std::string process; // the new process confirmed to answer ("pid 4711 started 2026-...Z"), if confirmed
};

/// What a target is doing now and why, as `status` shows it.
struct TargetStatus {
  std::string phase;             // idle, waiting-idle, restarting, verifying, reverting, rebuilding, quarantined, ...
  std::string since;             // UTC time the phase began
  std::string commit;            // the commit the phase is about, if any
  std::string detail;            // why, in a few words ("agent busy", "probe 2/3 healthy")
  std::string last_known_good;
  std::string confirm;           // how a healthy answer is known to come from the new process
  std::optional<Outcome> last_outcome;
  std::string next_cycle;        // UTC time the next agent cycle falls due; "" when none is scheduled
};

/// The last known-good commit as read from state_dir, with what was wrong on the way.
struct KnownGood {
  std::string commit;   // "" when none was ever recorded, or no generation could be read
  std::string problem;  // a corrupt or unreadable generation that was skipped, naming the file; "" when none
};

/// An operator's pause of one target (`deploy-sentinel pause`): staged deploys and cycles wait
/// until `resume` or `until`; recovery of a down production still acts.
struct Pause {
  std::string reason;
  std::string by;     // "user@host"
  std::string at;     // UTC, ISO 8601
  std::string until;  // UTC, ISO 8601; "" = until resumed
  /// "paused by ops@host at 2026-12-01T09:00:00Z until 2026-12-15T09:00:00Z: database migration"
  std::string describe() const;
};

/// The files under state_dir. Every write is atomic (temp file + rename); known-good commits
/// and outcomes are fsynced because losing them could revert to the wrong commit.
class StateStore {
 public:
  explicit StateStore(std::filesystem::path state_dir);

  /// Creates state_dir and one directory per target. Throws StartupError naming the path.
  void prepare(const std::vector<std::string>& targets) const;

  /// The last known-good commit of `target`. A torn or corrupt `known-good` file is never read
  /// as "none": the previous generation (`known-good.bak`) is used instead, and the problem says so.
  KnownGood read_known_good(const std::string& target) const;
  /// read_known_good().commit.
  std::string known_good(const std::string& target) const { return read_known_good(target).commit; }
  /// Records `commit`, keeping the commit it replaces as `known-good.bak`. Both are fsynced.
  boost::system::error_code set_known_good(const std::string& target, const std::string& commit) const;
  /// Writes `commit` durably beside the known-good file as the one in waiting, so that
  /// promote_known_good() later costs one directory fsync instead of two fsyncs, and keeps the
  /// current known-good commit as `known-good.bak`. Touches nothing else: safe on another thread
  /// while the caller goes on.
  boost::system::error_code stage_known_good(const std::string& target, const std::string& commit) const;
  /// Makes `commit` the known-good commit, durably: the staged file renamed into place when it
  /// holds `commit`, otherwise set_known_good(). Call it once no stage_known_good() runs.
  boost::system::error_code promote_known_good(const std::string& target, const std::string& commit) const;

  boost::system::error_code write_status(const std::string& target, const TargetStatus& status) const;
  /// nullopt when the daemon never wrote one (or it is unreadable).
  std::optional<TargetStatus> read_status(const std::string& target) const;

  /// Appends one JSON line to the target's history (history_file), rotated when it grows past
  /// kHistoryMaxBytes (history.h); fsynced unless `sync` is false (then sync_history() makes it
  /// durable, on another thread if the caller likes).
  boost::system::error_code append_history(const std::string& target, const Outcome& outcome,
                                           bool sync = true) const;
  /// `targets/<name>/history.jsonl`: read it with read_history (history.h).
  std::filesystem::path history_file(const std::string& target) const;
  boost::system::error_code sync_history(const std::string& target) const;

  /// The pause of `target` in force at `now`: nullopt when there is none or it has ended. A pause
  /// file that cannot be read is in force (its reason says so and how to end it).
  std::optional<Pause> pause(const std::string& target, std::chrono::system_clock::time_point now) const;
  /// Records a pause, durably: an operator's pause must survive a power cut.
  boost::system::error_code write_pause(const std::string& target, const Pause& pause) const;
  /// The file a pause is kept in (its lock is this name + ".lock", see LeaseLock).
  std::filesystem::path pause_file(const std::string& target) const;

  /// When the last deploy restart of `target` began (recovery and reverts do not count), if any.
  std::optional<std::chrono::system_clock::time_point> last_deploy_restart(const std::string& target) const;
  boost::system::error_code set_last_deploy_restart(const std::string& target,
                                                    std::chrono::system_clock::time_point at) const;

  const std::filesystem::path& dir() const { return dir_; }
  /// state_dir/targets/NAME: what the sentinel keeps of one target.
  std::filesystem::path target_dir(const std::string& target) const;

 private:
  std::filesystem::path dir_;
};

/// The single-instance lock: an exclusive flock on state_dir/deploy-sentinel.lock holding the
/// owner's pid. Released when the process exits, however it exits.
class InstanceLock {
 public:
  /// Takes the lock or throws StartupError("already running as pid N").
  explicit InstanceLock(const std::filesystem::path& state_dir);
  ~InstanceLock();
  InstanceLock(const InstanceLock&) = delete;
  InstanceLock& operator=(const InstanceLock&) = delete;

  /// The pid of the daemon holding the lock in `state_dir`, or nullopt when none runs.
  static std::optional<pid_t> holder(const std::filesystem::path& state_dir);

 private:
  int fd_ = -1;
};

}  // namespace sentinel
