#include "metrics.h"

#include "marker.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <string_view>

namespace sentinel {

namespace {

constexpr std::array<std::string_view, 5> kResults{"deployed", "reverted", "failed", "rejected", "recovered"};

std::string number(double value) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.17g", value);
  return buf;
}

double seconds(Duration d) { return std::chrono::duration<double>(d).count(); }

}  // namespace

void MetricsFile::add_target(const std::string& target) {
  Target& t = targets_[target];
  for (std::string_view result : kResults) t.results.try_emplace(std::string(result), 0);
}

void MetricsFile::outcome(const std::string& target, const std::string& result,
                          std::chrono::system_clock::time_point at) {
  if (std::find(kResults.begin(), kResults.end(), result) == kResults.end()) return;
  add_target(target);
  Target& t = targets_[target];
  ++t.results[result];
  if (result == "deployed") t.last_deploy = std::chrono::duration<double>(at.time_since_epoch()).count();
}

void MetricsFile::probe(const std::string& target, bool healthy, Duration latency) {
  add_target(target);
  targets_[target].probe_latency = seconds(latency);
  targets_[target].up = healthy;
}

void MetricsFile::idle_wait(const std::string& target, Duration waited) {
  add_target(target);
  targets_[target].idle_wait_last = seconds(waited);
  targets_[target].idle_wait_total += seconds(waited);
}

std::string MetricsFile::text() const {
  std::string out;
  auto family = [&](std::string_view name, std::string_view type, std::string_view help) {
    out += "# HELP " + std::string(name) + " " + std::string(help) + "\n# TYPE " + std::string(name) + " " +
           std::string(type) + "\n";
  };
  // Target names are letters, digits, ".", "_" and "-" (config.cpp): nothing to escape in a label.
  auto label = [](const std::string& target) { return "{target=\"" + target + "\"}"; };
  family("deploy_sentinel_deploys_total", "counter", "Deploy outcomes by result since the daemon started.");
  for (const auto& [name, t] : targets_) {
    for (const auto& [result, count] : t.results) {
      out += "deploy_sentinel_deploys_total{target=\"" + name + "\",result=\"" + result + "\"} " +
             std::to_string(count) + "\n";
    }
  }
  auto gauge = [&](std::string_view metric, std::string_view type, std::string_view help, auto field) {
    bool any = false;
    for (const auto& [name, t] : targets_) {
      std::optional<double> value = field(t);
      if (!value) continue;
      if (!any) family(metric, type, help);
      any = true;
      out += std::string(metric) + label(name) + " " + number(*value) + "\n";
    }
  };
  gauge("deploy_sentinel_last_deploy_timestamp_seconds", "gauge", "When the last successful deploy ended (Unix time).",
        [](const Target& t) { return t.last_deploy; });
  gauge("deploy_sentinel_idle_wait_seconds", "gauge", "How long the last deploy waited for the agent to be idle.",
        [](const Target& t) { return t.idle_wait_last; });
  gauge("deploy_sentinel_idle_wait_seconds_total", "counter",
        "Time deploys spent waiting for the agent to be idle since the daemon started.",
        [](const Target& t) { return t.idle_wait_last ? std::optional<double>(t.idle_wait_total) : std::nullopt; });
  gauge("deploy_sentinel_health_probe_seconds", "gauge", "How long the last health probe took.",
        [](const Target& t) { return t.probe_latency; });
  gauge("deploy_sentinel_target_up", "gauge", "1 when the last health probe was healthy, 0 when not.",
        [](const Target& t) { return t.up ? std::optional<double>(*t.up ? 1.0 : 0.0) : std::nullopt; });
  return out;
}

void MetricsFile::write() {
  if (file_.empty()) return;
  auto ec = write_file_atomic(file_, text(), false);
  const std::string error = ec ? ec.message() : std::string();
  if (error != write_error_) {
    if (ec) {
      spdlog::warn("cannot write the metrics file {}: {}", file_.string(), error);
    } else {
      spdlog::info("the metrics file {} is written again", file_.string());
    }
  }
  write_error_ = error;
}

}  // namespace sentinel
