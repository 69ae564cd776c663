#include "listener.h"

#include "lease.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string_view>
#include <utility>

namespace sentinel {
namespace {

/// Owns a file descriptor.
class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

/// Calls `visit(name)` for each entry but "." and ".." of the directory open at `dir`, until
/// it returns false; reads through `buffer` (8-byte aligned), so no entry costs an allocation.
/// 0, or the errno of a failed read.
template <typename Visit>
int for_each_entry(int dir, std::span<char> buffer, Visit visit) {
  for (;;) {
    const ssize_t got = ::getdents64(dir, buffer.data(), buffer.size());
    if (got == 0) return 0;
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) return errno;
    for (std::size_t at = 0; at < static_cast<std::size_t>(got);) {
      const auto* entry = reinterpret_cast<const dirent64*>(buffer.data() + at);
      at += entry->d_reclen;
      const char* name = entry->d_name;
      if (name[0] == '.' && (name[1] == '\0' || (name[1] == '.' && name[2] == '\0'))) continue;
      if (!visit(name)) return 0;
    }
  }
}

std::string errno_text(int err) { return std::strerror(err); }

/// What to do when the diagnostics socket or query failed with `err`.
std::string sock_diag_fix(int err) {
  switch (err) {
    case EPROTONOSUPPORT:
      return "this kernel has no socket diagnostics (CONFIG_INET_DIAG): enable it, or load it with `modprobe "
             "tcp_diag` as root";
    case ENOENT:
      return "the kernel's TCP socket diagnostics are not loaded: run `modprobe tcp_diag` as root (and add tcp_diag "
             "to /etc/modules-load.d/ to keep it)";
    case EAFNOSUPPORT:
    case EPERM:
    case EACCES:
      return "netlink sockets are forbidden to this process: in a systemd unit, add AF_NETLINK to "
             "RestrictAddressFamilies= (and allow socket() in SystemCallFilter=)";
    default:
      return "the kernel refused the NETLINK_SOCK_DIAG query";
  }
}

/// Appends to `inodes` the inodes of the `family` TCP sockets listening on `port`; 0 or an errno.
int dump_listening(int netlink, std::uint32_t seq, std::uint8_t family, std::uint16_t port,
                   std::vector<char>& buffer, std::vector<unsigned long>& inodes) {
  struct {
    nlmsghdr header;
    inet_diag_req_v2 body;
  } request{};
  request.header.nlmsg_len = sizeof(request);
  request.header.nlmsg_type = SOCK_DIAG_BY_FAMILY;
  request.header.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
  request.header.nlmsg_seq = seq;
  request.body.sdiag_family = family;
  request.body.sdiag_protocol = IPPROTO_TCP;
  request.body.idiag_states = 1u << TCP_LISTEN;
  // A dump ignores request.body.id: the kernel sends every listening socket of the family and
  // the port is matched below. idiag_sport is in network byte order.
  sockaddr_nl kernel{};
  kernel.nl_family = AF_NETLINK;
  for (;;) {
    const ssize_t sent = ::sendto(netlink, &request, sizeof(request), 0, reinterpret_cast<sockaddr*>(&kernel),
                                  sizeof(kernel));
    if (sent >= 0) break;
    if (errno != EINTR) return errno;
  }

  const std::uint16_t wanted = htons(port);
  for (;;) {
    iovec iov{buffer.data(), buffer.size()};
    msghdr msg{};
    msg.msg_name = &kernel;
    msg.msg_namelen = sizeof(kernel);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    const ssize_t got = ::recvmsg(netlink, &msg, 0);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) return errno;
    if (got == 0) return EPROTO;
    if (msg.msg_flags & MSG_TRUNC) return EMSGSIZE;

    int left = static_cast<int>(got);
    for (auto* h = reinterpret_cast<const nlmsghdr*>(buffer.data()); NLMSG_OK(h, left); h = NLMSG_NEXT(h, left)) {
      if (h->nlmsg_seq != seq) continue;  // not an answer to this request
      if (h->nlmsg_type == NLMSG_DONE) {
        // A dump that failed part-way says so in the int after the header.
        if (h->nlmsg_len >= NLMSG_LENGTH(sizeof(int))) {
          int status = 0;
          std::memcpy(&status, NLMSG_DATA(h), sizeof(status));
          if (status < 0) return -status;
        }
        return 0;
      }
      if (h->nlmsg_type == NLMSG_ERROR) {
        if (h->nlmsg_len < NLMSG_LENGTH(sizeof(nlmsgerr))) return EPROTO;
        const auto* err = static_cast<const nlmsgerr*>(NLMSG_DATA(h));
        if (err->error != 0) return -err->error;
        continue;  // an acknowledgement
      }
      if (h->nlmsg_type != SOCK_DIAG_BY_FAMILY || h->nlmsg_len < NLMSG_LENGTH(sizeof(inet_diag_msg))) continue;
      const auto* sock = static_cast<const inet_diag_msg*>(NLMSG_DATA(h));
      if (sock->idiag_state == TCP_LISTEN && sock->id.idiag_sport == wanted && sock->idiag_inode != 0) {
        inodes.push_back(sock->idiag_inode);
      }
    }
  }
}

/// Reads "socket:[INODE]" from the link `name` in the fd directory `fd_dir`: the inode, 0 for any
/// other link, or -errno.
long long socket_inode(int fd_dir, const char* name) {
  std::array<char, 64> link;  // "socket:[4294967295]" and anything longer is not a socket
  const ssize_t n = ::readlinkat(fd_dir, name, link.data(), link.size());
  if (n < 0) return -errno;
  constexpr std::string_view prefix = "socket:[";
  const std::string_view text(link.data(), static_cast<std::size_t>(n));
  if (text.size() <= prefix.size() + 1 || !text.starts_with(prefix) || text.back() != ']') return 0;
  unsigned long long inode = 0;
  for (char c : text.substr(prefix.size(), text.size() - prefix.size() - 1)) {
    if (c < '0' || c > '9' || inode > 0xffffffffffULL) return 0;
    inode = inode * 10 + static_cast<unsigned>(c - '0');
  }
  return static_cast<long long>(inode);
}

/// /proc/PID/comm without its newline, or "" when it cannot be read.
std::string read_comm(int proc, pid_t pid) {
  char path[32];
  std::snprintf(path, sizeof(path), "%d/comm", static_cast<int>(pid));
  Fd fd(::openat(proc, path, O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return {};
  std::array<char, 64> buf;  // TASK_COMM_LEN is 16
  ssize_t n;
  do n = ::read(fd.get(), buf.data(), buf.size());
  while (n < 0 && errno == EINTR);
  if (n <= 0) return {};
  std::string name(buf.data(), static_cast<std::size_t>(n));
  if (name.ends_with('\n')) name.pop_back();
  return name;
}

bool vanished(int err) { return err == ENOENT || err == ESRCH; }
bool denied(int err) { return err == EACCES || err == EPERM; }

/// What the /proc scan saw.
struct Scan {
  std::vector<ListeningProcess> owners;
  int denied = 0;  // processes whose fds could not be read
  std::string error;
};

/// Finds the processes whose fd tables hold one of `inodes` (sorted).
Scan scan_proc(const std::vector<unsigned long>& inodes) {
  Scan scan;
  const Fd proc(::open("/proc", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (proc.get() < 0) {
    scan.error = "cannot open /proc: " + errno_text(errno);
    return scan;
  }
  std::vector<char> buffers(2 * 16 * 1024);  // /proc's entries, then one process's fds
  const std::span<char> proc_entries(buffers.data(), buffers.size() / 2);
  const std::span<char> fd_entries(buffers.data() + buffers.size() / 2, buffers.size() / 2);

  const int failed = for_each_entry(proc.get(), proc_entries, [&](const char* name) {
    const std::size_t digits = std::strspn(name, "0123456789");
    if (digits == 0 || digits > 9 || name[digits] != '\0' || name[0] == '0') return true;  // not a process
    const auto pid = static_cast<pid_t>(std::strtol(name, nullptr, 10));
    char path[32];
    std::snprintf(path, sizeof(path), "%d/fd", static_cast<int>(pid));
    // The fd directory stays tied to this process: once it exits, lookups in it fail with ENOENT
    // even if its pid is reused. That is what makes the start time read below trustworthy.
    const Fd fd_dir(::openat(proc.get(), path, O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (fd_dir.get() < 0) {
      if (denied(errno)) ++scan.denied;
      return true;  // vanished, or not a process
    }
    bool was_denied = false;
    char held_fd[16] = "";  // the fd number that holds a listening socket
    long long held_inode = 0;
    for_each_entry(fd_dir.get(), fd_entries, [&](const char* fd_name) {
      const long long inode = socket_inode(fd_dir.get(), fd_name);
      if (inode < 0) {
        was_denied = denied(static_cast<int>(-inode));
        return vanished(static_cast<int>(-inode));  // a closed fd is skipped; anything else ends the process
      }
      if (inode == 0 || !std::binary_search(inodes.begin(), inodes.end(), static_cast<unsigned long>(inode))) {
        return true;
      }
      if (std::strlen(fd_name) >= sizeof(held_fd)) return true;  // not an fd number
      std::strcpy(held_fd, fd_name);
      held_inode = inode;
      return false;  // one socket is enough to own the port
    });
    if (held_inode == 0) {
      if (was_denied) ++scan.denied;
      return true;
    }

    ListeningProcess process;
    process.pid = pid;
    const auto start = process_start_time(pid);
    if (!start) return true;  // exited (or a zombie) since
    process.start_ticks = *start;
    process.name = read_comm(proc.get(), pid);
    // Still holding the socket, so still alive: the pid was not reused under the two reads above.
    if (socket_inode(fd_dir.get(), held_fd) == held_inode) scan.owners.push_back(std::move(process));
    return true;
  });
  if (failed != 0) scan.error = "cannot list /proc: " + errno_text(failed);

  std::sort(scan.owners.begin(), scan.owners.end(),
            [](const ListeningProcess& a, const ListeningProcess& b) { return a.pid < b.pid; });
  scan.owners.erase(std::unique(scan.owners.begin(), scan.owners.end(),
                                [](const ListeningProcess& a, const ListeningProcess& b) { return a.pid == b.pid; }),
                    scan.owners.end());
  return scan;
}

std::string inode_list(const std::vector<unsigned long>& inodes) {
  std::string text;
  for (unsigned long inode : inodes) text += (text.empty() ? "" : ", ") + std::to_string(inode);
  return text;
}

}  // namespace

Listeners find_listeners(std::uint16_t port) {
  Listeners listeners;
  if (port == 0) return listeners;  // listen() never leaves a socket on port 0
  const std::string what = "cannot list the TCP sockets listening on port " + std::to_string(port) + ": ";

  Fd netlink(::socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG));
  if (netlink.get() < 0) {
    const int err = errno;
    listeners.result = Listeners::Result::error;
    listeners.error = what + "socket(AF_NETLINK, NETLINK_SOCK_DIAG): " + errno_text(err) + "; " + sock_diag_fix(err);
    return listeners;
  }
  std::vector<char> buffer(32 * 1024);  // what the kernel fills per message batch of a dump
  std::uint32_t seq = 0;
  for (std::uint8_t family : {AF_INET, AF_INET6}) {
    const int err = dump_listening(netlink.get(), ++seq, family, port, buffer, listeners.inodes);
    // A kernel without IPv6 has no IPv6 sockets to report; any other failure is an error.
    if (err == 0 || (family == AF_INET6 && (err == ENOENT || err == EAFNOSUPPORT))) continue;
    listeners.result = Listeners::Result::error;
    listeners.error = what + (family == AF_INET ? "IPv4" : "IPv6") + " query: " + errno_text(err) + "; " +
                      sock_diag_fix(err);
    listeners.inodes.clear();
    return listeners;
  }
  std::sort(listeners.inodes.begin(), listeners.inodes.end());
  listeners.inodes.erase(std::unique(listeners.inodes.begin(), listeners.inodes.end()), listeners.inodes.end());
  if (listeners.inodes.empty()) return listeners;

  Scan scan = scan_proc(listeners.inodes);
  listeners.owners = std::move(scan.owners);
  if (!listeners.owners.empty()) {
    listeners.result = Listeners::Result::found;
    return listeners;
  }
  listeners.result = Listeners::Result::hidden;
  const std::string sockets = "port " + std::to_string(port) + " has " + std::to_string(listeners.inodes.size()) +
                              " listening socket(s) (inode " + inode_list(listeners.inodes) + ") but ";
  if (!scan.error.empty()) {
    listeners.error = sockets + "their owners cannot be looked for: " + scan.error;
  } else if (scan.denied > 0) {
    listeners.error = sockets + "no process seen holds them, and the fds of " + std::to_string(scan.denied) +
                      " process(es) could not be read (permission denied): run deploy-sentinel as the service's "
                      "user or as root, or give it CAP_SYS_PTRACE (and no ProtectProc= in its unit)";
  } else {
    listeners.error = sockets + "no process in /proc holds them: the service may run in another PID namespace (a "
                                "container) or /proc may be mounted with hidepid=; run deploy-sentinel where it can "
                                "see the service's processes";
  }
  return listeners;
}

std::chrono::system_clock::time_point process_started_at(unsigned long long start_ticks) {
  using namespace std::chrono;
  // Boot time to the nanosecond; /proc/stat's btime is the same moment truncated to the second,
  // which could make a process started just after a restart began look as if it started before.
  timespec boottime{}, realtime{};
  ::clock_gettime(CLOCK_BOOTTIME, &boottime);
  ::clock_gettime(CLOCK_REALTIME, &realtime);
  const nanoseconds booted_at = (seconds(realtime.tv_sec) + nanoseconds(realtime.tv_nsec)) -
                                (seconds(boottime.tv_sec) + nanoseconds(boottime.tv_nsec));
  static const long hz = [] {
    const long ticks = ::sysconf(_SC_CLK_TCK);
    return ticks > 0 ? ticks : 100;
  }();
  const auto per_second = static_cast<unsigned long long>(hz);
  const nanoseconds since_boot = seconds(static_cast<long long>(start_ticks / per_second)) +
                                 nanoseconds(static_cast<long long>(start_ticks % per_second * 1'000'000'000ULL /
                                                                    per_second));
  return system_clock::time_point(duration_cast<system_clock::duration>(booted_at + since_boot));
}

}  // namespace sentinel
