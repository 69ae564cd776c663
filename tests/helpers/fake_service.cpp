// fake-service: the "production service" of the integration tests and the demo.
// A tiny HTTP server with modes (serve), its restart command (restart) and stop (stop).
// Plain C++20 + POSIX on purpose: it must not share code or bugs with the daemon.

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "service_basics.h"

namespace {

using namespace helper;

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr const char* kUsage = R"(usage:
  fake-service serve --port P [--mode M] [--state DIR] [--version V]
      HTTP on 127.0.0.1:P: GET /health -> 200 "ok" or 503 "unhealthy", GET / -> mode and pid.
      With --version, a healthy /health answers {"status":"ok","version":"V"}.
      Modes: healthy (default), unhealthy, slow:MS (sleep before binding), crash:N (exit 3
      after answering N health checks; at the first one if N is 0), flap (200/503 in turn).
      Exit 2 if the port cannot be bound, 0 on SIGTERM. Writes DIR/service.pid once listening.
  fake-service restart --port P --state DIR [--mode-file FILE]
      Reads the mode from FILE (default ./service-mode; missing = healthy), stops the instance
      in DIR/service.pid and starts a detached `serve` (log: DIR/service.log), waits until it
      listens, appends "MODE PID" to DIR/restarts.log. Special modes: hang (ignores SIGTERM,
      forks 2 children that do too, writes DIR/hang.pids, never exits), fail (exits 1),
      keep-old (a sloppy restart script: starts a new `serve` without stopping the old one, so
      the new one cannot bind and exits 2, and exits 0 without checking). The service reports
      the checkout's HEAD as its version; in mode stale-version it reports forty zeros.
  fake-service stop --state DIR
      Stops the instance in DIR/service.pid and any still starting for DIR (SIGTERM, then
      SIGKILL after 5 s). restart does the same before it starts a new one.
)";

[[noreturn]] void fail(int code, const std::string& message) {
  std::fprintf(stderr, "fake-service: %s\n", message.c_str());
  std::exit(code);
}

struct Mode {
  enum Kind { healthy, unhealthy, slow, crash, flap } kind = healthy;
  long arg = 0;  // milliseconds for slow, answers for crash
};

std::optional<Mode> parse_mode(std::string_view text) {
  auto number_after = [&](std::string_view prefix) -> std::optional<long> {
    if (!text.starts_with(prefix) || text.size() == prefix.size() ||
        text.size() > prefix.size() + 9)
      return std::nullopt;
    std::string digits(text.substr(prefix.size()));
    if (digits.find_first_not_of("0123456789") != std::string::npos) return std::nullopt;
    return std::stol(digits);
  };
  if (text == "healthy") return Mode{Mode::healthy};
  if (text == "unhealthy") return Mode{Mode::unhealthy};
  if (text == "flap") return Mode{Mode::flap};
  if (auto ms = number_after("slow:")) return Mode{Mode::slow, *ms};
  if (auto n = number_after("crash:")) return Mode{Mode::crash, *n};
  return std::nullopt;
}

std::vector<std::string> command_line(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/cmdline");
  std::vector<std::string> args;
  for (std::string arg; std::getline(in, arg, '\0');) args.push_back(arg);
  return args;
}

std::filesystem::path normal(const std::filesystem::path& dir) {
  std::error_code ignored;
  return std::filesystem::weakly_canonical(dir, ignored);
}

/// The `serve` processes of state directory `dir`: the one in DIR/service.pid if it still is
/// a `serve` (pids get reused), and any started with `--state DIR` (e.g. a slow one that has
/// not written its pid file yet).
std::vector<pid_t> instances_of(const std::string& dir) {
  std::vector<pid_t> pids;
  pid_t recorded = read_pid(dir + "/service.pid");
  std::error_code ignored;
  for (const auto& entry : std::filesystem::directory_iterator("/proc", ignored)) {
    pid_t pid = std::atoi(entry.path().filename().c_str());
    auto args = pid > 0 ? command_line(pid) : std::vector<std::string>{};
    if (args.size() < 2 || args[1] != "serve" || !alive(pid)) continue;
    bool ours = pid == recorded;
    for (size_t i = 2; i + 1 < args.size() && !ours; ++i)
      ours = args[i] == "--state" && std::filesystem::path(args[i + 1]).is_absolute() &&
             normal(args[i + 1]) == normal(dir);
    if (ours) pids.push_back(pid);
  }
  return pids;
}

bool wait_gone(pid_t pid, std::chrono::milliseconds limit) {
  for (auto deadline = Clock::now() + limit; Clock::now() < deadline;
       std::this_thread::sleep_for(5ms))
    if (!alive(pid)) return true;
  return !alive(pid);
}

/// Stops the instances of DIR (see instances_of): SIGTERM, at most 5 s, then SIGKILL.
void stop_instance(const std::string& dir) {
  auto pids = instances_of(dir);
  for (pid_t pid : pids)
    if (kill(pid, SIGTERM) != 0 && errno != ESRCH)
      fail(1, "cannot stop pid " + std::to_string(pid) + ": " + errno_text());
  for (pid_t pid : pids) {
    if (!wait_gone(pid, 5s)) {
      std::fprintf(stderr, "fake-service: pid %d ignored SIGTERM for 5 s; sending SIGKILL\n", pid);
      kill(pid, SIGKILL);
      wait_gone(pid, 5s);
    }
  }
  unlink((dir + "/service.pid").c_str());
}

// ---- serve ------------------------------------------------------------------------------

extern "C" void exit_on_sigterm(int) { _exit(0); }

void respond(int client, int status, std::string_view body) {
  std::map<int, const char*> texts{
      {200, "OK"}, {404, "Not Found"}, {405, "Method Not Allowed"}, {503, "Service Unavailable"}};
  std::string answer =
      "HTTP/1.1 " + std::to_string(status) + " " + texts[status] +
      "\r\nContent-Type: text/plain\r\nContent-Length: " + std::to_string(body.size()) +
      "\r\nConnection: close\r\n\r\n" + std::string(body);
  for (std::string_view rest = answer; !rest.empty();) {
    ssize_t n = send(client, rest.data(), rest.size(), MSG_NOSIGNAL);
    if (n <= 0) return;
    rest.remove_prefix(static_cast<size_t>(n));
  }
}

/// Reads the request head (bounded in size and time); returns "METHOD PATH" parts or nothing.
std::optional<std::pair<std::string, std::string>> read_request(int client) {
  std::string head;
  char buf[1024];
  while (head.find("\r\n\r\n") == std::string::npos && head.size() < 8192) {
    ssize_t n = recv(client, buf, sizeof buf, 0);
    if (n <= 0) return std::nullopt;
    head.append(buf, static_cast<size_t>(n));
  }
  auto sp1 = head.find(' '), sp2 = head.find(' ', sp1 + 1);
  if (sp1 == std::string::npos || sp2 == std::string::npos) return std::nullopt;
  std::string path = head.substr(sp1 + 1, sp2 - sp1 - 1);
  return std::pair{head.substr(0, sp1), path.substr(0, path.find('?'))};
}

int serve(int port, const std::string& mode_text, const std::string& state_dir, const std::string& version) {
  auto mode = parse_mode(mode_text);
  if (!mode) fail(64, "unknown mode '" + mode_text + "'");
  struct sigaction sa {};
  sa.sa_handler = exit_on_sigterm;
  sigaction(SIGTERM, &sa, nullptr);
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigprocmask(SIG_UNBLOCK, &set, nullptr);
  if (mode->kind == Mode::slow) std::this_thread::sleep_for(std::chrono::milliseconds(mode->arg));

  int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in addr = loopback(port);
  if (bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      listen(listener, 64) != 0)
    fail(2, "cannot listen on 127.0.0.1:" + std::to_string(port) + ": " + errno_text());
  if (!state_dir.empty())
    if (auto error = write_file_atomic(state_dir + "/service.pid", std::to_string(getpid()) + "\n"))
      fail(1, *error);
  std::fprintf(stderr, "fake-service: pid %d listening on 127.0.0.1:%d, mode %s\n", getpid(), port,
               mode_text.c_str());

  long health_answers = 0;
  for (;;) {
    int client = accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
    if (client < 0) continue;
    timeval two_seconds{2, 0};  // a silent client must not block the loop for good
    setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &two_seconds, sizeof two_seconds);
    auto request = read_request(client);
    if (!request) {
      close(client);
      continue;
    }
    if (request->first != "GET") {
      respond(client, 405, "only GET\n");
    } else if (request->second == "/") {
      respond(client, 200,
              "fake-service mode " + mode_text + " pid " + std::to_string(getpid()) + "\n");
    } else if (request->second == "/status/data") {
      // The agent's session list, as botical serves it: the file the test writes, or none.
      std::ifstream sessions(state_dir + "/sessions.json");
      respond(client, 200,
              sessions ? std::string(std::istreambuf_iterator<char>(sessions), {})
                       : std::string(R"({"data":{"activeSessions":[]}})"));
    } else if (request->second != "/health") {
      respond(client, 404, "not found\n");
    } else if (mode->kind == Mode::crash && health_answers >= mode->arg) {
      std::exit(3);
    } else {
      bool healthy =
          mode->kind != Mode::unhealthy && !(mode->kind == Mode::flap && health_answers % 2 == 1);
      const std::string ok = version.empty() ? "ok\n" : R"({"status":"ok","version":")" + version + "\"}";
      respond(client, healthy ? 200 : 503, healthy ? ok : "unhealthy\n");
      ++health_answers;
      if (mode->kind == Mode::crash && health_answers >= mode->arg) std::exit(3);
    }
    close(client);
  }
}

// ---- restart ----------------------------------------------------------------------------

[[noreturn]] void hang(const std::string& dir) {
  signal(SIGTERM, SIG_IGN);
  std::fflush(nullptr);
  std::vector<pid_t> children;
  std::string pids = std::to_string(getpid()) + "\n";
  for (int i = 0; i < 2; ++i) {
    pid_t child = fork();
    if (child == 0)
      for (;;) pause();
    if (child > 0) children.push_back(child);
    pids += std::to_string(child) + "\n";
  }
  auto error = children.size() == 2 ? write_file_atomic(dir + "/hang.pids", pids) : "fork failed";
  if (error) {
    for (pid_t child : children) kill(child, SIGKILL);
    fail(1, *error);
  }
  std::puts("hanging");
  std::fflush(stdout);
  for (;;) pause();
}

/// Starts `serve` fully detached (its own session, reparented to init); returns its pid.
pid_t start_detached(int port, const std::string& mode, const std::string& dir, const std::string& version) {
  int pipe_fds[2];
  if (pipe2(pipe_fds, O_CLOEXEC) != 0) fail(1, "pipe: " + errno_text());
  std::fflush(nullptr);
  pid_t middle = fork();
  if (middle < 0) fail(1, "fork: " + errno_text());
  if (middle == 0) {
    setsid();
    pid_t server = fork();
    if (server > 0) (void)!write(pipe_fds[1], &server, sizeof server);
    if (server != 0) _exit(server > 0 ? 0 : 1);
    int in = open("/dev/null", O_RDONLY | O_CLOEXEC);
    int log = open((dir + "/service.log").c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (in < 0 || log < 0 || dup2(in, 0) < 0 || dup2(log, 1) < 0 || dup2(log, 2) < 0) _exit(127);
    for (int fd : {0, 1, 2}) fcntl(fd, F_SETFD, 0);  // dup2(fd, fd) would keep FD_CLOEXEC
    close_range(3, ~0U, 0);  // fds our caller leaked to us must not live on in the service
    std::string port_text = std::to_string(port);
    const char* argv[] = {"fake-service", "serve",       "--port",    port_text.c_str(), "--mode",
                          mode.c_str(),   "--state",     dir.c_str(), "--version",       version.c_str(),
                          nullptr};
    execv("/proc/self/exe", const_cast<char* const*>(argv));
    std::fprintf(stderr, "fake-service: cannot exec /proc/self/exe: %s\n", errno_text().c_str());
    _exit(127);
  }
  close(pipe_fds[1]);
  pid_t server = 0;
  bool got = read(pipe_fds[0], &server, sizeof server) == static_cast<ssize_t>(sizeof server);
  close(pipe_fds[0]);
  waitpid(middle, nullptr, 0);
  if (!got) fail(1, "could not start the service (fork failed)");
  return server;
}

/// The fds this process was started with, one per line, so tests can see what leaked into it.
std::string inherited_fds() {
  std::string fds;
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd")) {
    fds += entry.path().filename().string() + " -> ";
    std::error_code ec;
    fds += std::filesystem::read_symlink(entry.path(), ec).string() + "\n";
  }
  return fds;
}

void append_restart_record(const std::string& dir, const std::string& record) {
  int fd = open((dir + "/restarts.log").c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0 || write(fd, record.data(), record.size()) != static_cast<ssize_t>(record.size()))
    fail(1, "cannot append to " + dir + "/restarts.log: " + errno_text());
  close(fd);
}

/// The working directory's HEAD commit (the restart runs in the checkout), or "" outside a repository.
std::string head_commit() {
  std::FILE* git = popen("git rev-parse HEAD 2>/dev/null", "r");
  if (git == nullptr) return "";
  char line[64] = {};
  std::string sha = std::fgets(line, sizeof line, git) ? std::string(line) : "";
  pclose(git);
  return sha.substr(0, sha.find_first_of("\r\n"));
}

int restart(int port, const std::string& dir, const std::string& mode_file) {
  const std::string fds = inherited_fds();
  std::ifstream in(mode_file);
  std::string mode = "healthy";
  if (std::string line; in && std::getline(in, line)) {
    auto first = line.find_first_not_of(" \t\r"), last = line.find_last_not_of(" \t\r");
    if (first != std::string::npos) mode = line.substr(first, last - first + 1);
  }
  mkdir(dir.c_str(), 0755);
  write_file_atomic(dir + "/restart.fds", fds);
  if (mode == "hang") hang(dir);
  if (mode == "fail") fail(1, "cannot start: simulated failure");
  std::string version = head_commit();
  if (mode == "stale-version") {
    mode = "healthy";
    version = std::string(40, '0');
  }
  if (mode == "keep-old") {
    pid_t pid = start_detached(port, "healthy", std::filesystem::absolute(dir), version);
    append_restart_record(dir, "keep-old " + std::to_string(pid) + "\n");
    std::printf("started pid %d (the old instance was not stopped)\n", pid);
    return 0;
  }
  if (!parse_mode(mode)) fail(1, "cannot start: unknown mode '" + mode + "' in " + mode_file);

  stop_instance(dir);
  pid_t pid = start_detached(port, mode, std::filesystem::absolute(dir), version);
  if (!mode.starts_with("slow:")) {
    auto deadline = Clock::now() + 5s;
    while (!(read_pid(dir + "/service.pid") == pid && accepts_connection(port))) {
      if (!alive(pid))
        fail(1, "the service exited before listening: " + last_line_of(dir + "/service.log"));
      if (Clock::now() >= deadline) {
        kill(pid, SIGKILL);
        fail(1, "the service (pid " + std::to_string(pid) + ") did not listen on port " +
                    std::to_string(port) + " within 5 s; killed it");
      }
      std::this_thread::sleep_for(5ms);
    }
  }
  append_restart_record(dir, mode + " " + std::to_string(pid) + "\n");
  std::printf("restarted: pid %d, mode %s\n", pid, mode.c_str());
  return 0;
}

int parse_port(const std::string& text) {
  if (text.empty() || text.size() > 5 || text.find_first_not_of("0123456789") != std::string::npos)
    fail(64, "bad port '" + text + "'");
  int port = std::stoi(text);
  if (port < 1 || port > 65535) fail(64, "bad port '" + text + "'");
  return port;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "--help" || args[0] == "-h") {
    std::fputs(kUsage, args.empty() ? stderr : stdout);
    return args.empty() ? 64 : 0;
  }
  std::string command = args[0], port, mode = "healthy", state, mode_file = "service-mode", version;
  std::map<std::string, std::string*> options{{"--port", &port},
                                              {"--mode", &mode},
                                              {"--state", &state},
                                              {"--mode-file", &mode_file},
                                              {"--version", &version}};
  for (size_t i = 1; i < args.size(); i += 2) {
    auto option = options.find(args[i]);
    if (option == options.end()) fail(64, "unknown option " + args[i] + " (see --help)");
    if (i + 1 >= args.size()) fail(64, "option " + args[i] + " needs a value (see --help)");
    *option->second = args[i + 1];
  }
  if (command == "serve") {
    if (port.empty()) fail(64, "serve needs --port");
    return serve(parse_port(port), mode, state, version);
  }
  if (command == "restart") {
    if (port.empty() || state.empty()) fail(64, "restart needs --port and --state");
    return restart(parse_port(port), state, mode_file);
  }
  if (command == "stop") {
    if (state.empty()) fail(64, "stop needs --state");
    stop_instance(state);
    return 0;
  }
  fail(64, "unknown command '" + command + "' (see --help)");
}
