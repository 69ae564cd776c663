// agent-sim: the soak test's production service, with an AI agent inside. The agent runs
// improvement cycles when asked, commits to the production checkout and stages its commits
// with `deploy-sentinel stage`; everything it does goes to an event log the test reads.
// Plain C++20 + POSIX on purpose, like fake-service: it must not share code or bugs with the daemon.

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "service_basics.h"

namespace {

using namespace helper;

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;  // CLOCK_MONOTONIC on Linux, as in the event log

constexpr const char* kUsage = R"(usage:
  agent-sim serve --port P --state DIR --checkout DIR --marker-dir DIR --sentinel BIN
                  --config FILE [--seed N]
      Production with an agent inside: HTTP/1.1 on 127.0.0.1:P, one request per connection.
        GET  /health             200; 503 if the checkout had a file `broken` at start (that
                                 commit never becomes healthy) or during an outage
        GET  /status/data        {"data":{"activeSessions":[{"agent":"leopard","id":ID}]}} while
                                 a cycle runs, an empty list otherwise; 503 during an outage
        POST /cycle              starts an agent cycle of 40-400 ms: 202; 409 while one runs;
                                 503 during an outage
        POST /admin/outage?ms=N  /health and /status/data answer 503 for N ms; a running cycle
                                 dies with the service and stages nothing
      At a random moment of a cycle the agent commits with probability 60% (a new file; 25% of
      those commits also add the file `broken`, the others remove it) and stages the commit with
      `BIN stage --config FILE --target prod --commit SHA`. While the file DIR/drain exists,
      cycles commit nothing. The seed N (default 1) and the number of earlier starts seed the
      random choices. Writes DIR/service.pid once listening; exits 0 on SIGTERM, 2 if the port
      cannot be bound, 64 on bad usage.
  agent-sim restart <the serve options>
      Stops the instance of DIR (SIGTERM; SIGKILL after 5 s), starts a detached `serve` (its
      output: DIR/service.log) and waits until it listens on P. Exit 0, or 1 with a message.
  agent-sim stop --state DIR
      Stops the instance of DIR as restart does, and starts none.
  agent-sim post URL
      POST with an empty body to URL (http://127.0.0.1:P/PATH); exit 0 on a 2xx answer, 1
      otherwise (the reason on stderr). The sentinel's cycle command.

Events, appended to DIR/events.log one line each, "<CLOCK_MONOTONIC ns> <event> key=value...":
  start pid commit broken seed          stop pid active_cycle=ID|none outage=0|1
  restart pid previous=PID|none killed=0|1
  cycle-start id pending_deploy=0|1 drain=0|1     cycle-end id committed=SHA|none
  cycle-abort id reason=outage          cycle-refused running=ID     cycle-unavailable reason=outage
  committed id commit broken            staged id commit broken replaced=SHA|none
  commit-failed id message=...          stage-failed id commit status message=...
  outage-start ms                       outage-end
)";

[[noreturn]] void fail(int code, const std::string& message) {
  std::fprintf(stderr, "agent-sim: %s\n", message.c_str());
  std::exit(code);
}

long long monotonic_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<long long>(ts.tv_sec) * 1'000'000'000LL + ts.tv_nsec;
}

/// One line in DIR/events.log, written with a single O_APPEND write so that the lines of
/// several processes never interleave. Values must not contain spaces or newlines, except for
/// a last `message=` value, whose newlines become spaces.
void log_event(const std::string& dir, const std::string& text) {
  std::string line = std::to_string(monotonic_ns()) + " " + text;
  std::replace(line.begin(), line.end(), '\n', ' ');
  line += "\n";
  int fd = open((dir + "/events.log").c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0 || write(fd, line.data(), line.size()) != static_cast<ssize_t>(line.size()))
    std::fprintf(stderr, "agent-sim: cannot append to %s/events.log: %s\n", dir.c_str(),
                 errno_text().c_str());
  if (fd >= 0) close(fd);
  std::fputs(line.c_str(), stderr);
}

std::string read_small(const std::string& path) {
  std::ifstream in(path);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

bool exists(const std::string& path) {
  struct stat st {};
  return lstat(path.c_str(), &st) == 0;
}

std::vector<std::string> command_line(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/cmdline");
  std::vector<std::string> args;
  for (std::string arg; std::getline(in, arg, '\0');) args.push_back(arg);
  return args;
}

fs::path normal(const fs::path& dir) {
  std::error_code ignored;
  return fs::weakly_canonical(dir, ignored);
}

/// The `serve` processes of state directory `dir`: the one in DIR/service.pid if it still is
/// an agent-sim `serve` (pids get reused), and any started with `--state DIR` that has not
/// written its pid file yet.
std::vector<pid_t> instances_of(const std::string& dir) {
  std::vector<pid_t> pids;
  pid_t recorded = read_pid(dir + "/service.pid");
  std::error_code ignored;
  for (const auto& entry : fs::directory_iterator("/proc", ignored)) {
    pid_t pid = std::atoi(entry.path().filename().c_str());
    auto args = pid > 0 ? command_line(pid) : std::vector<std::string>{};
    if (args.size() < 2 || fs::path(args[0]).filename() != "agent-sim" || args[1] != "serve" || !alive(pid))
      continue;
    bool ours = pid == recorded;
    for (size_t i = 2; i + 1 < args.size() && !ours; ++i)
      ours = args[i] == "--state" && normal(args[i + 1]) == normal(dir);
    if (ours) pids.push_back(pid);
  }
  return pids;
}

bool wait_gone(pid_t pid, std::chrono::milliseconds limit) {
  for (auto deadline = Clock::now() + limit; Clock::now() < deadline;
       std::this_thread::sleep_for(2ms))
    if (!alive(pid)) return true;
  return !alive(pid);
}

/// Stops the instances of `dir`: SIGTERM, at most 5 s, then SIGKILL. Returns the pids stopped
/// and whether any needed SIGKILL.
std::pair<std::vector<pid_t>, bool> stop_instances(const std::string& dir) {
  auto pids = instances_of(dir);
  bool killed = false;
  for (pid_t pid : pids)
    if (kill(pid, SIGTERM) != 0 && errno != ESRCH)
      fail(1, "cannot stop pid " + std::to_string(pid) + ": " + errno_text());
  for (pid_t pid : pids) {
    if (!wait_gone(pid, 5s)) {
      std::fprintf(stderr, "agent-sim: pid %d ignored SIGTERM for 5 s; sending SIGKILL\n", pid);
      kill(pid, SIGKILL);
      wait_gone(pid, 5s);
      killed = true;
    }
  }
  unlink((dir + "/service.pid").c_str());
  return {pids, killed};
}

/// What a finished child printed (stdout and stderr together) and how it ended.
struct Ran {
  int status = -1;  // exit status, 128 + signal, or -1 if it could not start
  std::string output;
};

/// Runs argv without a shell and waits for it. The child gets default signal dispositions and
/// an empty signal mask (ours blocks SIGTERM for the signalfd), and none of our fds.
Ran run_program(const std::vector<std::string>& argv) {
  Ran ran;
  int pipe_fds[2];
  if (pipe2(pipe_fds, O_CLOEXEC) != 0) {
    ran.output = "pipe: " + errno_text();
    return ran;
  }
  std::vector<char*> args;
  for (const auto& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
  args.push_back(nullptr);
  std::fflush(nullptr);
  pid_t pid = fork();
  if (pid == 0) {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    signal(SIGTERM, SIG_DFL);
    signal(SIGPIPE, SIG_DFL);
    int in = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (in < 0 || dup2(in, 0) < 0 || dup2(pipe_fds[1], 1) < 0 || dup2(pipe_fds[1], 2) < 0) _exit(127);
    execvp(args[0], args.data());
    std::fprintf(stderr, "cannot run %s: %s\n", args[0], errno_text().c_str());
    _exit(127);
  }
  close(pipe_fds[1]);
  if (pid < 0) {
    close(pipe_fds[0]);
    ran.output = "fork: " + errno_text();
    return ran;
  }
  char buf[4096];
  for (ssize_t n; (n = read(pipe_fds[0], buf, sizeof buf)) != 0;) {
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) break;
    if (ran.output.size() < 65536) ran.output.append(buf, static_cast<size_t>(n));
  }
  close(pipe_fds[0]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  ran.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  while (!ran.output.empty() && (ran.output.back() == '\n' || ran.output.back() == ' '))
    ran.output.pop_back();
  return ran;
}

bool all_hex(std::string_view text) {
  return !text.empty() && text.find_first_not_of("0123456789abcdef") == std::string_view::npos;
}

/// The options every mode but `post` takes.
struct Options {
  std::string port_text, state, checkout, marker_dir, sentinel, config, seed_text = "1";
  int port = 0;
  unsigned long long seed = 1;
};

// ---- serve ------------------------------------------------------------------------------

constexpr size_t kMaxHead = 8192;
constexpr size_t kMaxBody = 65536;
constexpr size_t kMaxConnections = 256;
constexpr auto kClientTimeout = 2s;

/// One accepted connection: one request, one answer, then closed.
struct Connection {
  Connection() = default;
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;
  int fd = -1;
  std::string in, out;
  size_t sent = 0;
  bool answered = false;
  Clock::time_point deadline;
  ~Connection() {
    if (fd >= 0) close(fd);
  }
};

/// The parts of a request the service looks at.
struct Request {
  std::string method, path, query;
};

struct Cycle {
  std::string id;
  Clock::time_point end;
  std::optional<Clock::time_point> commit_at;
  bool broken = false;
  std::string committed;  // the SHA it committed, if it did
};

class Service {
 public:
  explicit Service(Options o) : o_(std::move(o)) {}
  int run();

 private:
  std::string read_head();
  void start_cycle(Connection& c);
  void commit_and_stage(Cycle& cycle);
  void start_outage(Connection& c, const Request& request);
  void on_timers();
  void accept_all();
  void on_readable(Connection& c);
  void on_writable(Connection& c);
  void handle(Connection& c, const Request& request);
  void answer(Connection& c, int status, std::string_view body, std::string_view type = "text/plain");
  bool in_outage() const { return outage_until_ && Clock::now() < *outage_until_; }
  std::optional<Clock::time_point> next_timer() const;

  Options o_;
  std::mt19937_64 rng_;
  std::string commit_;
  bool broken_ = false;
  long start_number_ = 0;
  long cycles_ = 0;
  std::optional<Cycle> cycle_;
  std::optional<Clock::time_point> outage_until_;
  std::vector<std::unique_ptr<Connection>> connections_;
  int listener_ = -1;
  int signals_ = -1;
};

int Service::run() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigprocmask(SIG_BLOCK, &set, nullptr);
  signals_ = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
  if (signals_ < 0) fail(1, "signalfd: " + errno_text());
  signal(SIGPIPE, SIG_IGN);

  Ran head = run_program({"git", "-C", o_.checkout, "rev-parse", "HEAD"});
  if (head.status != 0 || !all_hex(head.output)) fail(1, "cannot read HEAD of " + o_.checkout + ": " + head.output);
  commit_ = head.output;
  broken_ = exists(o_.checkout + "/broken");
  // Each start draws different numbers, yet a run with the same seed draws the same ones.
  start_number_ = std::atol(read_small(o_.state + "/starts").c_str()) + 1;
  if (auto error = write_file_atomic(o_.state + "/starts", std::to_string(start_number_) + "\n"))
    fail(1, *error);
  std::seed_seq seq{static_cast<uint32_t>(o_.seed), static_cast<uint32_t>(o_.seed >> 32),
                    static_cast<uint32_t>(start_number_)};
  rng_.seed(seq);

  listener_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  int one = 1;
  setsockopt(listener_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in addr = loopback(o_.port);
  if (bind(listener_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || listen(listener_, 128) != 0)
    fail(2, "cannot listen on 127.0.0.1:" + o_.port_text + ": " + errno_text());
  if (auto error = write_file_atomic(o_.state + "/service.pid", std::to_string(getpid()) + "\n"))
    fail(1, *error);
  log_event(o_.state, "start pid=" + std::to_string(getpid()) + " commit=" + commit_ +
                          " broken=" + (broken_ ? "1" : "0") + " seed=" + o_.seed_text +
                          " start=" + std::to_string(start_number_));

  for (;;) {
    on_timers();
    int timeout = -1;
    if (auto next = next_timer()) {
      auto left = std::chrono::ceil<std::chrono::milliseconds>(*next - Clock::now()).count();
      timeout = static_cast<int>(std::clamp<long long>(left, 0, 60'000));
    }
    std::vector<pollfd> fds{{signals_, POLLIN, 0}, {listener_, POLLIN, 0}};
    for (const auto& c : connections_)
      fds.push_back({c->fd, static_cast<short>(c->answered ? POLLOUT : POLLIN), 0});
    if (poll(fds.data(), fds.size(), timeout) < 0) {
      if (errno == EINTR) continue;
      fail(1, "poll: " + errno_text());
    }
    on_timers();  // a cycle that ended while we waited must not be reported as running
    if (fds[0].revents != 0) {
      signalfd_siginfo info{};
      if (read(signals_, &info, sizeof info) == static_cast<ssize_t>(sizeof info)) {
        log_event(o_.state, "stop pid=" + std::to_string(getpid()) +
                                " active_cycle=" + (cycle_ ? cycle_->id : "none") +
                                " outage=" + (in_outage() ? "1" : "0") + " signal=" +
                                std::to_string(info.ssi_signo));
        return 0;
      }
    }
    for (size_t i = 2; i < fds.size(); ++i) {
      if (fds[i].revents == 0) continue;
      Connection& c = *connections_[i - 2];
      if (c.answered) on_writable(c); else on_readable(c);
    }
    if (fds[1].revents != 0) accept_all();
    auto now = Clock::now();
    std::erase_if(connections_, [&](const auto& c) {
      return c->fd < 0 || (c->answered && c->sent == c->out.size()) || now >= c->deadline;
    });
  }
}

std::optional<Clock::time_point> Service::next_timer() const {
  std::optional<Clock::time_point> next;
  auto consider = [&](Clock::time_point t) {
    if (!next || t < *next) next = t;
  };
  if (cycle_) {
    consider(cycle_->end);
    if (cycle_->commit_at) consider(*cycle_->commit_at);
  }
  if (outage_until_) consider(*outage_until_);
  for (const auto& c : connections_) consider(c->deadline);
  return next;
}

void Service::on_timers() {
  auto now = Clock::now();
  if (outage_until_ && now >= *outage_until_) {
    outage_until_.reset();
    log_event(o_.state, "outage-end");
  }
  if (cycle_ && cycle_->commit_at && now >= *cycle_->commit_at) {
    cycle_->commit_at.reset();
    commit_and_stage(*cycle_);
    now = Clock::now();
  }
  if (cycle_ && now >= cycle_->end) {
    log_event(o_.state, "cycle-end id=" + cycle_->id +
                            " committed=" + (cycle_->committed.empty() ? "none" : cycle_->committed));
    cycle_.reset();
  }
}

void Service::accept_all() {
  for (;;) {
    int fd = accept4(listener_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) return;  // EAGAIN, or an error of that one connection
    if (connections_.size() >= kMaxConnections) {
      close(fd);
      continue;
    }
    auto c = std::make_unique<Connection>();
    c->fd = fd;
    c->deadline = Clock::now() + kClientTimeout;
    connections_.push_back(std::move(c));
  }
}

std::optional<size_t> content_length(std::string_view head, bool& bad) {
  size_t pos = 0;
  std::optional<size_t> length;
  while ((pos = head.find("\r\n", pos)) != std::string_view::npos) {
    pos += 2;
    auto end = head.find("\r\n", pos);
    std::string line(head.substr(pos, end - pos));
    auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string name = line.substr(0, colon);
    std::transform(name.begin(), name.end(), name.begin(), [](unsigned char ch) { return std::tolower(ch); });
    std::string value = line.substr(colon + 1);
    value.erase(0, value.find_first_not_of(" \t"));
    value.erase(value.find_last_not_of(" \t") + 1);
    if (name == "transfer-encoding") bad = true;
    if (name == "content-length") {
      if (value.empty() || value.size() > 9 || value.find_first_not_of("0123456789") != std::string::npos) {
        bad = true;
      } else {
        length = std::stoul(value);
      }
    }
  }
  return length;
}

void Service::on_readable(Connection& c) {
  char buf[4096];
  ssize_t n = recv(c.fd, buf, sizeof buf, 0);
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
  if (n <= 0) {  // closed or reset before a whole request came
    close(c.fd);
    c.fd = -1;
    return;
  }
  c.in.append(buf, static_cast<size_t>(n));
  auto end = c.in.find("\r\n\r\n");
  if (end == std::string::npos) {
    if (c.in.size() > kMaxHead) answer(c, 431, "request head too large\n");
    return;
  }
  std::string_view head(c.in.data(), end);
  bool bad = false;
  size_t body = content_length(head, bad).value_or(0);
  if (bad || body > kMaxBody) return answer(c, 400, "bad or unsupported body\n");
  if (c.in.size() < end + 4 + body) return;  // read the body, so closing does not reset the answer

  auto line = head.substr(0, head.find("\r\n"));
  auto sp1 = line.find(' ');
  auto sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
  if (sp2 == std::string_view::npos || !line.substr(sp2 + 1).starts_with("HTTP/1."))
    return answer(c, 400, "bad request line\n");
  Request request;
  request.method = line.substr(0, sp1);
  std::string target(line.substr(sp1 + 1, sp2 - sp1 - 1));
  auto question = target.find('?');
  request.path = target.substr(0, question);
  if (question != std::string::npos) request.query = target.substr(question + 1);
  handle(c, request);
}

void Service::on_writable(Connection& c) {
  while (c.sent < c.out.size()) {
    ssize_t n = send(c.fd, c.out.data() + c.sent, c.out.size() - c.sent, MSG_NOSIGNAL);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (n <= 0) {
      close(c.fd);
      c.fd = -1;
      return;
    }
    c.sent += static_cast<size_t>(n);
  }
  shutdown(c.fd, SHUT_WR);
}

void Service::answer(Connection& c, int status, std::string_view body, std::string_view type) {
  static const std::map<int, const char*> texts{
      {200, "OK"},          {202, "Accepted"},           {400, "Bad Request"},
      {404, "Not Found"},   {405, "Method Not Allowed"}, {409, "Conflict"},
      {431, "Request Header Fields Too Large"},          {503, "Service Unavailable"}};
  auto text = texts.find(status);
  c.out = "HTTP/1.1 " + std::to_string(status) + " " + (text == texts.end() ? "Status" : text->second) +
          "\r\nContent-Type: " + std::string(type) + "\r\nContent-Length: " + std::to_string(body.size()) +
          "\r\nConnection: close\r\n\r\n" + std::string(body);
  c.answered = true;
  on_writable(c);
}

void Service::handle(Connection& c, const Request& r) {
  auto only = [&](std::string_view method) {
    if (r.method == method) return true;
    answer(c, 405, "use " + std::string(method) + "\n");
    return false;
  };
  if (r.path == "/health") {
    if (!only("GET")) return;
    if (in_outage()) return answer(c, 503, "outage\n");
    if (broken_) return answer(c, 503, "broken commit " + commit_ + "\n");
    return answer(c, 200, "ok " + commit_ + "\n");
  }
  if (r.path == "/status/data") {
    if (!only("GET")) return;
    if (in_outage()) return answer(c, 503, "outage\n");
    std::string sessions = cycle_ ? R"({"agent":"leopard","id":")" + cycle_->id + "\"}" : "";
    return answer(c, 200, R"({"data":{"activeSessions":[)" + sessions + "]}}", "application/json");
  }
  if (r.path == "/cycle") {
    if (only("POST")) start_cycle(c);
    return;
  }
  if (r.path == "/admin/outage") {
    if (only("POST")) start_outage(c, r);
    return;
  }
  if (r.path == "/") {
    if (!only("GET")) return;
    return answer(c, 200, "agent-sim pid " + std::to_string(getpid()) + " commit " + commit_ + "\n");
  }
  answer(c, 404, "not found\n");
}

void Service::start_cycle(Connection& c) {
  if (in_outage()) {
    log_event(o_.state, "cycle-unavailable reason=outage");
    return answer(c, 503, "outage\n");
  }
  if (cycle_) {
    log_event(o_.state, "cycle-refused running=" + cycle_->id);
    return answer(c, 409, "cycle " + cycle_->id + " is running\n");
  }
  bool pending = exists(o_.marker_dir + "/.deploy-ready") || exists(o_.marker_dir + "/.deploy-in-progress");
  bool drain = exists(o_.state + "/drain");
  auto now = Clock::now();
  Cycle cycle;
  cycle.id = "cycle-" + std::to_string(start_number_) + "-" + std::to_string(++cycles_);
  auto length = std::chrono::milliseconds(std::uniform_int_distribution<int>(40, 400)(rng_));
  cycle.end = now + length;
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  bool commits = unit(rng_) < 0.6;
  cycle.broken = unit(rng_) < 0.25;
  double moment = 0.1 + 0.7 * unit(rng_);
  if (commits && !drain)
    cycle.commit_at = now + std::chrono::duration_cast<Clock::duration>(length * moment);
  log_event(o_.state, "cycle-start id=" + cycle.id + " pending_deploy=" + (pending ? "1" : "0") +
                          " drain=" + (drain ? "1" : "0") + " ms=" + std::to_string(length.count()));
  cycle_ = std::move(cycle);
  answer(c, 202, "started " + cycle_->id + "\n");
}

void Service::commit_and_stage(Cycle& cycle) {
  const std::string name = cycle.id + ".txt";
  std::string content = "change by " + cycle.id + " of seed " + o_.seed_text + " at " +
                        std::to_string(monotonic_ns()) + "\n";
  std::string error;
  if (auto e = write_file_atomic(o_.checkout + "/" + name, content)) error = *e;
  if (error.empty()) {
    if (cycle.broken) {
      if (auto e = write_file_atomic(o_.checkout + "/broken", "broken by " + cycle.id + "\n")) error = *e;
    } else if (unlink((o_.checkout + "/broken").c_str()) != 0 && errno != ENOENT) {
      error = "cannot remove broken: " + errno_text();
    }
  }
  const std::vector<std::string> git = {"git", "-C", o_.checkout, "-c", "user.name=leopard",
                                        "-c", "user.email=leopard@agent-sim.invalid"};
  auto git_run = [&](std::vector<std::string> args) {
    if (!error.empty()) return std::string();
    args.insert(args.begin(), git.begin(), git.end());
    Ran ran = run_program(args);
    if (ran.status != 0) error = args[7] + " exited " + std::to_string(ran.status) + ": " + ran.output;
    return ran.output;
  };
  git_run({"add", "-A"});
  git_run({"commit", "-q", "-m", std::string(cycle.broken ? "break" : "improve") + " the service (" + cycle.id + ")"});
  std::string sha = git_run({"rev-parse", "HEAD"});
  if (error.empty() && !all_hex(sha)) error = "rev-parse printed '" + sha + "'";
  if (!error.empty()) return log_event(o_.state, "commit-failed id=" + cycle.id + " message=" + error);
  cycle.committed = sha;
  const std::string broken = cycle.broken ? "1" : "0";
  log_event(o_.state, "committed id=" + cycle.id + " commit=" + sha + " broken=" + broken);

  Ran stage = run_program({o_.sentinel, "stage", "--config", o_.config, "--target", "prod", "--commit", sha,
                   "--message", cycle.id});
  if (stage.status != 0) {
    return log_event(o_.state, "stage-failed id=" + cycle.id + " commit=" + sha +
                                   " status=" + std::to_string(stage.status) + " message=" + stage.output);
  }
  // `stage` says so when it replaces a staged deploy that had not started yet; that deploy
  // then never happens, so the test must know.
  std::string replaced = "none";
  if (stage.output.find("replacing a staged deploy") != std::string::npos) {
    replaced = "unknown";
    auto key = stage.output.find("\"commit\"");
    auto quote = key == std::string::npos ? key : stage.output.find('"', stage.output.find(':', key));
    if (quote != std::string::npos) {
      std::string old = stage.output.substr(quote + 1, 40);
      if (all_hex(old)) replaced = old;
    }
  }
  log_event(o_.state, "staged id=" + cycle.id + " commit=" + sha + " broken=" + broken + " replaced=" + replaced);
}

void Service::start_outage(Connection& c, const Request& r) {
  long ms = -1;
  if (r.query.starts_with("ms=")) {
    std::string digits = r.query.substr(3);
    if (!digits.empty() && digits.size() <= 7 && digits.find_first_not_of("0123456789") == std::string::npos)
      ms = std::stol(digits);
  }
  if (ms < 0) return answer(c, 400, "use /admin/outage?ms=N\n");
  outage_until_ = Clock::now() + std::chrono::milliseconds(ms);
  log_event(o_.state, "outage-start ms=" + std::to_string(ms));
  if (cycle_) {
    log_event(o_.state, "cycle-abort id=" + cycle_->id + " reason=outage");
    cycle_.reset();
  }
  answer(c, 200, "outage for " + std::to_string(ms) + " ms\n");
}

// ---- restart, stop ----------------------------------------------------------------------

std::vector<std::string> serve_args(const Options& o) {
  return {"agent-sim", "serve",        "--port",     o.port_text, "--state",  o.state,
          "--checkout", o.checkout,    "--marker-dir", o.marker_dir, "--sentinel", o.sentinel,
          "--config",  o.config,       "--seed",     o.seed_text};
}

/// Starts `serve` fully detached (its own session, reparented to init); returns its pid.
pid_t start_detached(const Options& o) {
  int pipe_fds[2];
  if (pipe2(pipe_fds, O_CLOEXEC) != 0) fail(1, "pipe: " + errno_text());
  std::vector<std::string> args = serve_args(o);
  std::vector<char*> argv;
  for (auto& arg : args) argv.push_back(arg.data());
  argv.push_back(nullptr);
  std::fflush(nullptr);
  pid_t middle = fork();
  if (middle < 0) fail(1, "fork: " + errno_text());
  if (middle == 0) {
    setsid();
    pid_t server = fork();
    if (server > 0) (void)!write(pipe_fds[1], &server, sizeof server);
    if (server != 0) _exit(server > 0 ? 0 : 1);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    int in = open("/dev/null", O_RDONLY | O_CLOEXEC);
    int log = open((o.state + "/service.log").c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (in < 0 || log < 0 || dup2(in, 0) < 0 || dup2(log, 1) < 0 || dup2(log, 2) < 0) _exit(127);
    for (int fd : {0, 1, 2}) fcntl(fd, F_SETFD, 0);  // dup2(fd, fd) would keep FD_CLOEXEC
    close_range(3, ~0U, 0);  // fds our caller leaked to us must not live on in the service
    execv("/proc/self/exe", argv.data());
    std::fprintf(stderr, "agent-sim: cannot exec /proc/self/exe: %s\n", errno_text().c_str());
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

int restart(const Options& o) {
  auto [stopped, killed] = stop_instances(o.state);
  pid_t pid = start_detached(o);
  for (auto deadline = Clock::now() + 5s;
       !(read_pid(o.state + "/service.pid") == pid && accepts_connection(o.port));
       std::this_thread::sleep_for(2ms)) {
    if (!alive(pid))
      fail(1, "the service exited before listening: " + last_line_of(o.state + "/service.log"));
    if (Clock::now() >= deadline) {
      kill(pid, SIGKILL);
      fail(1, "the service (pid " + std::to_string(pid) + ") did not listen on port " + o.port_text +
                  " within 5 s; killed it");
    }
  }
  std::string previous;
  for (pid_t p : stopped) previous += (previous.empty() ? "" : ",") + std::to_string(p);
  log_event(o.state, "restart pid=" + std::to_string(pid) + " previous=" + (previous.empty() ? "none" : previous) +
                         " killed=" + (killed ? "1" : "0"));
  std::printf("restarted: pid %d\n", pid);
  return 0;
}

// ---- post -------------------------------------------------------------------------------

int post(const std::string& url) {
  constexpr std::string_view scheme = "http://";
  if (!url.starts_with(scheme)) fail(64, "expected an http:// URL, not '" + url + "'");
  std::string rest = url.substr(scheme.size());
  auto slash = rest.find('/');
  std::string authority = rest.substr(0, slash), path = slash == std::string::npos ? "/" : rest.substr(slash);
  auto colon = authority.rfind(':');
  std::string host = authority.substr(0, colon);
  std::string port_text = colon == std::string::npos ? "80" : authority.substr(colon + 1);
  if (host == "localhost") host = "127.0.0.1";
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  if (inet_pton(AF_INET, host.c_str(), &addr.sin_addr) != 1)
    fail(64, "expected an IPv4 address or localhost in '" + url + "'");
  if (port_text.empty() || port_text.size() > 5 || port_text.find_first_not_of("0123456789") != std::string::npos ||
      std::stoi(port_text) < 1 || std::stoi(port_text) > 65535)
    fail(64, "bad port in '" + url + "'");
  addr.sin_port = htons(static_cast<uint16_t>(std::stoi(port_text)));

  const auto deadline = Clock::now() + 5s;
  auto wait_for = [&](int fd, short events) {
    for (;;) {
      auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now()).count();
      if (left <= 0) return false;
      pollfd p{fd, events, 0};
      int n = poll(&p, 1, static_cast<int>(left));
      if (n > 0) return true;
      if (n < 0 && errno != EINTR) return false;
    }
  };
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) fail(1, "socket: " + errno_text());
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    if (errno != EINPROGRESS) fail(1, "cannot connect to " + authority + ": " + errno_text());
    if (!wait_for(fd, POLLOUT)) fail(1, "cannot connect to " + authority + ": timed out after 5 s");
    int error = 0;
    socklen_t len = sizeof error;
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &len);
    if (error != 0) fail(1, "cannot connect to " + authority + ": " + std::strerror(error));
  }
  std::string request = "POST " + path + " HTTP/1.1\r\nHost: " + authority +
                        "\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
  for (size_t sent = 0; sent < request.size();) {
    ssize_t n = send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
      if (!wait_for(fd, POLLOUT)) fail(1, "sending to " + authority + ": timed out after 5 s");
      continue;
    }
    if (n <= 0) fail(1, "sending to " + authority + ": " + errno_text());
    sent += static_cast<size_t>(n);
  }
  std::string answer;
  for (;;) {
    char buf[4096];
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
      if (!wait_for(fd, POLLIN)) fail(1, "no answer from " + authority + " within 5 s");
      continue;
    }
    if (n < 0) fail(1, "reading from " + authority + ": " + errno_text());
    if (n == 0) break;
    if (answer.size() < 65536) answer.append(buf, static_cast<size_t>(n));
  }
  close(fd);
  std::string status_line = answer.substr(0, answer.find("\r\n"));
  if (!status_line.starts_with("HTTP/1.") || status_line.size() < 12)
    fail(1, "not an HTTP answer from " + authority + ": '" + status_line.substr(0, 80) + "'");
  auto body_at = answer.find("\r\n\r\n");
  std::string body = body_at == std::string::npos ? "" : answer.substr(body_at + 4, 200);
  while (!body.empty() && body.back() == '\n') body.pop_back();
  if (status_line[9] != '2') fail(1, url + ": " + status_line.substr(9) + (body.empty() ? "" : ": " + body));
  std::printf("%s: %s%s%s\n", url.c_str(), status_line.substr(9).c_str(), body.empty() ? "" : ": ", body.c_str());
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
  const std::string command = args[0];
  if (command == "post") {
    if (args.size() != 2) fail(64, "post needs exactly one URL (see --help)");
    return post(args[1]);
  }
  Options o;
  std::map<std::string, std::string*> options{
      {"--port", &o.port_text},     {"--state", &o.state},   {"--checkout", &o.checkout},
      {"--marker-dir", &o.marker_dir}, {"--sentinel", &o.sentinel}, {"--config", &o.config},
      {"--seed", &o.seed_text}};
  for (size_t i = 1; i < args.size(); i += 2) {
    auto option = options.find(args[i]);
    if (option == options.end()) fail(64, "unknown option " + args[i] + " (see --help)");
    if (i + 1 >= args.size()) fail(64, "option " + args[i] + " needs a value (see --help)");
    *option->second = args[i + 1];
  }
  if (o.state.empty()) fail(64, command + " needs --state (see --help)");
  o.state = fs::absolute(o.state).lexically_normal().string();
  if (command == "stop") {
    stop_instances(o.state);
    return 0;
  }
  if (command != "serve" && command != "restart") fail(64, "unknown command '" + command + "' (see --help)");
  for (auto [name, value] : options)
    if (value->empty()) fail(64, command + " needs " + name + " (see --help)");
  o.port = parse_port(o.port_text);
  if (o.seed_text.size() > 19 || o.seed_text.find_first_not_of("0123456789") != std::string::npos)
    fail(64, "bad seed '" + o.seed_text + "'");
  o.seed = std::stoull(o.seed_text);
  for (std::string* path : {&o.checkout, &o.marker_dir, &o.config})
    *path = fs::absolute(*path).lexically_normal().string();
  if (o.sentinel.find('/') != std::string::npos) o.sentinel = fs::absolute(o.sentinel).string();
  mkdir(o.state.c_str(), 0755);
  if (command == "serve") return Service(o).run();
  return restart(o);
}
