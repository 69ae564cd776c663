// Finding who listens on a TCP port, with real sockets on the loopback addresses and real
// processes: our own, forked children that inherit a listener, and a child of another user.
#include "listener.h"

#include "lease.h"
#include "test_support.h"

#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace {

using namespace sentinel;
using namespace std::chrono_literals;
using std::chrono::system_clock;

/// A TCP socket bound to a loopback address (127.0.0.1, ::1 or ::ffff:127.0.0.1).
class TcpSocket {
 public:
  /// Binds to `address` on `port` (0: any free port); `v6only` only for IPv6 sockets.
  TcpSocket(const char* address, std::uint16_t port = 0, bool v6only = true) {
    sockaddr_storage storage{};
    socklen_t length = 0;
    if (std::string_view(address).find(':') == std::string_view::npos) {
      auto& in = reinterpret_cast<sockaddr_in&>(storage);
      in.sin_family = AF_INET;
      in.sin_port = htons(port);
      REQUIRE(::inet_pton(AF_INET, address, &in.sin_addr) == 1);
      length = sizeof(in);
    } else {
      auto& in6 = reinterpret_cast<sockaddr_in6&>(storage);
      in6.sin6_family = AF_INET6;
      in6.sin6_port = htons(port);
      REQUIRE(::inet_pton(AF_INET6, address, &in6.sin6_addr) == 1);
      length = sizeof(in6);
    }
    fd_ = ::socket(storage.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd_ >= 0);
    if (storage.ss_family == AF_INET6) {
      const int flag = v6only ? 1 : 0;
      REQUIRE(::setsockopt(fd_, IPPROTO_IPV6, IPV6_V6ONLY, &flag, sizeof(flag)) == 0);
    }
    REQUIRE_MESSAGE(::bind(fd_, reinterpret_cast<sockaddr*>(&storage), length) == 0, "bind ", address);
  }
  explicit TcpSocket(int fd) : fd_(fd) { REQUIRE(fd_ >= 0); }
  ~TcpSocket() { close(); }
  TcpSocket(const TcpSocket&) = delete;
  TcpSocket& operator=(const TcpSocket&) = delete;

  TcpSocket& listen() {
    REQUIRE(::listen(fd_, 8) == 0);
    return *this;
  }
  void close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  int fd() const { return fd_; }
  std::uint16_t port() const {
    sockaddr_storage storage{};
    socklen_t length = sizeof(storage);
    REQUIRE(::getsockname(fd_, reinterpret_cast<sockaddr*>(&storage), &length) == 0);
    return ntohs(storage.ss_family == AF_INET ? reinterpret_cast<sockaddr_in&>(storage).sin_port
                                              : reinterpret_cast<sockaddr_in6&>(storage).sin6_port);
  }
  unsigned long inode() const {
    struct stat st {};
    REQUIRE(::fstat(fd_, &st) == 0);
    return st.st_ino;
  }

 private:
  int fd_ = -1;
};

/// A forked copy of this process that holds every fd we had at the fork and waits, blocked on a
/// pipe, until it is destroyed; then it is reaped.
class WaitingChild {
 public:
  WaitingChild() {
    int pipe_fds[2];
    REQUIRE(::pipe2(pipe_fds, O_CLOEXEC) == 0);
    pid_ = ::fork();
    REQUIRE(pid_ >= 0);
    if (pid_ == 0) {
      ::close(pipe_fds[1]);
      char c;
      while (::read(pipe_fds[0], &c, 1) > 0) {
      }
      ::_exit(0);
    }
    ::close(pipe_fds[0]);
    release_ = pipe_fds[1];
  }
  ~WaitingChild() {
    ::close(release_);
    int status = 0;
    ::waitpid(pid_, &status, 0);
  }
  WaitingChild(const WaitingChild&) = delete;
  WaitingChild& operator=(const WaitingChild&) = delete;
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
  int release_ = -1;
};

std::string own_comm() {
  std::string comm = sentinel::test::read_file("/proc/self/comm");
  if (!comm.empty() && comm.back() == '\n') comm.pop_back();
  return comm;
}

std::vector<pid_t> pids_of(const Listeners& listeners) {
  std::vector<pid_t> pids;
  for (const auto& owner : listeners.owners) pids.push_back(owner.pid);
  return pids;
}

void check_only_we_listen(const TcpSocket& listener) {
  const Listeners found = find_listeners(listener.port());
  INFO(found.error);
  REQUIRE(found.result == Listeners::Result::found);
  CHECK(found.inodes == std::vector<unsigned long>{listener.inode()});
  REQUIRE(found.owners.size() == 1);
  CHECK(found.owners[0].pid == ::getpid());
  CHECK(found.owners[0].start_ticks == process_start_time(::getpid()));
  CHECK(found.owners[0].name == own_comm());
  CHECK(found.error.empty());
}

}  // namespace

TEST_CASE("our own process is found as the owner of an IPv4 listener on 127.0.0.1") {
  TcpSocket listener("127.0.0.1");
  listener.listen();
  check_only_we_listen(listener);
}

TEST_CASE("our own process is found as the owner of an IPv6 listener on ::1") {
  TcpSocket listener("::1");
  listener.listen();
  check_only_we_listen(listener);
}

TEST_CASE("an IPv6 listener on the IPv4-mapped address ::ffff:127.0.0.1 is found") {
  TcpSocket listener("::ffff:127.0.0.1", 0, /*v6only=*/false);
  listener.listen();
  check_only_we_listen(listener);
}

TEST_CASE("an IPv4 and an IPv6 listener on the same port are both listed, their owner once") {
  TcpSocket v4("127.0.0.1");
  TcpSocket v6("::1", v4.port());
  v4.listen();
  v6.listen();
  const Listeners found = find_listeners(v4.port());
  INFO(found.error);
  REQUIRE(found.result == Listeners::Result::found);
  std::vector<unsigned long> expected{v4.inode(), v6.inode()};
  std::sort(expected.begin(), expected.end());
  CHECK(found.inodes == expected);
  CHECK(pids_of(found) == std::vector<pid_t>{::getpid()});
}

TEST_CASE("a socket that is bound but not listening is not a listener") {
  TcpSocket bound("127.0.0.1");
  const Listeners found = find_listeners(bound.port());
  INFO(found.error);
  CHECK(found.result == Listeners::Result::nobody);
  CHECK(found.inodes.empty());
  CHECK(found.owners.empty());
}

TEST_CASE("a port whose only socket is a connected client has nobody listening on it") {
  TcpSocket listener("127.0.0.1");
  listener.listen();
  TcpSocket client("127.0.0.1");
  sockaddr_in server{};
  server.sin_family = AF_INET;
  server.sin_port = htons(listener.port());
  server.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::connect(client.fd(), reinterpret_cast<sockaddr*>(&server), sizeof(server)) == 0);
  TcpSocket accepted(::accept4(listener.fd(), nullptr, nullptr, SOCK_CLOEXEC));

  const Listeners at_client = find_listeners(client.port());
  INFO(at_client.error);
  CHECK(at_client.result == Listeners::Result::nobody);
  CHECK(at_client.inodes.empty());

  // The accepted connection has the listener's port as its local port too, but is no listener.
  CHECK(find_listeners(listener.port()).inodes == std::vector<unsigned long>{listener.inode()});
}

TEST_CASE("a port that a closed listener left is free again, and port 0 has no listeners") {
  TcpSocket listener("127.0.0.1");
  listener.listen();
  const std::uint16_t port = listener.port();
  REQUIRE(find_listeners(port).result == Listeners::Result::found);
  listener.close();
  CHECK(find_listeners(port).result == Listeners::Result::nobody);
  CHECK(find_listeners(0).result == Listeners::Result::nobody);
}

TEST_CASE("a listener inherited by a forked child lists both processes, sorted by pid") {
  TcpSocket listener("127.0.0.1");
  listener.listen();
  WaitingChild child;

  const Listeners found = find_listeners(listener.port());
  INFO(found.error);
  REQUIRE(found.result == Listeners::Result::found);
  CHECK(found.inodes == std::vector<unsigned long>{listener.inode()});
  std::vector<pid_t> expected{::getpid(), child.pid()};
  std::sort(expected.begin(), expected.end());
  REQUIRE(pids_of(found) == expected);

  const auto& ours = found.owners[found.owners[0].pid == ::getpid() ? 0 : 1];
  const auto& childs = found.owners[found.owners[0].pid == ::getpid() ? 1 : 0];
  CHECK(childs.start_ticks == process_start_time(child.pid()));
  CHECK(childs.start_ticks >= ours.start_ticks);
  CHECK(childs.name == ours.name);  // a fork keeps the name
}

TEST_CASE("a listener held only by another user's process is hidden, with a message that says the fix") {
  if (::getuid() != 0) {
    MESSAGE("skipped: needs root to start a process as another user");
    return;
  }
  TcpSocket listener("127.0.0.1");
  listener.listen();
  const std::uint16_t port = listener.port();
  // The child gives up the socket and root, then looks for the socket that only we (root) hold.
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    ::close(listener.fd());
    if (::setgroups(0, nullptr) != 0 || ::setgid(65534) != 0 || ::setuid(65534) != 0) ::_exit(100);
    const Listeners found = find_listeners(port);
    const bool says_fix = found.error.find("permission denied") != std::string::npos &&
                          found.error.find("CAP_SYS_PTRACE") != std::string::npos;
    ::_exit(static_cast<int>(found.result) * 2 + (says_fix ? 1 : 0));
  }
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  REQUIRE(WIFEXITED(status));
  REQUIRE_MESSAGE(WEXITSTATUS(status) != 100, "the child could not become uid 65534");
  CHECK(WEXITSTATUS(status) == static_cast<int>(Listeners::Result::hidden) * 2 + 1);
}

TEST_CASE("a freshly forked listener's start, as process_started_at tells it, lies between just before and just after the fork") {
  TcpSocket listener("127.0.0.1");
  listener.listen();
  const auto before = system_clock::now();
  WaitingChild child;
  const auto after = system_clock::now();

  const Listeners found = find_listeners(listener.port());
  INFO(found.error);
  const auto owner = std::find_if(found.owners.begin(), found.owners.end(),
                                  [&](const ListeningProcess& p) { return p.pid == child.pid(); });
  REQUIRE(owner != found.owners.end());
  const auto started = process_started_at(owner->start_ticks);
  // The kernel truncates start times to a tick (10 ms at 100 Hz); the boot time is exact, so a
  // boot time rounded to the second (/proc/stat btime) would fail this.
  const auto tick = std::chrono::nanoseconds(1'000'000'000 / ::sysconf(_SC_CLK_TCK));
  CHECK(started >= before - tick - 5ms);
  CHECK(started <= after + 5ms);
}
