// `deploy-sentinel hold` and `release` end to end: the real binary, real files, a real flock and
// real inotify. The daemon's side is played by the test itself, honestly: it takes the daemon's
// instance lock in state_dir and writes the target's status the way the daemon does.
#include "harness.h"

#include "lease.h"
#include "state_store.h"

#include <boost/json.hpp>
#include <doctest/doctest.h>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <optional>
#include <stdexcept>

extern char** environ;

using namespace sentinel::test;
using namespace std::chrono_literals;
namespace fs = std::filesystem;
namespace json = boost::json;
using sentinel::InstanceLock;
using sentinel::LeaseState;
using sentinel::StateStore;
using sentinel::TargetStatus;
using Clock = std::chrono::steady_clock;

namespace {

/// A config with one target "prod" whose lease file is leases/prod.lease (or none), and its state_dir.
struct LeaseRig {
  explicit LeaseRig(bool with_lease_file = true) {
    fs::create_directories(state);
    fs::create_directories(leases);
    std::string text = "[sentinel]\nstate_dir = \"" + state.string() + "\"\n\n[[target]]\nname = \"prod\"\n";
    text += "marker_dir = \"" + (tmp / "markers").string() + "\"\ncheckout = \"" + (tmp / "checkout").string() + "\"\n";
    text += "restart = { command = [\"true\"] }\n\n[target.health]\nurl = \"http://127.0.0.1:9/health\"\n";
    if (with_lease_file) text += "\n[target.idle]\nlease_file = \"" + lease.string() + "\"\n";
    write_file(config, text);
  }

  /// Runs `deploy-sentinel ARGS... --config CONFIG` to completion.
  CommandOutput cli(std::vector<std::string> args) const {
    args.insert(args.begin(), SENTINEL_BIN);
    args.push_back("--config");
    args.push_back(config.string());
    return run_program(args);
  }

  /// Writes prod's status as the daemon does.
  void daemon_reports(const std::string& phase) const {
    TargetStatus status;
    status.phase = phase;
    status.since = "2026-11-25T14:02:11Z";
    status.commit = "3f2c1a9d0e8b7c6a5f4e3d2c1b0a9f8e7d6c5b4a";
    REQUIRE_FALSE(store.write_status("prod", status));
  }

  TempDir tmp;
  fs::path state = tmp / "state", leases = tmp / "leases", lease = leases / "prod.lease",
           config = tmp / "sentinel.toml";
  StateStore store{state};
};

/// `deploy-sentinel ARGS... --config CONFIG` running in the background, its stdout and stderr
/// read from one pipe. Killed and reaped at scope exit if still running.
class Background {
 public:
  Background(const LeaseRig& rig, std::vector<std::string> args) {
    args.insert(args.begin(), SENTINEL_BIN);
    args.push_back("--config");
    args.push_back(rig.config.string());
    int fds[2];
    REQUIRE(::pipe2(fds, O_CLOEXEC) == 0);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&actions, fds[1], 1);
    posix_spawn_file_actions_adddup2(&actions, fds[1], 2);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const int err = ::posix_spawn(&pid_, argv[0], &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    ::close(fds[1]);
    fd_ = fds[0];
    if (err != 0) throw std::runtime_error(std::string("cannot start deploy-sentinel: ") + std::strerror(err));
  }
  ~Background() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    if (fd_ >= 0) ::close(fd_);
  }
  Background(const Background&) = delete;
  Background& operator=(const Background&) = delete;

  /// Waits until the output contains `text`; false at the deadline or when the process has exited.
  bool wait_for_output(const std::string& text, std::chrono::milliseconds timeout = 10s) {
    const auto deadline = Clock::now() + timeout;
    while (output_.find(text) == std::string::npos) {
      if (!read_more(deadline)) return output_.find(text) != std::string::npos;
    }
    return true;
  }

  /// Waits for the process to exit (its pipe reaches end of file) and returns its exit status,
  /// or nullopt at the deadline.
  std::optional<int> wait_exit(std::chrono::milliseconds timeout = 10s) {
    const auto deadline = Clock::now() + timeout;
    while (fd_ >= 0) {
      if (!read_more(deadline) && fd_ >= 0) return std::nullopt;
    }
    int status = 0;
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

  const std::string& output() const { return output_; }

 private:
  /// Reads what is there, waiting at most until `deadline`. False at the deadline or at end of
  /// file (then the pipe is closed).
  bool read_more(Clock::time_point deadline) {
    if (fd_ < 0) return false;
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left <= 0ms) return false;
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) return Clock::now() < deadline;
    char buf[4096];
    const ssize_t n = ::read(fd_, buf, sizeof buf);
    if (n <= 0) {
      ::close(fd_);
      fd_ = -1;
      return false;
    }
    output_.append(buf, static_cast<std::size_t>(n));
    return true;
  }

  pid_t pid_ = -1;
  int fd_ = -1;
  std::string output_;
};

json::object json_file(const fs::path& file) { return json::parse(read_file(file)).as_object(); }

}  // namespace

TEST_CASE("hold writes the lease with the reason, the expiry, the holder pid and its start time, and exits 0") {
  LeaseRig rig;
  const auto before = std::chrono::system_clock::now();
  auto r = rig.cli({"hold", "--for", "40m", "--reason", "cycle 812", "--pid", std::to_string(::getpid())});
  REQUIRE_MESSAGE(r.status == 0, r.err);
  CHECK(r.out.find("held prod until ") != std::string::npos);

  auto lease = json_file(rig.lease);
  CHECK(lease["reason"].as_string() == "cycle 812");
  CHECK(lease["pid"].as_int64() == ::getpid());
  CHECK(lease["pid_start"].to_number<unsigned long long>() == *sentinel::process_start_time(::getpid()));
  CHECK(std::string(lease["held_by"].as_string()).find('@') != std::string::npos);
  const auto expires_at = sentinel::parse_utc(std::string(lease["expires_at"].as_string()));
  REQUIRE(expires_at);
  CHECK(*expires_at >= before + 40min - 1s);
  CHECK(*expires_at <= std::chrono::system_clock::now() + 40min + 1s);
  CHECK(sentinel::parse_utc(std::string(lease["held_at"].as_string())));
  CHECK(sentinel::read_lease(rig.lease, std::chrono::system_clock::now()).state == LeaseState::held);
}

TEST_CASE("release removes the lease, and exits 0 saying so when there was none") {
  LeaseRig rig;
  REQUIRE(rig.cli({"hold", "--for", "2h", "--reason", "cycle 812"}).status == 0);
  REQUIRE(fs::exists(rig.lease));

  auto r = rig.cli({"release"});
  CHECK(r.status == 0);
  CHECK(r.out.find("released prod: lease 'cycle 812'") != std::string::npos);
  CHECK_FALSE(fs::exists(rig.lease));

  r = rig.cli({"release", "--target", "prod"});
  CHECK(r.status == 0);
  CHECK(r.out.find("no lease on prod to release") != std::string::npos);
}

TEST_CASE("hold on a target without idle.lease_file exits 78 naming the config file and the key to add") {
  LeaseRig rig(false);
  auto r = rig.cli({"hold", "--for", "40m", "--reason", "cycle 812"});
  CHECK(r.status == 78);
  CHECK(r.err.find(rig.config.string()) != std::string::npos);
  CHECK(r.err.find("lease_file = ") != std::string::npos);
  CHECK(r.err.find("[target.idle]") != std::string::npos);
  CHECK(rig.cli({"release"}).status == 78);
}

TEST_CASE("hold with a duration it cannot read or of centuries, or a pid that does not run, is a usage error") {
  LeaseRig rig;
  auto r = rig.cli({"hold", "--for", "40 minutes"});
  CHECK(r.status == 64);
  CHECK(r.err.find("--for 40 minutes: expected a duration like \"40m\"") != std::string::npos);
  CHECK(rig.cli({"hold", "--for", "0s"}).status == 64);
  auto forever = rig.cli({"hold", "--for", "109500d"});  // would overflow the clock
  CHECK(forever.status == 64);
  CHECK(forever.err.find("at most a year") != std::string::npos);
  CHECK(rig.cli({"hold", "--reason", "no --for"}).status == 64);

  pid_t gone = ::fork();
  if (gone == 0) ::_exit(0);
  REQUIRE(gone > 0);
  ::waitpid(gone, nullptr, 0);
  r = rig.cli({"hold", "--for", "40m", "--pid", std::to_string(gone)});
  CHECK(r.status == 64);
  CHECK(r.err.find("no such process") != std::string::npos);
  CHECK_FALSE(fs::exists(rig.lease));
}

TEST_CASE("hold is refused with exit 75 while a running daemon is restarting the target, and writes no lease") {
  LeaseRig rig;
  rig.store.prepare({"prod"});
  InstanceLock daemon(rig.state);  // the daemon runs: this process holds its lock
  rig.daemon_reports("restarting");

  auto r = rig.cli({"hold", "--for", "40m", "--reason", "cycle 812"});
  CHECK(r.status == 75);
  CHECK(r.err.find("prod is restarting (since 14:02:11, commit 3f2c1a9): try again when it is done, or use --wait") !=
        std::string::npos);
  CHECK_FALSE(fs::exists(rig.lease));

  rig.daemon_reports("waiting-idle");  // the daemon waits for the agent: that is when leases matter
  CHECK(rig.cli({"hold", "--for", "40m", "--reason", "cycle 812"}).status == 0);
}

TEST_CASE("the restarting status a dead daemon left behind does not block a hold") {
  LeaseRig rig;
  rig.store.prepare({"prod"});
  rig.daemon_reports("restarting");  // and no process holds the instance lock
  auto r = rig.cli({"hold", "--for", "40m", "--reason", "cycle 812"});
  CHECK_MESSAGE(r.status == 0, r.err);
  CHECK(fs::exists(rig.lease));
}

TEST_CASE("a hold that starts while the daemon holds the lease lock decides after the daemon has recorded its "
          "restart") {
  LeaseRig rig;
  rig.store.prepare({"prod"});
  InstanceLock daemon(rig.state);
  rig.daemon_reports("waiting-idle");
  std::optional<sentinel::LeaseLock> lock = sentinel::LeaseLock::acquire(rig.lease);  // the daemon decides...
  Background hold(rig, {"hold", "--for", "40m", "--reason", "cycle 812"});
  rig.daemon_reports("restarting");  // ...records the restart...
  lock.reset();                      // ...and lets go; only now may hold look at the phase
  CHECK(hold.wait_exit() == 75);
  CHECK(hold.output().find("prod is restarting") != std::string::npos);
  CHECK_FALSE(fs::exists(rig.lease));
}

TEST_CASE("hold --wait holds as soon as the restarting daemon reports that it is watching again") {
  LeaseRig rig;
  rig.store.prepare({"prod"});
  InstanceLock daemon(rig.state);
  rig.daemon_reports("restarting");

  Background hold(rig, {"hold", "--for", "40m", "--reason", "cycle 812", "--wait"});
  REQUIRE_MESSAGE(hold.wait_for_output("prod is restarting (since 14:02:11, commit 3f2c1a9): waiting until it is done"),
                  hold.output());
  CHECK_FALSE(fs::exists(rig.lease));

  rig.daemon_reports("verifying");  // still busy: keeps waiting, and says why once
  REQUIRE(hold.wait_for_output("prod is verifying"));
  CHECK_FALSE(fs::exists(rig.lease));

  rig.daemon_reports("watching");
  REQUIRE(hold.wait_exit() == 0);
  CHECK(hold.output().find("held prod until ") != std::string::npos);
  CHECK(sentinel::read_lease(rig.lease, std::chrono::system_clock::now()).state == LeaseState::held);
}

TEST_CASE("hold --wait holds when the restarting daemon dies instead of finishing") {
  LeaseRig rig;
  rig.store.prepare({"prod"});
  auto daemon = std::make_optional<InstanceLock>(rig.state);
  rig.daemon_reports("restarting");

  Background hold(rig, {"hold", "--for", "40m", "--reason", "cycle 812", "--wait"});
  REQUIRE_MESSAGE(hold.wait_for_output("waiting until it is done"), hold.output());
  daemon.reset();  // the daemon is gone; its status still says "restarting"
  REQUIRE(hold.wait_exit() == 0);
  CHECK(fs::exists(rig.lease));
}
