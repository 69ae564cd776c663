#include "preflight.h"

#include "health_probe.h"
#include "lease.h"
#include "subprocess.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <spdlog/spdlog.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <optional>
#include <thread>

namespace sentinel {
namespace asio = boost::asio;
namespace fs = std::filesystem;
using namespace asio::experimental::awaitable_operators;

namespace {

constexpr auto kNoThrow = asio::as_tuple(asio::use_awaitable);

/// Sends SIGKILL to every bwrap process whose command line contains `needle` (a {data} path,
/// or the prefix of them all). Killed, bwrap's first child (PID 1 of the sandbox) takes the
/// whole PID namespace with it. Needed because that child calls setsid() and so leaves the
/// group run_command kills, and is left running if bwrap dies before it has set its death
/// signal (seen when a pre-flight is cancelled within milliseconds of its start). Returns how
/// many it killed.
int kill_sandboxes_with(const std::string& needle) {
  int killed = 0;
  std::error_code ec;
  for (fs::directory_iterator it("/proc", ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream in(it->path() / "cmdline", std::ios::binary);
    const std::string cmdline((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const std::string program = cmdline.substr(0, cmdline.find('\0'));
    if (fs::path(program).filename() != "bwrap" || cmdline.find(needle) == std::string::npos) continue;
    if (::kill(static_cast<pid_t>(std::stol(name)), SIGKILL) == 0) ++killed;
  }
  return killed;
}

/// Removes {data} with everything in it when the pre-flight ends, however it ends, after making
/// sure no sandbox using it is left.
struct DataDir {
  fs::path path;
  ~DataDir() {
    if (path.empty()) return;
    kill_sandboxes_with(path.string() + '\0');
    std::error_code ignored;
    fs::remove_all(path, ignored);
  }
};

/// A TCP port on 127.0.0.1 that was free a moment ago, or 0.
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return 0;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  int port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  ::close(fd);
  return port;
}

/// The first child of `pid` (bwrap's child, which lives in the shadow's namespaces), or 0.
pid_t first_child(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/task/" + std::to_string(pid) + "/children");
  pid_t child = 0;
  in >> child;
  return child;
}

/// A TCP socket created inside the network namespace of `pid`, or -errno. The socket keeps that
/// namespace; the short-lived thread that entered it takes the namespace with it when it ends.
int socket_in_netns_of(pid_t pid) {
  int result = -ENOSYS;
  std::thread worker([&] {
    const int ns = ::open(("/proc/" + std::to_string(pid) + "/ns/net").c_str(), O_RDONLY | O_CLOEXEC);
    if (ns < 0) {
      result = -errno;
      return;
    }
    const int entered = ::setns(ns, CLONE_NEWNET);
    const int setns_errno = errno;
    ::close(ns);
    if (entered != 0) {
      result = -setns_errno;
      return;
    }
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    result = fd < 0 ? -errno : fd;
  });
  worker.join();
  return result;
}

std::vector<std::string> sandboxed(const std::vector<std::string>& argv, const std::string& data,
                                   const fs::path& checkout) {
  // The private /tmp hides the host's; the checkout and {data} are mounted again on top, in case
  // they live under /tmp. Without --cap-drop ALL a shadow of a root sentinel keeps CAP_SYS_ADMIN
  // and can simply remount / read-write (seen: it then wrote into the host's files). An empty
  // /run hides the host's Unix sockets (systemd, D-Bus, Docker), which a read-only mount does not
  // stop a root shadow from connecting to.
  std::vector<std::string> out{"bwrap",       "--die-with-parent", "--unshare-net", "--unshare-pid",
                               "--unshare-ipc", "--unshare-uts",   "--new-session", "--cap-drop",
                               "ALL",         "--ro-bind",
                               "/",           "/",                 "--dev",         "/dev",
                               "--proc",      "/proc",             "--tmpfs",       "/tmp",
                               "--tmpfs",     "/run",
                               "--ro-bind",   checkout.string(),   checkout.string(), "--bind",
                               data,          data,                "--chdir",       checkout.string(),
                               "--"};
  out.insert(out.end(), argv.begin(), argv.end());
  return out;
}

/// "2.4 s" for the log line a pass writes.
std::string seconds(Duration d) {
  char text[32];
  std::snprintf(text, sizeof text, "%.1f s", std::chrono::duration<double>(d).count());
  return text;
}

}  // namespace

std::string expand_placeholders(std::string text, int port, const std::string& data) {
  for (std::size_t at = 0; (at = text.find("{port}", at)) != std::string::npos;) {
    const std::string value = std::to_string(port);
    text.replace(at, 6, value);
    at += value.size();
  }
  for (std::size_t at = 0; (at = text.find("{data}", at)) != std::string::npos;) {
    text.replace(at, 6, data);
    at += data.size();
  }
  return text;
}

fs::path preflight_dir(const fs::path& state_dir) { return state_dir / "preflight"; }

asio::awaitable<std::string> isolation_problem() {
  RunSpec spec;
  spec.argv = {"bwrap", "--unshare-net", "--unshare-pid", "--ro-bind", "/", "/", "true"};
  spec.timeout = Duration(10'000);
  spec.kill_grace = Duration(1'000);
  spec.tail_lines = 3;
  spec.env = command_environment({});
  RunResult r = co_await run_command(std::move(spec));
  if (!r.ok()) {
    std::string why = "bwrap " + r.describe();
    if (!r.tail.empty()) why += ": " + r.tail.back();
    co_return why;
  }
  // The probe enters the sandbox's network namespace, which takes CAP_SYS_ADMIN (root): without
  // it every pre-flight would fail at its deadline, and every commit would be rejected.
  RunSpec sandbox;
  sandbox.argv = {"bwrap", "--die-with-parent", "--unshare-net", "--unshare-pid", "--ro-bind", "/", "/", "sleep", "10"};
  sandbox.timeout = Duration(10'000);
  sandbox.kill_grace = Duration(100);
  sandbox.env = command_environment({});
  pid_t pid = 0;
  sandbox.on_pid = [&](pid_t p) { pid = p; };
  int entered = -ETIMEDOUT;
  auto enter = [&]() -> asio::awaitable<void> {
    asio::steady_timer timer(co_await asio::this_coro::executor);
    for (int tries = 0; tries < 400; ++tries) {  // 2 s
      const pid_t inside = pid > 0 ? first_child(pid) : 0;
      if (inside > 0) {
        entered = socket_in_netns_of(inside);
        if (entered >= 0) ::close(entered);
        co_return;
      }
      timer.expires_after(std::chrono::milliseconds(5));
      co_await timer.async_wait(kNoThrow);
    }
  };
  auto running = run_command(std::move(sandbox));
  auto entering = enter();
  co_await (std::move(running) || std::move(entering));
  if (entered >= 0) co_return std::string();
  co_return "the sentinel cannot enter a sandbox's network namespace to probe it (" +
            std::string(entered == -ETIMEDOUT ? "its sandbox did not start within 2 s" : std::strerror(-entered)) +
            "; setns needs CAP_SYS_ADMIN, so run the sentinel as root)";
}

int clean_up_preflights(const fs::path& state_dir, const std::string& target, pid_t pid,
                        unsigned long long start_time) {
  if (pid > 0 && start_time != 0 && process_start_time(pid) == start_time) {
    spdlog::warn("{}: killing the pre-flight shadow (pid {}) that the last run left behind", target, pid);
    ::kill(-pid, SIGKILL);  // bwrap leads its group; its PID namespace goes with it
    ::kill(pid, SIGKILL);
  }
  // Also a sandbox whose bwrap died before its child was set to die with it.
  if (const int killed = kill_sandboxes_with((preflight_dir(state_dir) / (target + "-")).string()); killed > 0) {
    spdlog::warn("{}: killed {} pre-flight sandbox{} that the last run left behind", target, killed,
                 killed == 1 ? "" : "es");
  }
  int removed = 0;
  std::error_code ec;
  for (fs::directory_iterator it(preflight_dir(state_dir), ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (!name.starts_with(target + "-") || name.size() != target.size() + 7) continue;
    std::error_code ignored;
    if (fs::remove_all(it->path(), ignored) > 0) ++removed;
  }
  return removed;
}

asio::awaitable<PreflightResult> run_preflight(PreflightRun run) {
  const PreflightConfig& config = *run.config;
  const std::string tag = run.target + " preflight";
  PreflightResult result;
  auto fail = [&](std::string reason) {
    result.healthy = false;
    result.reason = std::move(reason);
    return result;
  };

  std::error_code ec;
  const fs::path parent = preflight_dir(run.state_dir);
  fs::create_directories(parent, ec);
  ::chmod(parent.c_str(), 0700);
  std::string pattern = (parent / (run.target + "-XXXXXX")).string();
  if (::mkdtemp(pattern.data()) == nullptr) {
    co_return fail("pre-flight cannot make its data directory in " + parent.string() + ": " + std::strerror(errno));
  }
  DataDir data{pattern};  // mkdtemp makes it 0700
  const std::string dir = pattern;
  const int port = free_port();
  if (port == 0) co_return fail("pre-flight cannot find a free port on 127.0.0.1");

  const std::vector<std::string> copy_env = command_environment(run.env);
  for (const fs::path& source : config.snapshot) {
    if (!fs::exists(fs::symlink_status(source, ec))) {
      co_return fail("the snapshot path " + source.string() + " does not exist");
    }
    RunSpec copy;
    copy.argv = {"cp", "-a", "--reflink=auto", "--", source.string(), dir + "/"};
    copy.timeout = config.deadline;
    copy.kill_grace = config.grace;
    copy.log_tag = tag + " snapshot";
    copy.env = copy_env;
    RunResult copied = co_await run_command(std::move(copy));
    if (!copied.ok()) {
      co_return fail("copying the snapshot " + source.string() + " " + copied.describe() +
                     (copied.tail.empty() ? "" : ": " + copied.tail.back()));
    }
  }
  if (!config.snapshot_command.empty()) {
    RunSpec snap;
    for (const std::string& arg : config.snapshot_command) snap.argv.push_back(expand_placeholders(arg, port, dir));
    snap.cwd = run.checkout;
    snap.timeout = config.deadline;
    snap.kill_grace = config.grace;
    snap.log_tag = tag + " snapshot";
    snap.env = copy_env;
    RunResult snapped = co_await run_command(std::move(snap));
    if (!snapped.ok()) {
      co_return fail("the snapshot command " + snapped.describe() + (snapped.tail.empty() ? "" : ": " + snapped.tail.back()));
    }
  }

  std::vector<std::pair<std::string, std::string>> env = run.env;
  for (const auto& [name, value] : config.env) env.emplace_back(name, expand_placeholders(value, port, dir));
  const std::optional<HttpUrl> url = parse_http_url(expand_placeholders(config.health, port, dir));
  if (!url) co_return fail("the pre-flight health URL " + config.health + " is not a plain http:// URL");

  RunSpec shadow;
  shadow.argv = config.isolate ? sandboxed(config.command, dir, run.checkout) : config.command;
  shadow.cwd = run.checkout;
  shadow.timeout = config.deadline;
  shadow.kill_grace = config.grace;
  shadow.log_tag = tag;
  shadow.env = command_environment(env);
  pid_t pid = 0;
  const auto started = std::chrono::steady_clock::now();
  shadow.on_pid = [&](pid_t p) {
    pid = p;
    if (run.on_started) run.on_started(p, dir);
  };

  std::optional<PreflightResult> verdict;  // set by the probe before it stops the shadow
  std::string last_probe = "no probe yet";
  const bool isolate = config.isolate;
  auto probe_until_healthy = [&]() -> asio::awaitable<void> {
    auto ex = co_await asio::this_coro::executor;
    asio::steady_timer timer(ex, config.grace);
    co_await timer.async_wait(kNoThrow);
    int healthy_in_a_row = 0;
    for (;;) {
      SocketSource open_socket;
      if (isolate) {
        open_socket = [&]() -> int {
          const pid_t inside = pid > 0 ? first_child(pid) : 0;
          return inside > 0 ? socket_in_netns_of(inside) : -ESRCH;
        };
      }
      ProbeResult probe = co_await probe_http(*url, config.timeout, std::move(open_socket));
      last_probe = probe.reason;
      healthy_in_a_row = probe.healthy ? healthy_in_a_row + 1 : 0;
      if (healthy_in_a_row >= config.successes) break;
      timer.expires_after(config.interval);
      co_await timer.async_wait(kNoThrow);
    }
    verdict = PreflightResult{true, "healthy (" + last_probe + ")", {},
                              std::chrono::duration_cast<Duration>(std::chrono::steady_clock::now() - started)};
    spdlog::info("{}: pre-flight of {} healthy after {}", run.target, run.commit.substr(0, 12), seconds(verdict->elapsed));
    // Asked politely first; returning cancels run_command, which kills the group and reaps.
    if (pid > 0) ::kill(-pid, SIGTERM);
    timer.expires_after(config.grace);
    co_await timer.async_wait(kNoThrow);
  };

  spdlog::info("{}: pre-flight of the checkout on port {}{}, data in {}", run.target, port,
               isolate ? " in a sandbox" : " WITHOUT a sandbox", dir);
  auto shadow_run = run_command(std::move(shadow));
  auto probing = probe_until_healthy();
  auto first = co_await (std::move(shadow_run) || std::move(probing));
  if (verdict) co_return *verdict;
  const RunResult ended = std::get<0>(std::move(first));
  result.output = ended.tail;
  result.elapsed = ended.elapsed;
  switch (ended.end) {
    case RunResult::End::timed_out:
      co_return fail("it was not healthy within " + format_duration(config.deadline) + " (last probe: " + last_probe + ")");
    case RunResult::End::not_started:
      co_return fail("it " + ended.describe());
    case RunResult::End::exited:
    case RunResult::End::signaled:
      break;
  }
  co_return fail("it " + ended.describe() + " at start-up (last probe: " + last_probe + ")");
}

}  // namespace sentinel
