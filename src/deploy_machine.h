#pragma once
// The deploy policy of one target: claim a staged marker, wait for idle, restart, verify,
// record or revert. Watchers, probes and runners report facts; only this decides.

#include "arbiter.h"
#include "config.h"
#include "deploy_window.h"
#include "git.h"
#include "health_probe.h"
#include "idle_gate.h"
#include "listener.h"
#include "marker.h"
#include "preflight.h"
#include "state_store.h"
#include "subprocess.h"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>

#include <future>
#include <memory>
#include <string>

namespace sentinel {

struct LeaseView;
class MetricsFile;
class Fleet;

/// Leave to restart production, given while no agent holds the target's lease. While `hold_off`
/// lives, `deploy-sentinel hold` waits: keep it until the phase "restarting" is recorded, so
/// that a hold either comes before the restart (and stops it) or sees it (and is refused).
struct RestartPermit {
  bool granted = true;
  std::string why;  // when not granted: what holds the restart off
  std::shared_ptr<void> hold_off;
};

/// The outside world of one target, as the deploy machine sees it. The daemon runs real
/// processes and probes (TargetProcesses); unit tests script the answers.
class TargetActions {
 public:
  virtual ~TargetActions() = default;
  /// `on_started` runs as soon as the restart command exists.
  virtual boost::asio::awaitable<RunResult> restart(std::function<void()> on_started) = 0;
  virtual boost::asio::awaitable<RunResult> build() = 0;
  virtual boost::asio::awaitable<ProbeResult> probe() = 0;
  /// Every configured idle source at once (command, HTTP, lease): idle only when all say so.
  virtual boost::asio::awaitable<IdleAnswer> idle() = 0;
  /// Starts one agent cycle (the cycle command); the cycle itself runs in the agent.
  virtual boost::asio::awaitable<RunResult> start_cycle() = 0;
  /// Takes the lease lock and checks the lease; with `ignore_lease` (recovery of a dead
  /// service) only takes the lock. Targets without a lease always grant.
  virtual RestartPermit permit_restart(bool /*ignore_lease*/) { return {}; }
  /// Who listens on TCP `port` now (for confirm = "listener").
  virtual Listeners listeners(std::uint16_t /*port*/) {
    return {Listeners::Result::error, {}, {}, "no way to see listeners here"};
  }
  virtual boost::asio::awaitable<HeadCommit> head() = 0;
  virtual boost::asio::awaitable<RunResult> reset_to(std::string commit) = 0;
  /// Boots the staged commit in a sandbox and probes it (see run_preflight).
  virtual boost::asio::awaitable<PreflightResult> preflight(PreflightRun run) {
    co_return co_await run_preflight(std::move(run));
  }
  /// `rev` as the full SHA of a commit in the checkout, or an error (an operator's revert target).
  /// Without a checkout to ask (unit tests), a full SHA is taken as it is.
  virtual boost::asio::awaitable<HeadCommit> resolve_commit(std::string rev);
};

/// TargetActions for real: the configured commands as subprocesses, HTTP or command probes, git.
class TargetProcesses final : public TargetActions {
 public:
  /// `on_lease_change` runs when a lease seen held may have ended by itself: at its expiry, or
  /// when its holder process exits. (Writes and removals of the lease file are seen by inotify.)
  TargetProcesses(const TargetConfig& target, boost::asio::any_io_executor executor,
                  std::function<void()> on_lease_change);
  ~TargetProcesses() override;
  boost::asio::awaitable<RunResult> restart(std::function<void()> on_started) override;
  boost::asio::awaitable<RunResult> build() override;
  boost::asio::awaitable<ProbeResult> probe() override;
  boost::asio::awaitable<IdleAnswer> idle() override;
  boost::asio::awaitable<RunResult> start_cycle() override;
  RestartPermit permit_restart(bool ignore_lease) override;
  Listeners listeners(std::uint16_t port) override;
  boost::asio::awaitable<HeadCommit> head() override;
  boost::asio::awaitable<RunResult> reset_to(std::string commit) override;
  boost::asio::awaitable<HeadCommit> resolve_commit(std::string rev) override;

 private:
  RunSpec spec_for(const CommandSpec& command, const std::string& role) const;
  /// A short check (health or idle command): quiet, killed 1 s after its timeout.
  RunSpec check_spec(const std::vector<std::string>& argv, Duration timeout, std::size_t tail_lines) const;
  IdleAnswer lease_answer();
  /// Arms the wake-ups for the end of a held lease.
  void watch_lease_end(const LeaseView& view);
  const TargetConfig& target_;
  std::vector<std::string> env_;  // every command's environment
  std::string lease_noted_;  // the ended lease last logged, so each is logged once
  bool capped_noted_ = false;  // the idle URL's list was last seen at its cap
  struct LeaseEnd;
  std::shared_ptr<LeaseEnd> lease_end_;
};

/// One target's deploys, start to end, one at a time. The marker directory is the queue and
/// the record: `.deploy-ready` waits its turn on disk while a deploy runs, `.deploy-in-progress`
/// is the claimed deploy, `.deploy-reverted`, `.deploy-rejected` and `.deploy-failed` tell the
/// agent what happened. A target with `.deploy-failed` deploys nothing until it is removed.
class DeployMachine {
 public:
  /// Phases as `status` shows them. Recovery of a down production uses restarting, verifying,
  /// reverting and rebuilding too.
  /// `held`: a claimed deploy waits for the deploy window, min_interval or the end of a pause.
  /// `waiting-fleet`: a claimed deploy waits for a restart slot of its fleet group (or for etcd).
  enum class Phase { starting, watching, held, waiting_idle, restarting, verifying, reverting, rebuilding,
                     quarantined, preflight, waiting_fleet };

  DeployMachine(const TargetConfig& target, const StateStore& store, TargetActions& actions,
                boost::asio::any_io_executor executor);

  /// Something in the marker directory may have changed: look again. Safe to call any time,
  /// also while a deploy runs (the new marker is taken after it).
  void poke();

  /// Runs the target: start-up checks, then every staged deploy in turn, until request_stop().
  /// An unexpected exception is logged and the target starts over from its record.
  boost::asio::awaitable<void> run();

  /// Asks run() to return at the next wait: a running command (restart, build, git, probe) is
  /// never interrupted and ends by itself or at its timeout; the deploy's record stays on disk,
  /// saying where the next start takes over.
  void request_stop();

  Phase phase() const { return phase_; }

  /// Where outcomes and probes are counted (the daemon's metrics file); nullptr = nowhere.
  void set_metrics(MetricsFile* metrics) { metrics_ = metrics; }

  /// The fleet group this target restarts in ([fleet]); nullptr = on its own.
  void set_fleet(Fleet* fleet) { fleet_ = fleet; }

  /// How long to wait before trying again after an error that looking again at once would not
  /// fix (5 s; tests shorten it).
  void set_retry_after(Duration d) { retry_after_ = d; }

  /// What the marker directory offered: a deploy to carry out, nothing, a marker refused (look
  /// again at once), a marker that may still be being written (look again shortly), or an error
  /// that will not go away by looking again at once.
  enum class Next { deploy, nothing, refused, settling, stuck };

  using Clock = std::chrono::steady_clock;

 private:
  static constexpr Duration kSettle{1000};

  struct Deploy;
  struct Verdict {
    bool ok = false;
    std::string reason;
    std::vector<std::string> output;
  };

  struct StopRequested;
  struct RecordUnwritable;
  boost::asio::awaitable<void> serve();
  boost::asio::awaitable<void> start_up();
  boost::asio::awaitable<void> adopt_running_commit();
  /// Kills a pre-flight shadow a killed run left behind and removes its {data} directories.
  void clean_up_after_preflight();
  /// Waits until poke(), request_stop() or `until`.
  boost::asio::awaitable<void> wait_for_poke(Clock::time_point until = Clock::time_point::max());
  boost::asio::awaitable<void> sleep_for(Duration d);
  /// Between deploys: probes, recoveries and cycles, then a wait for the next thing to happen.
  boost::asio::awaitable<void> between_deploys();
  /// One monitor probe; logs production going down and coming back, once each.
  boost::asio::awaitable<ProbeResult> monitor_probe();
  boost::asio::awaitable<void> recover();
  void give_up_recovering();
  boost::asio::awaitable<void> start_cycle();
  /// The lease lock for a restart that does not wait for the lease (recovery of a down production).
  boost::asio::awaitable<RestartPermit> permit_without_lease();
  /// Waits until no lease holds the restart off (a resumed restart skips the rest of the gate).
  boost::asio::awaitable<void> wait_for_permit(Deploy& deploy);
  boost::asio::awaitable<Next> next_deploy(Deploy& deploy);
  boost::asio::awaitable<void> carry_out(Deploy& deploy);
  /// carry_out, or why the deploy could not start because its record could not be written.
  boost::asio::awaitable<std::string> carry_out_unless_unwritable(Deploy& deploy);
  /// How a wait before the restart ended: the restart may go, production is down (go at once,
  /// whatever holds it), or a pause, the window or min_interval holds it again.
  /// `over`: the deploy ended while it waited (refused by its pre-flight, or replaced).
  enum class Gate { go, outage, held, over };
  /// What holds a deploy restart now: the pause in force ("" when none), the window or min_interval
  /// ("" when neither), and when that may change by itself. Logs a pause starting and ending, once.
  struct Holds {
    std::string paused;
    std::string held;
    Clock::time_point recheck = Clock::time_point::max();
    bool none() const { return paused.empty() && held.empty(); }
  };
  Holds holds();
  /// Waits while a pause, the window or min_interval holds the claimed deploy; `outage` when
  /// production went down meanwhile (then it goes at once).
  boost::asio::awaitable<Gate> wait_for_go_ahead(Deploy& deploy);
  /// The pause lock (`pause` takes it too), so that a pause is either seen before the restart or
  /// refused because the restart is recorded. Empty when it cannot be had (logged).
  boost::asio::awaitable<std::shared_ptr<void>> lock_pause();
  boost::asio::awaitable<Gate> wait_until_idle(Deploy& deploy);
  /// Logs the deploy's claim, once.
  void log_claim(Deploy& deploy);
  /// The wait for idle, with the pre-flight (when configured and not yet passed) beside it.
  boost::asio::awaitable<Gate> preflight_and_idle(Deploy& deploy);
  /// [fleet]: takes a free restart slot of the group for the restart about to be made, without
  /// waiting and within 2 s (it runs under the lease and pause locks): `go` with the slot in
  /// `deploy`, `held` when none is free or etcd does not answer, `over` when the group has seen
  /// the commit fail (the deploy is rejected, or reverted when its restart may have happened).
  boost::asio::awaitable<Gate> take_fleet_slot(Deploy& deploy);
  /// [fleet]: with the slot taken, asks the group about the commit (within 2 s): `go`; `held` when
  /// etcd does not answer (the slot is given back in the background); `over` as take_fleet_slot.
  boost::asio::awaitable<Gate> check_under_slot(Deploy& deploy);
  /// Logs etcd not answering ("" = it answers), once when that starts and once when it ends.
  void note_etcd_trouble(const std::string& trouble);
  /// [fleet]: a failed commit whose record has not reached etcd yet, kept for the next start.
  std::filesystem::path bad_pending_file() const;
  /// [fleet]: at start-up, records in etcd (in the background) a failed commit a stopped run could not.
  void record_pending_bad_commit();
  /// [fleet]: waits, holding no lock, until a slot looks free (`go`) or production is down (`outage`);
  /// while etcd does not answer, nothing looks free, so no restart happens.
  boost::asio::awaitable<Gate> wait_for_fleet_slot(Deploy& deploy);
  /// [fleet]: after a try for a slot that gave none (`now`: `held` or `over`), lets the locks go and,
  /// unless the deploy is over, waits until a slot looks free (`held`: pass the gates again) or
  /// production is down (`outage`, with the permit a down production's restart takes).
  boost::asio::awaitable<Gate> wait_after_no_slot(Deploy& deploy, Gate now);
  /// [fleet]: the slot a stopped run held for this deploy (its record names the lease), taken
  /// over if its lease still lives.
  boost::asio::awaitable<void> adopt_fleet_slot(Deploy& deploy);
  /// [fleet]: asks the group about the deploy's commit; true when the group saw it fail (the
  /// deploy has been rejected then). `strict`: etcd not answering rejects the deploy too.
  boost::asio::awaitable<bool> refused_by_fleet(Deploy& deploy, bool strict);
  /// carry_out, then gives back the fleet slot it took: at once, after recording a failed commit
  /// for the group; kept (not renewed) when a stop comes after the restart was recorded, for the
  /// next run to take over.
  boost::asio::awaitable<void> carry_out_and_release(Deploy& deploy);
  /// After a failed pre-flight: waits until the agent is idle (holding the permit from then on) and
  /// says whether the checkout still holds the refused commit, so that it may be reset.
  boost::asio::awaitable<bool> checkout_may_be_reset(Deploy& deploy);
  /// A commit refused before production was restarted onto it (by its pre-flight, or because the
  /// fleet saw it fail): the checkout back on known-good and built, `.deploy-rejected`, a cycle owed.
  /// `by` names the refusing step in `.deploy-rejected` ("preflight", "fleet").
  boost::asio::awaitable<void> reject_commit(Deploy& deploy, std::string reason, std::string by,
                                             std::vector<std::string> output);
  /// Restarts production on the deploy's commit, or on its previous known-good when `reverting`.
  boost::asio::awaitable<Verdict> restart_and_verify(Deploy& deploy, bool reverting);
  /// Probes until healthy `successes` times in a row or the deadline. With confirm, a healthy
  /// answer counts only from the new process: one listening since `restart_began` (clock ticks
  /// since boot; 0 = unknown, then any), or one reporting `commit`.
  boost::asio::awaitable<Verdict> verify(const std::string& commit, unsigned long long restart_began);
  /// Why a healthy answer does not come from the new process, or nullopt when it does (or cannot
  /// be told); sets confirmed_ to the new process when it found one.
  std::optional<std::string> unconfirmed(const ProbeResult& probe, const std::string& commit,
                                         unsigned long long restart_began);
  /// Stops confirming by listener for this target, saying why once.
  void fall_back_to_no_confirmation(const std::string& why);
  /// How healthy answers are confirmed, for `status`.
  std::string confirm_description() const;
  boost::asio::awaitable<void> revert(Deploy& deploy, Verdict failure);
  /// The revert worked: records known-good, writes .deploy-reverted, ends the deploy.
  void finish_revert(const Deploy& deploy, const Verdict& failure, Clock::time_point revert_started);

  /// Moves a refused marker aside and records why; `stuck` when it could not be moved.
  /// `commit` is the one the marker named, if any, for the history.
  Next reject(std::string_view file_name, const std::string& reason, const std::string& text,
              const std::string& commit = "");
  /// Logs a condition that blocks the target, once until it changes.
  void stuck(const std::string& why);
  void finish(const Outcome& outcome);
  void enter(Phase phase, const std::string& commit, const std::string& detail);
  /// Rewrites `.deploy-in-progress`; a failure is logged (once while it lasts) and returned.
  /// With `old_left_at`, swaps the record in (swap_file_in) and says where the old one was left.
  boost::system::error_code write_record(const Deploy& deploy, bool durable,
                                         std::filesystem::path* old_left_at = nullptr);
  bool exists(std::string_view file_name) const;
  /// Reads a marker in the marker directory, accepting the configured owners (by default the
  /// directory's owner and root).
  MarkerCheck read_marker_in_dir(std::string_view file_name) const;
  /// Shows what the target waits for in `status`, and logs it when it changes.
  void note_waiting(const std::string& why);
  /// When to look again between deploys, without a poke.
  Clock::time_point next_look() const;
  /// When the next agent cycle falls due, UTC ("" without [target.cycle]; now when it is due), for `status`.
  std::string next_cycle_utc() const;
  /// Takes `.deploy-revert-request` (written by `deploy-sentinel revert`) as a deploy that reverts
  /// production to the requested commit; a request that cannot be carried out is refused and removed.
  boost::asio::awaitable<Next> take_revert_request(Deploy& deploy);
  /// The operator's revert: the idle gate (unless asked for now), then the revert path.
  boost::asio::awaitable<void> operator_revert(Deploy& deploy);
  /// After an outcome is recorded: starts its hook (detached) and updates the metrics.
  void after_outcome(const Outcome& outcome);
  /// Counts a health probe in the metrics.
  void note_probe(bool healthy, Duration latency);

  const TargetConfig& target_;
  const StateStore& store_;
  TargetActions& actions_;
  boost::asio::steady_timer wake_;
  bool poked_ = false;
  bool stopping_ = false;
  Duration retry_after_{5000};
  std::string unwritable_;  // why the last deploy could not record its restart, logged once
  std::string record_error_;  // the last failure to write the record, logged once
  bool marker_dir_was_link_ = false;  // configured as a symbolic link: followed; swapped for one: refused
  boost::asio::steady_timer* sleeping_ = nullptr;  // the timer of the wait in progress, to cut it short
  Phase phase_ = Phase::starting;
  TargetStatus status_;
  std::string fallback_commit_;  // the commit running at start-up, when no known-good exists
  std::string stuck_reason_;     // what was last logged as blocking the target
  std::optional<CycleSchedule> schedule_;
  std::optional<HealthMonitor> monitor_;
  Clock::time_point next_probe_ = Clock::time_point::max();
  Clock::time_point cycle_retry_at_{};  // a due cycle whose command failed waits until then
  std::string cycle_failure_;           // how the cycle command last failed, logged once
  std::string waiting_for_;  // what note_waiting last showed
  std::uint16_t confirm_port_ = 0;
  std::string confirm_fallback_;  // why confirm = "listener" was given up, once it was
  std::string confirmed_;         // the new process the last verify confirmed, for the history
  int unseen_in_a_row_ = 0;       // probes in a row whose listener could not be seen
  std::optional<DeployWindow> window_;
  std::string pause_noted_;       // the pause last logged, so each is logged once when it starts and ends
  // Durability work on threads of their own, while the loop goes on (each destructor waits):
  std::future<void> record_sync_;      // the fsync of the last restart's record
  std::future<void> known_good_sync_;  // the deployed commit staged as known-good
  std::future<void> history_sync_;     // the fsync of the last history line
  MetricsFile* metrics_ = nullptr;
  Fleet* fleet_ = nullptr;
  std::string etcd_trouble_;      // why etcd did not answer, logged once until it answers again
  std::string running_commit_;    // what production runs as far as outcomes tell, for hooks' DEPLOY_PREVIOUS
};

/// "waiting-idle" etc.
std::string_view to_string(DeployMachine::Phase phase);

}  // namespace sentinel
