// The operator's interface end to end: status --json, history, revert through the daemon, hooks
// and the metrics file, with the real daemon, a real git checkout and the real fake-service.
#include "harness.h"

#include <boost/json.hpp>
#include <doctest/doctest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <fstream>

using namespace sentinel::test;
using namespace std::chrono_literals;
namespace fs = std::filesystem;
namespace json = boost::json;

namespace {

std::string str(const json::object& obj, std::string_view key) {
  auto it = obj.find(key);
  return it != obj.end() && it->value().is_string() ? std::string(it->value().as_string()) : "";
}

json::object status_of(Production& prod) {
  CommandOutput r = prod.cli({"status", "--json"});
  REQUIRE(r.status == 0);
  return json::parse(r.out).as_object();
}

json::array history_of(Production& prod, std::vector<std::string> args = {}) {
  args.insert(args.begin(), {"history", "--json"});
  CommandOutput r = prod.cli(args);
  REQUIRE(r.status == 0);
  return json::parse(r.out).as_object().at("entries").as_array();
}

/// Adds `line` to the config's [sentinel] table.
void add_to_sentinel_table(Production& prod, const std::string& line) {
  std::string text = read_file(prod.config);
  const std::string anchor = "log_level = \"debug\"\n";
  text.replace(text.find(anchor), anchor.size(), anchor + line + "\n");
  write_file(prod.config, text);
}

}  // namespace

TEST_CASE("status --json has a schema version and shows a staged marker and its commit while the daemon is down") {
  Production prod;
  const std::string sha = prod.commit("healthy");
  prod.stage_by_rename("{\"commit\": \"" + sha + "\", \"message\": \"faster\"}");
  json::object doc = status_of(prod);
  CHECK(doc.at("schema_version").as_int64() == 1);
  CHECK_FALSE(doc.at("running").as_bool());
  const json::object& target = doc.at("targets").as_array().at(0).as_object();
  CHECK(str(target, "phase") == "not-running");
  CHECK(target.at("staged").as_bool());
  const json::object& pending = target.at("pending").as_object();
  REQUIRE(pending.at("ready").is_object());
  CHECK(str(pending.at("ready").as_object(), "commit") == sha);
  CHECK(str(pending.at("ready").as_object(), "message") == "faster");
  CHECK(pending.at("in_progress").is_null());
  CHECK(pending.at("revert_request").is_null());
  CHECK(target.at("next_cycle").is_null());
  CHECK(target.at("waiting").is_null());
  CHECK(prod.cli({"status"}).out.find("a deploy is staged: " + short_sha(sha)) != std::string::npos);

  write_file(prod.marker(".deploy-revert-request"), "{\"to\": \"" + sha + "\", \"requested_by\": \"ops@host\"}");
  const json::object again = status_of(prod).at("targets").as_array().at(0).as_object();
  const json::object& request = again.at("pending").as_object().at("revert_request").as_object();
  CHECK(str(request, "commit") == sha);
  CHECK(str(request, "requested_by") == "ops@host");
  CHECK(prod.cli({"status"}).out.find("revert requested to " + short_sha(sha)) != std::string::npos);
}

TEST_CASE("status shows when the next cycle is due, from the daemon's status file") {
  Production::Options o;
  o.extra = "[target.cycle]\ncommand = [\"true\"]\nevery = \"1h\"\n";
  Production prod(o);
  prod.start_watching();
  json::object doc = status_of(prod);
  CHECK(doc.at("running").as_bool());
  const json::object& target = doc.at("targets").as_array().at(0).as_object();
  REQUIRE(target.at("next_cycle").is_string());
  const std::string next = str(target, "next_cycle");
  CHECK(next.size() == 20);
  CHECK(next > str(target, "since"));  // an hour from start-up
  INFO(prod.cli({"status"}).out);
  CHECK(prod.cli({"status"}).out.find("next cycle:      " + next) != std::string::npos);
}

TEST_CASE("status --json says why a deploy waits for idle, with the pending deploy's commit") {
  Production::Options o;
  o.with_idle = true;
  Production prod(o);
  write_file(prod.tmp / "busy", "");
  auto& daemon = prod.start_watching();
  const std::string sha = prod.commit("healthy");
  prod.stage_by_rename();
  const int busy = daemon.wait_for_line("idle command says busy");
  REQUIRE(busy >= 0);
  // The status is written right after that line is logged: the next check comes after it.
  REQUIRE(daemon.wait_for_line("idle-check", 10s, busy + 1) >= 0);
  const json::object doc = status_of(prod);
  const json::object& target = doc.at("targets").as_array().at(0).as_object();
  CHECK(str(target, "phase") == "waiting-idle");
  INFO(json::serialize(target));
  CHECK(str(target, "waiting").find("idle command says busy") != std::string::npos);
  const json::object& pending = target.at("pending").as_object();
  REQUIRE(pending.at("in_progress").is_object());
  CHECK(str(pending.at("in_progress").as_object(), "commit") == sha);
  CHECK(str(pending.at("in_progress").as_object(), "phase") == "waiting-idle");
  fs::remove(prod.tmp / "busy");
  REQUIRE(daemon.wait_for_line("deployed " + short_sha(sha)) >= 0);
}

TEST_CASE("history lists deploys, reverts and cycles oldest first, and -n keeps the newest") {
  Production::Options o;
  o.deadline = "1s";
  o.extra = "[target.cycle]\ncommand = [\"true\"]\nevery = \"1h\"\n";
  Production prod(o);
  auto& daemon = prod.start_watching();
  const std::string good = prod.commit("healthy");
  prod.stage_by_rename();
  REQUIRE(daemon.wait_for_line("deployed " + short_sha(good)) >= 0);
  const std::string bad = prod.commit("unhealthy");
  prod.stage_by_rename();
  // A revert owes the agent one cycle, which starts once production is healthy.
  REQUIRE(daemon.wait_for_line("cycle started") >= 0);
  json::array all = history_of(prod);
  REQUIRE(all.size() == 3);
  CHECK(str(all[0].as_object(), "result") == "deployed");
  CHECK(str(all[0].as_object(), "commit") == good);
  CHECK(str(all[1].as_object(), "result") == "reverted");
  CHECK(str(all[1].as_object(), "commit") == bad);
  CHECK(str(all[2].as_object(), "result") == "cycle");
  CHECK(str(all[2].as_object(), "target") == "prod");
  json::array last = history_of(prod, {"-n", "1", "--target", "prod"});
  REQUIRE(last.size() == 1);
  CHECK(str(last[0].as_object(), "result") == "cycle");
  const std::string human = prod.cli({"history"}).out;
  CHECK(human.find("prod  deployed " + short_sha(good)) != std::string::npos);
  CHECK(human.find("prod  reverted " + short_sha(bad)) != std::string::npos);
}

TEST_CASE("history skips a torn last line, names it on stderr, and the daemon appends after it") {
  Production prod;
  auto& daemon = prod.start_watching();
  const std::string first = prod.commit("healthy");
  prod.stage_by_rename();
  REQUIRE(daemon.wait_for_line("deployed " + short_sha(first)) >= 0);
  const fs::path file = prod.state / "targets" / "prod" / "history.jsonl";
  write_file(file, read_file(file) + "{\"result\":\"depl");  // a crash in the middle of a write
  CommandOutput torn = prod.cli({"history"});
  CHECK(torn.status == 0);
  CHECK(torn.err.find(file.string() + ":2: torn line") != std::string::npos);
  CHECK(torn.out.find("deployed " + short_sha(first)) != std::string::npos);
  const std::string second = prod.commit("slow:10");
  prod.stage_by_rename();
  REQUIRE(daemon.wait_for_line("deployed " + short_sha(second)) >= 0);
  json::array all = history_of(prod);
  REQUIRE(all.size() == 2);
  CHECK(str(all[1].as_object(), "commit") == second);
}

TEST_CASE("revert --to goes back to an older commit through the daemon: reset, restart, verify, recorded") {
  Production prod;
  auto& daemon = prod.start_watching();
  const std::string older = prod.commit("slow:10");
  prod.stage_by_rename();
  REQUIRE(daemon.wait_for_line("deployed " + short_sha(older)) >= 0);
  const std::string newer = prod.commit("healthy");
  prod.stage_by_rename();
  const int deployed = daemon.wait_for_line("deployed " + short_sha(newer));
  REQUIRE(deployed >= 0);

  CommandOutput asked = prod.cli({"revert", "--to", short_sha(older), "--reason", "answers got worse"});
  INFO(asked.err);
  REQUIRE(asked.status == 0);
  CHECK(asked.out.find("asked the daemon to revert prod to " + older) != std::string::npos);
  REQUIRE(daemon.wait_for_line("reverted " + short_sha(newer) + " to " + short_sha(older), 10s, deployed) >= 0);
  CHECK(prod.head() == older);
  CHECK(prod.restarts().back().starts_with("slow:10 "));
  CHECK_FALSE(prod.has(".deploy-revert-request"));
  CHECK_FALSE(prod.has(".deploy-in-progress"));
  json::array all = history_of(prod);
  REQUIRE_FALSE(all.empty());
  const json::object& last = all.back().as_object();
  CHECK(str(last, "result") == "reverted");
  CHECK(str(last, "commit") == newer);
  CHECK(str(last, "reason").starts_with("operator: revert to " + short_sha(older) + " requested by "));
  CHECK(str(last, "reason").ends_with(": answers got worse"));
  CHECK(read_file(prod.state / "targets" / "prod" / "known-good").substr(0, 40) == older);
  CHECK(prod.has(".deploy-reverted"));  // the agent learns that its commit was undone
}

TEST_CASE("revert without --to goes back to the last known-good commit, discarding what the agent committed since") {
  Production prod;
  auto& daemon = prod.start_watching();
  const std::string good = prod.commit("slow:10");
  prod.stage_by_rename();
  REQUIRE(daemon.wait_for_line("deployed " + short_sha(good)) >= 0);
  const std::string unstaged = prod.commit("healthy");  // committed, never staged
  REQUIRE(prod.cli({"revert", "--now"}).status == 0);
  REQUIRE(daemon.wait_for_line("reverted " + short_sha(unstaged) + " to " + short_sha(good)) >= 0);
  CHECK(prod.head() == good);
}

TEST_CASE("revert waits for the agent to be idle unless --now") {
  Production::Options o;
  o.with_idle = true;
  Production prod(o);
  auto& daemon = prod.start_watching();
  const std::string good = prod.commit("slow:10");
  prod.stage_by_rename();
  REQUIRE(daemon.wait_for_line("deployed " + short_sha(good)) >= 0);
  const std::string later = prod.commit("healthy");
  write_file(prod.tmp / "busy", "");
  const int before = static_cast<int>(daemon.lines().size());
  REQUIRE(prod.cli({"revert"}).status == 0);
  REQUIRE(daemon.wait_for_line("idle command says busy", 10s, before) >= 0);
  CHECK(daemon.count_lines("reverted " + short_sha(later)) == 0);
  CHECK(str(status_of(prod).at("targets").as_array().at(0).as_object(), "phase") == "waiting-idle");
  fs::remove(prod.tmp / "busy");
  REQUIRE(daemon.wait_for_line("reverted " + short_sha(later) + " to " + short_sha(good), 10s, before) >= 0);
  CHECK(prod.head() == good);

  // --now does not wait for a busy agent.
  const std::string again = prod.commit("healthy");
  write_file(prod.tmp / "busy", "");
  const int now_from = static_cast<int>(daemon.lines().size());
  REQUIRE(prod.cli({"revert", "--now"}).status == 0);
  REQUIRE(daemon.wait_for_line("reverted " + short_sha(again) + " to " + short_sha(good), 10s, now_from) >= 0);
}

TEST_CASE("a revert waiting for idle when the daemon is killed is resumed by the next start, not lost") {
  Production::Options o;
  o.with_idle = true;
  Production prod(o);
  auto& daemon = prod.start_watching();
  const std::string good = prod.commit("slow:10");
  prod.stage_by_rename();
  REQUIRE(daemon.wait_for_line("deployed " + short_sha(good)) >= 0);
  const std::string later = prod.commit("healthy");  // committed, never staged
  write_file(prod.tmp / "busy", "");
  REQUIRE(prod.cli({"revert"}).status == 0);
  REQUIRE(daemon.wait_for_line("idle command says busy") >= 0);
  daemon.kill_hard();
  const std::size_t restarts = prod.restarts().size();
  auto& again = prod.start_daemon();
  REQUIRE(again.wait_for_line("idle command says busy") >= 0);
  fs::remove(prod.tmp / "busy");
  REQUIRE(again.wait_for_line("reverted " + short_sha(later) + " to " + short_sha(good)) >= 0);
  CHECK(prod.head() == good);
  CHECK(prod.restarts().size() == restarts + 1);  // the revert's restart only: HEAD was never deployed
  CHECK(again.count_lines("deployed " + short_sha(later)) == 0);
}

TEST_CASE("revert refuses with a clear message: the daemon not running, a commit not in the checkout") {
  Production prod;
  CommandOutput down = prod.cli({"revert", "--to", "HEAD"});
  CHECK(down.status == 69);
  CHECK(down.err.find("the daemon is not running") != std::string::npos);
  CHECK_FALSE(prod.has(".deploy-revert-request"));

  prod.start_watching();
  CommandOutput unknown = prod.cli({"revert", "--to", "0123456789abcdef0123456789abcdef01234567"});
  CHECK(unknown.status == 64);
  CHECK(unknown.err.find("is not a commit in " + prod.checkout.string()) != std::string::npos);
  CHECK(unknown.err.find("git -C") != std::string::npos);
  CHECK_FALSE(prod.has(".deploy-revert-request"));

  CommandOutput no_target = prod.cli({"revert", "--target", "nope"});
  CHECK(no_target.status != 0);
  CHECK(no_target.err.find("no target named \"nope\"") != std::string::npos);
}

TEST_CASE("a revert request the daemon cannot carry out is refused, removed and recorded, and deploys go on") {
  Production prod;
  auto& daemon = prod.start_watching();
  write_file(prod.marker(".deploy-revert-request.tmp"), "{\"to\": \"0123456789abcdef0123456789abcdef01234567\"}");
  fs::rename(prod.marker(".deploy-revert-request.tmp"), prod.marker(".deploy-revert-request"));
  REQUIRE(daemon.wait_for_line("operator's revert request refused") >= 0);
  CHECK_FALSE(prod.has(".deploy-revert-request"));
  const json::array refused = history_of(prod);
  REQUIRE_FALSE(refused.empty());
  CHECK(str(refused.back().as_object(), "result") == "rejected");
  if (::geteuid() == 0) {  // a request from someone who may not stage deploys here
    const fs::path tmp_request = prod.marker(".deploy-revert-request.tmp");
    write_file(tmp_request, "{}");
    REQUIRE(::chown(tmp_request.c_str(), 65534, 65534) == 0);
    fs::rename(tmp_request, prod.marker(".deploy-revert-request"));
    REQUIRE(daemon.wait_for_line("it is owned by uid 65534, who may not stage deploys of this target") >= 0);
    CHECK_FALSE(prod.has(".deploy-revert-request"));
  }
  const std::string sha = prod.commit("healthy");
  prod.stage_by_rename();
  REQUIRE(daemon.wait_for_line("deployed " + short_sha(sha)) >= 0);
  CHECK(daemon.count_lines("reverted") == 0);
}

TEST_CASE("hooks run once per outcome with DEPLOY_* in their environment, and a hung hook never holds a deploy") {
  Production::Options o;
  o.deadline = "1s";
  o.extra = "[target.hooks]\n"
            "on_deployed = [\"sh\", \"-c\", \"env | grep ^DEPLOY_ | sort > ../deployed.env; sleep 30\"]\n"
            "on_reverted = [\"sh\", \"-c\", \"env | grep ^DEPLOY_ | sort >> ../reverted.env; exit 3\"]\n"
            "timeout = \"1s\"\n";
  Production prod(o);
  auto& daemon = prod.start_watching();
  const std::string before = prod.head();
  const std::string good = prod.commit("healthy");
  prod.stage_by_rename();
  const int deployed = daemon.wait_for_line("deployed " + short_sha(good));
  REQUIRE(deployed >= 0);
  // The hook is still sleeping: the next deploy does not wait for it.
  const std::string bad = prod.commit("unhealthy");
  prod.stage_by_rename();
  REQUIRE(daemon.wait_for_line("prod: hook on_deployed timed out", 10s) >= 0);
  REQUIRE(daemon.wait_for_line("reverted " + short_sha(bad), 10s, deployed) >= 0);
  REQUIRE(daemon.wait_for_line("prod: hook on_reverted exited with status 3") >= 0);

  const std::string deployed_env = read_file(prod.tmp / "deployed.env");
  CHECK(deployed_env.find("DEPLOY_TARGET=prod\n") != std::string::npos);
  CHECK(deployed_env.find("DEPLOY_COMMIT=" + good + "\n") != std::string::npos);
  CHECK(deployed_env.find("DEPLOY_PREVIOUS=" + before + "\n") != std::string::npos);
  CHECK(deployed_env.find("DEPLOY_REASON=\n") != std::string::npos);
  CHECK(deployed_env.find("DEPLOY_RESULT=deployed\n") != std::string::npos);
  const std::string reverted_env = read_file(prod.tmp / "reverted.env");
  CHECK(reverted_env.find("DEPLOY_COMMIT=" + good + "\n") != std::string::npos);
  CHECK(reverted_env.find("DEPLOY_PREVIOUS=" + bad + "\n") != std::string::npos);
  CHECK(reverted_env.find("DEPLOY_REASON=not healthy within") != std::string::npos);
  CHECK(daemon.count_lines("hook on_reverted exited") == 1);  // once per transition
}

TEST_CASE("the metrics file counts deploys by result and shows the last probe, in Prometheus text") {
  Production::Options o;
  o.deadline = "1s";
  Production prod(o);
  const fs::path metrics = prod.tmp / "metrics" / "sentinel.prom";
  fs::create_directories(metrics.parent_path());
  add_to_sentinel_table(prod, "metrics_file = \"" + metrics.string() + "\"");
  auto& daemon = prod.start_watching();
  CHECK(read_file(metrics).find("deploy_sentinel_deploys_total{target=\"prod\",result=\"deployed\"} 0\n") !=
        std::string::npos);
  const std::string good = prod.commit("healthy");
  prod.stage_by_rename();
  REQUIRE(daemon.wait_for_line("deployed " + short_sha(good)) >= 0);
  const std::string bad = prod.commit("unhealthy");
  prod.stage_by_rename();
  REQUIRE(daemon.wait_for_line("reverted " + short_sha(bad)) >= 0);
  const std::string text = read_file(metrics);
  CHECK(text.find("# TYPE deploy_sentinel_deploys_total counter\n") != std::string::npos);
  CHECK(text.find("deploy_sentinel_deploys_total{target=\"prod\",result=\"deployed\"} 1\n") != std::string::npos);
  CHECK(text.find("deploy_sentinel_deploys_total{target=\"prod\",result=\"reverted\"} 1\n") != std::string::npos);
  CHECK(text.find("deploy_sentinel_last_deploy_timestamp_seconds{target=\"prod\"} ") != std::string::npos);
  CHECK(text.find("deploy_sentinel_health_probe_seconds{target=\"prod\"} ") != std::string::npos);
  CHECK(text.find("deploy_sentinel_target_up{target=\"prod\"} 1\n") != std::string::npos);
  // Only complete files are ever seen: no temporary is left beside it.
  int files = 0;
  for ([[maybe_unused]] const auto& entry : fs::directory_iterator(metrics.parent_path())) ++files;
  CHECK(files == 1);
}

TEST_CASE("an operator's revert during a pause still waits for the agent to be idle, and is not held by the pause") {
  Production::Options o;
  o.with_idle = true;
  Production prod(o);
  auto& daemon = prod.start_watching();
  const std::string good = prod.commit("slow:10");
  prod.stage_by_rename();
  REQUIRE(daemon.wait_for_line("deployed " + short_sha(good)) >= 0);
  REQUIRE(prod.cli({"pause", "--reason", "investigating"}).status == 0);
  const std::string later = prod.commit("healthy");
  write_file(prod.tmp / "busy", "");
  const int before = static_cast<int>(daemon.lines().size());
  REQUIRE(prod.cli({"revert"}).status == 0);
  REQUIRE(daemon.wait_for_line("idle command says busy", 10s, before) >= 0);
  CHECK(prod.head() == later);  // the checkout is not reset under the busy agent
  CHECK(daemon.count_lines("reverted " + short_sha(later)) == 0);
  fs::remove(prod.tmp / "busy");
  REQUIRE(daemon.wait_for_line("reverted " + short_sha(later) + " to " + short_sha(good), 10s, before) >= 0);
  CHECK(prod.head() == good);
}
