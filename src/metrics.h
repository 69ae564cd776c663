#pragma once
// The optional metrics file: figures about each target in the Prometheus text format, for
// node_exporter's textfile collector (rewritten whole through a temporary file and a rename).

#include "duration.h"

#include <boost/system/error_code.hpp>

#include <chrono>
#include <filesystem>
#include <map>
#include <optional>
#include <string>

namespace sentinel {

/// What the daemon has seen since it started, per target, and the file it is written to.
/// Updates only change memory; write() puts the file in place (no fsync: losing it in a power
/// cut loses only figures that the next write restores).
class MetricsFile {
 public:
  /// Where to write; empty = nowhere (every call is then cheap and write() does nothing).
  void set_path(std::filesystem::path file) { file_ = std::move(file); }
  const std::filesystem::path& path() const { return file_; }

  /// A target to report even before anything happens to it (its counters at 0).
  void add_target(const std::string& target);
  /// An outcome ("deployed", "reverted", "failed", "rejected", "recovered"; others are ignored).
  void outcome(const std::string& target, const std::string& result, std::chrono::system_clock::time_point at);
  /// A health probe and how long it took.
  void probe(const std::string& target, bool healthy, Duration latency);
  /// A deploy waited this long for the agent to be idle.
  void idle_wait(const std::string& target, Duration waited);

  /// The whole file's text.
  std::string text() const;
  /// Writes text() to the file atomically; logs a failure once until it changes.
  void write();

 private:
  struct Target {
    std::map<std::string, unsigned long long> results;
    std::optional<double> last_deploy;  // seconds since the epoch
    std::optional<double> idle_wait_last;
    double idle_wait_total = 0;
    std::optional<double> probe_latency;
    std::optional<bool> up;
  };
  std::filesystem::path file_;
  std::map<std::string, Target> targets_;
  std::string write_error_;
};

}  // namespace sentinel
