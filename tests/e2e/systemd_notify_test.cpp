// The daemon's side of Type=notify, end to end: the real daemon with $NOTIFY_SOCKET naming a
// datagram socket this test owns, as systemd would give it.
#include "harness.h"

#include <doctest/doctest.h>

#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <optional>
#include <sstream>

using namespace sentinel::test;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

/// The service manager's end of $NOTIFY_SOCKET: a bound AF_UNIX datagram socket.
class NotifySocket {
 public:
  explicit NotifySocket(const fs::path& path) : path_(path) {
    fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path.string().size() >= sizeof addr.sun_path) throw std::runtime_error("socket path too long");
    std::copy_n(path.c_str(), path.string().size(), addr.sun_path);
    if (fd_ < 0 || ::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      throw std::runtime_error("cannot bind " + path.string());
    }
  }
  ~NotifySocket() { ::close(fd_); }
  NotifySocket(const NotifySocket&) = delete;
  NotifySocket& operator=(const NotifySocket&) = delete;

  /// The next datagram, or nullopt when none came within `timeout`.
  std::optional<std::string> next(std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      pollfd p{fd_, POLLIN, 0};
      if (left.count() < 0 || ::poll(&p, 1, static_cast<int>(left.count())) <= 0) return std::nullopt;
      char buf[4096];
      ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n >= 0) {
        received.emplace_back(buf, static_cast<std::size_t>(n));
        return received.back();
      }
    }
  }

  /// Reads datagrams until one contains `text`; returns it, or nullopt after `timeout`.
  std::optional<std::string> wait_for(const std::string& text, std::chrono::milliseconds timeout = 10s) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() < 0) return std::nullopt;
      auto message = next(left);
      if (!message) return std::nullopt;
      if (message->find(text) != std::string::npos) return message;
    }
  }

  const fs::path& path() const { return path_; }
  std::vector<std::string> received;

 private:
  fs::path path_;
  int fd_ = -1;
};

/// Sets an environment variable for the daemons this test starts, and unsets it afterwards.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const std::string& value) : name_(name) { ::setenv(name, value.c_str(), 1); }
  ~ScopedEnv() { ::unsetenv(name_); }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
};

int count_containing(const std::vector<std::string>& messages, const std::string& text) {
  int n = 0;
  for (const auto& m : messages) n += m.find(text) != std::string::npos;
  return n;
}

/// The fields of one native journal datagram ("NAME=value" lines; our values have no newline).
std::map<std::string, std::string> journal_fields(const std::string& datagram) {
  std::map<std::string, std::string> fields;
  std::istringstream lines(datagram);
  for (std::string line; std::getline(lines, line);) {
    auto eq = line.find('=');
    if (eq != std::string::npos) fields[line.substr(0, eq)] = line.substr(eq + 1);
  }
  return fields;
}

}  // namespace

TEST_CASE("under the journal each transition is one native entry with DEPLOY_TARGET, DEPLOY_PHASE, DEPLOY_COMMIT, "
          "DEPLOY_RESULT and its priority") {
  // journald's socket is /run/systemd/journal/socket: in a mount namespace of this test process
  // (and so of the daemon it starts) a tmpfs on /run puts this test's socket there. Needs root.
  REQUIRE(::unshare(CLONE_NEWNS) == 0);
  REQUIRE(::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) == 0);
  REQUIRE(::mount("tmpfs", "/run", "tmpfs", 0, "mode=0755") == 0);
  fs::create_directories("/run/systemd/journal");
  NotifySocket journal("/run/systemd/journal/socket");
  Production prod;
  auto& daemon = prod.start_daemon(true);
  REQUIRE(daemon.wait_for_line("prod: watching") >= 0);
  std::string sha = prod.commit("healthy");
  prod.stage_by_rename();

  auto restarting = journal.wait_for("DEPLOY_PHASE=restarting");
  REQUIRE(restarting);
  auto fields = journal_fields(*restarting);
  CHECK(fields["DEPLOY_TARGET"] == "prod");
  CHECK(fields["DEPLOY_COMMIT"] == sha);
  CHECK(fields["PRIORITY"] == "6");
  CHECK(fields["MESSAGE"] == "prod: restarting " + short_sha(sha));
  CHECK(fields.count("DEPLOY_RESULT") == 0);

  auto deployed = journal.wait_for("DEPLOY_RESULT=deployed");
  REQUIRE(deployed);
  fields = journal_fields(*deployed);
  CHECK(fields["DEPLOY_TARGET"] == "prod");
  CHECK(fields["DEPLOY_COMMIT"] == sha);
  CHECK(fields["PRIORITY"] == "5");
  CHECK(fields["MESSAGE"] == "prod: deployed " + short_sha(sha));
  CHECK(fields["SYSLOG_IDENTIFIER"] == "deploy-sentinel");
  CHECK(count_containing(journal.received, "DEPLOY_RESULT=") == 1);
  CHECK(count_containing(journal.received, "DEPLOY_PHASE=restarting") == 1);
  // The human lines still go to stderr, with their priority prefixes.
  CHECK(daemon.wait_for_line("<6>prod: deployed " + short_sha(sha)) >= 0);
}

TEST_CASE("under systemd READY=1 comes after the start-up look at the disk, STATUS= follows each phase, "
          "and STOPPING=1 comes on SIGTERM") {
  Production prod;
  std::string sha = prod.commit("healthy");
  prod.stage_by_rename();  // there before the daemon starts: found by the start-up look only
  NotifySocket manager(prod.tmp / "notify.sock");
  ScopedEnv notify("NOTIFY_SOCKET", manager.path().string());
  auto& daemon = prod.start_daemon();

  auto ready = manager.wait_for("READY=1");
  REQUIRE(ready);
  CHECK(count_containing(manager.received, "READY=1") == 1);
  // The marker was claimed before the daemon said it is ready, and the status says so.
  CHECK(ready->find("STATUS=prod: restarting " + short_sha(sha)) != std::string::npos);
  CHECK_FALSE(prod.has(".deploy-ready"));
  CHECK(manager.received.front() == "STATUS=prod: starting");

  REQUIRE(manager.wait_for("STATUS=prod: verifying " + short_sha(sha)));
  REQUIRE(manager.wait_for("STATUS=prod: watching"));
  REQUIRE(daemon.wait_for_line("deployed " + short_sha(sha)) >= 0);
  CHECK(daemon.stop() == 0);
  auto stopping = manager.wait_for("STOPPING=1", 2s);
  REQUIRE(stopping);
  CHECK(manager.received.back() == *stopping);  // nothing after it
  CHECK_FALSE(manager.next(0ms));
  CHECK(count_containing(manager.received, "WATCHDOG=1") == 0);  // no WATCHDOG_USEC, no pings
}

TEST_CASE("under systemd READY=1 waits until every target has started") {
  Production::Options second_options;
  second_options.name = "second";
  Production first, second(second_options);
  // Each target's start-up probes its production first (no known-good commit yet).
  write_file(first.config, read_file(first.config) + "\n" + second.target_section);
  NotifySocket manager(first.tmp / "notify.sock");
  ScopedEnv notify("NOTIFY_SOCKET", manager.path().string());
  first.start_daemon();
  auto ready = manager.wait_for("READY=1");
  REQUIRE(ready);
  CHECK(ready->find("prod: watching") != std::string::npos);
  CHECK(ready->find("second: watching") != std::string::npos);
}

TEST_CASE("under systemd with a watchdog the event loop pings at half of WATCHDOG_USEC, and a frozen daemon stops "
          "pinging") {
  Production prod;
  NotifySocket manager(prod.tmp / "notify.sock");
  ScopedEnv notify("NOTIFY_SOCKET", manager.path().string());
  ScopedEnv watchdog("WATCHDOG_USEC", "400000");
  auto& daemon = prod.start_daemon();
  REQUIRE(manager.wait_for("READY=1"));
  const auto first = std::chrono::steady_clock::now();
  REQUIRE(manager.wait_for("WATCHDOG=1", 1s));
  REQUIRE(manager.wait_for("WATCHDOG=1", 1s));
  REQUIRE(manager.wait_for("WATCHDOG=1", 1s));
  // Three pings 200 ms apart take at least 400 ms.
  CHECK(std::chrono::steady_clock::now() - first >= 350ms);

  ::kill(daemon.pid(), SIGSTOP);
  while (manager.next(50ms)) {  // a ping already on its way
  }
  CHECK_FALSE(manager.wait_for("WATCHDOG=1", 600ms));  // three intervals without a ping
  ::kill(daemon.pid(), SIGCONT);
  CHECK(manager.wait_for("WATCHDOG=1", 1s));
  CHECK(daemon.stop() == 0);
}

TEST_CASE("under systemd a SIGHUP reload says RELOADING=1, then READY=1 once the targets have started again, "
          "and never STOPPING=1") {
  Production prod;
  NotifySocket manager(prod.tmp / "notify.sock");
  ScopedEnv notify("NOTIFY_SOCKET", manager.path().string());
  auto& daemon = prod.start_daemon();
  REQUIRE(manager.wait_for("READY=1"));
  REQUIRE(::kill(daemon.pid(), SIGHUP) == 0);
  auto reloading = manager.wait_for("RELOADING=1");
  REQUIRE(reloading);
  auto ready = manager.wait_for("READY=1");
  REQUIRE(ready);
  CHECK(count_containing(manager.received, "STOPPING=1") == 0);
  CHECK(daemon.count_lines("is valid; applying it") == 1);
  CHECK(daemon.stop() == 0);
  REQUIRE(manager.wait_for("STOPPING=1", 2s));
}
