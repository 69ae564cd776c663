#include "deploy_machine.h"

#include "etcd.h"
#include "fleet.h"
#include "hooks.h"
#include "lease.h"
#include "listener.h"
#include "marker.h"
#include "metrics.h"
#include "systemd.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/multiple_exceptions.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/json.hpp>
#include <spdlog/spdlog.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cctype>
#include <fstream>
#include <future>
#include <system_error>

namespace sentinel {
namespace asio = boost::asio;
namespace fs = std::filesystem;
namespace json = boost::json;
using Clock = std::chrono::steady_clock;
using Phase = DeployMachine::Phase;
using Next = DeployMachine::Next;
using namespace asio::experimental::awaitable_operators;

namespace {

std::string now_utc() { return format_utc(std::chrono::system_clock::now()); }

std::string short_sha(const std::string& commit) { return commit.substr(0, 12); }

Duration since(Clock::time_point t) { return std::chrono::duration_cast<Duration>(Clock::now() - t); }

/// True when `head` (a full SHA) is the commit a marker names by its full or abbreviated SHA.
bool same_commit(const std::string& head, std::string named) {
  std::transform(named.begin(), named.end(), named.begin(), [](unsigned char c) { return std::tolower(c); });
  return head.starts_with(named);
}

/// How the reason of an operator's revert begins (in the history and in the deploy's record).
constexpr std::string_view kOperatorRevert = "operator: ";

/// The end of the reason a probe gives when an old process still answers.
constexpr std::string_view kNotReplaced = "the restart did not replace it";

/// How many probes in a row may fail to see the listener's owner before the target stops
/// confirming by listener.
constexpr int kUnseenBeforeFallback = 3;

/// Clock ticks since boot, on the clock that /proc/PID/stat start times count in (CLOCK_BOOTTIME).
unsigned long long boot_ticks_now() {
  static const long hz = ::sysconf(_SC_CLK_TCK);
  timespec ts{};
  ::clock_gettime(CLOCK_BOOTTIME, &ts);
  return static_cast<unsigned long long>(ts.tv_sec) * hz + static_cast<unsigned long long>(ts.tv_nsec) / (1'000'000'000 / hz);
}

Duration ticks_to_duration(unsigned long long ticks) {
  static const long hz = ::sysconf(_SC_CLK_TCK);
  return Duration(static_cast<Duration::rep>(ticks * 1000 / hz));
}

/// "pid 4711 started 2026-11-25T14:05:00Z", for logs and the history.
std::string describe_process(const ListeningProcess& p) {
  return "pid " + std::to_string(p.pid) + " (" + p.name + ") started " + format_utc(process_started_at(p.start_ticks));
}

/// This boot's id, to tell a record left by a crash from one left by a reboot.
const std::string& boot_id() {
  static const std::string id = [] {
    std::ifstream in("/proc/sys/kernel/random/boot_id");
    std::string line;
    std::getline(in, line);
    return line;
  }();
  return id;
}

/// Phases of the revert, as recorded: a run that stopped in one of them redoes the revert.
bool is_revert_phase(std::string_view phase) {
  return phase == "reverting" || phase == "rebuilding" || phase == "restarting-reverted" ||
         phase == "verifying-reverted";
}

/// True when the idle gate has a source that must be asked again to notice a change (a lease
/// alone tells by itself).
bool polled(const IdleConfig& idle) { return !idle.command.empty() || idle.http.has_value(); }

/// True when `file` was written less than `age` ago.
bool modified_within(const fs::path& file, Duration age) {
  std::error_code ec;
  auto written = fs::last_write_time(file, ec);
  return !ec && fs::file_time_type::clock::now() - written < age;
}

/// `text` with control characters (newlines included) shown as spaces, so an agent's message
/// cannot forge log lines.
std::string one_line(std::string text) {
  std::replace_if(text.begin(), text.end(), [](unsigned char c) { return c < 0x20 || c == 0x7f; }, ' ');
  return text;
}

/// Runs `work` on a thread of its own, or right here when no thread can be started (threads or
/// memory exhausted): durability work must never fail the deploy it protects, and an exception
/// thrown right after a spawn would kill the restart it follows.
std::future<void> in_background(const std::function<void()>& work) {
  try {
    return std::async(std::launch::async, work);
  } catch (const std::system_error&) {
    work();
    return {};
  }
}

json::array lines_json(const std::vector<std::string>& lines) {
  json::array out;
  for (const auto& line : lines) out.emplace_back(line);
  return out;
}

}  // namespace

std::string_view to_string(Phase phase) {
  switch (phase) {
    case Phase::starting: return "starting";
    case Phase::watching: return "watching";
    case Phase::held: return "held";
    case Phase::waiting_idle: return "waiting-idle";
    case Phase::restarting: return "restarting";
    case Phase::verifying: return "verifying";
    case Phase::reverting: return "reverting";
    case Phase::rebuilding: return "rebuilding";
    case Phase::quarantined: return "quarantined";
    case Phase::preflight: return "preflight";
    case Phase::waiting_fleet: return "waiting-fleet";
  }
  return "unknown";
}

// ---- the real outside world ----------------------------------------------------------------

/// What wakes the deploy machine when a held lease ends without its file changing: its expiry
/// and, when it names a holder, that process's exit (a pidfd turns readable).
struct TargetProcesses::LeaseEnd {
  explicit LeaseEnd(const asio::any_io_executor& ex) : expiry(ex), holder(ex) {}
  asio::steady_timer expiry;
  std::chrono::system_clock::time_point expires_at{};
  asio::posix::stream_descriptor holder;
  pid_t holder_pid = 0;
  std::function<void()> wake;
};

TargetProcesses::TargetProcesses(const TargetConfig& target, asio::any_io_executor executor,
                                 std::function<void()> on_lease_change)
    : target_(target), env_(command_environment(target.env)), lease_end_(std::make_shared<LeaseEnd>(executor)) {
  lease_end_->wake = std::move(on_lease_change);
}

TargetProcesses::~TargetProcesses() {
  lease_end_->wake = nullptr;
  boost::system::error_code ignored;
  lease_end_->expiry.cancel();
  lease_end_->holder.close(ignored);
}

void TargetProcesses::watch_lease_end(const LeaseView& view) {
  auto end = lease_end_;
  if (view.lease.expires_at != end->expires_at) {
    end->expires_at = view.lease.expires_at;
    const auto left = view.lease.expires_at - std::chrono::system_clock::now();
    end->expiry.expires_after(std::chrono::duration_cast<Clock::duration>(left) + 1ms);
    end->expiry.async_wait([end](boost::system::error_code ec) {
      if (ec) return;
      end->expires_at = {};  // re-armed by the next look if the lease still holds (a clock step)
      if (end->wake) end->wake();
    });
  }
  const pid_t pid = view.lease.pid.value_or(0);
  if (pid == end->holder_pid) return;
  boost::system::error_code ignored;
  end->holder.close(ignored);
  end->holder_pid = pid;
  if (pid <= 0) return;
  const int fd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  if (fd < 0) return;  // gone already, or no pidfd: the next check sees it
  ::fcntl(fd, F_SETFD, FD_CLOEXEC);
  end->holder.assign(fd);
  end->holder.async_wait(asio::posix::stream_descriptor::wait_read, [end, pid](boost::system::error_code ec) {
    if (ec || end->holder_pid != pid) return;
    end->holder_pid = 0;
    boost::system::error_code ignored;
    end->holder.close(ignored);
    if (end->wake) end->wake();
  });
}

RunSpec TargetProcesses::spec_for(const CommandSpec& command, const std::string& role) const {
  RunSpec spec;
  spec.argv = command.argv;
  spec.cwd = target_.checkout;
  spec.timeout = command.timeout;
  spec.kill_grace = command.kill_grace;
  spec.log_tag = target_.name + " " + role;
  spec.env = env_;
  return spec;
}

RunSpec TargetProcesses::check_spec(const std::vector<std::string>& argv, Duration timeout, std::size_t tail_lines) const {
  RunSpec spec;
  spec.argv = argv;
  spec.cwd = target_.checkout;
  spec.timeout = timeout;
  spec.kill_grace = 1s;
  spec.tail_lines = tail_lines;
  spec.env = env_;
  return spec;
}

asio::awaitable<RunResult> TargetProcesses::restart(std::function<void()> on_started) {
  RunSpec spec = spec_for(target_.restart, "restart");
  spec.on_started = std::move(on_started);
  co_return co_await run_command(std::move(spec));
}

asio::awaitable<RunResult> TargetProcesses::build() {
  RunSpec spec = spec_for(*target_.build, "build");
  co_return co_await run_command(std::move(spec));
}

asio::awaitable<ProbeResult> TargetProcesses::probe() {
  const HealthConfig& health = target_.health;
  if (!health.url.empty()) {
    auto url = parse_http_url(health.url);
    if (!url) co_return ProbeResult{false, "health url " + health.url + " is not a plain http:// URL", {}};
    co_return co_await probe_http(*url, health.timeout);
  }
  RunSpec spec = check_spec(health.command, health.timeout, 1);  // named: g++ 12 and temporaries in co_await
  RunResult r = co_await run_command(std::move(spec));
  if (r.ok()) co_return ProbeResult{true, "health command exited 0", {}};
  co_return ProbeResult{false, "health command " + r.describe() + (r.tail.empty() ? "" : ": " + r.tail.back()), {}};
}

asio::awaitable<IdleAnswer> TargetProcesses::idle() {
  const IdleConfig& idle = *target_.idle;
  std::vector<IdleAnswer> answers;
  if (!idle.lease_file.empty()) answers.push_back(lease_answer());
  if (!idle.command.empty()) {
    RunSpec spec = check_spec(idle.command, idle.timeout, 0);
    RunResult r = co_await run_command(std::move(spec));
    answers.push_back(idle_answer_from_exit(r.end == RunResult::End::exited, r.code, r.describe()));
  }
  if (idle.http) {
    IdleAnswer answer = co_await check_idle_http(*idle.http, idle.timeout);
    if (answer.capped != capped_noted_) {  // once when the list reaches its cap, once when it shrinks
      if (answer.capped) {
        spdlog::warn("{}: {}; the agent counts as busy until the list is shorter", target_.name, answer.reason);
      } else {
        spdlog::info("{}: the idle URL's list is shorter than its cap again", target_.name);
      }
      capped_noted_ = answer.capped;
    }
    answers.push_back(std::move(answer));
  }
  co_return combine_idle(answers);
}

IdleAnswer TargetProcesses::lease_answer() {
  LeaseView view = read_lease(target_.idle->lease_file, std::chrono::system_clock::now());
  switch (view.state) {
    case LeaseState::held:
      watch_lease_end(view);
      return {IdleAnswer::State::busy, view.describe};
    case LeaseState::unreadable:
      return {IdleAnswer::State::unknown, view.describe};
    case LeaseState::expired:
    case LeaseState::holder_gone:
      if (view.describe != lease_noted_) {  // once per lease, not at every check
        spdlog::warn("{}: {}; ignoring it", target_.name, view.describe);
        lease_noted_ = view.describe;
      }
      return {IdleAnswer::State::idle, "no lease held (the last one ended)"};
    case LeaseState::none:
      break;
  }
  return {IdleAnswer::State::idle, "no lease held"};
}

RestartPermit TargetProcesses::permit_restart(bool ignore_lease) {
  if (!target_.idle || target_.idle->lease_file.empty()) return {};
  const fs::path& file = target_.idle->lease_file;
  std::error_code ec;
  std::optional<LeaseLock> lock = LeaseLock::try_acquire(file, ec);
  if (ec) {
    // Without the lock a hold could slip in unseen. A dead service has no cycle to protect; a
    // deploy waits, which is safe, until the lock file can be used.
    if (ignore_lease) return {};
    return {false, lease_lock_problem(lease_lock_file(file), ec), nullptr};
  }
  if (!lock) return {false, "a hold is being recorded right now", nullptr};
  if (!ignore_lease) {
    if (IdleAnswer lease = lease_answer(); lease.state != IdleAnswer::State::idle) return {false, lease.reason, nullptr};
  }
  return {true, {}, std::make_shared<LeaseLock>(std::move(*lock))};
}

Listeners TargetProcesses::listeners(std::uint16_t port) { return find_listeners(port); }

asio::awaitable<RunResult> TargetProcesses::start_cycle() {
  RunSpec spec = spec_for(target_.cycle->command, "cycle");
  co_return co_await run_command(std::move(spec));
}

asio::awaitable<HeadCommit> TargetActions::resolve_commit(std::string rev) {
  if (rev.size() == 40 && looks_like_commit(rev)) co_return HeadCommit{rev, {}};
  co_return HeadCommit{{}, rev + " is not a full commit SHA"};
}

asio::awaitable<HeadCommit> TargetProcesses::resolve_commit(std::string rev) {
  co_return co_await git_resolve_commit(target_.checkout, std::move(rev));
}

asio::awaitable<HeadCommit> TargetProcesses::head() { co_return co_await git_head(target_.checkout); }

asio::awaitable<RunResult> TargetProcesses::reset_to(std::string commit) {
  co_return co_await git_reset_hard(target_.checkout, std::move(commit), target_.name + " git");
}

namespace {

/// How often a deploy waiting for a fleet slot (or for etcd) asks again.
constexpr Duration kFleetPoll{500};
/// The most an etcd call may take while the deploy holds the lease or pause lock (`hold` and
/// `pause` wait for them).
constexpr Duration kUnderLocks{2000};

std::string fleet_refusal(const BadCommit& bad) { return "reverted on host " + bad.host + ": " + bad.reason; }

/// Gives a fleet slot back now, if one is held.
asio::awaitable<void> give_back(std::unique_ptr<FleetSlot>& slot) {
  if (!slot) co_return;
  co_await slot->release();
  slot.reset();
}

}  // namespace

// ---- the policy ------------------------------------------------------------------------------

/// One claimed deploy, as recorded in `.deploy-in-progress`.
struct DeployMachine::Deploy {
  std::string commit;               // what is being deployed: HEAD when it was claimed
  std::string previous_known_good;  // what a revert goes back to
  std::string record_phase;         // as written to the record
  std::string resumed_phase;        // the phase a previous run recorded, when resumed from its record
  std::string failure_reason;       // why a revert is under way
  std::string started_at;
  Clock::time_point started = Clock::now();
  Marker marker;
  RestartPermit permit;  // held from the end of the idle gate until "restarting" is recorded
  std::shared_ptr<void> pause_lock;  // likewise, from the last look at the pause
  bool waited = false;  // a pause, the window or min_interval held it: HEAD may have moved since the claim
  std::string claim_note;  // the "claimed deploy" log line, until it is logged (after the spawn, when no wait comes first)
  bool recovery = false;  // a revert of a down production, not of a deploy
  bool operator_revert = false;  // asked for by `deploy-sentinel revert`: previous_known_good is where to go
  bool revert_now = false;       // ... with --now: without waiting for idle
  unsigned long long restart_began = 0;  // clock ticks since boot when the last restart began; 0 = unknown
  pid_t preflight_pid = 0;                  // the pre-flight's shadow while it runs, for the next start's clean-up
  unsigned long long preflight_start = 0;   // its start time (clock ticks since boot)
  std::string preflight_data;               // its {data}
  bool preflight_passed = false;            // the pre-flight vouched for `commit`
  bool ignore_holds = false;                // an operator's revert: pauses and windows do not hold it
  std::unique_ptr<FleetSlot> slot;          // [fleet]: the restart slot, from before the restart to the outcome
  std::int64_t fleet_lease = 0;             // [fleet]: its lease, recorded (a stopped run's, when resumed)
  bool group_knows = false;                 // [fleet]: another host recorded `commit` as bad already
  // The idle gate's quiet period, kept from one pass of the gate to the next while the agent is
  // watched in between (a wait for a fleet slot watches it too), and when it was last watched.
  std::optional<QuietTracker> quiet;
  Clock::time_point quiet_watched{};
  std::string failed_because;               // [fleet]: why `commit` failed here, to record for the group

  /// "deploy of 3f2c1a9e0b4d" or "recovery of production on 3f2c1a9e0b4d", for messages.
  std::string subject() const {
    if (!recovery) return "deploy of " + short_sha(commit);
    return "recovery of production" + (commit.empty() ? std::string() : " on " + short_sha(commit));
  }
};

DeployMachine::DeployMachine(const TargetConfig& target, const StateStore& store, TargetActions& actions,
                             asio::any_io_executor executor)
    : target_(target), store_(store), actions_(actions), wake_(std::move(executor)) {
  if (target_.window) window_.emplace(*target_.window);
}

void DeployMachine::poke() {
  poked_ = true;
  wake_.cancel();
}

MarkerCheck DeployMachine::read_marker_in_dir(std::string_view file_name) const {
  std::vector<uid_t> owners = target_.allowed_owners;
  if (owners.empty()) {
    struct stat dir {};
    if (::stat(target_.marker_dir.c_str(), &dir) == 0) owners = {dir.st_uid, 0};
  }
  return read_marker(target_.marker_dir / file_name, owners);
}

bool DeployMachine::exists(std::string_view file_name) const { return marker_present(target_.marker_dir, file_name); }

void DeployMachine::enter(Phase phase, const std::string& commit, const std::string& detail) {
  const bool new_phase = phase != phase_ || status_.since.empty();
  if (new_phase) status_.since = now_utc();
  phase_ = phase;
  status_.phase = to_string(phase);
  status_.commit = commit;
  status_.detail = detail;
  status_.next_cycle = next_cycle_utc();
  if (auto ec = store_.write_status(target_.name, status_)) {
    spdlog::warn("{}: cannot write status to {}: {}", target_.name, store_.dir().string(), ec.message());
  }
  report_transition({target_.name, status_.phase, commit, detail, ""}, new_phase);
}

void DeployMachine::finish(const Outcome& outcome) {
  // Written at once, so whoever sees the outcome finds it there; fsynced on a thread of its own,
  // after the previous line's (a rotation in between would leave that one unsynced).
  if (history_sync_.valid()) history_sync_.wait();
  if (auto ec = store_.append_history(target_.name, outcome, false)) {
    spdlog::warn("{}: cannot append to history in {}: {}", target_.name, store_.dir().string(), ec.message());
  } else {
    // The store by value: a thread still running at shutdown must not outlive what it uses.
    history_sync_ = in_background([store = store_, name = target_.name] { store.sync_history(name); });
  }
  if (outcome.result != "rejected" && !outcome.result.starts_with("cycle")) status_.last_outcome = outcome;
  if (fleet_ && !outcome.result.starts_with("cycle")) fleet_->publish(target_.name, outcome, status_.last_known_good);
  after_outcome(outcome);
  report_transition({target_.name, status_.phase, outcome.commit, outcome.reason, outcome.result}, false);
  // A marker refused by the start-up look at the disk: still starting until that look is done.
  enter(phase_ == Phase::starting ? Phase::starting : Phase::watching, "", "");
}

boost::system::error_code DeployMachine::write_record(const Deploy& deploy, bool durable, fs::path* old_left_at) {
  json::object doc{{"phase", deploy.record_phase},
                   {"commit", deploy.commit},
                   {"previous_known_good", deploy.previous_known_good},
                   {"reason", deploy.failure_reason},
                   {"pid", ::getpid()},
                   {"boot_id", boot_id()},
                   {"marker_commit", deploy.marker.commit},
                   {"started_at", deploy.started_at},
                   {"updated_at", now_utc()},
                   {"marker", deploy.marker.text},
                   {"staged_by", deploy.marker.staged_by},
                   {"message", deploy.marker.message},
                   {"recovery", deploy.recovery},
                   {"restart_began_ticks", deploy.restart_began}};
  if (deploy.fleet_lease != 0) doc["fleet_lease"] = std::to_string(deploy.fleet_lease);
  if (deploy.preflight_pid > 0) {
    doc["preflight_pid"] = deploy.preflight_pid;
    doc["preflight_pid_start"] = deploy.preflight_start;
    doc["preflight_data"] = deploy.preflight_data;
  }
  const fs::path file = target_.marker_dir / marker_file::in_progress;
  const std::string text = json::serialize(doc) + "\n";
  auto ec = old_left_at ? swap_file_in(file, text, *old_left_at) : write_file_atomic(file, text, durable);
  if (ec && ec.message() != record_error_) {  // logged once while it lasts (a full disk)
    spdlog::error("{}: cannot update the deploy record {}: {}", target_.name, file.string(), ec.message());
  }
  record_error_ = ec ? ec.message() : std::string();
  return ec;
}

DeployMachine::Next DeployMachine::reject(std::string_view file_name, const std::string& reason,
                                          const std::string& text, const std::string& commit) {
  if (auto ec = reject_marker(target_.marker_dir, file_name, reason, text)) {
    spdlog::error("{}: while refusing a marker in {}: {}", target_.name, target_.marker_dir.string(), ec.message());
  }
  spdlog::warn("{}: refused the staged deploy: {} (moved to {})", target_.name, reason, marker_file::rejected_marker);
  finish(Outcome{"rejected", commit, reason, now_utc(), {}});
  if (!exists(file_name)) return Next::refused;
  // Still there: looking again at once would refuse it again, forever.
  stuck("cannot move the refused marker aside in " + target_.marker_dir.string());
  return Next::stuck;
}

void DeployMachine::stuck(const std::string& why) {
  if (why != stuck_reason_) {
    spdlog::error("{}: {}; trying again every {}", target_.name, why, format_duration(retry_after_));
    stuck_reason_ = why;
  }
}

/// Thrown out of a wait once a stop was requested, to unwind the deploy to run().
struct DeployMachine::StopRequested {};

/// Thrown when the record cannot be written before a deploy's restart (a full disk): the deploy
/// does not start, and stays pending on disk until the record can be written.
struct DeployMachine::RecordUnwritable {
  std::string why;
};

void DeployMachine::request_stop() {
  stopping_ = true;
  wake_.cancel();
  if (sleeping_ != nullptr) sleeping_->cancel();
}

asio::awaitable<void> DeployMachine::sleep_for(Duration d) {
  if (stopping_) throw StopRequested{};
  asio::steady_timer timer(co_await asio::this_coro::executor, d);
  sleeping_ = &timer;
  co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
  sleeping_ = nullptr;
  if (stopping_) throw StopRequested{};
}

asio::awaitable<void> DeployMachine::wait_for_poke(Clock::time_point until) {
  if (!poked_ && !stopping_) {
    wake_.expires_at(until);
    co_await wake_.async_wait(asio::as_tuple(asio::use_awaitable));
  }
  if (stopping_) throw StopRequested{};
  poked_ = false;
}

asio::awaitable<void> DeployMachine::start_up() {
  enter(Phase::starting, "", "");
  clean_up_after_preflight();
  if (fleet_) record_pending_bad_commit();
  if (target_.preflight && !target_.preflight->isolate) {
    spdlog::warn("{}: [target.preflight] isolate = false: pre-flights run WITHOUT a sandbox, with this host's "
                 "network and file system; a staged commit can reach whatever production can", target_.name);
  } else if (target_.preflight) {
    std::string problem = co_await isolation_problem();
    if (!problem.empty()) {
      const std::string why = "[target.preflight] needs namespaces (isolate = true), but " + problem +
                              "; install bubblewrap and run the sentinel with the privilege to create namespaces, "
                              "or set isolate = false";
      spdlog::error("{}: refused: {}", target_.name, why);
      enter(Phase::quarantined, "", why);
      for (;;) co_await wait_for_poke();  // never deploys unisolated; ends with request_stop()
    }
  }
  std::error_code link_error;
  marker_dir_was_link_ = fs::is_symlink(target_.marker_dir, link_error);
  KnownGood known_good = store_.read_known_good(target_.name);
  if (!known_good.problem.empty()) spdlog::error("{}: {}", target_.name, known_good.problem);
  status_.last_known_good = known_good.commit;
  if (auto url = parse_http_url(target_.health.url)) confirm_port_ = url->port;
  status_.confirm = confirm_description();
  if (auto previous = store_.read_status(target_.name)) status_.last_outcome = previous->last_outcome;
  if (status_.last_known_good.empty()) co_await adopt_running_commit();
  const auto now = Clock::now();
  if (target_.cycle) {
    schedule_.emplace(target_.cycle->every, target_.cycle->jitter, std::random_device{}());
    schedule_->start(now);
  }
  if (target_.monitor) {
    monitor_.emplace(target_.monitor->failures, target_.monitor->max_recoveries, target_.monitor->window);
    next_probe_ = now + target_.monitor->interval;
  }
  running_commit_ = status_.last_known_good.empty() ? fallback_commit_ : status_.last_known_good;
  status_.next_cycle = next_cycle_utc();
  store_.write_status(target_.name, status_);  // with the schedule before "watching" is logged (a failure: the next enter says)
  spdlog::info("{}: watching {}; last known-good commit: {}", target_.name, target_.marker_dir.string(),
               status_.last_known_good.empty() ? "none yet" : short_sha(status_.last_known_good));
}

void DeployMachine::clean_up_after_preflight() {
  // A run that was killed during a pre-flight names its shadow in the record.
  pid_t pid = 0;
  unsigned long long start = 0;
  boost::system::error_code ec;
  json::value doc = json::parse(read_small_file(target_.marker_dir / marker_file::in_progress, ec), ec);
  if (!ec && doc.is_object()) {
    const auto& obj = doc.as_object();
    if (auto it = obj.find("preflight_pid"); it != obj.end() && it->value().is_int64()) {
      pid = static_cast<pid_t>(it->value().as_int64());
    }
    if (auto it = obj.find("preflight_pid_start"); it != obj.end()) {
      if (auto ticks = it->value().if_uint64()) start = *ticks;
      if (auto ticks = it->value().if_int64(); ticks && *ticks > 0) start = static_cast<unsigned long long>(*ticks);
    }
  }
  if (const int removed = clean_up_preflights(store_.dir(), target_.name, pid, start); removed > 0) {
    spdlog::warn("{}: removed {} pre-flight data director{} a previous run left behind", target_.name, removed,
                 removed == 1 ? "y" : "ies");
  }
}

asio::awaitable<void> DeployMachine::adopt_running_commit() {
  HeadCommit head = co_await actions_.head();
  if (!head.error.empty()) {
    spdlog::warn("{}: no known-good commit recorded, and {}", target_.name, head.error);
    co_return;
  }
  if (exists(marker_file::ready) || exists(marker_file::in_progress)) {
    spdlog::warn("{}: no known-good commit recorded, and a deploy is already staged, so HEAD {} may not be what "
                 "runs: a failed deploy cannot be reverted until one deploy has succeeded",
                 target_.name, short_sha(head.commit));
    co_return;
  }
  fallback_commit_ = head.commit;
  ProbeResult probe = co_await actions_.probe();
  if (!probe.healthy) {
    spdlog::warn("{}: no known-good commit recorded and production is not healthy at start-up ({}); "
                 "HEAD {} is the revert target but is not recorded as known-good",
                 target_.name, probe.reason, short_sha(head.commit));
    co_return;
  }
  if (auto ec = store_.set_known_good(target_.name, head.commit)) {
    spdlog::error("{}: cannot record the known-good commit: {}", target_.name, ec.message());
    co_return;
  }
  status_.last_known_good = head.commit;
  spdlog::info("{}: production is healthy at start-up; recorded HEAD {} as the known-good commit", target_.name,
               short_sha(head.commit));
}

asio::awaitable<void> DeployMachine::run() {
  for (;;) {
    std::string failure;
    try {
      co_await serve();
    } catch (const StopRequested&) {
      if (exists(marker_file::in_progress)) {
        spdlog::info("{}: stopped; the deploy in progress stays recorded and resumes at the next start", target_.name);
      } else {
        spdlog::info("{}: stopped", target_.name);
      }
      co_return;
    } catch (const std::exception& e) {
      failure = e.what();
    }
    // A bug or an unexpected system error must not stop this target for good: its record is on
    // disk, and starting over resumes from it.
    spdlog::critical("{}: internal error: {}; starting this target over in {}", target_.name, failure,
                     format_duration(retry_after_));
    try {
      co_await sleep_for(retry_after_);
    } catch (const StopRequested&) {
      co_return;
    }
  }
}

asio::awaitable<void> DeployMachine::serve() {
  co_await start_up();
  for (;;) {
    if (exists(marker_file::failed)) {
      if (phase_ != Phase::quarantined) {
        spdlog::error("{}: quarantined: {} exists; no deploys until an operator removes it", target_.name,
                      (target_.marker_dir / marker_file::failed).string());
        enter(Phase::quarantined, "", "remove " + std::string(marker_file::failed) + " to deploy again");
      }
      co_await wait_for_poke();
      continue;
    }
    if (phase_ == Phase::quarantined) {
      spdlog::info("{}: quarantine lifted; deploying again", target_.name);
      // The operator has looked: the flap limit starts afresh.
      if (monitor_) monitor_.emplace(target_.monitor->failures, target_.monitor->max_recoveries, target_.monitor->window);
    }
    poked_ = false;  // the disk is looked at now; only later changes need a new look
    Deploy deploy;
    const Next next = co_await next_deploy(deploy);
    // The first look at the disk is done: the target has started (READY=1 waits for this).
    if (phase_ == Phase::starting && next != Next::deploy) enter(Phase::watching, "", "");
    switch (next) {
      case Next::deploy:
        if (std::string unwritable = co_await carry_out_unless_unwritable(deploy); !unwritable.empty()) {
          if (unwritable != unwritable_) {
            spdlog::error("{}: {}; trying again every {}", target_.name, unwritable, format_duration(retry_after_));
          }
          unwritable_ = unwritable;
          co_await sleep_for(retry_after_);  // the deploy stays claimed on disk, resumed before its restart
        } else {
          unwritable_.clear();
        }
        break;
      case Next::refused:
        break;  // another marker may be waiting already
      case Next::nothing:
        co_await between_deploys();
        break;
      case Next::settling:
        co_await sleep_for(kSettle);
        break;
      case Next::stuck:
        co_await sleep_for(retry_after_);  // the error was logged; the marker stays where it is
        break;
    }
  }
}

asio::awaitable<std::string> DeployMachine::carry_out_unless_unwritable(Deploy& deploy) {
  try {
    co_await carry_out_and_release(deploy);
  } catch (const RecordUnwritable& e) {
    co_return e.why;
  }
  co_return std::string();
}

asio::awaitable<DeployMachine::Next> DeployMachine::next_deploy(Deploy& deploy) {
  const fs::path record = target_.marker_dir / marker_file::in_progress;
  std::error_code link_error;
  if (!marker_dir_was_link_ && fs::is_symlink(target_.marker_dir, link_error)) {
    stuck("marker directory " + target_.marker_dir.string() + " has been replaced by a symbolic link; nothing in it " +
          "is deployed until it is a directory again");
    co_return Next::stuck;
  }
  bool resumed = false;
  if (exists(marker_file::in_progress)) {
    boost::system::error_code ec;
    json::value doc = json::parse(read_small_file(record, ec), ec);
    if (!ec && doc.is_object() && doc.as_object().contains("phase")) {
      const auto& obj = doc.as_object();
      auto text = [&](std::string_view key) { return string_field(obj, key); };
      deploy.resumed_phase = text("phase");
      deploy.commit = text("commit");
      deploy.previous_known_good = text("previous_known_good");
      deploy.failure_reason = text("reason");
      deploy.started_at = text("started_at");
      deploy.marker.text = text("marker");
      deploy.marker.commit = text("marker_commit");
      deploy.marker.staged_by = text("staged_by");
      deploy.marker.message = text("message");
      deploy.recovery = obj.contains("recovery") && obj.at("recovery").is_bool() && obj.at("recovery").as_bool();
      if (const std::string lease = text("fleet_lease"); !lease.empty()) {
        std::from_chars(lease.data(), lease.data() + lease.size(), deploy.fleet_lease);
      }
      // Ticks since boot mean nothing after a reboot (and every process is new then anyway).
      if (auto it = obj.find("restart_began_ticks"); it != obj.end() && text("boot_id") == boot_id()) {
        if (auto ticks = it->value().if_uint64()) deploy.restart_began = *ticks;
        if (auto ticks = it->value().if_int64(); ticks && *ticks > 0) deploy.restart_began = static_cast<unsigned long long>(*ticks);
      }
      if (unwritable_.empty()) spdlog::warn("{}: found the deploy of {} that pid {} left in phase {}{}", target_.name, short_sha(deploy.commit),
                   obj.contains("pid") ? json::serialize(obj.at("pid")) : "?", deploy.resumed_phase,
                   text("boot_id") == boot_id() ? "" : " before a reboot");
      resumed = true;
      // From the restart on, the record's commit is what production may run: take it as it is.
      const std::string& phase = deploy.resumed_phase;
      if ((phase == "restarting" || phase == "verifying" || is_revert_phase(phase)) && looks_like_commit(deploy.commit)) {
        if (deploy.previous_known_good.empty()) deploy.previous_known_good = status_.last_known_good;
        co_return Next::deploy;
      }
      if (phase == "waiting-idle" && deploy.failure_reason.starts_with(kOperatorRevert) &&
          looks_like_commit(deploy.previous_known_good)) {
        // An operator's revert that was waiting for idle: still one (through the idle gate again).
        deploy.resumed_phase.clear();
        deploy.operator_revert = true;
        co_return Next::deploy;
      }
      deploy.resumed_phase.clear();  // before the restart: the deploy is simply still pending
    }
  } else {
    // An operator's revert goes before a staged deploy: the operator has seen what the agent did.
    if (exists(marker_file::revert_request)) co_return co_await take_revert_request(deploy);
    boost::system::error_code ec;
    if (!claim_marker(target_.marker_dir, ec)) {
      if (!ec) co_return Next::nothing;
      stuck("cannot claim " + (target_.marker_dir / marker_file::ready).string() + ": " + ec.message());
      co_return Next::stuck;
    }
  }

  if (!resumed) {
    MarkerCheck check = read_marker_in_dir(marker_file::in_progress);
    if (!check.ok) {
      // Found by a rescan rather than its close-write, a marker may still be being written: give
      // a writer that is still at it a moment before calling its marker broken.
      if (check.truncated_json && modified_within(record, kSettle)) co_return Next::settling;
      co_return reject(marker_file::in_progress, check.reason, check.marker.text, check.marker.commit);
    }
    deploy.marker = check.marker;
    deploy.started_at = now_utc();
  }
  HeadCommit head = co_await actions_.head();
  if (!head.error.empty()) {  // the checkout's fault, not the marker's: keep the claim and retry
    stuck(head.error);
    co_return Next::stuck;
  }
  stuck_reason_.clear();
  if (!deploy.marker.commit.empty() && !same_commit(head.commit, deploy.marker.commit)) {
    co_return reject(marker_file::in_progress,
                     "the marker names commit " + deploy.marker.commit + " but the checkout's HEAD is " + head.commit +
                         "; commit first, then stage (deploy-sentinel stage uses HEAD by default)",
                     deploy.marker.text, deploy.marker.commit);
  }
  if (resumed && !deploy.commit.empty() && deploy.commit != head.commit) {
    spdlog::warn("{}: HEAD moved from {} to {} since the record was written; deploying {}", target_.name,
                 short_sha(deploy.commit), short_sha(head.commit), short_sha(head.commit));
  }
  deploy.commit = head.commit;
  deploy.previous_known_good = status_.last_known_good.empty() ? fallback_commit_ : status_.last_known_good;
  // No record is written yet: until the next phase rewrites it, the claimed marker itself is
  // the record, and a claimed marker found at start-up is deployed like a new one. The claim's
  // rename is not fsynced: undone by a power cut, it leaves .deploy-ready, deployed the same way.
  // Logged once
  // the restart has started, or before waiting for idle: a synchronous log line costs the
  // restart time.
  deploy.claim_note = "claimed deploy of " + short_sha(deploy.commit) +
                      (deploy.marker.staged_by.empty() ? "" : " staged by " + deploy.marker.staged_by) +
                      (deploy.marker.message.empty() ? "" : ": \"" + one_line(deploy.marker.message) + "\"");
  co_return Next::deploy;
}

void DeployMachine::log_claim(Deploy& deploy) {
  if (deploy.claim_note.empty()) return;
  // While the record cannot be written, each retry claims the same deploy again: said once.
  if (unwritable_.empty()) spdlog::info("{}: {}", target_.name, deploy.claim_note);
  deploy.claim_note.clear();
}

asio::awaitable<DeployMachine::Gate> DeployMachine::wait_until_idle(Deploy& deploy) {
  const IdleConfig& idle = *target_.idle;
  log_claim(deploy);
  deploy.record_phase = "waiting-idle";
  write_record(deploy, false);  // a lost rewrite leaves the claimed marker, which resumes the same way
  const std::string what = "deploy of " + short_sha(deploy.commit) + " waiting: ";
  enter(Phase::waiting_idle, deploy.commit, what + "checking whether the agent is idle");
  if (unwritable_.empty()) spdlog::info("{}: waiting until the agent has been idle for {} before restarting {}", target_.name,
               format_duration(idle.quiet), short_sha(deploy.commit));
  const auto waiting_since = Clock::now();
  // An idle stretch seen up to a moment ago (by a wait for a fleet slot) still counts; one seen
  // before an unwatched wait (a pause, a closed window) does not.
  if (!deploy.quiet || Clock::now() - deploy.quiet_watched > 2 * idle.interval + Duration(1000)) {
    deploy.quiet.emplace(idle.quiet);
  }
  QuietTracker& quiet = *deploy.quiet;
  std::string last;  // the reason last shown, so each change is logged once
  bool waited_too_long = false;
  auto show = [&](const std::string& reason) {
    if (reason == last) return;
    spdlog::info("{}: {}", target_.name, reason);
    enter(Phase::waiting_idle, deploy.commit, what + reason);
    last = reason;
  };
  for (;;) {
    // A staged deploy of a down production goes at once: there is no cycle left to protect, and
    // restarting the checkout as a recovery would deploy the staged commit unrecorded.
    if (monitor_ && Clock::now() >= next_probe_) co_await monitor_probe();
    Facts facts;
    facts.deploy_pending = true;
    facts.production_down = monitor_ && monitor_->down();
    if (Decision d = decide(facts); d.action == Decision::Action::deploy_now) {
      spdlog::warn("{}: {}", target_.name, d.why);
      deploy.permit = co_await permit_without_lease();
      co_return Gate::outage;
    }
    // The window may close, or a pause begin, while the agent works: wait for them again.
    if (!deploy.ignore_holds && !holds().none()) co_return Gate::held;
    IdleAnswer answer = co_await actions_.idle();
    if (idle.max_wait && !waited_too_long && since(waiting_since) >= *idle.max_wait) {
      waited_too_long = true;
      const bool go = idle.on_max_wait == OnMaxWait::deploy;
      spdlog::warn("{}: the deploy of {} has waited {} for the agent to be idle ({}); {}", target_.name,
                   short_sha(deploy.commit), format_duration(since(waiting_since)), answer.reason,
                   go ? "deploying anyway (on_max_wait = \"deploy\"), once no lease is held"
                      : "still waiting (on_max_wait = \"keep-waiting\")");
    }
    const bool forced = waited_too_long && idle.on_max_wait == OnMaxWait::deploy;
    show(answer.reason + (answer.state == IdleAnswer::State::idle && !forced
                              ? " (restart after " + format_duration(idle.quiet) + " of idle)"
                              : ""));
    deploy.quiet_watched = Clock::now();
    if (forced || quiet.observe(answer.state, Clock::now())) {
      // Once more right before the restart, under the lease lock: a hold recorded after this
      // sees "restarting" and is refused; one recorded before it is seen here.
      IdleAnswer again = answer;
      if (!forced) again = co_await actions_.idle();  // not inside ?: (g++ 12 coroutine bug)
      if (forced || again.state == IdleAnswer::State::idle) {
        deploy.permit = actions_.permit_restart(false);
        if (deploy.permit.granted) {
          spdlog::info("{}: agent idle{} (waited {}); restarting", target_.name,
                       forced ? "ness not confirmed" : " for " + format_duration(idle.quiet),
                       format_duration(since(waiting_since)));
          if (metrics_) metrics_->idle_wait(target_.name, since(waiting_since));  // written after the restart
          co_return Gate::go;
        }
        again = IdleAnswer{IdleAnswer::State::busy, deploy.permit.why};
      }
      quiet.observe(again.state, Clock::now());
      deploy.quiet_watched = Clock::now();
      show(again.reason);
    }
    // A lease alone is never polled: its release, expiry and holder's exit all poke.
    auto until = polled(idle) ? Clock::now() + idle.interval : Clock::time_point::max();
    if (answer.state == IdleAnswer::State::idle && !forced) until = std::min(until, Clock::now() + quiet.remaining(Clock::now()));
    if (idle.max_wait && !waited_too_long) until = std::min(until, waiting_since + *idle.max_wait);
    until = std::min(until, next_probe_);
    until = std::min(until, holds().recheck);
    co_await wait_for_poke(until);
  }
}

DeployMachine::Holds DeployMachine::holds() {
  Holds h;
  const auto now = std::chrono::system_clock::now();
  const auto steady_now = Clock::now();
  auto at_steady = [&](std::chrono::system_clock::time_point t) {
    return steady_now + std::chrono::ceil<Clock::duration>(t - now);
  };
  const std::optional<Pause> pause = store_.pause(target_.name, now);
  const std::string pause_text = pause ? pause->describe() : "";
  if (pause_text != pause_noted_) {
    if (pause) {
      spdlog::warn("{}: {}; staged deploys and cycles wait until it ends, recovery of a down production still acts",
                   target_.name, pause_text);
    } else {
      spdlog::info("{}: resumed (was {})", target_.name, pause_noted_);
    }
    pause_noted_ = pause_text;
  }
  if (pause) {
    h.paused = pause_text;
    if (auto until = parse_utc(pause->until)) h.recheck = std::min(h.recheck, at_steady(*until));
  }
  if (window_) {
    const DeployWindow::State state = window_->at(now);
    if (!state.open) {
      h.held = window_->why_shut(now);
      if (state.changes_at != DeployWindow::TimePoint::max()) h.recheck = std::min(h.recheck, at_steady(state.changes_at));
    }
  }
  if (h.held.empty() && target_.min_interval > Duration::zero()) {
    if (const auto last = store_.last_deploy_restart(target_.name); last && now < *last + target_.min_interval) {
      const auto next = *last + target_.min_interval;
      h.held = "waiting for min_interval (" + format_duration(target_.min_interval) + " between deploy restarts; the last "
               "began at " + format_utc(*last) + "): restarts from " + format_utc(next);
      h.recheck = std::min(h.recheck, at_steady(next));
    }
  }
  return h;
}

asio::awaitable<DeployMachine::Gate> DeployMachine::wait_for_go_ahead(Deploy& deploy) {
  std::string told;  // the hold last logged: each is logged once when it starts
  for (;;) {
    if (monitor_ && Clock::now() >= next_probe_) co_await monitor_probe();
    const Holds h = holds();
    Facts facts;
    facts.deploy_pending = true;
    facts.production_down = monitor_ && monitor_->down();
    facts.paused = h.paused;
    facts.deploy_held = h.held;
    const Decision d = decide_restart(facts);
    if (d.action == Decision::Action::deploy_now) {
      spdlog::warn("{}: {}", target_.name, d.why);
      co_return Gate::outage;
    }
    if (d.action == Decision::Action::deploy) {
      if (!told.empty()) spdlog::info("{}: the deploy of {} may go now", target_.name, short_sha(deploy.commit));
      co_return Gate::go;
    }
    // Logged when what holds it changes, not when only its countdown does.
    const std::string kind = !h.paused.empty() ? h.paused : h.held.substr(0, h.held.find(':'));
    deploy.waited = true;
    if (kind != told) {
      log_claim(deploy);
      spdlog::info("{}: deploy of {} {}", target_.name, short_sha(deploy.commit), d.why);
      told = kind;
      deploy.record_phase = "held";
      write_record(deploy, false);  // a lost rewrite leaves the claimed marker, which resumes the same way
    }
    enter(Phase::held, deploy.commit, "deploy of " + short_sha(deploy.commit) + " " + d.why);
    co_await wait_for_poke(std::min(next_probe_, h.recheck));
  }
}

asio::awaitable<std::shared_ptr<void>> DeployMachine::lock_pause() {
  const fs::path file = store_.pause_file(target_.name);
  // `pause` holds it for the few milliseconds of writing its file: wait that long, not longer.
  for (int tries = 0;; ++tries) {
    std::error_code ec;
    std::optional<LeaseLock> lock = LeaseLock::try_acquire(file, ec);
    if (lock) co_return std::make_shared<LeaseLock>(std::move(*lock));
    if (ec || tries == 200) {
      spdlog::warn("{}: restarting without the pause lock: {}", target_.name,
                   ec ? lease_lock_problem(lease_lock_file(file), ec) : "held for more than 2 s");
      co_return nullptr;
    }
    co_await sleep_for(10ms);
  }
}

asio::awaitable<RestartPermit> DeployMachine::permit_without_lease() {
  // A hold being recorded right now is done within milliseconds: wait for it, so that it either
  // came first or sees "restarting" and is refused. A lock held longer than 2 s is not a hold.
  for (int tries = 0;; ++tries) {
    RestartPermit permit = actions_.permit_restart(true);
    if (permit.granted || tries == 200) co_return permit;
    co_await sleep_for(10ms);
  }
}

asio::awaitable<void> DeployMachine::wait_for_permit(Deploy& deploy) {
  std::string last;
  for (;;) {
    // A production left down by the interrupted restart has no cycle to protect.
    if (monitor_ && Clock::now() >= next_probe_) co_await monitor_probe();
    if (monitor_ && monitor_->down()) {
      spdlog::warn("{}: production is down: restarting {} without waiting for the lease", target_.name,
                   short_sha(deploy.commit));
      deploy.permit = co_await permit_without_lease();
      co_return;
    }
    deploy.permit = actions_.permit_restart(false);
    if (deploy.permit.granted) co_return;
    if (deploy.permit.why != last) {
      spdlog::info("{}: restart of {} held off: {}", target_.name, short_sha(deploy.commit), deploy.permit.why);
      enter(Phase::waiting_idle, deploy.commit, "restart of " + short_sha(deploy.commit) + " held off: " + deploy.permit.why);
      last = deploy.permit.why;
    }
    const Duration pause = target_.idle ? target_.idle->interval : retry_after_;
    co_await wait_for_poke(std::min(Clock::now() + pause, next_probe_));
  }
}

asio::awaitable<DeployMachine::Verdict> DeployMachine::restart_and_verify(Deploy& deploy, bool reverting) {
  const fs::path record = target_.marker_dir / marker_file::in_progress;
  const std::string& commit = reverting ? deploy.previous_known_good : deploy.commit;
  // Written before the restart: a run that stops from here on restarts once more, since it cannot
  // know whether this restart happened.
  deploy.record_phase = reverting ? "restarting-reverted" : "restarting";
  deploy.restart_began = boot_ticks_now();  // recorded with the phase: a resumed verify needs it
  // Swapped in rather than renamed over the claimed marker: that rename costs the restart
  // ~100 µs (ms in the tail) on ext4. The claimed marker's old text is removed after the spawn.
  // A deploy does not start without its record (a full disk): it would be restarted again after
  // a crash. A revert goes on regardless: production is down on a failed commit.
  fs::path old_record;
  if (auto ec = write_record(deploy, false, &old_record); ec && !reverting) {
    deploy.permit = {};  // not held through the retry's wait: `hold` and `pause` go on meanwhile
    deploy.pause_lock.reset();
    throw RecordUnwritable{"cannot record the restart of " + short_sha(commit) + " in " + record.string() + " (" +
                           ec.message() + "), so the deploy waits"};
  }
  auto remove_old_record = [&old_record] {
    std::error_code ignored;
    if (!old_record.empty()) fs::remove(old_record, ignored);
    old_record.clear();
  };
  const std::string detail = reverting ? "reverting to the last known-good commit" : "";
  // Under the lease lock, "restarting" goes into the status before the restart: `hold` reads it
  // there. Without a lease nothing waits on it, so it is written once the restart has started,
  // like the log lines: the time from marker to restart is spent on the record alone. The pause
  // lock is held until then, so `pause` sees "restarting" and is refused.
  const bool status_first = deploy.permit.hold_off != nullptr;
  if (status_first) {
    enter(Phase::restarting, commit, detail);
    deploy.permit = {};  // "restarting" is recorded: a hold from now on is refused
  }
  auto after_spawn_bookkeeping = [&] {
    if (!status_first) enter(Phase::restarting, commit, detail);
    deploy.pause_lock.reset();  // "restarting" is recorded: a pause from now on is refused
    if (!reverting && !deploy.recovery) {
      if (auto ec = store_.set_last_deploy_restart(target_.name, std::chrono::system_clock::now())) {
        spdlog::warn("{}: cannot record the time of this restart (min_interval): {}", target_.name, ec.message());
      }
    }
  };
  // The record goes durable once the restart has started: fsync costs more than the spawn, and
  // the worst a power cut before it can do is one extra restart after the reboot. It is made
  // durable on a thread of its own, while the restart and the health checks run: on a busy disk
  // one fsync takes longer than a whole quick restart, and the loop has nothing to wait for.
  std::function<void()> on_started = [&] {  // named: g++ 12
    remove_old_record();
    after_spawn_bookkeeping();
    log_claim(deploy);
    spdlog::info("{}: restarting production on {}", target_.name, short_sha(commit));
    record_sync_ = in_background([record] { make_durable(record); });
    // Should the commit prove healthy, recording it as known-good then costs one fsync, not two.
    if (!reverting) {
      known_good_sync_ = in_background([store = store_, name = target_.name, c = commit] {
        store.stage_known_good(name, c);
      });
    }
  };
  RunResult r = co_await actions_.restart(std::move(on_started));
  log_claim(deploy);  // when the command could not even start
  remove_old_record();
  deploy.pause_lock.reset();
  if (!r.ok()) {
    spdlog::warn("{}: restart command {} after {}", target_.name, r.describe(), format_duration(r.elapsed));
    co_return Verdict{false, "the restart command " + r.describe(), r.tail};
  }
  // The restart is known to have happened: a run that stops from here on only verifies. Not
  // fsynced: losing it in a power cut costs one extra restart, as above.
  deploy.record_phase = reverting ? "verifying-reverted" : "verifying";
  write_record(deploy, false);
  spdlog::info("{}: restart command finished in {}; verifying health", target_.name, format_duration(r.elapsed));
  Verdict v = co_await verify(commit, deploy.restart_began);
  v.output = r.tail;
  co_return v;
}

asio::awaitable<DeployMachine::Verdict> DeployMachine::verify(const std::string& commit,
                                                              unsigned long long restart_began) {
  const HealthConfig& health = target_.health;
  confirmed_.clear();
  const auto started = Clock::now();
  const auto deadline = started + health.deadline;
  enter(Phase::verifying, commit, "grace " + format_duration(health.grace));
  co_await sleep_for(health.grace);
  int streak = 0;
  ProbeResult probe;
  for (int probes = 1;; ++probes) {
    const auto probe_started = Clock::now();
    probe = co_await actions_.probe();
    note_probe(probe.healthy, since(probe_started));
    if (probe.healthy) {
      if (std::optional<std::string> old = unconfirmed(probe, commit, restart_began)) {
        probe.healthy = false;
        probe.reason = *old;
      }
    }
    streak = probe.healthy ? streak + 1 : 0;
    spdlog::debug("{}: probe {}: {} ({}/{} in a row)", target_.name, probes, probe.reason, streak, health.successes);
    if (streak >= health.successes) {
      spdlog::info("{}: healthy: {} probes in a row after {}{}", target_.name, streak, format_duration(since(started)),
                   confirmed_.empty() ? "" : "; answered by the new process, " + confirmed_);
      co_return Verdict{true, {}, {}};
    }
    enter(Phase::verifying, commit,
          probe.reason + " (" + std::to_string(streak) + "/" + std::to_string(health.successes) + " healthy)");
    const auto next = probe_started + health.interval;
    if (next > deadline) break;
    co_await sleep_for(std::chrono::duration_cast<Duration>(std::max(next - Clock::now(), Clock::duration::zero())));
  }
  co_return Verdict{false, "not healthy within " + format_duration(health.deadline) + " (last probe: " + probe.reason + ")",
                    {}};
}

std::string DeployMachine::confirm_description() const {
  const ConfirmConfig& confirm = target_.health.confirm;
  switch (confirm.kind) {
    case ConfirmConfig::Kind::none:
      return "none (any healthy answer counts)";
    case ConfirmConfig::Kind::pointer:
      return confirm.pointer + " must be " + confirm.equals;
    case ConfirmConfig::Kind::listener:
      break;
  }
  if (!confirm_fallback_.empty()) return "none: " + confirm_fallback_;
  return "listener (the process on port " + std::to_string(confirm_port_) + " must be new)";
}

void DeployMachine::fall_back_to_no_confirmation(const std::string& why) {
  confirm_fallback_ = why;
  spdlog::warn("{}: {}; healthy answers are taken as they come from now on (confirm = \"none\")", target_.name, why);
  status_.confirm = confirm_description();
}

std::optional<std::string> DeployMachine::unconfirmed(const ProbeResult& probe, const std::string& commit,
                                                      unsigned long long restart_began) {
  const ConfirmConfig& confirm = target_.health.confirm;
  if (confirm.kind == ConfirmConfig::Kind::pointer) {
    return confirm_mismatch(probe.body, confirm.pointer, confirm.equals, commit);
  }
  if (confirm.kind != ConfirmConfig::Kind::listener || !confirm_fallback_.empty() || restart_began == 0) {
    return std::nullopt;
  }
  const std::string port = std::to_string(confirm_port_);
  Listeners now = actions_.listeners(confirm_port_);
  // One unseeable answer may be a race (an owner exiting mid-scan) or a passing netlink error:
  // give up on the listener only when it repeats, and until then count the probe as unconfirmed.
  std::string unseen;
  switch (now.result) {
    case Listeners::Result::nobody:
      unseen = "port " + port + " answers but no listening socket on it can be seen here (served from another "
               "network namespace? then set confirm to a pointer or \"none\")";
      break;
    case Listeners::Result::hidden:
      unseen = "cannot see which process listens on port " + port + ": " + now.error;
      break;
    case Listeners::Result::error:
      unseen = "cannot ask the kernel who listens on port " + port + ": " + now.error;
      break;
    case Listeners::Result::found:
      break;
  }
  if (!unseen.empty()) {
    if (++unseen_in_a_row_ >= kUnseenBeforeFallback) fall_back_to_no_confirmation(unseen);
    return unseen_in_a_row_ >= kUnseenBeforeFallback ? std::nullopt : std::optional<std::string>(unseen);
  }
  unseen_in_a_row_ = 0;
  // New only when some owner started after the restart began and no other owner (pid 1 holding
  // the socket for socket activation aside) is older: a child the old server forked for the probe
  // is new, but its old parent still holds the socket.
  const ListeningProcess* fresh = nullptr;
  const ListeningProcess* old = nullptr;
  for (const ListeningProcess& owner : now.owners) {
    if (owner.start_ticks >= restart_began) {
      if (fresh == nullptr) fresh = &owner;
    } else if (owner.pid != 1 && (old == nullptr || owner.start_ticks < old->start_ticks)) {
      old = &owner;
    }
  }
  if (fresh != nullptr && old == nullptr) {
    confirmed_ = describe_process(*fresh);
    return std::nullopt;
  }
  if (old == nullptr) {  // only pid 1
    fall_back_to_no_confirmation("port " + port + " is held by pid 1 alone (socket activation), so the old and the "
                                 "new process cannot be told apart by the listener");
    return std::nullopt;
  }
  return "port " + port + " is still served by pid " + std::to_string(old->pid) + " (" + old->name + "), started " +
         format_duration(ticks_to_duration(restart_began - old->start_ticks)) +
         " before the restart: " + std::string(kNotReplaced);
}

// ---- between deploys ------------------------------------------------------------------------

void DeployMachine::note_waiting(const std::string& why) {
  if (why != waiting_for_) spdlog::debug("{}: {}", target_.name, why);
  waiting_for_ = why;
  if (phase_ != Phase::watching || status_.detail != why) enter(Phase::watching, "", why);
}

DeployMachine::Clock::time_point DeployMachine::next_look() const {
  const auto now = Clock::now();
  auto next = next_probe_;
  if (schedule_ && !schedule_->due(now)) next = std::min(next, schedule_->next_due());
  if (schedule_ && schedule_->due(now) && cycle_retry_at_ > now) next = std::min(next, cycle_retry_at_);
  return next;
}

asio::awaitable<ProbeResult> DeployMachine::monitor_probe() {
  const auto probe_started = Clock::now();
  ProbeResult probe = co_await actions_.probe();
  const auto now = Clock::now();
  note_probe(probe.healthy, since(probe_started));
  next_probe_ = now + target_.monitor->interval;
  switch (monitor_->observe(probe.healthy, probe.reason, now)) {
    case HealthMonitor::Change::went_down: {
      const auto down_for = std::chrono::duration_cast<std::chrono::system_clock::duration>(now - monitor_->failing_since());
      spdlog::error("{}: unhealthy since {} ({} probes: {})", target_.name,
                    format_utc(std::chrono::system_clock::now() - down_for), monitor_->failed_probes(), probe.reason);
      break;
    }
    case HealthMonitor::Change::came_back:
      spdlog::info("{}: healthy again after {} ({})", target_.name, format_duration(since(monitor_->failing_since())),
                   probe.reason);
      break;
    case HealthMonitor::Change::none:
      if (!probe.healthy) spdlog::debug("{}: probe failed: {}", target_.name, probe.reason);
      break;
  }
  co_return probe;
}

asio::awaitable<void> DeployMachine::between_deploys() {
  Facts facts;
  if (monitor_ && Clock::now() >= next_probe_) {
    ProbeResult probe = co_await monitor_probe();
    facts.healthy = probe.healthy;
  }
  const auto now = Clock::now();
  facts.production_down = monitor_ && monitor_->down();
  facts.may_recover = !monitor_ || monitor_->may_recover(now);
  facts.cycle_due = schedule_ && schedule_->due(now) && now >= cycle_retry_at_;
  const Holds h = holds();
  facts.paused = h.paused;
  std::string agent_reason;
  for (;;) {
    // Looked at before every decision: a marker staged while a probe or an idle check was under
    // way must stop a cycle from starting.
    facts.deploy_pending = poked_ || exists(marker_file::ready) || exists(marker_file::in_progress) ||
                           exists(marker_file::revert_request);
    const Decision d = decide(facts);
    switch (d.action) {
      case Decision::Action::probe_health: {
        ProbeResult probe;
        if (monitor_) {
          probe = co_await monitor_probe();
        } else {
          probe = co_await actions_.probe();
        }
        facts.healthy = probe.healthy;
        facts.production_down = monitor_ && monitor_->down();
        continue;
      }
      case Decision::Action::ask_agent: {
        IdleAnswer answer{IdleAnswer::State::idle, ""};
        if (target_.idle) answer = co_await actions_.idle();
        facts.agent = answer.state;
        agent_reason = answer.reason;
        continue;
      }
      case Decision::Action::start_cycle:
        co_await start_cycle();
        co_return;
      case Decision::Action::recover:
        co_await recover();
        co_return;
      case Decision::Action::give_up:
        give_up_recovering();
        co_return;
      case Decision::Action::deploy:
      case Decision::Action::deploy_now:
        co_return;  // a marker is there: the caller claims it
      case Decision::Action::wait:
        break;
    }
    std::string why = d.why;
    auto until = next_look();
    if (!facts.paused.empty()) {  // a pause that ends by itself lets the cycle go then
      until = std::min(until, h.recheck);
      note_waiting(why);
      co_await wait_for_poke(until);
      co_return;
    }
    if (facts.cycle_due) {
      // Held off: look again after a while (a lease's release pokes earlier).
      if (!agent_reason.empty()) why += " (" + agent_reason + ")";
      if (facts.agent && target_.idle) {
        if (polled(*target_.idle)) until = std::min(until, Clock::now() + target_.idle->interval);
      } else {
        until = std::min(until, Clock::now() + (target_.monitor ? target_.monitor->interval : target_.health.interval));
      }
    } else if (schedule_ && schedule_->due(Clock::now()) && Clock::now() >= cycle_retry_at_) {
      co_return;  // fell due since the facts were gathered: decide again now, not at the next poke
    } else if (schedule_ && schedule_->due(Clock::now())) {
      why = "cycle due, waiting: the cycle command " + cycle_failure_ + "; trying again shortly";
    } else if (schedule_) {
      why += "; next cycle at " + format_utc(std::chrono::system_clock::now() +
                                             std::chrono::duration_cast<std::chrono::system_clock::duration>(
                                                 schedule_->next_due() - Clock::now()));
    }
    note_waiting(why);
    co_await wait_for_poke(until);
    co_return;
  }
}

asio::awaitable<void> DeployMachine::start_cycle() {
  const bool owed = schedule_->owed();
  spdlog::info("{}: starting a cycle{}", target_.name, owed ? " (owed since the last revert or recovery)" : "");
  enter(Phase::watching, "", "starting a cycle");
  RunResult r = co_await actions_.start_cycle();
  const auto now = Clock::now();
  if (!r.ok()) {
    // Not started: the cycle stays due (and owed) and is tried again shortly.
    // Tried again after the retry delay, or sooner when cycles are that frequent.
    const Duration retry = std::min(retry_after_, std::max(target_.cycle->every, Duration(1000)));
    cycle_retry_at_ = now + retry;
    if (r.describe() != cycle_failure_) {
      finish(Outcome{"cycle-failed", "", "the cycle command " + r.describe(), now_utc(), {}});  // once, as logged
      spdlog::warn("{}: the cycle command {}{}; trying again every {} while the cycle is due", target_.name,
                   r.describe(), r.tail.empty() ? "" : " (" + one_line(r.tail.back()) + ")", format_duration(retry));
      cycle_failure_ = r.describe();
    }
    co_return;
  }
  if (!cycle_failure_.empty()) spdlog::info("{}: the cycle command works again", target_.name);
  cycle_failure_.clear();
  schedule_->started(now);
  // Recorded before it is logged: whoever reads the log line finds the history written.
  finish(Outcome{"cycle", "", owed ? "owed since the last revert or recovery" : "scheduled", now_utc(), {}});
  spdlog::info("{}: cycle started; the next one is due in {}", target_.name,
               format_duration(std::chrono::duration_cast<Duration>(schedule_->next_due() - now)));
}

void DeployMachine::after_outcome(const Outcome& outcome) {
  HookEvent event{outcome.result, outcome.commit, running_commit_, outcome.reason};
  if (outcome.result == "reverted") {
    event.commit = status_.last_known_good;  // what production runs now
    event.previous = outcome.commit;         // what the revert undid
    running_commit_ = status_.last_known_good;
  } else if ((outcome.result == "deployed" || outcome.result == "recovered") && !outcome.commit.empty()) {
    running_commit_ = outcome.commit;
  }
  start_hook(wake_.get_executor(), target_, event);
  if (metrics_) {
    metrics_->outcome(target_.name, outcome.result, std::chrono::system_clock::now());
    metrics_->write();
  }
}

void DeployMachine::note_probe(bool healthy, Duration latency) {
  if (!metrics_) return;
  metrics_->probe(target_.name, healthy, latency);
  metrics_->write();
}

std::string DeployMachine::next_cycle_utc() const {
  if (!schedule_) return {};
  const auto now = Clock::now();
  if (schedule_->due(now)) return now_utc();
  return format_utc(std::chrono::system_clock::now() +
                    std::chrono::duration_cast<std::chrono::system_clock::duration>(schedule_->next_due() - now));
}

asio::awaitable<void> DeployMachine::recover() {
  const auto started = Clock::now();
  monitor_->recovery_started(started);
  const std::string down_since = format_utc(std::chrono::system_clock::now() -
      std::chrono::duration_cast<std::chrono::system_clock::duration>(started - monitor_->failing_since()));
  const std::string down = "production has been down since " + down_since + " (" +
                           std::to_string(monitor_->failed_probes()) + " probes: " + monitor_->last_reason() + ")";
  HeadCommit head = co_await actions_.head();
  const std::string commit = head.error.empty() ? head.commit : "";
  // Nobody may hold a lease through a restart, recovery included: take the lock while the
  // phase is recorded, but do not wait for a lease (the agent died with the service).
  RestartPermit permit = co_await permit_without_lease();
  enter(Phase::restarting, commit, "recovering: " + down);
  permit = {};
  const Holds h = holds();
  std::string ignoring;  // recovery goes ahead of the operator's controls: say so
  if (!h.paused.empty()) ignoring = "the pause (" + h.paused + ")";
  if (!h.held.empty()) ignoring += (ignoring.empty() ? "" : " and ") + h.held;
  spdlog::warn("{}: {}; restarting it without waiting for idle: a dead service has no cycle to protect{}", target_.name,
               down, ignoring.empty() ? "" : "; ignoring " + ignoring + ": a down service is worse than an off-hours restart");
  std::function<void()> nothing_to_record = [] {};
  const unsigned long long began = boot_ticks_now();
  RunResult r = co_await actions_.restart(std::move(nothing_to_record));
  Verdict verdict;
  if (r.ok()) {
    verdict = co_await verify(commit, began);
  } else {
    verdict = Verdict{false, "the restart command " + r.describe(), r.tail};
  }
  if (verdict.ok) {
    monitor_->reset();
    next_probe_ = Clock::now() + target_.monitor->interval;
    spdlog::info("{}: healthy again after {} (recovered by a restart)", target_.name,
                 format_duration(since(monitor_->failing_since())));
    finish(Outcome{"recovered", commit, down, now_utc(), confirmed_});
    if (target_.cycle && target_.cycle->after_recovery) schedule_->owe();
    co_return;
  }
  // The restart did not help: the code may be what is broken. Go back to the last known-good.
  Deploy deploy;
  deploy.recovery = true;
  deploy.commit = commit;
  deploy.previous_known_good = status_.last_known_good.empty() ? fallback_commit_ : status_.last_known_good;
  deploy.started_at = now_utc();
  Verdict failure{false, down + ", and restarting it did not help: " + verdict.reason, verdict.output};
  co_await revert(deploy, std::move(failure));
  monitor_->reset();
  next_probe_ = Clock::now() + target_.monitor->interval;
}

void DeployMachine::give_up_recovering() {
  const std::string why = "production went down again after " + std::to_string(target_.monitor->max_recoveries) +
                          " recoveries within " + format_duration(target_.monitor->window) + " (last: " +
                          monitor_->last_reason() + "); it is flapping, so the sentinel stops acting on it";
  json::object doc{{"reason", why}, {"at", now_utc()}, {"last_known_good", status_.last_known_good}};
  const fs::path file = target_.marker_dir / marker_file::failed;
  if (auto ec = write_file_atomic(file, json::serialize(doc) + "\n", true)) {
    spdlog::critical("{}: cannot write {}: {}", target_.name, file.string(), ec.message());
  }
  spdlog::critical("{}: {}; look at it, then remove {} to let the sentinel act again", target_.name, why,
                   file.string());
  finish(Outcome{"failed", "", why, now_utc(), {}});
  enter(Phase::quarantined, "", why);
}

asio::awaitable<void> DeployMachine::carry_out(Deploy& deploy) {
  if (deploy.operator_revert) {
    co_await operator_revert(deploy);
    co_return;
  }
  const std::string& resumed = deploy.resumed_phase;
  if (is_revert_phase(resumed) || resumed == "verifying") {
    // The stopped run's slot, if its lease still lives: a revert from here on restarts production.
    // Without it (etcd unreachable, or the lease ran out) this goes on all the same: production is
    // in the middle of a deploy that was already under way.
    if (fleet_) co_await adopt_fleet_slot(deploy);
    // Production may be replaced again from here on: record that under the lease lock first, so
    // that a hold from now on is refused (one taken while no sentinel ran was too early to see it).
    RestartPermit permit = co_await permit_without_lease();
    enter(resumed == "verifying" ? Phase::verifying : Phase::reverting, deploy.commit,
          "resuming after the sentinel stopped");
  }
  if (is_revert_phase(resumed)) {
    if (resumed != "verifying-reverted") {
      spdlog::warn("{}: the sentinel stopped while reverting {} to {}; redoing the whole revert", target_.name,
                   short_sha(deploy.commit), short_sha(deploy.previous_known_good));
    }
    Verdict failure{false, deploy.failure_reason, {}};
    if (failure.reason.empty()) failure.reason = "the deploy failed (the reason was lost when the sentinel stopped)";
    co_await revert(deploy, std::move(failure));  // a named local: g++ 12 mishandles temporaries here
    co_return;
  }
  Verdict verdict;
  if (resumed == "verifying") {
    spdlog::warn("{}: the sentinel stopped while verifying {}; verifying it again without another restart",
                 target_.name, short_sha(deploy.commit));
    deploy.record_phase = "verifying";
    write_record(deploy, false);
    verdict = co_await verify(deploy.commit, deploy.restart_began);
  } else {
    if (resumed == "restarting") {
      spdlog::warn("{}: the sentinel stopped while restarting {}, so that restart's outcome is unknown: restarting "
                   "once more",
                   target_.name, short_sha(deploy.commit));
      if (fleet_) co_await adopt_fleet_slot(deploy);
      for (;;) {
        if (fleet_ && deploy.slot && !deploy.slot->valid()) fleet_->release_later(std::move(deploy.slot));
        co_await wait_for_permit(deploy);
        if (!fleet_) break;
        Gate now = Gate::held;
        if (deploy.slot) {
          now = co_await check_under_slot(deploy);  // the stopped run's slot: the commit may have failed elsewhere since
        } else {
          now = co_await take_fleet_slot(deploy);
        }
        if (now == Gate::go) break;
        const Gate next = co_await wait_after_no_slot(deploy, now);
        if (next == Gate::over) co_return;
        if (next == Gate::outage) break;
      }
      const std::string interrupted = deploy.commit;
      HeadCommit head = co_await actions_.head();
      if (head.error.empty() && head.commit != deploy.commit) {
        // A pre-flight (or the marker's commit) vouched for the commit of the record, not for HEAD.
        if (target_.preflight || !deploy.marker.commit.empty()) {
          deploy.permit = {};
          reject(marker_file::in_progress,
                 "HEAD moved from " + deploy.commit + " to " + head.commit + " while the sentinel was stopped in the "
                 "middle of its restart; stage again",
                 deploy.marker.text, deploy.marker.commit);
          co_return;
        }
        spdlog::warn("{}: HEAD moved from {} to {} since the interrupted restart; restarting on {}", target_.name,
                     short_sha(deploy.commit), short_sha(head.commit), short_sha(head.commit));
        deploy.commit = head.commit;
      }
      if (fleet_ && deploy.slot && deploy.commit != interrupted) {
        const bool refused = co_await refused_by_fleet(deploy, true);  // the slot was taken for the other commit
        if (refused) co_return;
      }
    } else {
      if (fleet_) {
        // Asked again under the slot; asked now so as not to wait for idle for a commit known bad.
        const bool refused = co_await refused_by_fleet(deploy, false);
        if (refused) co_return;
      }
      bool watched_meanwhile = false;  // the agent was watched since the last pass (a wait for a fleet slot)
      for (;;) {
        if (!watched_meanwhile) deploy.quiet.reset();  // a quiet period counts only if watched throughout
        watched_meanwhile = false;
        const Gate ahead = co_await wait_for_go_ahead(deploy);
        if (ahead == Gate::outage) {
          deploy.permit = co_await permit_without_lease();
          break;
        }
        if (target_.idle || (target_.preflight && !deploy.preflight_passed)) {
          const Gate idle = co_await preflight_and_idle(deploy);
          if (idle == Gate::over) co_return;
          if (idle == Gate::held) continue;
          if (idle == Gate::outage) break;
        }
        // Once more under the pause lock: a pause recorded after this look sees "restarting" and is refused.
        deploy.pause_lock = co_await lock_pause();
        if (holds().none()) {
          if (!fleet_) break;
          // Taken only now, right before the restart and under the locks, so that it is never held
          // through a wait (a pause, a window, an agent's cycle) while other hosts wait for it.
          const Gate now = co_await take_fleet_slot(deploy);
          if (now == Gate::go) break;
          // None is free: `hold` and `pause` go on while this waits; then through the gates again.
          const Gate next = co_await wait_after_no_slot(deploy, now);
          if (next == Gate::over) co_return;
          if (next == Gate::outage) break;
          watched_meanwhile = true;
          continue;
        }
        deploy.pause_lock.reset();
        deploy.permit = {};
      }
      // The agent may have committed while we waited (without a wait HEAD was read just now).
      HeadCommit head;
      if (target_.idle || target_.preflight || deploy.waited) head = co_await actions_.head();
      if (head.error.empty() && !head.commit.empty() && head.commit != deploy.commit) {
        // A pre-flight vouches for the commit it ran, not for the one HEAD moved to.
        if (!deploy.marker.commit.empty() || target_.preflight) {
          deploy.permit = {};
          deploy.pause_lock.reset();
          reject(marker_file::in_progress,
                 "HEAD moved from " + deploy.commit + " to " + head.commit + " while waiting for idle; stage again",
                 deploy.marker.text, deploy.marker.commit);
          co_return;
        }
        spdlog::info("{}: HEAD moved from {} to {} while waiting for idle; deploying {}", target_.name,
                     short_sha(deploy.commit), short_sha(head.commit), short_sha(head.commit));
        deploy.commit = head.commit;
        if (deploy.slot) {
          const bool refused = co_await refused_by_fleet(deploy, true);  // the slot was taken for the other commit
          if (refused) co_return;
        }
      }
    }
    verdict = co_await restart_and_verify(deploy, false);
  }
  if (!verdict.ok) {
    co_await revert(deploy, std::move(verdict));
    co_return;
  }
  if (known_good_sync_.valid()) known_good_sync_.get();  // staged during the restart and the checks, if it was
  if (auto ec = store_.promote_known_good(target_.name, deploy.commit)) {
    spdlog::error("{}: deployed {} but cannot record it as known-good: {}", target_.name, short_sha(deploy.commit),
                  ec.message());
  } else {
    status_.last_known_good = deploy.commit;
  }
  std::error_code ignored;
  fs::remove(target_.marker_dir / marker_file::reverted, ignored);
  fs::remove(target_.marker_dir / marker_file::in_progress, ignored);
  if (monitor_) monitor_->reset();  // just verified healthy: earlier failed probes are history
  // Recorded before it is logged: whoever reads the log line finds the history written.
  finish(Outcome{"deployed", deploy.commit, "", now_utc(), confirmed_});
  spdlog::info("{}: deployed {} in {}", target_.name, short_sha(deploy.commit), format_duration(since(deploy.started)));
}

// ---- fleet -------------------------------------------------------------------------------------


asio::awaitable<DeployMachine::Gate> DeployMachine::take_fleet_slot(Deploy& deploy) {
  const FleetConfig& fleet = fleet_->config();
  Fleet::Attempt attempt;
  try {
    auto take = within(fleet_->try_take_slot(target_.name, deploy.commit, deploy.fleet_lease), kUnderLocks);
    attempt = co_await std::move(take);
  } catch (const EtcdError& e) {
    fleet_->forget_untaken(target_.name);  // a slot created for it after all is freed in the background
    note_etcd_trouble(e.what());
    co_return Gate::held;
  }
  note_etcd_trouble("");
  if (!attempt.slot) co_return Gate::held;
  deploy.fleet_lease = attempt.slot->lease();
  deploy.slot = std::move(attempt.slot);
  spdlog::info("{}: took fleet slot {} of {} in group {}", target_.name, deploy.slot->index(), fleet.max_restarting,
               fleet.group);
  auto check = check_under_slot(deploy);
  co_return co_await std::move(check);
}

asio::awaitable<DeployMachine::Gate> DeployMachine::check_under_slot(Deploy& deploy) {
  // An operator's revert goes away from deploy.commit: nothing to ask.
  if (deploy.operator_revert) co_return Gate::go;
  // Asked under the slot: a host that reverted this commit recorded it before giving its slot back.
  std::optional<BadCommit> bad;
  std::string unanswered;
  try {
    auto check = within(fleet_->bad_commit(deploy.commit), kUnderLocks);
    bad = co_await std::move(check);
  } catch (const EtcdError& e) {
    unanswered = e.what();
  }
  if (!unanswered.empty()) {
    // Not restarted on without the group's word: given back (in the background, the locks are held).
    note_etcd_trouble(unanswered);
    fleet_->release_later(std::move(deploy.slot));
    co_return Gate::held;
  }
  if (!bad) co_return Gate::go;
  deploy.pause_lock.reset();
  deploy.permit = {};
  deploy.group_knows = true;  // recorded by another host: not recorded again under this one's name
  const std::string refusal = fleet_refusal(*bad);
  if (deploy.resumed_phase == "restarting") {
    // The interrupted restart may have put production on the commit already: go back to known-good,
    // as after a failed deploy, under this slot.
    Verdict failure{false, refusal, {}};
    co_await revert(deploy, std::move(failure));
    co_return Gate::over;
  }
  co_await give_back(deploy.slot);
  auto refuse = reject_commit(deploy, refusal, "fleet", {});  // named: g++ 12
  co_await std::move(refuse);
  co_return Gate::over;
}

void DeployMachine::note_etcd_trouble(const std::string& trouble) {
  if (trouble.empty()) {
    if (!etcd_trouble_.empty()) spdlog::info("{}: etcd answers again", target_.name);
  } else if (etcd_trouble_.empty()) {
    spdlog::error("{}: etcd unreachable ({}); no deploy restarts until it answers", target_.name, trouble);
  }
  etcd_trouble_ = trouble;
}

asio::awaitable<DeployMachine::Gate> DeployMachine::wait_for_fleet_slot(Deploy& deploy) {
  const FleetConfig& fleet = fleet_->config();
  std::string last;
  Clock::time_point next_look{}, next_idle_check{};
  for (;;) {
    // A production that went down meanwhile has no capacity left to protect.
    if (monitor_ && Clock::now() >= next_probe_) co_await monitor_probe();
    if (monitor_ && monitor_->down()) co_return Gate::outage;
    // The agent is watched meanwhile, so that an idle stretch that lasts through the wait counts
    // toward the idle gate's quiet period when the gate is passed again.
    const bool watch_agent = target_.idle && deploy.quiet;
    if (watch_agent && Clock::now() >= next_idle_check) {
      IdleAnswer answer = co_await actions_.idle();
      deploy.quiet->observe(answer.state, Clock::now());
      deploy.quiet_watched = Clock::now();
      next_idle_check = Clock::now() + target_.idle->interval;
    }
    if (Clock::now() >= next_look) {
      next_look = Clock::now() + kFleetPoll;
      std::string why;
      try {
        auto look = fleet_->look_for_slot(target_.name, deploy.fleet_lease);
        const Fleet::Attempt attempt = co_await std::move(look);
        note_etcd_trouble("");
        if (attempt.free) co_return Gate::go;
        why = "held by " + attempt.held_by;
      } catch (const EtcdError& e) {
        note_etcd_trouble(e.what());
        why = "etcd unreachable, so no restart until it answers";
      }
      if (why != last) {
        log_claim(deploy);
        spdlog::info("{}: waiting for a fleet slot in group {}: {}", target_.name, fleet.group, why);
        enter(Phase::waiting_fleet, deploy.commit, "restart of " + short_sha(deploy.commit) + " waits: " + why);
        last = why;
      }
    }
    Clock::time_point until = std::min(next_look, next_probe_);
    if (watch_agent) until = std::min(until, next_idle_check);
    co_await wait_for_poke(until);
  }
}

asio::awaitable<DeployMachine::Gate> DeployMachine::wait_after_no_slot(Deploy& deploy, Gate now) {
  deploy.pause_lock.reset();
  deploy.permit = {};
  if (now == Gate::over) co_return Gate::over;
  const Gate freed = co_await wait_for_fleet_slot(deploy);
  if (freed != Gate::outage) co_return Gate::held;
  deploy.permit = co_await permit_without_lease();
  co_return Gate::outage;
}

asio::awaitable<void> DeployMachine::adopt_fleet_slot(Deploy& deploy) {
  if (deploy.fleet_lease == 0 || deploy.slot) co_return;
  try {
    auto adopt = within(fleet_->adopt_slot(target_.name, deploy.fleet_lease), kUnderLocks);
    deploy.slot = co_await std::move(adopt);
  } catch (const EtcdError& e) {
    spdlog::warn("{}: cannot ask etcd for the fleet slot the stopped run held ({}); going on without it",
                 target_.name, e.what());
  }
}

asio::awaitable<bool> DeployMachine::refused_by_fleet(Deploy& deploy, bool strict) {
  std::optional<BadCommit> bad;
  std::string unanswered;
  try {
    auto check = within(fleet_->bad_commit(deploy.commit), kUnderLocks);
    bad = co_await std::move(check);
  } catch (const EtcdError& e) {
    if (!strict) co_return false;  // asked again under the slot, which needs etcd anyway
    unanswered = e.what();
  }
  if (!unanswered.empty()) {
    deploy.permit = {};
    deploy.pause_lock.reset();
    co_await give_back(deploy.slot);
    reject(marker_file::in_progress,
           "HEAD moved to " + deploy.commit + " after the fleet slot was taken, and etcd cannot say whether the "
           "group saw it fail (" + unanswered + "); stage again",
           deploy.marker.text, deploy.marker.commit);
    co_return true;
  }
  if (!bad) co_return false;
  deploy.permit = {};
  deploy.pause_lock.reset();
  co_await give_back(deploy.slot);
  const std::string refusal = fleet_refusal(*bad);
  auto refuse = reject_commit(deploy, refusal, "fleet", {});  // named: g++ 12
  co_await std::move(refuse);
  co_return true;
}

asio::awaitable<void> DeployMachine::carry_out_and_release(Deploy& deploy) {
  std::exception_ptr error;
  bool record_unwritable = false;
  try {
    co_await carry_out(deploy);
  } catch (const RecordUnwritable&) {
    error = std::current_exception();
    record_unwritable = true;
  } catch (...) {
    error = std::current_exception();
  }
  if (fleet_ && !deploy.failed_because.empty()) {
    const std::string& group = fleet_->config().group;
    std::string trouble;
    try {
      auto mark = fleet_->mark_bad(deploy.commit, target_.name, deploy.failed_because);
      co_await std::move(mark);
      spdlog::info("{}: recorded {} as bad for group {}: the other hosts refuse it", target_.name,
                   short_sha(deploy.commit), group);
    } catch (const EtcdError& e) {
      trouble = e.what();
    }
    if (!trouble.empty()) {
      // On disk too: a sentinel stopped before etcd answers records it at its next start.
      const json::object pending{{"commit", deploy.commit}, {"reason", deploy.failed_because}};
      const fs::path file = bad_pending_file();
      if (auto ec = write_file_atomic(file, json::serialize(pending) + "\n", true)) {
        spdlog::error("{}: cannot keep the unrecorded bad commit in {}: {}", target_.name, file.string(), ec.message());
      }
      spdlog::error("{}: cannot record {} as bad for group {} in etcd yet ({}); the fleet slot is kept until it is, "
                    "so that no other host deploys it meanwhile", target_.name, short_sha(deploy.commit), group,
                    trouble);
      fleet_->mark_bad_then_release(deploy.commit, target_.name, deploy.failed_because, std::move(deploy.slot), file);
    }
  }
  // Stopped in the middle of a restart (its record says so): the slot is kept, no longer renewed,
  // and named in the record, for the next run to take back. Before the restart it is given back.
  const std::string& phase = deploy.record_phase.empty() ? deploy.resumed_phase : deploy.record_phase;
  const bool mid_restart = error && !record_unwritable && (phase == "restarting" || phase == "verifying" ||
                                                            is_revert_phase(phase));
  if (mid_restart && deploy.slot) {
    deploy.slot->keep();
    deploy.slot.reset();
  }
  co_await give_back(deploy.slot);
  if (error) std::rethrow_exception(error);
}

fs::path DeployMachine::bad_pending_file() const { return store_.target_dir(target_.name) / "fleet-bad-pending.json"; }

void DeployMachine::record_pending_bad_commit() {
  const fs::path file = bad_pending_file();
  boost::system::error_code ec;
  const std::string text = read_small_file(file, ec);
  if (ec) return;  // none
  json::value doc = json::parse(text, ec);
  if (ec || !doc.is_object() || !looks_like_commit(string_field(doc.as_object(), "commit"))) {
    spdlog::error("{}: {} is unreadable; a failed commit may not reach the fleet's record", target_.name,
                  file.string());
    return;
  }
  const std::string commit = string_field(doc.as_object(), "commit");
  spdlog::warn("{}: recording {} as bad for group {}, which a stopped run could not", target_.name, short_sha(commit),
               fleet_->config().group);
  fleet_->mark_bad_then_release(commit, target_.name, string_field(doc.as_object(), "reason"), nullptr, file);
}

asio::awaitable<void> DeployMachine::revert(Deploy& deploy, Verdict failure) {
  if (known_good_sync_.valid()) known_good_sync_.wait();  // its known-good.bak write must not race ours
  const std::string& target = deploy.previous_known_good;
  // Recorded for the fleet once the revert is over, before the slot is given back (a commit that
  // broke this host will break the others): then nothing delays the revert of a down production.
  if (!deploy.recovery && !deploy.operator_revert && !deploy.group_knows) deploy.failed_because = failure.reason;
  std::vector<std::string> revert_output;  // the last lines of the revert step that failed
  auto give_up = [&](std::string why) {
    if (why.find(kNotReplaced) != std::string::npos) {
      why += "; the old process outlived the revert's restart too, so look at the process and the restart "
             "command, not at the code (if that pid is a proxy in front of the service, or a server that "
             "re-executes itself in place, set [target.health] confirm to a /version pointer or \"none\")";
    }
    json::object doc{{"failed_commit", deploy.commit},
                     {"reverted_to", target},
                     {"reason", failure.reason},
                     {"revert_error", why},
                     {"at", now_utc()},
                     {"output", lines_json(failure.output)},
                     {"revert_output", lines_json(revert_output)}};
    const fs::path file = target_.marker_dir / marker_file::failed;
    if (auto ec = write_file_atomic(file, json::serialize(doc) + "\n", true)) {
      spdlog::critical("{}: cannot write {}: {}", target_.name, file.string(), ec.message());
    }
    std::error_code ignored;
    fs::remove(target_.marker_dir / marker_file::in_progress, ignored);
    spdlog::critical("{}: {} failed ({}) and the revert failed too: {}; deploys of this target stop until "
                     "an operator removes {}",
                     target_.name, deploy.subject(), failure.reason, why, file.string());
    finish(Outcome{"failed", deploy.commit, failure.reason + "; revert failed: " + why, now_utc(), {}});
    enter(Phase::quarantined, deploy.commit, why);
  };

  if (target.empty()) {
    spdlog::error("{}: {} failed: {}", target_.name, deploy.subject(), failure.reason);
    give_up("no known-good commit exists to revert to");
    co_return;
  }
  const auto revert_started = Clock::now();
  if (deploy.resumed_phase == "verifying-reverted") {
    // The revert's restart is known to have happened: verify it, and redo the revert only if
    // production is not healthy on the known-good commit.
    deploy.resumed_phase.clear();
    spdlog::warn("{}: the sentinel stopped while verifying the revert of {} to {}; verifying it again without "
                 "another restart", target_.name, short_sha(deploy.commit), short_sha(target));
    Verdict again = co_await verify(target, deploy.restart_began);
    if (again.ok) {
      finish_revert(deploy, failure, revert_started);
      co_return;
    }
    spdlog::warn("{}: {} is not healthy after the interrupted revert ({}); redoing the whole revert", target_.name,
                 short_sha(target), again.reason);
  }
  spdlog::warn("{}: {} failed: {}; reverting to {}", target_.name, deploy.subject(), failure.reason,
               short_sha(target));
  deploy.record_phase = "reverting";
  deploy.failure_reason = failure.reason;
  // Not fsynced: a record lost in a power cut leaves "restarting" or "verifying", whose resume
  // fails the same way and reverts again.
  write_record(deploy, false);
  enter(Phase::reverting, target, failure.reason);
  RunResult reset = co_await actions_.reset_to(target);
  if (!reset.ok()) {
    revert_output = reset.tail;
    give_up("git reset --hard " + target + " " + reset.describe());
    co_return;
  }
  if (exists(marker_file::ready)) {
    // Staged during the failed deploy, on top of the commit the reset just took away.
    const MarkerCheck staged = read_marker_in_dir(marker_file::ready);
    reject(marker_file::ready,
           (deploy.recovery ? "staged while production was down and being recovered"
                            : "staged while " + deploy.commit + " was being deployed; that deploy failed") +
               " and the checkout was reset to " + target + ", so stage again once your change is committed on top of it",
           staged.marker.text, staged.marker.commit);
  }
  if (target_.build) {
    // Not fsynced: a record lost in a power cut leaves "reverting", whose resume redoes the reset
    // and this build, which is what resuming "rebuilding" does too.
    deploy.record_phase = "rebuilding";
    write_record(deploy, false);
    enter(Phase::rebuilding, target, "");
    spdlog::info("{}: rebuilding {}", target_.name, short_sha(target));
    RunResult build = co_await actions_.build();
    if (!build.ok()) {
      revert_output = build.tail;
      give_up("the build of " + target + " " + build.describe());
      co_return;
    }
  }
  Verdict again = co_await restart_and_verify(deploy, true);
  if (!again.ok) {
    revert_output = again.output;
    give_up("after reverting to " + target + ", " + again.reason);
    co_return;
  }
  finish_revert(deploy, failure, revert_started);
}

void DeployMachine::finish_revert(const Deploy& deploy, const Verdict& failure, Clock::time_point revert_started) {
  const std::string& target = deploy.previous_known_good;
  if (target != status_.last_known_good && !store_.set_known_good(target_.name, target)) {
    status_.last_known_good = target;  // the start-up commit has now proven itself
  }
  json::object doc{{"failed_commit", deploy.commit}, {"reverted_to", target}, {"reason", failure.reason},
                   {"at", now_utc()},                {"output", lines_json(failure.output)}};
  const fs::path file = target_.marker_dir / marker_file::reverted;
  if (auto ec = write_file_atomic(file, json::serialize(doc) + "\n", true)) {
    spdlog::error("{}: cannot write {}: {}", target_.name, file.string(), ec.message());
  }
  std::error_code ignored;
  fs::remove(target_.marker_dir / marker_file::in_progress, ignored);
  finish(Outcome{"reverted", deploy.commit, failure.reason, now_utc(), confirmed_});
  spdlog::warn("{}: reverted {} to {} in {}: {}", target_.name, short_sha(deploy.commit), short_sha(target),
               format_duration(since(revert_started)), failure.reason);
  if (monitor_) monitor_->reset();
  // The agent should learn from .deploy-reverted: one cycle once production is healthy.
  if (schedule_ && target_.cycle->after_recovery) schedule_->owe();
}

// ---- pre-flight -------------------------------------------------------------------------------

/// Thrown out of a failed pre-flight, to cancel the wait for idle running beside it.
struct PreflightFailed {
  PreflightResult result;
};

/// Thrown when a newer marker is staged while a pre-flight runs: it cancels that pre-flight.
struct PreflightSuperseded {};

asio::awaitable<DeployMachine::Gate> DeployMachine::preflight_and_idle(Deploy& deploy) {
  if (!target_.preflight || deploy.preflight_passed) {
    if (!target_.idle) co_return Gate::go;
    Gate idle = co_await wait_until_idle(deploy);
    co_return idle;
  }
  const PreflightConfig& config = *target_.preflight;
  log_claim(deploy);
  enter(Phase::preflight, deploy.commit, "pre-flight of " + short_sha(deploy.commit));
  spdlog::info("{}: pre-flight of {}{}", target_.name, short_sha(deploy.commit),
               target_.idle ? ", while waiting for the agent to be idle" : "");
  bool preflight_done = false;
  bool idle_again = false;
  auto newer_marker = [&]() -> asio::awaitable<void> {
    asio::steady_timer timer(co_await asio::this_coro::executor);
    for (;;) {
      // Returning ends the pre-flight (`||` cancels it); an exception would wait for it instead.
      if (stopping_ || exists(marker_file::ready)) co_return;
      timer.expires_after(200ms);
      co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
    }
  };
  auto preflight_branch = [&]() -> asio::awaitable<void> {
    PreflightRun run;
    run.config = &config;
    run.commit = deploy.commit;
    run.target = target_.name;
    run.checkout = target_.checkout;
    run.state_dir = store_.dir();
    run.env = target_.env;
    run.on_started = [&](pid_t pid, const fs::path& data) {
      deploy.preflight_pid = pid;
      deploy.preflight_start = process_start_time(pid).value_or(0);
      deploy.preflight_data = data.string();
      if (deploy.record_phase.empty()) deploy.record_phase = "preflight";
      write_record(deploy, false);  // names the shadow and {data} for the next start's clean-up
    };
    auto preflight = actions_.preflight(std::move(run));
    auto watch = newer_marker();
    auto first = co_await (std::move(preflight) || std::move(watch));
    preflight_done = true;
    deploy.preflight_pid = 0;
    deploy.preflight_start = 0;
    deploy.preflight_data.clear();
    if (stopping_) throw StopRequested{};
    if (first.index() == 1) throw PreflightSuperseded{};
    PreflightResult result = std::get<0>(std::move(first));
    if (!result.healthy) throw PreflightFailed{std::move(result)};
  };
  Gate idle_gate = Gate::go;
  auto idle_branch = [&]() -> asio::awaitable<void> {
    if (!target_.idle) co_return;
    idle_gate = co_await wait_until_idle(deploy);
    if (idle_gate != Gate::held && !preflight_done) {
      // Idle (or an outage) came first: the permit blocks `hold`, so it is not kept while the
      // pre-flight runs.
      deploy.permit = {};
      idle_again = idle_gate == Gate::go;
    }
  };
  std::optional<PreflightResult> failed;
  bool superseded = false;
  std::exception_ptr error;
  try {
    auto both = preflight_branch() && idle_branch();
    co_await std::move(both);
  } catch (...) {
    error = std::current_exception();
  }
  if (error) {
    if (stopping_) throw StopRequested{};  // whichever branch noticed it, and however the other ended
    // The branch cancelled by the other's exception throws too, and `&&` then throws the first
    // operand's: the pre-flight's verdict.
    try {
      std::rethrow_exception(error);
    } catch (const asio::multiple_exceptions& e) {
      error = e.first_exception();
    } catch (...) {
    }
    try {
      std::rethrow_exception(error);
    } catch (PreflightFailed& e) {
      failed = std::move(e.result);
    } catch (const PreflightSuperseded&) {
      superseded = true;
    }
  }
  if (failed) {
    const std::string refusal = "pre-flight of " + short_sha(deploy.commit) + " failed: " + failed->reason;
    auto refuse = reject_commit(deploy, refusal, "preflight", failed->output);  // named: g++ 12
    co_await std::move(refuse);
    co_return Gate::over;
  }
  if (superseded) {
    deploy.permit = {};
    std::error_code ignored;
    fs::remove(target_.marker_dir / marker_file::in_progress, ignored);
    const std::string why = "replaced by a newer staged marker during its pre-flight";
    spdlog::info("{}: the deploy of {} was {}; deploying the new marker instead", target_.name,
                 short_sha(deploy.commit), why);
    finish(Outcome{"rejected", deploy.commit, why, now_utc(), {}});
    co_return Gate::over;
  }
  deploy.preflight_passed = true;  // a hold that sends the deploy back to waiting does not run it again
  if (idle_gate == Gate::outage && !deploy.permit.granted) deploy.permit = co_await permit_without_lease();
  if (idle_again) {
    spdlog::info("{}: pre-flight of {} passed; waiting for idle once more", target_.name, short_sha(deploy.commit));
    idle_gate = co_await wait_until_idle(deploy);
  }
  co_return idle_gate;
}

asio::awaitable<bool> DeployMachine::checkout_may_be_reset(Deploy& deploy) {
  // The agent works in this checkout: a reset in the middle of its cycle would throw away what it
  // has not committed yet. Wait until it is idle, and take the permit as a restart does, so that
  // a `hold` from now until the checkout is back is refused ("reverting").
  if (target_.idle) {
    bool said = false;
    for (;;) {
      IdleAnswer answer = co_await actions_.idle();
      if (answer.state == IdleAnswer::State::idle) {
        deploy.permit = actions_.permit_restart(false);
        if (deploy.permit.granted) break;
        answer.reason = deploy.permit.why;
        deploy.permit = {};
      }
      if (!said) {
        spdlog::info("{}: putting the checkout back on {} once the agent is idle ({})", target_.name,
                     short_sha(deploy.previous_known_good), answer.reason);
        said = true;
      }
      co_await wait_for_poke(Clock::now() + target_.idle->interval);
    }
  }
  enter(Phase::reverting, deploy.previous_known_good, "putting the checkout back on known-good");
  // Commits the agent made on top of the refused one are its answer to it: not thrown away.
  HeadCommit head = co_await actions_.head();
  if (head.error.empty() && head.commit != deploy.commit) {
    deploy.permit = {};
    spdlog::warn("{}: HEAD moved from {} to {} since it was refused; the checkout is left as it is", target_.name,
                 short_sha(deploy.commit), short_sha(head.commit));
    co_return false;
  }
  co_return true;
}

asio::awaitable<void> DeployMachine::reject_commit(Deploy& deploy, std::string reason, std::string by,
                                                  std::vector<std::string> output) {
  deploy.permit = {};
  spdlog::warn("{}: {} refused: {}; production was not restarted", target_.name, deploy.subject(), reason);
  enter(by == "preflight" ? Phase::preflight : Phase::waiting_fleet, deploy.commit, reason);
  // So that a crash or a restart of production boots known-good code, not the commit left on disk.
  const std::string& good = deploy.previous_known_good;
  if (good.empty()) {
    spdlog::warn("{}: no known-good commit to put the checkout back on; it stays on {}", target_.name,
                 short_sha(deploy.commit));
  } else if (co_await checkout_may_be_reset(deploy)) {
    RunResult reset = co_await actions_.reset_to(good);
    deploy.permit = {};
    if (!reset.ok()) {
      spdlog::error("{}: cannot put the checkout back on {}: git reset --hard {}; it stays on {}", target_.name,
                    short_sha(good), reset.describe(), short_sha(deploy.commit));
    } else if (target_.build) {
      spdlog::info("{}: rebuilding {}", target_.name, short_sha(good));
      RunResult build = co_await actions_.build();
      if (!build.ok()) {
        spdlog::error("{}: the build of {} {}; production still runs, but a restart would boot an unbuilt checkout",
                      target_.name, short_sha(good), build.describe());
      }
    }
  }
  const RejectionDetail detail{deploy.commit, by, std::move(output)};
  if (auto ec = reject_marker(target_.marker_dir, marker_file::in_progress, reason, deploy.marker.text, &detail)) {
    spdlog::error("{}: while rejecting the deploy in {}: {}", target_.name, target_.marker_dir.string(), ec.message());
  }
  const Outcome outcome{"rejected", deploy.commit, reason, now_utc(), {}};
  status_.last_outcome = outcome;  // unlike a refused marker, a refused commit is the last deploy's outcome
  finish(outcome);
  spdlog::warn("{}: rejected {} {}; production still runs {}", target_.name, short_sha(deploy.commit),
               by == "preflight" ? "after its pre-flight" : "because another host of the fleet reverted it",
               good.empty() ? "what it ran" : short_sha(good));
  // The agent should learn from .deploy-rejected: one cycle, as after a revert.
  if (schedule_ && target_.cycle->after_recovery) schedule_->owe();
}

// ---- the operator's revert --------------------------------------------------------------------

asio::awaitable<DeployMachine::Next> DeployMachine::take_revert_request(Deploy& deploy) {
  const fs::path file = target_.marker_dir / marker_file::revert_request;
  boost::system::error_code ec;
  struct stat opened {};
  const std::string text = read_small_file(file, ec, kMaxMarkerBytes, &opened);
  std::string to, requested_by, note, why;
  bool now = false;
  // Whoever may stage a deploy may ask for a revert; nobody else (as for markers).
  std::vector<uid_t> owners = target_.allowed_owners;
  if (owners.empty()) {
    struct stat dir {};
    if (::stat(target_.marker_dir.c_str(), &dir) == 0) owners = {dir.st_uid, 0};
  }
  if (ec) {
    why = "cannot read it: " + ec.message();
  } else if (!owners.empty() && std::find(owners.begin(), owners.end(), opened.st_uid) == owners.end()) {
    why = "it is owned by uid " + std::to_string(opened.st_uid) + ", who may not stage deploys of this target";
  } else {
    json::value doc = json::parse(text, ec);
    if (ec || !doc.is_object()) {
      why = "it is not a JSON object";
    } else {
      const auto& obj = doc.as_object();
      to = string_field(obj, "to");
      requested_by = one_line(string_field(obj, "requested_by"));
      note = one_line(string_field(obj, "reason"));
      now = obj.contains("now") && obj.at("now").is_bool() && obj.at("now").as_bool();
    }
  }
  // Taken: from here on the request lives in memory and in the deploy's record.
  std::error_code ignored;
  fs::remove(file, ignored);
  if (to.empty() && why.empty()) to = status_.last_known_good.empty() ? fallback_commit_ : status_.last_known_good;
  if (to.empty() && why.empty()) why = "there is no known-good commit to revert to; name one with --to";
  if (why.empty()) {
    HeadCommit resolved = co_await actions_.resolve_commit(to);
    if (!resolved.error.empty()) why = resolved.error;
    to = resolved.commit;
  }
  HeadCommit head;
  if (why.empty()) {
    head = co_await actions_.head();
    if (!head.error.empty()) why = head.error;
  }
  if (!why.empty()) {
    const std::string reason = "operator's revert request refused: " + why;
    finish(Outcome{"rejected", to, reason, now_utc(), {}});  // recorded before it is logged
    spdlog::error("{}: {}", target_.name, reason);
    co_return Next::refused;
  }
  deploy.operator_revert = true;
  deploy.revert_now = now;
  deploy.commit = head.commit;
  deploy.previous_known_good = to;
  deploy.marker.staged_by = requested_by;
  deploy.failure_reason = std::string(kOperatorRevert) + "revert to " + short_sha(to) + " requested" +
                          (requested_by.empty() ? std::string() : " by " + requested_by) +
                          (note.empty() ? std::string() : ": " + note);
  deploy.started_at = now_utc();
  spdlog::warn("{}: {} ({}); running {} now", target_.name, deploy.failure_reason,
               now ? "now, without waiting for idle" : "through the idle gate", short_sha(head.commit));
  co_return Next::deploy;
}

asio::awaitable<void> DeployMachine::operator_revert(Deploy& deploy) {
  // A restart like any other for the group's capacity, so it takes a fleet slot; --now goes at once.
  bool need_slot = fleet_ && !deploy.revert_now;
  for (;;) {
    if (need_slot) {
      const Gate freed = co_await wait_for_fleet_slot(deploy);
      if (freed == Gate::outage) need_slot = false;  // down: nothing left to protect
    }
    if (target_.idle && !deploy.revert_now) {
      // The operator asked for it: pauses, windows and min_interval hold deploys, not this; the
      // agent's cycle is still waited for.
      deploy.ignore_holds = true;
      co_await wait_until_idle(deploy);
    } else {
      deploy.permit = co_await permit_without_lease();
    }
    if (!need_slot) break;
    const Gate now = co_await take_fleet_slot(deploy);
    if (now == Gate::go) break;
    deploy.permit = {};
  }
  // "reverting" refuses holds from here on: the lease lock is not kept through the reset and build.
  enter(Phase::reverting, deploy.previous_known_good, deploy.failure_reason);
  deploy.permit = {};
  Verdict why{false, deploy.failure_reason, {}};
  co_await revert(deploy, std::move(why));
}

}  // namespace sentinel
