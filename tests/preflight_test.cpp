// Pre-flight with real bubblewrap, real namespaces, the real fake-service and real files.
#include "preflight.h"
#include "test_support.h"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <future>
#include <string>
#include <thread>
#include <vector>

namespace {

namespace asio = boost::asio;
namespace fs = std::filesystem;
using namespace std::chrono_literals;
using namespace sentinel;
using sentinel::test::processes_with;
using sentinel::test::shadow_service;

/// Runs `coro` to completion on `ctx` (other work spawned on it runs alongside).
template <typename T>
T run_on(asio::io_context& ctx, asio::awaitable<T> coro) {
  auto result = asio::co_spawn(ctx, std::move(coro), asio::use_future);
  while (result.wait_for(0s) != std::future_status::ready) ctx.run_one();
  return result.get();
}

/// Waits until no process has `needle` in its command line; false after `limit`.
bool all_gone(const std::string& needle, std::chrono::milliseconds limit = 5s) {
  const auto until = std::chrono::steady_clock::now() + limit;
  while (!processes_with(needle).empty()) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(10ms);  // polling a condition with a deadline, not standing in for one
  }
  return true;
}

struct Rig {
  test::TempDir tmp;
  fs::path checkout = tmp / "checkout";
  fs::path state = tmp / "state";
  PreflightConfig config;
  fs::path data_seen;
  pid_t pid_seen = 0;

  Rig() {
    fs::create_directories(checkout);
    config.env = {{"PORT", "{port}"}};
    config.health = "http://127.0.0.1:{port}/health";
    config.grace = 100ms;
    config.interval = 50ms;
    config.deadline = 10s;
  }

  PreflightRun run() {
    PreflightRun r;
    r.config = &config;
    r.commit = "3f2c1a9e0b4d3f2c1a9e0b4d3f2c1a9e0b4d3f2c";
    r.target = "prod";
    r.checkout = checkout;
    r.state_dir = state;
    r.on_started = [this](pid_t pid, const fs::path& data) {
      pid_seen = pid;
      data_seen = data;
    };
    return r;
  }

  PreflightResult go() {
    asio::io_context ctx;
    return run_on(ctx, run_preflight(run()));
  }
};

std::string joined(const std::vector<std::string>& lines) {
  std::string all;
  for (const auto& line : lines) all += line + "\n";
  return all;
}

TEST_CASE("namespaces can be created here, so an isolated pre-flight is allowed") {
  asio::io_context ctx;
  CHECK(run_on(ctx, isolation_problem()) == "");
}

TEST_CASE("a service that answers healthy inside its sandbox passes pre-flight, and its data directory is removed") {
  Rig rig;
  rig.config.command = {"sh", "-c", std::string("exec ") + shadow_service() + " serve --port $PORT --mode healthy"};
  const PreflightResult result = rig.go();
  CHECK_MESSAGE(result.healthy, result.reason);
  REQUIRE(!rig.data_seen.empty());
  CHECK(rig.data_seen.parent_path() == rig.state / "preflight");
  CHECK(rig.data_seen.filename().string().starts_with("prod-"));
  CHECK(!fs::exists(rig.data_seen));
  CHECK(rig.pid_seen > 0);
  CHECK(all_gone(shadow_service() + " serve --port"));
}

TEST_CASE("a service that exits at start-up fails pre-flight with its exit status and the tail of its output") {
  Rig rig;
  rig.config.command = {"sh", "-c", "echo booting; echo 'config key missing: DATABASE' >&2; exit 3"};
  const PreflightResult result = rig.go();
  CHECK(!result.healthy);
  CHECK(result.reason.find("exited with status 3 at start-up") != std::string::npos);
  CHECK(joined(result.output).find("config key missing: DATABASE") != std::string::npos);
  CHECK(!fs::exists(rig.data_seen));
}

TEST_CASE("a service never healthy fails pre-flight at the deadline, and a child it started with setsid is gone too") {
  Rig rig;
  rig.config.deadline = 1500ms;
  const std::string marker = "317.25";  // names the setsid child in the host's process list
  rig.config.command = {"sh", "-c",
                        "setsid sleep " + marker + " & exec " + shadow_service() + " serve --port $PORT --mode unhealthy"};
  asio::io_context ctx;
  bool child_seen = false;
  bool done = false;
  asio::co_spawn(
      ctx,
      [&]() -> asio::awaitable<void> {
        asio::steady_timer timer(ctx, 20ms);
        while (!done && !child_seen) {
          child_seen = !processes_with("sleep " + marker).empty();
          timer.expires_after(20ms);
          co_await timer.async_wait(asio::use_awaitable);
        }
      },
      [](std::exception_ptr) {});
  const PreflightResult result = run_on(ctx, run_preflight(rig.run()));
  done = true;
  CHECK(!result.healthy);
  CHECK(result.reason.find("not healthy within 1.5s") != std::string::npos);
  CHECK(result.reason.find("HTTP 503") != std::string::npos);
  CHECK(child_seen);
  CHECK(all_gone("sleep " + marker));
}

/// A listening socket on the host's 127.0.0.1.
struct HostServer {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int port = 0;
  HostServer() {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    REQUIRE(::listen(fd, 16) == 0);
    REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
    port = ntohs(addr.sin_port);
  }
  ~HostServer() { ::close(fd); }
};

/// What a shadow finds when it tries to reach the host and to write outside {data}.
std::string probe_sandbox(bool isolate) {
  Rig rig;
  HostServer host;
  // Production's data outside /tmp, so that the sandbox's private /tmp does not simply hide it.
  const fs::path production = fs::path(shadow_service()).parent_path() / ("preflight-prod-data-" + std::to_string(::getpid()));
  fs::create_directories(production);
  test::write_file(production / "app.db", "production rows\n");
  rig.config.isolate = isolate;
  rig.config.snapshot = {production};
  // Stands for the host's sockets in /run (systemd, D-Bus): a root shadow could connect to them.
  const fs::path run_file = "/run/preflight-test-" + std::to_string(::getpid());
  test::write_file(run_file, "");
  rig.config.env.emplace_back("DATA", "{data}");
  const std::string script =
      "(echo hi > /dev/tcp/127.0.0.1/" + std::to_string(host.port) + ") 2>/dev/null && echo HOST-REACHED || echo HOST-UNREACHABLE\n"
      // Only inside the sandbox: on the host this would really remount /.
      + std::string(isolate ? "mount -o remount,rw,bind / 2>/dev/null && echo REMOUNTED\n" : "") +
      "test -e " + run_file.string() + " && echo RUN-VISIBLE\n" +
      "touch " + rig.checkout.string() + "/written 2>&1 | grep -q 'Read-only file system' && echo CHECKOUT-EROFS\n"
      "(echo changed >> " + (production / "app.db").string() + ") 2>&1 | grep -q 'Read-only file system' && echo PRODUCTION-EROFS\n"
      "grep -q 'production rows' \"$DATA/" + production.filename().string() + "/app.db\" && echo COPY-PRESENT\n"
      "echo copy-changed >> \"$DATA/" + production.filename().string() + "/app.db\" && echo COPY-WRITABLE\n"
      "exit 3\n";
  rig.config.command = {"bash", "-c", script};
  const PreflightResult result = rig.go();
  const std::string after = test::read_file(production / "app.db");
  std::error_code ignored;
  fs::remove_all(production, ignored);
  fs::remove(rig.checkout / "written", ignored);
  fs::remove(run_file, ignored);
  CHECK(after == (isolate ? "production rows\n" : after));
  return joined(result.output);
}

TEST_CASE("an isolated shadow cannot reach the host's loopback nor write to the checkout or production's data, "
          "even by remounting as root") {
  const std::string found = probe_sandbox(true);
  CHECK(found.find("HOST-UNREACHABLE") != std::string::npos);
  CHECK(found.find("REMOUNTED") == std::string::npos);  // no capability left to undo the read-only mount
  CHECK(found.find("RUN-VISIBLE") == std::string::npos);  // the host's /run (its sockets) is hidden
  CHECK(found.find("CHECKOUT-EROFS") != std::string::npos);
  CHECK(found.find("PRODUCTION-EROFS") != std::string::npos);
  CHECK(found.find("COPY-PRESENT") != std::string::npos);
  CHECK(found.find("COPY-WRITABLE") != std::string::npos);
}

TEST_CASE("without isolation the same shadow reaches the host, so the isolated test can tell the difference") {
  const std::string found = probe_sandbox(false);
  CHECK(found.find("HOST-REACHED") != std::string::npos);
  CHECK(found.find("RUN-VISIBLE") != std::string::npos);
  CHECK(found.find("CHECKOUT-EROFS") == std::string::npos);
}

TEST_CASE("a missing snapshot path fails pre-flight with that reason, before anything starts") {
  Rig rig;
  rig.config.snapshot = {rig.tmp / "no-such-data"};
  rig.config.command = {"true"};
  const PreflightResult result = rig.go();
  CHECK(!result.healthy);
  CHECK(result.reason == "the snapshot path " + (rig.tmp / "no-such-data").string() + " does not exist");
  CHECK(rig.pid_seen == 0);
  CHECK(fs::is_empty(rig.state / "preflight"));
}

TEST_CASE("clean-up after a crash kills a recorded shadow and removes the target's leftover data directories only") {
  test::TempDir tmp;
  fs::create_directories(tmp / "preflight" / "prod-abc123" / "db");
  fs::create_directories(tmp / "preflight" / "other-abc123");
  CHECK(clean_up_preflights(tmp.path(), "prod", 0, 0) == 1);
  CHECK(!fs::exists(tmp / "preflight" / "prod-abc123"));
  CHECK(fs::exists(tmp / "preflight" / "other-abc123"));
}

TEST_CASE("placeholders are replaced everywhere they appear") {
  CHECK(expand_placeholders("http://127.0.0.1:{port}/h?d={data}&p={port}", 4100, "/d") ==
        "http://127.0.0.1:4100/h?d=/d&p=4100");
}

}  // namespace
