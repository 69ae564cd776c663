// Fleet mode end to end: several sentinels, each with its own production as if on its own host,
// share restart slots in a real etcd on 127.0.0.1. All run on this machine; the [fleet] table
// names each one's host.
#include "etcd_server.h"
#include "harness.h"

#include <boost/json.hpp>
#include <doctest/doctest.h>

#include <signal.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <limits>
#include <memory>
#include <sstream>
#include <thread>

using namespace sentinel::test;
using namespace std::chrono_literals;
namespace fs = std::filesystem;
namespace json = boost::json;
using Clock = std::chrono::steady_clock;

namespace {

json::object json_file(const fs::path& file) { return json::parse(read_file(file)).as_object(); }

std::string host_name(int n) { return "host-" + std::to_string(n); }

long long ms_between(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(to - from).count();
}

/// One restart as the trace recorded it: realtime nanoseconds (-1 when missing).
struct RestartSpan {
  std::string host;
  long long start = -1;
  long long end = -1;
  long long pgid = -1;
};

/// The restarts in a trace, in the order they started.
std::vector<RestartSpan> read_trace(const fs::path& file) {
  std::vector<RestartSpan> spans;
  std::ifstream in(file);
  for (std::string line; std::getline(in, line);) {
    std::istringstream words(line);
    std::string what, host;
    long long ns = -1, pgid = -1;
    words >> what >> host >> ns >> pgid;
    if (what == "start") {
      spans.push_back({host, ns, -1, pgid});
    } else if (what == "end") {
      auto open = std::find_if(spans.begin(), spans.end(), [&](auto& s) { return s.host == host && s.end < 0; });
      if (open != spans.end()) open->end = ns;
    }
  }
  return spans;
}

/// Several sentinels and their productions, host-1 .. host-N, sharing one etcd and one group.
class Fleet {
 public:
  struct Settings {
    std::string group;
    int max_restarting = 1;
    std::string lease_ttl = "3s";
  };
  Fleet(EtcdServer& etcd, Settings settings) : etcd_(etcd), settings_(std::move(settings)) {}
  /// Stops the sentinels, then ends any restart a killed one left running, before the
  /// productions are torn down.
  ~Fleet() {
    for (auto& h : hosts_) {
      if (h->daemon_started()) h->daemon().stop();
    }
    for (const auto& s : read_trace(trace())) {
      if (s.end < 0 && s.pgid > 0) ::kill(static_cast<pid_t>(-s.pgid), SIGKILL);
    }
  }
  Fleet(const Fleet&) = delete;
  Fleet& operator=(const Fleet&) = delete;

  /// Adds the next host, with `options` for its target and a [fleet] table naming it; its
  /// restarts are traced to trace().
  Production& add(Production::Options options = {}) {
    const std::string host = host_name(static_cast<int>(hosts_.size()) + 1);
    options.fleet = "[fleet]\netcd = [\"" + etcd_.endpoint() + "\"]\ngroup = \"" + settings_.group + "\"\nhost = \"" +
                    host + "\"\nmax_restarting = " + std::to_string(settings_.max_restarting) +
                    "\nlease_ttl = \"" + settings_.lease_ttl + "\"\n";
    options.restart_trace = trace();
    options.trace_label = host;
    hosts_.push_back(std::make_unique<Production>(options));
    return *hosts_.back();
  }
  /// Host n (1-based).
  Production& host(int n) { return *hosts_.at(static_cast<std::size_t>(n - 1)); }
  std::vector<DaemonProcess*> daemons() {
    std::vector<DaemonProcess*> all;
    for (auto& h : hosts_) all.push_back(&h->daemon());
    return all;
  }
  fs::path trace() const { return shared_ / "restarts.trace"; }
  const std::string& group() const { return settings_.group; }
  std::string slot_prefix() const { return "deploy-sentinel/" + settings_.group + "/slot/"; }
  std::string bad_prefix() const { return "deploy-sentinel/" + settings_.group + "/bad/"; }

  /// Gives every host host-1's history, so that one commit has one SHA on all hosts, as when
  /// they all pull from one remote. Before the sentinels start: they take HEAD as known-good.
  void share_history() {
    for (std::size_t i = 1; i < hosts_.size(); ++i) follow_host_1(*hosts_[i]);
  }
  /// Commits on host-1 and brings every other host's checkout to the same commit; returns it.
  std::string commit_everywhere(const std::string& mode) {
    const std::string sha = hosts_.front()->commit(mode);
    for (std::size_t i = 1; i < hosts_.size(); ++i) {
      follow_host_1(*hosts_[i]);
      REQUIRE(hosts_[i]->head() == sha);
    }
    return sha;
  }

 private:
  void follow_host_1(Production& host) {
    const std::string dir = host.checkout.string();
    auto fetched = run_program({"git", "-C", dir, "fetch", "-q", hosts_.front()->checkout.string(), "main"});
    REQUIRE_MESSAGE(fetched.status == 0, fetched.err);
    auto reset = run_program({"git", "-C", dir, "reset", "-q", "--hard", "FETCH_HEAD"});
    REQUIRE_MESSAGE(reset.status == 0, reset.err);
  }

  EtcdServer& etcd_;
  Settings settings_;
  TempDir shared_;
  std::vector<std::unique_ptr<Production>> hosts_;
};

/// Waits until each daemon has logged a line containing its text (from line 0 on), reading all
/// of their logs in turn so that none blocks on a full pipe; per daemon, the line's index or -1.
std::vector<int> wait_for_each(const std::vector<DaemonProcess*>& daemons, const std::vector<std::string>& texts,
                               std::chrono::milliseconds timeout) {
  std::vector<int> found(daemons.size(), -1);
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    bool all = true;
    for (std::size_t i = 0; i < daemons.size(); ++i) {
      if (found[i] < 0) found[i] = daemons[i]->wait_for_line(texts.at(i), 20ms);
      all = all && found[i] >= 0;
    }
    if (all || Clock::now() > deadline) return found;
  }
}

std::vector<int> wait_for_each(const std::vector<DaemonProcess*>& daemons, const std::string& text,
                               std::chrono::milliseconds timeout) {
  return wait_for_each(daemons, std::vector<std::string>(daemons.size(), text), timeout);
}

/// Waits until `done()` holds, reading the daemons' logs meanwhile; false after `timeout`. For
/// facts that are files, not log lines: polled every 20 ms.
template <typename Done>
bool wait_until(const std::vector<DaemonProcess*>& daemons, std::chrono::milliseconds timeout, Done done) {
  const auto deadline = Clock::now() + timeout;
  while (!done()) {
    if (Clock::now() > deadline) return false;
    for (auto* d : daemons) d->count_lines("");
    std::this_thread::sleep_for(20ms);
  }
  return true;
}

/// When the daemon logged line `index`, from its "YYYY-MM-DD HH:MM:SS.mmm" prefix: ms since midnight.
long long logged_ms(DaemonProcess& daemon, int index) {
  const std::string& line = daemon.lines().at(static_cast<std::size_t>(index));
  int h = 0, m = 0, sec = 0, ms = 0;
  REQUIRE_MESSAGE(std::sscanf(line.c_str(), "%*d-%*d-%*d %d:%d:%d.%d", &h, &m, &sec, &ms) == 4, line);
  return ((h * 60LL + m) * 60 + sec) * 1000 + ms;
}

/// The most restarts that ran at one moment; a restart still running counts to the end.
int max_concurrent(const std::vector<RestartSpan>& spans) {
  std::vector<std::pair<long long, int>> edges;  // (time, +1 start / -1 end); ends sort first at a tie
  for (const auto& s : spans) {
    edges.emplace_back(s.start, +1);
    edges.emplace_back(s.end < 0 ? std::numeric_limits<long long>::max() : s.end, -1);
  }
  std::sort(edges.begin(), edges.end());
  int now = 0, most = 0;
  for (const auto& [at, step] : edges) most = std::max(most, now += step);
  return most;
}

/// The one place that knows the shape of `fleet status --json`, loose on purpose: an object with
/// "slots", "hosts" (naming every host) and "bad" (naming `bad_commit`, when given).
void check_fleet_status(const CommandOutput& status, const std::vector<std::string>& hosts,
                        const std::string& bad_commit) {
  REQUIRE_MESSAGE(status.status == 0, status.err);
  boost::system::error_code ec;
  const json::value parsed = json::parse(status.out, ec);
  REQUIRE_MESSAGE(!ec, "fleet status --json printed no JSON: " << status.out);
  REQUIRE_MESSAGE(parsed.is_object(), status.out);
  const json::object& top = parsed.as_object();
  CHECK_MESSAGE(top.contains("slots"), status.out);
  const json::value* listed = top.if_contains("hosts");
  REQUIRE_MESSAGE(listed != nullptr, status.out);
  const std::string hosts_text = json::serialize(*listed);
  for (const auto& host : hosts) CHECK_MESSAGE(hosts_text.find("\"" + host + "\"") != std::string::npos, status.out);
  const json::value* bad = top.if_contains("bad");
  REQUIRE_MESSAGE(bad != nullptr, status.out);
  if (!bad_commit.empty()) CHECK_MESSAGE(json::serialize(*bad).find(bad_commit) != std::string::npos, status.out);
}

}  // namespace

TEST_CASE("fleet: five hosts staged at once restart one at a time with max_restarting = 1") {
  EtcdServer etcd;
  Fleet fleet(etcd, {.group = "botical-prod"});
  Production::Options slow;
  slow.restart_delay = "0.4";
  for (int n = 1; n <= 5; ++n) fleet.add(slow);
  fleet.share_history();
  for (int n = 1; n <= 5; ++n) fleet.host(n).start_watching();
  const std::string sha = fleet.commit_everywhere("healthy");

  const auto staged = Clock::now();
  for (int n = 1; n <= 5; ++n) fleet.host(n).stage_by_rename();
  const auto deployed = wait_for_each(fleet.daemons(), "deployed " + short_sha(sha), 30s);
  const auto total_ms = ms_between(staged, Clock::now());
  for (int n = 1; n <= 5; ++n) {
    CHECK_MESSAGE(deployed[n - 1] >= 0, host_name(n) << " did not deploy");
    CHECK(fleet.host(n).restarts().size() == 2);
  }
  const auto released = wait_for_each(fleet.daemons(), "released fleet slot", 5s);
  int waited = 0;
  for (int n = 1; n <= 5; ++n) {
    CHECK_MESSAGE(released[n - 1] >= 0, host_name(n) << " did not release its slot");
    CHECK(fleet.host(n).daemon().count_lines("took fleet slot") == 1);
    CHECK(fleet.host(n).daemon().count_lines(" of 1 in group botical-prod") == 1);
    waited += fleet.host(n).daemon().count_lines("prod: waiting for a fleet slot in group botical-prod: held by") > 0;
  }
  CHECK(waited >= 4);  // all staged at once, one slot: all but the first found it taken
  CHECK(etcd.range(fleet.slot_prefix()).empty());

  const auto spans = read_trace(fleet.trace());
  CHECK(spans.size() == 5);
  for (const auto& s : spans) CHECK_MESSAGE(s.end >= 0, s.host << "'s restart has no end");
  const int most = max_concurrent(spans);
  CHECK(most == 1);
  MESSAGE("5 hosts, max_restarting = 1: at most " << most << " restart(s) at once; all deployed "
          << total_ms << " ms after staging");

  std::vector<std::string> names;
  for (int n = 1; n <= 5; ++n) names.push_back(host_name(n));
  check_fleet_status(fleet.host(1).cli({"fleet", "status", "--json"}), names, "");
}

TEST_CASE("fleet: the slot of a sentinel killed with kill -9 goes to another host once its lease expired") {
  EtcdServer etcd;
  const auto ttl = 3s;
  Fleet fleet(etcd, {.group = "kill-test", .lease_ttl = "3s"});
  Production::Options slow;
  slow.restart_delay = "2";  // holds the slot long past the kill
  Production& first = fleet.add(slow);
  Production& second = fleet.add();
  auto& first_daemon = first.start_watching();
  auto& second_daemon = second.start_watching();

  const std::string first_sha = first.commit("healthy");
  first.stage_by_rename();
  const int took = first_daemon.wait_for_line("took fleet slot");
  REQUIRE(took >= 0);
  REQUIRE(first_daemon.wait_for_line("restarting production on " + short_sha(first_sha), 10s, took) >= 0);
  const std::string second_sha = second.commit("healthy");
  second.stage_by_rename();
  const int waiting = second_daemon.wait_for_line("waiting for a fleet slot in group kill-test: held by");
  REQUIRE(waiting >= 0);
  CHECK(second_daemon.lines()[static_cast<std::size_t>(waiting)].find("host-1") != std::string::npos);
  const auto held = etcd.range(fleet.slot_prefix());
  REQUIRE(held.size() == 1);
  CHECK(held[0].lease != 0);

  const auto killed = Clock::now();
  first_daemon.kill_hard();
  const int next = second_daemon.wait_for_line("took fleet slot", ttl + 5s, waiting);
  const auto expired = Clock::now();
  REQUIRE(next >= 0);
  const auto after = std::chrono::duration_cast<std::chrono::milliseconds>(expired - killed);
  MESSAGE("the killed sentinel's slot went to host-2 " << after.count() << " ms after kill -9 (lease_ttl 3s)");
  // Keepalives run every TTL/3, so the lease has at least 2/3 of its TTL left at the kill.
  CHECK(after >= std::chrono::duration_cast<std::chrono::milliseconds>(ttl * 2 / 3) - 300ms);
  CHECK(after < ttl + 3s);
  CHECK(second_daemon.wait_for_line("deployed " + short_sha(second_sha), 10s, next) >= 0);
  CHECK(second.restarts().size() == 2);
}

TEST_CASE("fleet: a commit reverted on one host is refused by the others without a restart, and fleet status "
          "lists it as bad") {
  EtcdServer etcd;
  Fleet fleet(etcd, {.group = "bad-test"});
  Production::Options quick_verdict;
  quick_verdict.deadline = "1s";
  for (int n = 1; n <= 3; ++n) fleet.add(quick_verdict);
  fleet.share_history();
  for (int n = 1; n <= 3; ++n) fleet.host(n).start_watching();
  const std::string bad = fleet.commit_everywhere("unhealthy");
  for (int n = 1; n <= 3; ++n) fleet.host(n).stage_by_rename();

  auto outcome_known = [&] {
    for (int n = 1; n <= 3; ++n) {
      if (!fleet.host(n).has(".deploy-reverted") && !fleet.host(n).has(".deploy-rejected")) return false;
    }
    return true;
  };
  REQUIRE(wait_until(fleet.daemons(), 20s, outcome_known));
  int reverter = 0;
  for (int n = 1; n <= 3; ++n) {
    if (fleet.host(n).has(".deploy-reverted")) {
      CHECK_MESSAGE(reverter == 0, "both " << host_name(reverter) << " and " << host_name(n) << " reverted");
      reverter = n;
    }
  }
  REQUIRE(reverter != 0);
  const std::string reverted_on = host_name(reverter);
  CHECK(fleet.host(reverter).restarts().size() == 3);  // its start, the broken commit, the revert

  const auto records = etcd.range(fleet.bad_prefix());
  REQUIRE(records.size() == 1);
  CHECK(records[0].key == fleet.bad_prefix() + bad);
  const json::object record = json::parse(records[0].value).as_object();
  CHECK(record.at("host").as_string() == reverted_on);
  CHECK(record.at("target").as_string() == "prod");
  CHECK(record.contains("at"));
  const std::string reason(record.at("reason").as_string());
  CHECK(reason.find("HTTP 503") != std::string::npos);

  for (int n = 1; n <= 3; ++n) {
    if (n == reverter) continue;
    CAPTURE(n);
    Production& host = fleet.host(n);
    REQUIRE(host.has(".deploy-rejected"));
    const std::string why(json_file(host.marker(".deploy-rejected")).at("reason").as_string());
    CHECK_MESSAGE(why.find("reverted on host " + reverted_on + ": " + reason) != std::string::npos, why);
    CHECK(host.restarts().size() == 1);  // production's own start only
    CHECK_FALSE(host.has(".deploy-in-progress"));
  }

  check_fleet_status(fleet.host(1).cli({"fleet", "status", "--json"}), {"host-1", "host-2", "host-3"}, bad);
}

TEST_CASE("fleet: while etcd is down no host restarts, and once it is back every staged deploy goes on by itself") {
  EtcdServer etcd;
  Fleet fleet(etcd, {.group = "outage-test"});
  for (int n = 1; n <= 3; ++n) fleet.add();
  for (int n = 1; n <= 3; ++n) fleet.host(n).start_watching();

  const std::string first = fleet.host(1).commit("healthy");
  fleet.host(1).stage_by_rename();
  REQUIRE(fleet.host(1).daemon().wait_for_line("deployed " + short_sha(first)) >= 0);
  REQUIRE(fleet.host(1).daemon().wait_for_line("released fleet slot") >= 0);

  etcd.stop();
  const auto down = Clock::now();
  const std::vector<DaemonProcess*> waiting = {&fleet.host(2).daemon(), &fleet.host(3).daemon()};
  const std::string second = fleet.host(2).commit("healthy");
  const std::string third = fleet.host(3).commit("healthy");
  fleet.host(2).stage_by_rename();
  fleet.host(3).stage_by_rename();
  const auto unreachable = wait_for_each(waiting, "prod: etcd unreachable", 10s);
  REQUIRE(unreachable[0] >= 0);
  REQUIRE(unreachable[1] >= 0);
  // Long enough for several retries (the slot is polled well under a second apart).
  CHECK(fleet.host(2).daemon().wait_for_line("restarting production", 1500ms, unreachable[0]) < 0);
  CHECK(fleet.host(3).daemon().count_lines("restarting production") == 0);
  CHECK(fleet.host(2).restarts().size() == 1);
  CHECK(fleet.host(3).restarts().size() == 1);
  const auto down_for = ms_between(down, Clock::now());

  const auto up = Clock::now();
  etcd.start();
  const auto deployed = wait_for_each(waiting, {"deployed " + short_sha(second), "deployed " + short_sha(third)}, 20s);
  CHECK(deployed[0] >= 0);
  CHECK(deployed[1] >= 0);
  MESSAGE("etcd down " << down_for << " ms without a restart; both waiting hosts deployed "
          << ms_between(up, Clock::now()) << " ms after etcd started again");
  CHECK(fleet.host(2).restarts().size() == 2);
  CHECK(fleet.host(3).restarts().size() == 2);
  for (auto* d : waiting) CHECK(d->count_lines("prod: etcd unreachable") == 1);  // once per outage
  CHECK(max_concurrent(read_trace(fleet.trace())) == 1);
}

TEST_CASE("fleet: etcd stopped while a host restarts in its slot: that deploy finishes, the others wait, and the "
          "slot is given back as soon as etcd returns, not a lease_ttl later") {
  EtcdServer etcd;
  Fleet fleet(etcd, {.group = "midway-test", .lease_ttl = "20s"});
  Production::Options slow;
  slow.restart_delay = "2";  // etcd goes down in the middle of this restart
  Production& first = fleet.add(slow);
  Production& second = fleet.add();
  fleet.share_history();
  auto& first_daemon = first.start_watching();
  auto& second_daemon = second.start_watching();
  const std::string sha = fleet.commit_everywhere("healthy");
  first.stage_by_rename();
  REQUIRE(first_daemon.wait_for_line("took fleet slot 0", 10s) >= 0);
  REQUIRE(first_daemon.wait_for_line("restarting production on " + short_sha(sha), 10s) >= 0);
  second.stage_by_rename();
  const int waiting = second_daemon.wait_for_line("waiting for a fleet slot in group midway-test: held by host-1", 10s);
  REQUIRE(waiting >= 0);

  etcd.stop();
  REQUIRE(first_daemon.wait_for_line("deployed " + short_sha(sha), 15s) >= 0);
  const int unreleased = first_daemon.wait_for_line("cannot release fleet slot 0", 15s);
  REQUIRE(unreleased >= 0);
  REQUIRE(second_daemon.wait_for_line("prod: etcd unreachable", 10s, waiting) >= 0);
  CHECK(second.restarts().size() == 1);  // production's own start only

  const auto up = Clock::now();
  etcd.start();
  const int took = second_daemon.wait_for_line("took fleet slot 0", 15s, waiting);
  REQUIRE(took >= 0);
  const auto handed_over = ms_between(up, Clock::now());
  CHECK(first_daemon.wait_for_line("released fleet slot 0 (etcd answers again)", 5s, unreleased) >= 0);
  CHECK(second_daemon.wait_for_line("deployed " + short_sha(sha), 15s, took) >= 0);
  MESSAGE("etcd came back; the slot went from host-1 to host-2 " << handed_over << " ms later (lease_ttl 20s)");
  CHECK(handed_over < 10'000);  // the lease alone would have held it for 20 s
  CHECK(max_concurrent(read_trace(fleet.trace())) == 1);
}

TEST_CASE("fleet: a sentinel started again after kill -9 in the middle of its restart takes its slot back, and "
          "no other host restarts meanwhile") {
  EtcdServer etcd;
  Fleet fleet(etcd, {.group = "comeback-test", .lease_ttl = "20s"});
  Production::Options slow;
  slow.restart_delay = "2";
  Production& host = fleet.add(slow);
  Production& other = fleet.add();
  fleet.share_history();
  auto& killed = host.start_watching();
  auto& other_daemon = other.start_watching();
  const std::string sha = fleet.commit_everywhere("healthy");
  host.stage_by_rename();
  REQUIRE(killed.wait_for_line("took fleet slot 0", 10s) >= 0);
  REQUIRE(killed.wait_for_line("restarting production on " + short_sha(sha), 10s) >= 0);
  killed.kill_hard();
  REQUIRE(etcd.range(fleet.slot_prefix()).size() == 1);
  other.stage_by_rename();
  const int waiting = other_daemon.wait_for_line("waiting for a fleet slot in group comeback-test: held by host-1", 10s);
  REQUIRE(waiting >= 0);

  const auto again = Clock::now();
  auto& daemon = host.start_daemon();
  REQUIRE(daemon.wait_for_line("holds fleet slot 0 again (its lease outlived the stop)", 10s) >= 0);
  REQUIRE(daemon.wait_for_line("deployed " + short_sha(sha), 15s) >= 0);
  const auto took_ms = ms_between(again, Clock::now());
  CHECK(daemon.count_lines("took fleet slot") == 0);
  CHECK(other_daemon.wait_for_line("deployed " + short_sha(sha), 15s, waiting) >= 0);
  MESSAGE("deployed " << took_ms << " ms after the sentinel started again, on the slot its killed run held "
          "(lease_ttl 20s)");
  CHECK(took_ms < 15'000);
  // host-2 restarted only after both of host-1's restarts (the killed run's, which ran on as an
  // orphan, and the resumed run's) had ended.
  const auto spans = read_trace(fleet.trace());
  long long host_1_done = 0, host_2_began = -1;
  for (const auto& span : spans) {
    if (span.host == "host-1") host_1_done = std::max(host_1_done, span.end);
    if (span.host == "host-2") host_2_began = span.start;
  }
  CHECK(host_2_began > host_1_done);
}

namespace {

/// Two hosts share one history; an unhealthy commit is staged on both, host-1 takes the slot and
/// reverts it (slowly: its build takes 2 s), host-2 waits for the slot; etcd is stopped during
/// host-1's revert. Returns the commit.
std::string fail_on_host_1_then_stop_etcd(EtcdServer& etcd, Fleet& fleet) {
  Production::Options reverting_slowly;
  reverting_slowly.deadline = "1s";
  reverting_slowly.with_build = true;
  reverting_slowly.build_delay = "2";  // etcd goes down during the revert's build
  for (int n = 1; n <= 2; ++n) fleet.add(reverting_slowly);
  fleet.share_history();
  auto& first = fleet.host(1).start_watching();
  auto& second = fleet.host(2).start_watching();
  const std::string bad = fleet.commit_everywhere("unhealthy");
  fleet.host(1).stage_by_rename();
  REQUIRE(first.wait_for_line("took fleet slot 0", 10s) >= 0);
  fleet.host(2).stage_by_rename();
  REQUIRE(second.wait_for_line("waiting for a fleet slot in group " + fleet.group() + ": held by host-1", 10s) >= 0);
  REQUIRE(first.wait_for_line("rebuilding", 15s) >= 0);
  etcd.stop();
  return bad;
}

/// host-2 refused the commit host-1 reverted, naming host-1, and never ran it (reading host-1's
/// log as well, through `first`).
void check_host_2_refused(Fleet& fleet, DaemonProcess& first) {
  REQUIRE(wait_until({&first, &fleet.host(2).daemon()}, 20s, [&] { return fleet.host(2).has(".deploy-rejected"); }));
  const std::string why(json_file(fleet.host(2).marker(".deploy-rejected")).at("reason").as_string());
  CHECK_MESSAGE(why.find("reverted on host host-1: ") != std::string::npos, why);
  CHECK(fleet.host(2).restarts().size() == 1);  // production's own start only: the bad commit never ran there
}

}  // namespace

TEST_CASE("fleet: a failed commit that cannot be recorded because etcd is down keeps the slot until it is, so no "
          "other host deploys it meanwhile") {
  EtcdServer etcd;
  Fleet fleet(etcd, {.group = "record-test"});
  const std::string bad = fail_on_host_1_then_stop_etcd(etcd, fleet);
  auto& first = fleet.host(1).daemon();
  REQUIRE(first.wait_for_line("reverted " + short_sha(bad), 15s) >= 0);
  const int unrecorded = first.wait_for_line("cannot record " + short_sha(bad) + " as bad for group record-test", 10s);
  REQUIRE(unrecorded >= 0);
  etcd.start();
  const int recorded = first.wait_for_line("recorded the failed commit for the group now that etcd answers", 15s,
                                           unrecorded);
  REQUIRE(recorded >= 0);
  CHECK(first.wait_for_line("released fleet slot 0", 5s, recorded) >= 0);
  check_host_2_refused(fleet, first);
}

TEST_CASE("fleet: a failed commit not yet recorded when its sentinel is stopped is recorded at the next start") {
  EtcdServer etcd;
  Fleet fleet(etcd, {.group = "restart-record-test"});
  const std::string bad = fail_on_host_1_then_stop_etcd(etcd, fleet);
  auto& first = fleet.host(1).daemon();
  REQUIRE(first.wait_for_line("cannot record " + short_sha(bad) + " as bad for group restart-record-test", 15s) >= 0);
  const fs::path pending = fleet.host(1).state / "targets" / "prod" / "fleet-bad-pending.json";
  CHECK(fs::exists(pending));
  CHECK(first.stop() == 0);

  auto& again = fleet.host(1).start_daemon();
  REQUIRE(again.wait_for_line("recording " + short_sha(bad) + " as bad for group restart-record-test, which a "
                              "stopped run could not", 10s) >= 0);
  etcd.start();
  REQUIRE(again.wait_for_line("recorded the failed commit for the group now that etcd answers", 15s) >= 0);
  CHECK_FALSE(fs::exists(pending));
  check_host_2_refused(fleet, again);
}

TEST_CASE("fleet: a host whose agent stayed idle while it waited for the slot takes it without a second quiet "
          "period") {
  EtcdServer etcd;
  Fleet fleet(etcd, {.group = "quiet-test"});
  Production::Options watched;
  watched.with_idle = true;
  watched.quiet = "3s";
  watched.restart_delay = "1";
  for (int n = 1; n <= 2; ++n) fleet.add(watched);
  fleet.share_history();
  for (int n = 1; n <= 2; ++n) fleet.host(n).start_watching();
  const std::string sha = fleet.commit_everywhere("healthy");
  for (int n = 1; n <= 2; ++n) fleet.host(n).stage_by_rename();

  const auto took = wait_for_each(fleet.daemons(), "took fleet slot 0", 1ms);  // nobody yet: both wait for quiet
  CHECK(took[0] < 0);
  CHECK(took[1] < 0);
  int first = 0;
  for (const auto deadline = Clock::now() + 15s; first == 0 && Clock::now() < deadline;) {
    for (int n = 1; n <= 2 && first == 0; ++n) {
      if (fleet.host(n).daemon().wait_for_line("took fleet slot 0", 20ms) >= 0) first = n;
    }
  }
  REQUIRE(first != 0);
  const int second = 3 - first;
  REQUIRE(fleet.host(second).daemon().wait_for_line("waiting for a fleet slot in group quiet-test: held by", 10s) >= 0);
  const int released = fleet.host(first).daemon().wait_for_line("released fleet slot 0", 15s);
  REQUIRE(released >= 0);
  const int taken = fleet.host(second).daemon().wait_for_line("took fleet slot 0", 15s);
  REQUIRE(taken >= 0);
  // By the daemons' own clocks: the test reads the two logs one after the other.
  const long long handed_over = logged_ms(fleet.host(second).daemon(), taken) -
                                logged_ms(fleet.host(first).daemon(), released);
  MESSAGE("quiet = 3s: the idle host took the freed slot " << handed_over << " ms after it was released");
  CHECK(handed_over < 2'000);
  CHECK(fleet.host(second).daemon().wait_for_line("deployed " + short_sha(sha), 15s) >= 0);
}
