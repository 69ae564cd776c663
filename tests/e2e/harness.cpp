#include "harness.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <stdexcept>

extern char** environ;

namespace sentinel::test {
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

namespace {

int decode(int status) { return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status); }

pid_t spawn(const std::vector<std::string>& argv, const fs::path& cwd, int out_fd, int err_fd,
            const std::vector<std::string>& extra_env = {}) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, out_fd, 1);
  posix_spawn_file_actions_adddup2(&actions, err_fd, 2);
  if (!cwd.empty()) posix_spawn_file_actions_addchdir_np(&actions, cwd.c_str());
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  std::vector<std::string> env_strings(extra_env);
  for (char** e = environ; *e != nullptr; ++e) env_strings.emplace_back(*e);
  std::vector<char*> env;
  for (auto& e : env_strings) env.push_back(e.data());
  env.push_back(nullptr);
  pid_t pid = -1;
  int err = posix_spawnp(&pid, args[0], &actions, nullptr, args.data(), env.data());
  posix_spawn_file_actions_destroy(&actions);
  if (err != 0) throw std::runtime_error("cannot start " + argv[0] + ": " + std::strerror(err));
  return pid;
}

int temp_fd(const fs::path& dir) {
  std::string name = (dir / "out-XXXXXX").string();
  int fd = ::mkostemp(name.data(), O_CLOEXEC);
  ::unlink(name.c_str());
  return fd;
}

std::string slurp(int fd) {
  std::string text;
  ::lseek(fd, 0, SEEK_SET);
  char buf[4096];
  for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;) text.append(buf, static_cast<std::size_t>(n));
  ::close(fd);
  return text;
}

void git(const fs::path& checkout, std::vector<std::string> args) {
  std::vector<std::string> argv = {"git", "-C", checkout.string(), "-c", "user.name=agent", "-c",
                                   "user.email=agent@example.invalid"};
  argv.insert(argv.end(), args.begin(), args.end());
  auto r = run_program(argv);
  if (r.status != 0) throw std::runtime_error("git failed: " + r.err);
}

}  // namespace

CommandOutput run_program(const std::vector<std::string>& argv, const fs::path& cwd) {
  const fs::path tmp = fs::temp_directory_path();
  int out = temp_fd(tmp), err = temp_fd(tmp);
  CommandOutput result;
  pid_t pid = spawn(argv, cwd, out, err);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  result.status = decode(status);
  result.out = slurp(out);
  result.err = slurp(err);
  return result;
}

int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), len) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    throw std::runtime_error("cannot find a free port");
  }
  ::close(fd);
  return ntohs(addr.sin_port);
}

// ---- DaemonProcess ----

DaemonProcess::DaemonProcess(const fs::path& config, const fs::path& log_copy, bool as_journal,
                             std::vector<std::string> env)
    : log_copy_(log_copy) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error("pipe failed");
  if (as_journal) {
    struct stat st {};
    ::fstat(fds[1], &st);
    env.push_back("JOURNAL_STREAM=" + std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino));
  }
  pid_ = spawn({SENTINEL_BIN, "run", "--config", config.string()}, {}, fds[1], fds[1], env);
  ::close(fds[1]);
  fd_ = fds[0];
}

DaemonProcess::~DaemonProcess() {
  stop();
  if (fd_ >= 0) ::close(fd_);
  std::ofstream copy(log_copy_);
  for (const auto& line : lines_) copy << line << "\n";
}

bool DaemonProcess::read_more(std::chrono::milliseconds timeout) {
  pollfd p{fd_, POLLIN, 0};
  if (::poll(&p, 1, static_cast<int>(timeout.count())) <= 0) return true;
  char buf[4096];
  ssize_t n = ::read(fd_, buf, sizeof buf);
  if (n <= 0) return false;  // the daemon is gone
  partial_.append(buf, static_cast<std::size_t>(n));
  for (std::size_t nl; (nl = partial_.find('\n')) != std::string::npos;) {
    lines_.push_back(partial_.substr(0, nl));
    partial_.erase(0, nl + 1);
  }
  return true;
}

int DaemonProcess::wait_for_line(const std::string& text, std::chrono::milliseconds timeout, int from) {
  const auto deadline = Clock::now() + timeout;
  for (std::size_t i = static_cast<std::size_t>(from);; ) {
    for (; i < lines_.size(); ++i) {
      if (lines_[i].find(text) != std::string::npos) return static_cast<int>(i);
    }
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left <= 0ms || fd_ < 0) return -1;
    if (!read_more(std::min<std::chrono::milliseconds>(left, 100ms))) {
      ::close(fd_);
      fd_ = -1;
    }
  }
}

int DaemonProcess::count_lines(const std::string& text) {
  while (fd_ >= 0 && read_more(0ms)) {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, 0) <= 0) break;
  }
  int n = 0;
  for (const auto& line : lines_) n += line.find(text) != std::string::npos;
  return n;
}

void DaemonProcess::kill_hard() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGKILL);
  int status = 0;
  ::waitpid(pid_, &status, 0);
  exit_status_ = decode(status);
  pid_ = -1;
}

int DaemonProcess::signal_and_wait(int signo) {
  if (pid_ > 0) {
    if (signo != 0) ::kill(pid_, signo);
    while (fd_ >= 0 && read_more(100ms)) {
      if (int status = 0; ::waitpid(pid_, &status, WNOHANG) == pid_) {
        exit_status_ = decode(status);
        pid_ = -1;
        break;
      }
    }
    if (pid_ > 0) {
      int status = 0;
      ::waitpid(pid_, &status, 0);
      exit_status_ = decode(status);
      pid_ = -1;
    }
    while (fd_ >= 0 && read_more(0ms)) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 0) <= 0) break;
    }
  }
  return exit_status_;
}

// ---- Production ----

Production::Production(Options o)
    : checkout(tmp / "checkout"),
      markers(tmp / "markers"),
      state(tmp / "state"),
      service_dir(tmp / "service"),
      config(tmp / "sentinel.toml"),
      port(free_port()),
      name_(o.name) {
  fs::create_directories(checkout);
  fs::create_directories(markers);
  fs::create_directories(service_dir);
  git(checkout, {"init", "-q", "-b", "main"});
  commit("healthy");

  std::string& text = target_section;
  text += "[[target]]\nname = \"" + o.name + "\"\nmarker_dir = \"" + markers.string() + "\"\n";
  text += "checkout = \"" + checkout.string() + "\"\n";
  const std::string restart = std::string(FAKE_SERVICE) + "\", \"restart\", \"--port\", \"" +
                              std::to_string(port) + "\", \"--state\", \"" + service_dir.string();
  std::string argv = "\"" + restart + "\"";
  if (!o.restart_delay.empty() || !o.restart_trace.empty()) {
    // A shell script in a TOML string: \\\" is a quote for the shell.
    const std::string sleep = o.restart_delay.empty() ? "" : "sleep " + o.restart_delay + "; ";
    std::string script = sleep + "exec \\\"$0\\\" \\\"$@\\\"";
    if (!o.restart_trace.empty()) {
      const std::string trace = " >> '" + o.restart_trace.string() + "'; ";
      script = "echo start " + o.trace_label + " $(date +%s%N) $$" + trace + sleep + "\\\"$0\\\" \\\"$@\\\"; s=$?; echo end " +
               o.trace_label + " $(date +%s%N)" + trace + "exit $s";
    }
    argv = "\"sh\", \"-c\", \"" + script + "\", " + argv;
  }
  text += "restart = { command = [" + argv + "], timeout = \"" + o.restart_timeout + "\", kill_grace = \"300ms\" }\n";
  if (o.with_build) {
    text += "build = { command = [\"sh\", \"-c\", \"" + (o.build_delay.empty() ? "" : "sleep " + o.build_delay + "; ") +
            "echo built $(git rev-parse HEAD) >> ../build.log; "
            "test ! -e ../build-fails\"] }\n";
  }
  text += "\n[target.health]\nurl = \"http://127.0.0.1:" + std::to_string(port) + "/health\"\n";
  text += "timeout = \"500ms\"\ngrace = \"50ms\"\ninterval = \"100ms\"\nsuccesses = 2\ndeadline = \"" + o.deadline +
          "\"\n";
  if (o.with_idle) {
    // Prints a line per check so tests can count checks in the daemon's debug log.
    text += "\n[target.idle]\ncommand = [\"sh\", \"-c\", \"echo idle-check; test ! -e " + (tmp / "busy").string() +
            "\"]\ninterval = \"50ms\"\nquiet = \"" + o.quiet + "\"\n";
  }
  text += o.extra + "\n";
  write_file(config, "[sentinel]\nstate_dir = \"" + state.string() + "\"\nlog_level = \"debug\"\n\n" + text +
                         (o.fleet.empty() ? "" : "\n" + o.fleet + "\n"));

  // Production runs before the sentinel does, as on a real host.
  auto r = run_program({FAKE_SERVICE, "restart", "--port", std::to_string(port), "--state", service_dir.string()},
                       checkout);
  if (r.status != 0) throw std::runtime_error("cannot start the fake service: " + r.err);
}

Production::~Production() {
  daemon_.reset();
  run_program({FAKE_SERVICE, "stop", "--state", service_dir.string()});
}

DaemonProcess& Production::start_watching() {
  DaemonProcess& daemon = start_daemon();
  if (daemon.wait_for_line(name_ + ": watching") < 0) throw std::runtime_error("the daemon did not start watching " + name_);
  return daemon;
}

std::string Production::commit(const std::string& mode) {
  write_file(checkout / "service-mode", mode + "\n");
  write_file(checkout / "notes.txt", read_file(checkout / "notes.txt") + mode + "\n");
  git(checkout, {"add", "-A"});
  git(checkout, {"commit", "-q", "-m", "service runs " + mode});
  return head();
}

std::string Production::head() {
  auto r = run_program({"git", "-C", checkout.string(), "rev-parse", "HEAD"});
  return r.out.substr(0, 40);
}

void Production::stage_by_rename(const std::string& text) {
  write_file(markers / ".deploy-ready.tmp", text);
  fs::rename(markers / ".deploy-ready.tmp", markers / ".deploy-ready");
}

void Production::stage_in_place(const std::string& text) { write_file(markers / ".deploy-ready", text); }

CommandOutput Production::cli(std::vector<std::string> args) {
  args.insert(args.begin(), SENTINEL_BIN);
  args.push_back("--config");
  args.push_back(config.string());
  return run_program(args);
}

std::vector<std::string> Production::restarts() {
  std::vector<std::string> lines;
  std::ifstream in(service_dir / "restarts.log");
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

bool Production::healthy() {
  auto r = run_program({"bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/" + std::to_string(port) +
                                        " 2>/dev/null || exit 1; printf 'GET /health HTTP/1.0\\r\\n\\r\\n' >&3; "
                                        "head -1 <&3"});
  return r.out.find(" 200") != std::string::npos;
}

DaemonProcess& Production::start_daemon(bool as_journal) {
  daemon_ = std::make_unique<DaemonProcess>(
      config, tmp.path().parent_path() / (tmp.path().filename().string() + ".daemon.log"), as_journal, daemon_env);
  return *daemon_;
}

bool Production::has(const std::string& name) const {
  std::error_code ec;
  return fs::symlink_status(markers / name, ec).type() != fs::file_type::not_found;
}

}  // namespace sentinel::test
