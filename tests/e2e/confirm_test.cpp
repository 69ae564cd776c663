// Verify the new process, not the old one: the real daemon, the real fake-service, real
// sockets on 127.0.0.1, with confirm = "listener" (the default for a local health URL) and
// confirm = { pointer, equals }.
#include "harness.h"

#include <boost/json.hpp>
#include <doctest/doctest.h>

#include <sstream>

using namespace sentinel::test;
using namespace std::chrono_literals;
namespace fs = std::filesystem;
namespace json = boost::json;

namespace {

/// The last line of the target's history, as JSON.
json::object last_outcome(Production& prod) {
  std::istringstream lines(read_file(prod.state / "targets" / "prod" / "history.jsonl"));
  std::string line, last;
  while (std::getline(lines, line)) last = line;
  return json::parse(last).as_object();
}

std::string text(const json::object& obj, std::string_view key) {
  auto it = obj.find(key);
  return it != obj.end() && it->value().is_string() ? std::string(it->value().as_string()) : "";
}

}  // namespace

TEST_CASE("a restart that leaves the old process serving is reverted, naming the old pid, never recorded as known-good") {
  Production prod;
  const std::string good = prod.head();
  auto& daemon = prod.start_watching();
  const std::string old_pid = read_file(prod.service_dir / "service.pid").substr(0, read_file(prod.service_dir / "service.pid").find('\n'));
  const std::string stale = prod.commit("keep-old");
  prod.stage_by_rename();
  REQUIRE(daemon.wait_for_line("reverted " + short_sha(stale) + " to " + short_sha(good), 20s) >= 0);
  const std::string expected = "port " + std::to_string(prod.port) + " is still served by pid " + old_pid;
  CHECK(daemon.count_lines(expected) >= 1);
  CHECK(daemon.count_lines("the restart did not replace it") >= 1);
  CHECK(read_file(prod.state / "targets" / "prod" / "known-good").substr(0, 40) == good);
  CHECK(read_file(prod.marker(".deploy-reverted")).find(expected) != std::string::npos);
  CHECK(prod.cli({"status"}).out.find(expected) != std::string::npos);
}

TEST_CASE("a good restart passes with confirm = listener, and the history records the new server's pid") {
  Production prod;
  auto& daemon = prod.start_watching();
  const std::string sha = prod.commit("healthy");
  prod.stage_by_rename();
  REQUIRE(daemon.wait_for_line("deployed " + short_sha(sha)) >= 0);
  const std::string restarted = prod.restarts().back();  // "healthy PID"
  const std::string new_pid = restarted.substr(restarted.find(' ') + 1);
  const auto outcome = last_outcome(prod);
  CHECK(text(outcome, "result") == "deployed");
  CHECK(text(outcome, "process").starts_with("pid " + new_pid + " ("));
  CHECK(daemon.count_lines("answered by the new process, pid " + new_pid) == 1);
  CHECK(prod.cli({"status"}).out.find("confirm: listener") != std::string::npos);
}

TEST_CASE("a service reporting /version: a stale version fails, the deployed commit passes") {
  Production::Options o;
  o.extra = "confirm = { pointer = \"/version\", equals = \"{commit}\" }\n";
  Production prod(o);
  const std::string good = prod.head();
  auto& daemon = prod.start_watching();
  const std::string stale = prod.commit("stale-version");
  prod.stage_by_rename();
  REQUIRE(daemon.wait_for_line("reverted " + short_sha(stale) + " to " + short_sha(good), 20s) >= 0);
  CHECK(read_file(prod.marker(".deploy-reverted")).find("/version is \\\"0000000000") != std::string::npos);
  const std::string fixed = prod.commit("healthy");
  prod.stage_by_rename();
  REQUIRE(daemon.wait_for_line("deployed " + short_sha(fixed)) >= 0);
}

TEST_CASE("when the revert's restart leaves the old process serving too, .deploy-failed says to look at the process") {
  Production prod;
  prod.commit("keep-old");  // the known-good commit's own restart is sloppy too
  auto& daemon = prod.start_watching();
  const std::string stale = prod.commit("keep-old");
  prod.stage_by_rename();
  REQUIRE(daemon.wait_for_line("the revert failed too", 20s) >= 0);
  const std::string failed = read_file(prod.marker(".deploy-failed"));
  CHECK(failed.find("still served by pid") != std::string::npos);
  CHECK(failed.find("look at the process and the restart command, not at the code") != std::string::npos);
}
