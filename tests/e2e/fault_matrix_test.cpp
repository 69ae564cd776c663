// The fault matrix: the daemon is killed (SIGKILL) or stopped (SIGTERM) at each phase its record
// shows, started again, and the deploy must end as if nothing had happened: deployed once or
// reverted, the staged deploy never lost, production healthy, and no second restart where the
// first one's outcome was known. The phase is caught with inotify on the record and SIGSTOP,
// not with sleeps.
#include "harness.h"

#include <boost/json.hpp>
#include <doctest/doctest.h>

#include <poll.h>
#include <sys/inotify.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <algorithm>
#include <cstdlib>
#include <span>
#include <vector>

using namespace sentinel::test;
using namespace std::chrono_literals;
namespace fs = std::filesystem;
namespace json = boost::json;

namespace {

/// One cell of the matrix.
struct Fault {
  const char* phase;    // the record's phase at which the signal comes
  bool broken;          // the staged commit is unhealthy, so the deploy ends reverted
  int restarts;         // production restarts the deploy causes in all
  int killed_restart;   // with SIGKILL, at most this many more
};

// Why the counts. "restarting" is recorded before the restart command is spawned, so a SIGKILL
// there may come before or after the spawn: the restart is done once more because its outcome
// is unknown, and production restarts once or twice. SIGTERM lets a running command finish, and
// a revert goes on to its restart (production runs a failed commit until then) and stops at the
// verification, which the next start does without restarting again.
constexpr Fault kHealthy[] = {
    {"waiting-idle", false, 1, 0},
    {"restarting", false, 1, 1},
    {"verifying", false, 1, 0},
};
constexpr Fault kBroken[] = {
    {"reverting", true, 2, 0},
    {"rebuilding", true, 2, 0},
    {"restarting-reverted", true, 2, 1},
    {"verifying-reverted", true, 2, 0},
};

std::string record_phase(const fs::path& record) {
  boost::system::error_code ec;
  json::value doc = json::parse(read_file(record), ec);
  if (ec || !doc.is_object()) return "(claimed marker)";
  const auto* phase = doc.as_object().if_contains("phase");
  return phase != nullptr && phase->is_string() ? std::string(phase->as_string()) : "(claimed marker)";
}

/// Watches the marker directory until `.deploy-in-progress` shows `phase`, and stops the daemon
/// (SIGSTOP, confirmed with waitpid) right there. Each rewrite of the record is a rename into
/// place, seen as IN_MOVED_TO; the daemon is stopped at each to look, and continued when it is
/// not yet the phase. False after `timeout`.
bool stop_at_phase(pid_t daemon, const fs::path& markers, const std::string& phase, std::chrono::seconds timeout) {
  const int fd = ::inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
  REQUIRE(fd >= 0);
  REQUIRE(::inotify_add_watch(fd, markers.c_str(), IN_MOVED_TO | IN_CLOSE_WRITE) >= 0);
  const fs::path record = markers / ".deploy-in-progress";
  auto stopped_there = [&] {
    ::kill(daemon, SIGSTOP);
    int status = 0;
    ::waitpid(daemon, &status, WUNTRACED);
    if (fs::exists(record) && record_phase(record) == phase) return true;
    ::kill(daemon, SIGCONT);
    return false;
  };
  bool found = stopped_there();
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  alignas(inotify_event) char buf[4096];
  while (!found && std::chrono::steady_clock::now() < deadline) {
    pollfd p{fd, POLLIN, 0};
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (::poll(&p, 1, static_cast<int>(std::max<long>(left.count(), 1))) <= 0) continue;
    const ssize_t n = ::read(fd, buf, sizeof buf);
    bool about_record = false;
    for (ssize_t i = 0; i < n;) {
      const auto* event = reinterpret_cast<const inotify_event*>(buf + i);
      if (event->len > 0 && std::string_view(event->name) == ".deploy-in-progress") about_record = true;
      i += static_cast<ssize_t>(sizeof(inotify_event) + event->len);
    }
    if (about_record) found = stopped_there();
  }
  ::close(fd);
  return found;
}

/// A directory with a `git` that takes half a second over `reset`, so the revert's first step
/// lasts long enough to be caught; everything else is the real git.
fs::path slow_reset_git(const fs::path& dir) {
  fs::create_directories(dir);
  write_file(dir / "git", "#!/bin/sh\nfor a in \"$@\"; do [ \"$a\" = reset ] && sleep 0.5; done\nexec /usr/bin/git \"$@\"\n");
  fs::permissions(dir / "git", fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec);
  return dir;
}

/// Runs one cell; returns its row of the table.
std::string run_fault(const Fault& fault, int signo) {
  const std::string phase = fault.phase;
  Production::Options options;
  options.deadline = "600ms";
  options.with_idle = phase == "waiting-idle";
  options.quiet = "0s";
  options.with_build = fault.broken;
  if (phase == "rebuilding") options.build_delay = "0.5";
  if (phase == "restarting" || phase == "restarting-reverted") options.restart_delay = "1";
  Production prod(options);
  if (phase == "reverting") {
    prod.daemon_env = {"PATH=" + slow_reset_git(prod.tmp / "bin").string() + ":" + std::getenv("PATH")};
  }
  const std::string good = prod.head();
  if (options.with_idle) write_file(prod.tmp / "busy", "");
  auto& first = prod.start_watching();
  const std::size_t restarts_before = prod.restarts().size();
  const std::string sha = prod.commit(fault.broken ? "unhealthy" : "healthy");
  prod.stage_by_rename();

  const std::string signal_name = signo == SIGKILL ? "SIGKILL" : "SIGTERM";
  INFO("phase ", phase, ", ", signal_name);
  const bool caught = stop_at_phase(first.pid(), prod.markers, phase, 15s);
  CHECK_MESSAGE(caught, "the record never showed phase ", phase);
  if (!caught) return phase + " | " + signal_name + " | not reached";
  if (signo == SIGKILL) {
    first.kill_hard();
  } else {
    ::kill(first.pid(), SIGTERM);  // handled once the daemon runs again
    ::kill(first.pid(), SIGCONT);
    CHECK(first.signal_and_wait(0) == 0);
  }
  const bool record_kept = prod.has(".deploy-in-progress");
  CHECK(record_kept);  // the staged deploy is not lost
  const std::string left_in = record_kept ? record_phase(prod.marker(".deploy-in-progress")) : "(none)";

  auto& second = prod.start_daemon();
  if (options.with_idle) {
    REQUIRE(second.wait_for_line("waiting until the agent has been idle") >= 0);
    fs::remove(prod.tmp / "busy");
  }
  const std::string outcome = fault.broken ? "reverted" : "deployed";
  const int ended = second.wait_for_line("prod: " + outcome + " " + short_sha(sha), 20s);
  CHECK(ended >= 0);
  CHECK_FALSE(prod.has(".deploy-in-progress"));
  CHECK_FALSE(prod.has(".deploy-failed"));
  CHECK(prod.has(".deploy-reverted") == fault.broken);
  CHECK(prod.healthy());
  CHECK(read_file(prod.state / "targets" / "prod" / "known-good").substr(0, 40) == (fault.broken ? good : sha));
  const std::string history = read_file(prod.state / "targets" / "prod" / "history.jsonl");
  int outcomes = 0;
  for (std::size_t at = history.find(sha); at != std::string::npos; at = history.find(sha, at + 1)) ++outcomes;
  CHECK(outcomes == 1);  // exactly one outcome for the one staged deploy

  const int restarts = static_cast<int>(prod.restarts().size() - restarts_before);
  CHECK(restarts >= fault.restarts);
  CHECK(restarts <= fault.restarts + (signo == SIGKILL ? fault.killed_restart : 0));
  std::string decision = "-";
  for (const char* said : {"restarting once more", "verifying it again without another restart",
                           "redoing the whole revert", "verifying the revert", "waiting until the agent"}) {
    if (second.count_lines(said) > 0) {
      decision = said;
      break;
    }
  }
  char row[256];
  std::snprintf(row, sizeof row, "%-19s | %-7s | %-19s | %-41s | %-8s | %d", phase.c_str(), signal_name.c_str(),
                left_in.c_str(), decision.c_str(), ended >= 0 ? outcome.c_str() : "NOT DONE", restarts);
  return row;
}

void run_matrix(std::span<const Fault> faults, int signo) {
  std::vector<std::string> rows;
  for (const Fault& fault : faults) rows.push_back(run_fault(fault, signo));
  std::printf("\n%-19s | %-7s | %-19s | %-41s | %-8s | %s\n", "signal at phase", "signal", "record left in",
              "decision at the next start", "outcome", "restarts");
  for (const auto& row : rows) std::printf("%s\n", row.c_str());
  std::fflush(stdout);
}

}  // namespace

TEST_CASE("fault matrix: SIGKILL at each phase of a good deploy ends deployed once, without losing it") {
  run_matrix(kHealthy, SIGKILL);
}

TEST_CASE("fault matrix: SIGTERM at each phase of a good deploy ends deployed once, without losing it") {
  run_matrix(kHealthy, SIGTERM);
}

TEST_CASE("fault matrix: SIGKILL at each phase of a revert ends reverted to known-good with production healthy") {
  run_matrix(kBroken, SIGKILL);
}

TEST_CASE("fault matrix: SIGTERM at each phase of a revert ends reverted to known-good with production healthy") {
  run_matrix(kBroken, SIGTERM);
}
