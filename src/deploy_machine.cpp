#include "deploy_machine.h"

#include "marker.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/json.hpp>
#include <spdlog/spdlog.h>

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <fstream>

namespace sentinel {
namespace asio = boost::asio;
namespace fs = std::filesystem;
namespace json = boost::json;
using Clock = std::chrono::steady_clock;
using Phase = DeployMachine::Phase;
using Next = DeployMachine::Next;

namespace {

std::string now_utc() { return format_utc(std::chrono::system_clock::now()); }

std::string short_sha(const std::string& commit) { return commit.substr(0, 12); }

Duration since(Clock::time_point t) { return std::chrono::duration_cast<Duration>(Clock::now() - t); }

/// True when `head` (a full SHA) is the commit a marker names by its full or abbreviated SHA.
bool same_commit(const std::string& head, std::string named) {
  std::transform(named.begin(), named.end(), named.begin(), [](unsigned char c) { return std::tolower(c); });
  return head.starts_with(named);
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
    case Phase::waiting_idle: return "waiting-idle";
    case Phase::restarting: return "restarting";
    case Phase::verifying: return "verifying";
    case Phase::reverting: return "reverting";
    case Phase::rebuilding: return "rebuilding";
    case Phase::quarantined: return "quarantined";
  }
  return "unknown";
}

// ---- the real outside world ----------------------------------------------------------------

RunSpec TargetProcesses::spec_for(const CommandSpec& command, const std::string& role) const {
  RunSpec spec;
  spec.argv = command.argv;
  spec.cwd = target_.checkout;
  spec.timeout = command.timeout;
  spec.kill_grace = command.kill_grace;
  spec.log_tag = target_.name + " " + role;
  return spec;
}

asio::awaitable<RunResult> TargetProcesses::restart(std::function<void()> on_started) {
  RunSpec spec = spec_for(target_.restart, "restart");
  spec.on_started = std::move(on_started);
  co_return co_await run_command(std::move(spec));
}

asio::awaitable<RunResult> TargetProcesses::build() {
  co_return co_await run_command(spec_for(*target_.build, "build"));
}

asio::awaitable<ProbeResult> TargetProcesses::probe() {
  const HealthConfig& health = target_.health;
  if (!health.url.empty()) {
    auto url = parse_http_url(health.url);
    if (!url) co_return ProbeResult{false, "health url " + health.url + " is not a plain http:// URL"};
    co_return co_await probe_http(*url, health.timeout);
  }
  RunSpec spec;
  spec.argv = health.command;
  spec.cwd = target_.checkout;
  spec.timeout = health.timeout;
  spec.kill_grace = 1s;
  spec.tail_lines = 1;
  RunResult r = co_await run_command(std::move(spec));
  if (r.ok()) co_return ProbeResult{true, "health command exited 0"};
  co_return ProbeResult{false, "health command " + r.describe() + (r.tail.empty() ? "" : ": " + r.tail.back())};
}

asio::awaitable<IdleAnswer> TargetProcesses::idle() {
  RunSpec spec;
  spec.argv = target_.idle->command;
  spec.cwd = target_.checkout;
  spec.timeout = target_.idle->timeout;
  spec.kill_grace = 1s;
  spec.tail_lines = 0;
  RunResult r = co_await run_command(std::move(spec));
  co_return idle_answer_from_exit(r.end == RunResult::End::exited, r.code, r.describe());
}

asio::awaitable<HeadCommit> TargetProcesses::head() { co_return co_await git_head(target_.checkout); }

asio::awaitable<RunResult> TargetProcesses::reset_to(std::string commit) {
  co_return co_await git_reset_hard(target_.checkout, std::move(commit), target_.name + " git");
}

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
};

DeployMachine::DeployMachine(const TargetConfig& target, const StateStore& store, TargetActions& actions,
                             asio::any_io_executor executor)
    : target_(target), store_(store), actions_(actions), wake_(std::move(executor)) {}

void DeployMachine::poke() {
  poked_ = true;
  wake_.cancel();
}

bool DeployMachine::exists(std::string_view file_name) const { return marker_present(target_.marker_dir, file_name); }

void DeployMachine::enter(Phase phase, const std::string& commit, const std::string& detail) {
  if (phase != phase_ || status_.since.empty()) status_.since = now_utc();
  phase_ = phase;
  status_.phase = to_string(phase);
  status_.commit = commit;
  status_.detail = detail;
  if (auto ec = store_.write_status(target_.name, status_)) {
    spdlog::warn("{}: cannot write status to {}: {}", target_.name, store_.dir().string(), ec.message());
  }
}

void DeployMachine::finish(const Outcome& outcome) {
  if (auto ec = store_.append_history(target_.name, outcome)) {
    spdlog::warn("{}: cannot append to history in {}: {}", target_.name, store_.dir().string(), ec.message());
  }
  if (outcome.result != "rejected") status_.last_outcome = outcome;
  enter(Phase::watching, "", "");
}

void DeployMachine::write_record(const Deploy& deploy, bool durable) {
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
                   {"message", deploy.marker.message}};
  const fs::path file = target_.marker_dir / marker_file::in_progress;
  if (auto ec = write_file_atomic(file, json::serialize(doc) + "\n", durable)) {
    spdlog::error("{}: cannot update the deploy record {}: {}", target_.name, file.string(), ec.message());
  }
}

DeployMachine::Next DeployMachine::reject(std::string_view file_name, const std::string& reason,
                                          const std::string& text) {
  if (auto ec = reject_marker(target_.marker_dir, file_name, reason, text)) {
    spdlog::error("{}: while refusing a marker in {}: {}", target_.name, target_.marker_dir.string(), ec.message());
  }
  spdlog::warn("{}: refused the staged deploy: {} (moved to {})", target_.name, reason, marker_file::rejected_marker);
  finish(Outcome{"rejected", "", reason, now_utc()});
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

asio::awaitable<void> DeployMachine::wait_for_poke() {
  if (!poked_ && !stopping_) {
    wake_.expires_at(asio::steady_timer::time_point::max());
    co_await wake_.async_wait(asio::as_tuple(asio::use_awaitable));
  }
  if (stopping_) throw StopRequested{};
  poked_ = false;
}

asio::awaitable<void> DeployMachine::start_up() {
  enter(Phase::starting, "", "");
  status_.last_known_good = store_.known_good(target_.name);
  if (auto previous = store_.read_status(target_.name)) status_.last_outcome = previous->last_outcome;
  if (status_.last_known_good.empty()) co_await adopt_running_commit();
  spdlog::info("{}: watching {}; last known-good commit: {}", target_.name, target_.marker_dir.string(),
               status_.last_known_good.empty() ? "none yet" : short_sha(status_.last_known_good));
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
    if (phase_ == Phase::quarantined) spdlog::info("{}: quarantine lifted; deploying again", target_.name);
    poked_ = false;  // the disk is looked at now; only later changes need a new look
    Deploy deploy;
    switch (co_await next_deploy(deploy)) {
      case Next::deploy:
        co_await carry_out(deploy);
        break;
      case Next::refused:
        break;  // another marker may be waiting already
      case Next::nothing:
        if (phase_ != Phase::watching) enter(Phase::watching, "", "");
        co_await wait_for_poke();
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

asio::awaitable<DeployMachine::Next> DeployMachine::next_deploy(Deploy& deploy) {
  const fs::path record = target_.marker_dir / marker_file::in_progress;
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
      spdlog::warn("{}: found the deploy of {} that pid {} left in phase {}{}", target_.name, short_sha(deploy.commit),
                   obj.contains("pid") ? json::serialize(obj.at("pid")) : "?", deploy.resumed_phase,
                   text("boot_id") == boot_id() ? "" : " before a reboot");
      resumed = true;
      // From the restart on, the record's commit is what production may run: take it as it is.
      const std::string& phase = deploy.resumed_phase;
      if ((phase == "restarting" || phase == "verifying" || is_revert_phase(phase)) && looks_like_commit(deploy.commit)) {
        if (deploy.previous_known_good.empty()) deploy.previous_known_good = status_.last_known_good;
        co_return Next::deploy;
      }
      deploy.resumed_phase.clear();  // before the restart: the deploy is simply still pending
    }
  } else {
    boost::system::error_code ec;
    if (!claim_marker(target_.marker_dir, ec)) {
      if (!ec) co_return Next::nothing;
      stuck("cannot claim " + (target_.marker_dir / marker_file::ready).string() + ": " + ec.message());
      co_return Next::stuck;
    }
  }

  if (!resumed) {
    MarkerCheck check = read_marker(record);
    if (!check.ok) {
      // Found by a rescan rather than its close-write, a marker may still be being written: give
      // a writer that is still at it a moment before calling its marker broken.
      if (check.truncated_json && modified_within(record, kSettle)) co_return Next::settling;
      co_return reject(marker_file::in_progress, check.reason, check.marker.text);
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
                     deploy.marker.text);
  }
  if (resumed && !deploy.commit.empty() && deploy.commit != head.commit) {
    spdlog::warn("{}: HEAD moved from {} to {} since the record was written; deploying {}", target_.name,
                 short_sha(deploy.commit), short_sha(head.commit), short_sha(head.commit));
  }
  deploy.commit = head.commit;
  deploy.previous_known_good = status_.last_known_good.empty() ? fallback_commit_ : status_.last_known_good;
  // No record is written yet: until the next phase rewrites it, the claimed marker itself is
  // the record, and a claimed marker found at start-up is deployed like a new one.
  spdlog::info("{}: claimed deploy of {}{}{}", target_.name, short_sha(deploy.commit),
               deploy.marker.staged_by.empty() ? "" : " staged by " + deploy.marker.staged_by,
               deploy.marker.message.empty() ? "" : ": \"" + one_line(deploy.marker.message) + "\"");
  co_return Next::deploy;
}

asio::awaitable<void> DeployMachine::wait_until_idle(Deploy& deploy) {
  const IdleConfig& idle = *target_.idle;
  deploy.record_phase = "waiting-idle";
  write_record(deploy, false);  // a lost rewrite leaves the claimed marker, which resumes the same way
  enter(Phase::waiting_idle, deploy.commit, "checking");
  spdlog::info("{}: waiting until the agent has been idle for {} before restarting {}", target_.name,
               format_duration(idle.quiet), short_sha(deploy.commit));
  const auto waiting_since = Clock::now();
  QuietTracker quiet(idle.quiet);
  std::optional<IdleAnswer::State> last;
  for (;;) {
    IdleAnswer answer = co_await actions_.idle();
    if (answer.state != last) {
      spdlog::info("{}: {}", target_.name, answer.reason);
      enter(Phase::waiting_idle, deploy.commit, answer.reason);
      last = answer.state;
    }
    if (quiet.observe(answer.state, Clock::now())) {
      IdleAnswer again = co_await actions_.idle();  // once more, right before the restart
      if (again.state == IdleAnswer::State::idle) break;
      quiet.observe(again.state, Clock::now());
      spdlog::info("{}: {}", target_.name, again.reason);
      enter(Phase::waiting_idle, deploy.commit, again.reason);
      last = again.state;
    }
    const Duration pause = answer.state == IdleAnswer::State::idle
                               ? std::min(idle.interval, quiet.remaining(Clock::now()))
                               : idle.interval;
    co_await sleep_for(pause);
  }
  spdlog::info("{}: agent idle for {} (waited {}); restarting", target_.name, format_duration(idle.quiet),
               format_duration(since(waiting_since)));
}

asio::awaitable<DeployMachine::Verdict> DeployMachine::restart_and_verify(Deploy& deploy, bool reverting) {
  const fs::path record = target_.marker_dir / marker_file::in_progress;
  const std::string& commit = reverting ? deploy.previous_known_good : deploy.commit;
  // Written before the restart: a run that stops from here on restarts once more, since it cannot
  // know whether this restart happened.
  deploy.record_phase = reverting ? "restarting-reverted" : "restarting";
  write_record(deploy, false);
  enter(Phase::restarting, commit, "");
  spdlog::info("{}: restarting production on {}", target_.name, short_sha(commit));
  // The record goes durable once the restart has started: fsync costs more than the spawn, and
  // the worst a power cut before it can do is one extra restart after the reboot.
  RunResult r = co_await actions_.restart([&] { make_durable(record); });
  if (!r.ok()) {
    spdlog::warn("{}: restart command {} after {}", target_.name, r.describe(), format_duration(r.elapsed));
    co_return Verdict{false, "the restart command " + r.describe(), r.tail};
  }
  // The restart is known to have happened: a run that stops from here on only verifies. Not
  // fsynced: losing it in a power cut costs one extra restart, as above.
  deploy.record_phase = reverting ? "verifying-reverted" : "verifying";
  write_record(deploy, false);
  spdlog::info("{}: restart command finished in {}; verifying health", target_.name, format_duration(r.elapsed));
  Verdict v = co_await verify(commit);
  v.output = r.tail;
  co_return v;
}

asio::awaitable<DeployMachine::Verdict> DeployMachine::verify(const std::string& commit) {
  const HealthConfig& health = target_.health;
  const auto started = Clock::now();
  const auto deadline = started + health.deadline;
  enter(Phase::verifying, commit, "grace " + format_duration(health.grace));
  co_await sleep_for(health.grace);
  int streak = 0;
  ProbeResult probe;
  for (int probes = 1;; ++probes) {
    const auto probe_started = Clock::now();
    probe = co_await actions_.probe();
    streak = probe.healthy ? streak + 1 : 0;
    spdlog::debug("{}: probe {}: {} ({}/{} in a row)", target_.name, probes, probe.reason, streak, health.successes);
    if (streak >= health.successes) {
      spdlog::info("{}: healthy: {} probes in a row after {}", target_.name, streak, format_duration(since(started)));
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

asio::awaitable<void> DeployMachine::carry_out(Deploy& deploy) {
  const std::string& resumed = deploy.resumed_phase;
  if (is_revert_phase(resumed)) {
    spdlog::warn("{}: the sentinel stopped while reverting {} to {}; redoing the whole revert", target_.name,
                 short_sha(deploy.commit), short_sha(deploy.previous_known_good));
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
    verdict = co_await verify(deploy.commit);
  } else {
    if (resumed == "restarting") {
      spdlog::warn("{}: the sentinel stopped while restarting {}, so that restart's outcome is unknown: restarting "
                   "once more",
                   target_.name, short_sha(deploy.commit));
    } else if (target_.idle) {
      co_await wait_until_idle(deploy);
      // The agent may have committed while we waited (without a wait HEAD was read just now).
      HeadCommit head = co_await actions_.head();
      if (head.error.empty() && head.commit != deploy.commit) {
        if (!deploy.marker.commit.empty()) {
          reject(marker_file::in_progress,
                 "HEAD moved from " + deploy.commit + " to " + head.commit + " while waiting for idle; stage again",
                 deploy.marker.text);
          co_return;
        }
        spdlog::info("{}: HEAD moved from {} to {} while waiting for idle; deploying {}", target_.name,
                     short_sha(deploy.commit), short_sha(head.commit), short_sha(head.commit));
        deploy.commit = head.commit;
      }
    }
    verdict = co_await restart_and_verify(deploy, false);
  }
  if (!verdict.ok) {
    co_await revert(deploy, std::move(verdict));
    co_return;
  }
  if (auto ec = store_.set_known_good(target_.name, deploy.commit)) {
    spdlog::error("{}: deployed {} but cannot record it as known-good: {}", target_.name, short_sha(deploy.commit),
                  ec.message());
  } else {
    status_.last_known_good = deploy.commit;
  }
  std::error_code ignored;
  fs::remove(target_.marker_dir / marker_file::reverted, ignored);
  fs::remove(target_.marker_dir / marker_file::in_progress, ignored);
  spdlog::info("{}: deployed {} in {}", target_.name, short_sha(deploy.commit), format_duration(since(deploy.started)));
  finish(Outcome{"deployed", deploy.commit, "", now_utc()});
}

asio::awaitable<void> DeployMachine::revert(Deploy& deploy, Verdict failure) {
  const std::string& target = deploy.previous_known_good;
  std::vector<std::string> revert_output;  // the last lines of the revert step that failed
  auto give_up = [&](const std::string& why) {
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
    spdlog::critical("{}: deploy of {} failed ({}) and the revert failed too: {}; deploys of this target stop until "
                     "an operator removes {}",
                     target_.name, short_sha(deploy.commit), failure.reason, why, file.string());
    finish(Outcome{"failed", deploy.commit, failure.reason + "; revert failed: " + why, now_utc()});
    enter(Phase::quarantined, deploy.commit, why);
  };

  if (target.empty()) {
    spdlog::error("{}: deploy of {} failed: {}", target_.name, short_sha(deploy.commit), failure.reason);
    give_up("no known-good commit exists to revert to");
    co_return;
  }
  spdlog::warn("{}: deploy of {} failed: {}; reverting to {}", target_.name, short_sha(deploy.commit), failure.reason,
               short_sha(target));
  const auto revert_started = Clock::now();
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
    boost::system::error_code ec;
    std::string text = read_small_file(target_.marker_dir / marker_file::ready, ec);
    reject(marker_file::ready,
           "staged while " + deploy.commit + " was being deployed; that deploy failed and the checkout was reset to " +
               target + ", so stage again once your change is committed on top of it",
           text);
  }
  if (target_.build) {
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
  spdlog::warn("{}: reverted {} to {} in {}: {}", target_.name, short_sha(deploy.commit), short_sha(target),
               format_duration(since(revert_started)), failure.reason);
  finish(Outcome{"reverted", deploy.commit, failure.reason, now_utc()});
}

}  // namespace sentinel
