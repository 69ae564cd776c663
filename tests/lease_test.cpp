// The cycle lease on a real file system with real processes: reading, writing, expiry, holders
// that are gone, files that cannot be trusted, and the flock that serialises hold and the daemon.
#include "lease.h"

#include "config.h"
#include "marker.h"
#include "state_store.h"
#include "test_support.h"

#include <doctest/doctest.h>

#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <optional>
#include <string>

namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using namespace sentinel;
using sentinel::test::TempDir;
using sentinel::test::write_file;
using std::chrono::system_clock;

system_clock::time_point at(const char* iso) {
  auto t = parse_utc(iso);
  REQUIRE(t);
  return *t;
}

Lease lease_until(system_clock::time_point expires_at) {
  Lease lease;
  lease.reason = "cycle 812";
  lease.expires_at = expires_at;
  lease.held_by = "agent@host";
  lease.held_at = "2026-11-25T13:25:00Z";
  return lease;
}

/// A child process that runs until `finish()`; then it is reaped and its pid no longer runs.
class Child {
 public:
  Child() {
    int to_child[2], from_child[2];
    REQUIRE(::pipe(to_child) == 0);
    REQUIRE(::pipe(from_child) == 0);
    pid_ = ::fork();
    REQUIRE(pid_ >= 0);
    if (pid_ == 0) {
      ::close(to_child[1]);
      ::close(from_child[0]);
      char c = 0;
      // Each byte from the parent is a command: 'n' renames the process, EOF ends it.
      while (::read(to_child[0], &c, 1) == 1) {
        if (c == 'n') ::prctl(PR_SET_NAME, "a) b (c", 0, 0, 0);
        if (::write(from_child[1], &c, 1) != 1) break;
      }
      ::_exit(0);
    }
    ::close(to_child[0]);
    ::close(from_child[1]);
    to_ = to_child[1];
    from_ = from_child[0];
  }
  ~Child() { finish(); }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  /// Sends a command and waits until the child has carried it out.
  void ask(char command) {
    REQUIRE(::write(to_, &command, 1) == 1);
    char echo = 0;
    REQUIRE(::read(from_, &echo, 1) == 1);
  }
  /// Ends the child and reaps it.
  void finish() {
    if (pid_ <= 0) return;
    ::close(to_);
    ::close(from_);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
  }
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
  int to_ = -1, from_ = -1;
};

}  // namespace

TEST_CASE("a lease written and read back has every field it was written with") {
  TempDir dir;
  const fs::path file = dir / "prod.lease";
  const auto now = at("2026-11-25T13:25:00Z");
  Lease lease = lease_until(now + 40min);
  lease.pid = ::getpid();
  lease.pid_start = process_start_time(::getpid());
  REQUIRE(lease.pid_start);
  REQUIRE_FALSE(write_lease(file, lease));

  const LeaseView view = read_lease(file, now);
  CHECK(view.state == LeaseState::held);
  CHECK(view.lease.reason == "cycle 812");
  CHECK(view.lease.expires_at == now + 40min);
  CHECK(view.lease.pid == ::getpid());
  CHECK(view.lease.pid_start == lease.pid_start);
  CHECK(view.lease.held_by == "agent@host");
  CHECK(view.lease.held_at == "2026-11-25T13:25:00Z");
  CHECK(view.describe == "lease 'cycle 812' held by pid " + std::to_string(::getpid()) + " until 14:05:00Z");
  CHECK(sentinel::test::read_file(file).find("\"expires_at\":\"2026-11-25T14:05:00Z\"") != std::string::npos);
}

TEST_CASE("a lease without a pid is held until it expires, and expired from then on") {
  TempDir dir;
  const fs::path file = dir / "prod.lease";
  REQUIRE_FALSE(write_lease(file, lease_until(at("2026-11-25T14:05:00Z"))));

  const LeaseView before = read_lease(file, at("2026-11-25T14:04:59Z"));
  CHECK(before.state == LeaseState::held);
  CHECK(before.describe == "lease 'cycle 812' (no pid) until 14:05:00Z");

  const LeaseView after = read_lease(file, at("2026-11-25T14:05:00Z"));
  CHECK(after.state == LeaseState::expired);
  CHECK(after.describe == "lease 'cycle 812' expired at 14:05:00Z");
}

// Found by fuzz_lease: the reason went into the description as it was, and the description is
// logged as one line, so a "\n<0>..." in a lease file forged a journal entry of any priority.
TEST_CASE("a lease's reason is quoted with control characters escaped and cut, so it stays on one line") {
  TempDir dir;
  const fs::path file = dir / "prod.lease";
  write_file(file, R"({"reason": "cycle\n<0>forged 'x' \u001b[2J", "expires_at": "2026-11-25T14:05:00Z"})");
  CHECK(read_lease(file, at("2026-11-25T14:00:00Z")).describe ==
        R"(lease 'cycle\u000a<0>forged \'x\' \u001b[2J' (no pid) until 14:05:00Z)");

  write_file(file, R"({"reason": ")" + std::string(100, 'r') + R"(", "expires_at": "2026-11-25T14:05:00Z"})");
  CHECK(read_lease(file, at("2026-11-25T14:00:00Z")).describe ==
        "lease '" + std::string(64, 'r') + "'... (no pid) until 14:05:00Z");
}

TEST_CASE("a lease that ends more than a day away is described with its date") {
  TempDir dir;
  REQUIRE_FALSE(write_lease(dir / "prod.lease", lease_until(at("2026-11-27T14:05:00Z"))));
  CHECK(read_lease(dir / "prod.lease", at("2026-11-25T14:05:00Z")).describe ==
        "lease 'cycle 812' (no pid) until 2026-11-27T14:05:00Z");
}

TEST_CASE("no lease file means no lease") {
  TempDir dir;
  CHECK(read_lease(dir / "prod.lease", system_clock::now()).state == LeaseState::none);
  CHECK(read_lease(dir / "no-such-dir" / "prod.lease", system_clock::now()).state == LeaseState::none);
}

TEST_CASE("a lease whose holder has exited and been reaped counts as released") {
  TempDir dir;
  const fs::path file = dir / "prod.lease";
  Child child;
  Lease lease = lease_until(system_clock::now() + 1h);
  lease.pid = child.pid();
  lease.pid_start = process_start_time(child.pid());
  REQUIRE(lease.pid_start);
  REQUIRE_FALSE(write_lease(file, lease));
  CHECK(read_lease(file, system_clock::now()).state == LeaseState::held);

  child.finish();
  const LeaseView view = read_lease(file, system_clock::now());
  CHECK(view.state == LeaseState::holder_gone);
  CHECK(view.describe == "lease 'cycle 812': holder pid " + std::to_string(*lease.pid) + " is gone");
}

TEST_CASE("a lease whose pid now runs a process that started at another time counts as released") {
  TempDir dir;
  const fs::path file = dir / "prod.lease";
  Lease lease = lease_until(system_clock::now() + 1h);
  lease.pid = ::getpid();  // runs, but is not the process that took the lease
  lease.pid_start = *process_start_time(::getpid()) + 1;
  REQUIRE_FALSE(write_lease(file, lease));
  const LeaseView view = read_lease(file, system_clock::now());
  CHECK(view.state == LeaseState::holder_gone);
  CHECK(view.describe.find("the pid now belongs to another process") != std::string::npos);
}

TEST_CASE("a zombie holder, exited but not yet reaped, counts as gone") {
  Child child;
  REQUIRE(process_start_time(child.pid()));
  // End it without reaping: its pid stays in /proc in state Z until finish() reaps it.
  ::kill(child.pid(), SIGKILL);
  siginfo_t info{};
  REQUIRE(::waitid(P_PID, static_cast<id_t>(child.pid()), &info, WEXITED | WNOWAIT) == 0);
  CHECK_FALSE(process_start_time(child.pid()));
}

TEST_CASE("the start time is read past a process name holding spaces and parentheses") {
  Child child;
  const auto before = process_start_time(child.pid());
  REQUIRE(before);
  child.ask('n');  // renames it "a) b (c"
  REQUIRE(sentinel::test::read_file("/proc/" + std::to_string(child.pid()) + "/comm") == "a) b (c\n");
  CHECK(process_start_time(child.pid()) == before);
}

TEST_CASE("process_start_time has no answer for pids that cannot be a process") {
  CHECK_FALSE(process_start_time(0));
  CHECK_FALSE(process_start_time(-1));
}

TEST_CASE("a lease file that cannot be trusted is unreadable, and its description names it and says to release it") {
  TempDir dir;
  const fs::path file = dir / "prod.lease";
  const auto now = at("2026-11-25T13:25:00Z");
  auto check_unreadable = [&](const std::string& why) {
    const LeaseView view = read_lease(file, now);
    INFO(view.describe);
    CHECK(view.state == LeaseState::unreadable);
    CHECK(view.describe.find(file.string()) != std::string::npos);
    CHECK(view.describe.find(why) != std::string::npos);
    CHECK(view.describe.find("deploy-sentinel release") != std::string::npos);
  };
  const std::string valid = R"({"reason": "x", "expires_at": "2026-11-25T14:05:00Z"})";

  SUBCASE("not JSON") {
    write_file(file, "held until 14:05");
    check_unreadable("not JSON");
  }
  SUBCASE("empty") {
    write_file(file, "");
    check_unreadable("not JSON");
  }
  SUBCASE("JSON but not an object") {
    write_file(file, "[1, 2]");
    check_unreadable("not an object");
  }
  SUBCASE("no expires_at") {
    write_file(file, R"({"reason": "cycle 812"})");
    check_unreadable("no \"expires_at\"");
  }
  SUBCASE("an expires_at that is not a UTC time") {
    write_file(file, R"({"expires_at": "tomorrow"})");
    check_unreadable("\"expires_at\" is not a UTC time");
  }
  SUBCASE("an expires_at on a day that does not exist") {
    write_file(file, R"({"expires_at": "2026-02-30T14:05:00Z"})");
    check_unreadable("\"expires_at\" is not a UTC time");
  }
  // Found by fuzz_lease: the year 9999 overflowed the clock's nanoseconds and wrapped to 1816, so
  // a lease meant to last until released read as long expired and did not hold off a restart.
  SUBCASE("an expires_at beyond what the clock can hold") {
    write_file(file, R"({"reason": "forever", "expires_at": "9999-12-31T23:59:59Z"})");
    check_unreadable("\"expires_at\" is not a UTC time like \"2026-11-25T14:05:00Z\" (up to 2262)");
  }
  SUBCASE("a pid that is not a positive integer") {
    write_file(file, R"({"expires_at": "2026-11-25T14:05:00Z", "pid": "4411"})");
    check_unreadable("\"pid\"");
    write_file(file, R"({"expires_at": "2026-11-25T14:05:00Z", "pid": -1})");
    check_unreadable("\"pid\"");
    write_file(file, R"({"expires_at": "2026-11-25T14:05:00Z", "pid": 99999999999})");
    check_unreadable("\"pid\"");
  }
  SUBCASE("a pid_start that is not an integer") {
    write_file(file, R"({"expires_at": "2026-11-25T14:05:00Z", "pid": 1, "pid_start": 1.5})");
    check_unreadable("\"pid_start\"");
  }
  SUBCASE("larger than 64 KiB") {
    write_file(file, valid.substr(0, valid.size() - 1) + ", \"pad\": \"" + std::string(64 * 1024, 'x') + "\"}");
    check_unreadable("larger than 64 KiB");
  }
  SUBCASE("a symlink, even to a valid lease") {
    write_file(dir / "elsewhere", valid);
    fs::create_symlink(dir / "elsewhere", file);
    check_unreadable("symbolic link");
  }
  SUBCASE("a directory") {
    fs::create_directory(file);
    check_unreadable("not a regular file");
  }
}

TEST_CASE("a lease someone wrote by hand with only expires_at is held until then") {
  TempDir dir;
  write_file(dir / "prod.lease", R"({"expires_at": "2026-11-25T14:05:00Z"})");
  const LeaseView view = read_lease(dir / "prod.lease", at("2026-11-25T13:25:00Z"));
  CHECK(view.state == LeaseState::held);
  CHECK(view.describe == "lease (no pid) until 14:05:00Z");
}

TEST_CASE("writing a lease replaces a symlink at its path instead of writing through it") {
  TempDir dir;
  write_file(dir / "target", "untouched");
  fs::create_symlink(dir / "target", dir / "prod.lease");
  REQUIRE_FALSE(write_lease(dir / "prod.lease", lease_until(at("2026-11-25T14:05:00Z"))));
  CHECK(sentinel::test::read_file(dir / "target") == "untouched");
  CHECK(read_lease(dir / "prod.lease", at("2026-11-25T13:25:00Z")).state == LeaseState::held);
}

TEST_CASE("parse_utc reads what format_utc writes and nothing else") {
  const auto t = system_clock::from_time_t(1795615500);  // 2026-11-25T14:05:00Z
  CHECK(parse_utc(format_utc(t)) == t);
  CHECK(parse_utc("2026-11-25T14:05:00Z") == t);
  for (const char* bad : {"", "2026-11-25 14:05:00Z", "2026-11-25T14:05:00", "2026-11-25T14:05:00+01:00",
                          "2026-11-25T14:05:00.5Z", "2026-13-01T00:00:00Z", "2026-11-25T24:00:00Z",
                          "2026-1-25T14:05:00Z", "2027-02-29T00:00:00Z", "+026-11-25T14:05:00Z"}) {
    INFO(bad);
    CHECK_FALSE(parse_utc(bad));
  }
  CHECK(parse_utc("2028-02-29T00:00:00Z"));  // a leap year
  // The range of system_clock's 64-bit nanoseconds, and nothing beyond it (found by fuzz_lease).
  CHECK(parse_utc("2262-04-11T23:47:16Z") == system_clock::from_time_t(9223372036));
  CHECK(parse_utc("1677-09-21T00:12:44Z") == system_clock::from_time_t(-9223372036));
  for (const char* far : {"2262-04-11T23:47:17Z", "9999-12-31T23:59:59Z", "1677-09-21T00:12:43Z", "0000-01-01T00:00:00Z"}) {
    INFO(far);
    CHECK_FALSE(parse_utc(far));
  }
}

TEST_CASE("a second lease lock is refused while the first is held, even in the same process, and granted after") {
  TempDir dir;
  const fs::path lease = dir / "prod.lease";
  std::error_code ec;
  std::optional<LeaseLock> first = LeaseLock::try_acquire(lease, ec);
  REQUIRE_FALSE(ec);
  REQUIRE(first);

  std::optional<LeaseLock> second = LeaseLock::try_acquire(lease, ec);
  CHECK_FALSE(second);
  CHECK_FALSE(ec);

  LeaseLock moved = std::move(*first);  // moving keeps the lock
  first.reset();
  CHECK_FALSE(LeaseLock::try_acquire(lease, ec));
  CHECK_FALSE(ec);

  { LeaseLock gone = std::move(moved); }
  CHECK(LeaseLock::try_acquire(lease, ec));
  CHECK_FALSE(ec);
  LeaseLock blocking = LeaseLock::acquire(lease);  // free again: does not wait
  CHECK_FALSE(LeaseLock::try_acquire(lease, ec));
}

TEST_CASE("the lease lock file sits beside the lease and is created group-writable whatever the umask") {
  TempDir dir;
  const mode_t old_umask = ::umask(022);
  { LeaseLock lock = LeaseLock::acquire(dir / "prod.lease"); }
  ::umask(old_umask);
  CHECK(lease_lock_file(dir / "prod.lease") == dir / "prod.lease.lock");
  struct stat st {};
  REQUIRE(::stat((dir / "prod.lease.lock").c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0664);
  CHECK_FALSE(fs::exists(dir / "prod.lease"));  // the lock creates no lease
}

TEST_CASE("a lease lock that cannot be opened is an error naming the file and what to fix") {
  TempDir dir;
  const fs::path lease = dir / "missing-dir" / "prod.lease";
  std::error_code ec;
  CHECK_FALSE(LeaseLock::try_acquire(lease, ec));
  CHECK(ec == std::errc::no_such_file_or_directory);
  try {
    LeaseLock::acquire(lease);
    FAIL("acquire did not throw");
  } catch (const StartupError& e) {
    const std::string what = e.what();
    CHECK(what.find((dir / "missing-dir" / "prod.lease.lock").string()) != std::string::npos);
    CHECK(what.find("must exist") != std::string::npos);
  }

  fs::create_symlink(dir / "elsewhere", dir / "prod.lease.lock");
  CHECK_FALSE(LeaseLock::try_acquire(dir / "prod.lease", ec));
  CHECK(ec);
  CHECK_THROWS_AS(LeaseLock::acquire(dir / "prod.lease"), StartupError);
  CHECK_FALSE(fs::exists(dir / "elsewhere"));  // not created through the link
}

TEST_CASE("only the phases that replace or check production block a hold") {
  for (const char* phase : {"restarting", "verifying", "reverting", "rebuilding"}) {
    INFO(phase);
    CHECK(phase_blocks_hold(phase));
  }
  for (const char* phase : {"watching", "waiting-idle", "quarantined", "idle", "", "Restarting"}) {
    INFO(phase);
    CHECK_FALSE(phase_blocks_hold(phase));
  }
}

TEST_CASE("a hold is refused while a running daemon restarts, and not for the status a dead daemon left") {
  TempDir dir;
  StateStore store(dir.path());
  store.prepare({"prod"});
  TargetStatus status;
  status.phase = "restarting";
  status.since = "2026-11-25T14:02:11Z";
  status.commit = "3f2c1a9d0e8b7c6a5f4e3d2c1b0a9f8e7d6c5b4a";
  REQUIRE_FALSE(store.write_status("prod", status));

  CHECK_FALSE(hold_refusal(store, "prod"));  // no daemon holds the instance lock
  {
    InstanceLock daemon(dir.path());
    CHECK(hold_refusal(store, "prod") == "prod is restarting (since 14:02:11, commit 3f2c1a9)");
    status.phase = "waiting-idle";
    REQUIRE_FALSE(store.write_status("prod", status));
    CHECK_FALSE(hold_refusal(store, "prod"));
  }
  CHECK_FALSE(hold_refusal(store, "other"));  // never had a status
}

TEST_CASE("a status watch wakes when the daemon writes the target's status") {
  TempDir dir;
  StateStore store(dir.path());
  store.prepare({"prod"});
  StatusWatch watch(store, "prod");
  REQUIRE(watch.warning().empty());
  REQUIRE_FALSE(store.write_status("prod", TargetStatus{"watching", "", "", "", "", "", std::nullopt, ""}));
  const auto start = std::chrono::steady_clock::now();
  watch.wait(30s);  // the event, not the timeout, must end this
  CHECK(std::chrono::steady_clock::now() - start < 10s);
}
