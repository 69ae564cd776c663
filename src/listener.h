#pragma once
// Who listens on a TCP port: the kernel's socket diagnostics (NETLINK_SOCK_DIAG) name the
// listening sockets, /proc/PID/fd names the processes that hold them. Lets verification tell the
// process started by a restart from the one it was meant to replace.

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace sentinel {

/// A process holding a listening socket.
struct ListeningProcess {
  pid_t pid = 0;
  unsigned long long start_ticks = 0;  // /proc/PID/stat field 22: clock ticks since boot
  std::string name;                    // /proc/PID/comm
};

/// Who listens on a TCP port, IPv4 or IPv6, any local address.
struct Listeners {
  enum class Result { found, nobody, hidden, error };
  // found: at least one owner found (owners non-empty); nobody: no socket listens on the port;
  // hidden: sockets listen but no owner could be seen (e.g. EACCES on another user's /proc/PID/fd);
  // error: the netlink query failed (message in `error`).
  Result result = Result::nobody;
  std::vector<ListeningProcess> owners;  // every process holding one of the listening sockets (a socket shared
                                         // by a parent and children lists all of them), sorted by pid, no duplicates
  std::vector<unsigned long> inodes;     // the listening sockets' inodes, sorted, no duplicates
  std::string error;  // for `error`, and for `hidden`: what went wrong and what to change
};

/// The processes that hold a TCP socket listening on `port` (0 has none), in this network
/// namespace, on any address and either family (an IPv6 socket on `::` that also takes IPv4 counts
/// once, as IPv6). Never throws. Owners are the thread-group leaders visible in this /proc whose
/// fd table holds one of the sockets: a process that exits during the scan is left out, and so is
/// a pid reused during it. `found` may be partial when some processes' fds were not readable.
/// Costs one netlink dump per family, then an open and a directory read per process and a
/// readlink per open fd on the machine: ≈ 1.4 ms for 80 processes holding 600 fds.
Listeners find_listeners(std::uint16_t port);

/// When a process with `start_ticks` (/proc/PID/stat field 22) started, as wall-clock time: boot
/// time + ticks / sysconf(_SC_CLK_TCK). Boot time is taken from CLOCK_REALTIME − CLOCK_BOOTTIME,
/// which /proc/stat's `btime` also is but truncated to whole seconds. The answer is early by
/// less than one tick (10 ms at the usual 100 Hz), since the kernel truncates start times to
/// ticks: allow one tick when comparing it with a moment taken from the clock.
std::chrono::system_clock::time_point process_started_at(unsigned long long start_ticks);

}  // namespace sentinel
