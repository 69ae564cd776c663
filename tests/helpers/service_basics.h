#pragma once
// What the test helper binaries (fake-service, agent-sim) share: plain POSIX plumbing for pid
// files, atomic writes and a loopback port. Header-only, and never shared with the daemon.

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>

namespace helper {

inline std::string errno_text() { return std::strerror(errno); }

inline sockaddr_in loopback(int port) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return addr;
}

/// Writes `path` through a temp file and a rename, so readers see all of it or nothing.
/// Returns what went wrong, if anything.
inline std::optional<std::string> write_file_atomic(const std::string& path, const std::string& content) {
  std::string temp = path + ".tmp." + std::to_string(getpid());
  int fd = open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return "cannot create " + temp + ": " + errno_text();
  bool ok = write(fd, content.data(), content.size()) == static_cast<ssize_t>(content.size());
  ok = close(fd) == 0 && ok;
  ok = ok && rename(temp.c_str(), path.c_str()) == 0;
  if (ok) return std::nullopt;
  std::string error = "cannot write " + path + ": " + errno_text();
  unlink(temp.c_str());
  return error;
}

inline pid_t read_pid(const std::string& path) {
  std::ifstream in(path);
  long pid = 0;
  return (in >> pid && pid > 0) ? static_cast<pid_t>(pid) : 0;
}

/// True while `pid` exists and is not a zombie waiting for a parent that never reaps it.
inline bool alive(pid_t pid) {
  if (kill(pid, 0) != 0 && errno == ESRCH) return false;
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(stat)), {});
  auto paren = text.rfind(')');
  return paren == std::string::npos || paren + 2 >= text.size() || text[paren + 2] != 'Z';
}

inline std::string last_line_of(const std::string& path) {
  std::ifstream in(path);
  std::string line, last;
  while (std::getline(in, line))
    if (!line.empty()) last = line;
  return last;
}

inline bool accepts_connection(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr = loopback(port);
  bool ok = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  close(fd);
  return ok;
}

}  // namespace helper
