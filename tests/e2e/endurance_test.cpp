// Long runs of the real daemon: what a months-long uptime would show.
#include "harness.h"

#include <doctest/doctest.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>

using namespace sentinel::test;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

std::size_t open_fds(pid_t pid) {
  std::size_t n = 0;
  for ([[maybe_unused]] const auto& entry : fs::directory_iterator("/proc/" + std::to_string(pid) + "/fd")) ++n;
  return n;
}

/// VmRSS of `pid` in KiB.
long rss_kib(pid_t pid) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(status, line);) {
    if (line.starts_with("VmRSS:")) return std::atol(line.c_str() + 6);
  }
  return -1;
}

}  // namespace

TEST_CASE("1000 deploys in a row leave the daemon with the file descriptors it started with") {
  const int deploys = std::getenv("ENDURANCE_DEPLOYS") ? std::atoi(std::getenv("ENDURANCE_DEPLOYS")) : 1000;
  TempDir tmp;
  const fs::path checkout = tmp / "checkout", markers = tmp / "markers", config = tmp / "sentinel.toml";
  fs::create_directories(checkout);
  fs::create_directories(markers);
  REQUIRE(run_program({"git", "init", "-q", "-b", "main"}, checkout).status == 0);
  REQUIRE(run_program({"git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "one"},
                      checkout).status == 0);
  // An instant restart and health check: what is left is the daemon's own work per deploy.
  write_file(config, "[sentinel]\nstate_dir = \"" + (tmp / "state").string() + "\"\nlog_level = \"info\"\n\n"
                     "[[target]]\nname = \"prod\"\nmarker_dir = \"" + markers.string() + "\"\ncheckout = \"" +
                     checkout.string() + "\"\nrestart = { command = [\"true\"] }\n"
                     "health = { command = [\"true\"], grace = \"0s\", successes = 1, interval = \"10ms\" }\n");
  DaemonProcess daemon(config, tmp.path().parent_path() / (tmp.path().filename().string() + ".daemon.log"));
  REQUIRE(daemon.wait_for_line("prod: watching") >= 0);

  int line = 0;
  auto deploy_once = [&] {
    write_file(markers / ".deploy-ready.tmp", "");
    fs::rename(markers / ".deploy-ready.tmp", markers / ".deploy-ready");
    line = daemon.wait_for_line("prod: deployed", 30s, line);
    REQUIRE(line >= 0);
    ++line;
  };
  deploy_once();  // the first deploy opens what stays open (the journal of history, caches)
  const std::size_t fds_before = open_fds(daemon.pid());
  const long rss_before = rss_kib(daemon.pid());
  const auto started = std::chrono::steady_clock::now();
  for (int i = 1; i < deploys; ++i) deploy_once();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  // A deploy's short-lived fds (the output pipe of the health command that just exited) close
  // moments after its log line, so either count may hold one: a leak per deploy would show
  // as hundreds. The end count gets a deadline to settle, not a sleep.
  std::size_t fds_after = open_fds(daemon.pid());
  for (auto until = std::chrono::steady_clock::now() + 2s; fds_after > fds_before && std::chrono::steady_clock::now() < until;
       fds_after = open_fds(daemon.pid())) {
    daemon.wait_for_line("(nothing)", 10ms);
  }
  const long rss_after = rss_kib(daemon.pid());
  std::printf("%d deploys in %.1f s: fds %zu -> %zu, VmRSS %ld -> %ld KiB\n", deploys, seconds, fds_before, fds_after,
              rss_before, rss_after);
  CHECK(fds_after <= fds_before);
  CHECK(daemon.count_lines("prod: deployed") == deploys);
}
