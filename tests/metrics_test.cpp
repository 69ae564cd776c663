#include "metrics.h"

#include "test_support.h"

#include <doctest/doctest.h>

#include <chrono>
#include <filesystem>

using namespace sentinel;
using namespace std::chrono_literals;
using sentinel::test::read_file;
using sentinel::test::TempDir;

TEST_CASE("a target's deploy counters start at zero for every result, before anything happens") {
  MetricsFile metrics;
  metrics.add_target("prod");
  const std::string text = metrics.text();
  for (const char* result : {"deployed", "reverted", "failed", "rejected", "recovered"}) {
    CHECK(text.find("deploy_sentinel_deploys_total{target=\"prod\",result=\"" + std::string(result) + "\"} 0\n") !=
          std::string::npos);
  }
  CHECK(text.find("# TYPE deploy_sentinel_deploys_total counter\n") != std::string::npos);
  CHECK(text.find("target_up") == std::string::npos);  // not probed yet: no figure rather than a false one
}

TEST_CASE("outcomes, probes and idle waits are counted per target; cycles are not deploys") {
  MetricsFile metrics;
  const auto at = std::chrono::system_clock::time_point(std::chrono::seconds(1'700'000'000));
  metrics.outcome("prod", "deployed", at);
  metrics.outcome("prod", "deployed", at + 60s);
  metrics.outcome("prod", "reverted", at + 120s);
  metrics.outcome("prod", "cycle", at + 130s);
  metrics.outcome("staging", "failed", at);
  metrics.probe("prod", false, Duration(250));
  metrics.idle_wait("prod", Duration(1500));
  metrics.idle_wait("prod", Duration(500));
  const std::string text = metrics.text();
  CHECK(text.find("deploy_sentinel_deploys_total{target=\"prod\",result=\"deployed\"} 2\n") != std::string::npos);
  CHECK(text.find("deploy_sentinel_deploys_total{target=\"prod\",result=\"reverted\"} 1\n") != std::string::npos);
  CHECK(text.find("result=\"cycle\"") == std::string::npos);
  CHECK(text.find("deploy_sentinel_deploys_total{target=\"staging\",result=\"failed\"} 1\n") != std::string::npos);
  CHECK(text.find("deploy_sentinel_last_deploy_timestamp_seconds{target=\"prod\"} 1700000060\n") != std::string::npos);
  CHECK(text.find("deploy_sentinel_last_deploy_timestamp_seconds{target=\"staging\"}") == std::string::npos);
  CHECK(text.find("deploy_sentinel_health_probe_seconds{target=\"prod\"} 0.25\n") != std::string::npos);
  CHECK(text.find("deploy_sentinel_target_up{target=\"prod\"} 0\n") != std::string::npos);
  CHECK(text.find("deploy_sentinel_idle_wait_seconds{target=\"prod\"} 0.5\n") != std::string::npos);
  CHECK(text.find("deploy_sentinel_idle_wait_seconds_total{target=\"prod\"} 2\n") != std::string::npos);
}

TEST_CASE("the metrics file is replaced whole, and nothing is written without a path") {
  TempDir tmp;
  MetricsFile metrics;
  metrics.add_target("prod");
  metrics.write();  // no path: nothing, no error
  metrics.set_path(tmp / "sentinel.prom");
  metrics.write();
  CHECK(read_file(tmp / "sentinel.prom") == metrics.text());
  metrics.probe("prod", true, Duration(3));
  metrics.write();
  CHECK(read_file(tmp / "sentinel.prom").find("deploy_sentinel_target_up{target=\"prod\"} 1\n") != std::string::npos);
  int files = 0;
  for ([[maybe_unused]] const auto& entry : std::filesystem::directory_iterator(tmp.path())) ++files;
  CHECK(files == 1);
}
