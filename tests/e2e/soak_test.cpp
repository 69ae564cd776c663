// The soak: the real daemon schedules the cycles of a simulated agent (tests/helpers/agent_sim.cpp)
// that lives inside production, commits good and broken changes and stages them, while this test
// knocks production's health out now and then. Afterwards the agent's event log and the
// sentinel's history must show that no cycle was cut short by a restart, no cycle ran while a
// deploy was pending, and every staged commit got exactly one outcome.
#include "harness.h"

#include <boost/json.hpp>
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <sstream>

using namespace sentinel::test;
using namespace std::chrono_literals;
namespace fs = std::filesystem;
namespace json = boost::json;

namespace {

using Clock = std::chrono::steady_clock;

long long monotonic_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<long long>(ts.tv_sec) * 1'000'000'000LL + ts.tv_nsec;
}

/// One line of agent-sim's events.log: "<monotonic ns> <word> key=value...".
struct Event {
  long long ns = 0;
  std::string word;
  std::map<std::string, std::string> facts;
  std::string fact(const std::string& key) const {
    auto it = facts.find(key);
    return it == facts.end() ? "" : it->second;
  }
};

std::vector<Event> read_events(const fs::path& file) {
  std::vector<Event> events;
  std::ifstream in(file);
  for (std::string line; std::getline(in, line);) {
    std::istringstream words(line);
    Event e;
    if (!(words >> e.ns >> e.word)) continue;
    for (std::string word; words >> word;) {
      auto eq = word.find('=');
      if (eq == std::string::npos) continue;
      std::string key = word.substr(0, eq);
      if (key == "message") {  // the rest of the line
        std::string rest;
        std::getline(words, rest);
        e.facts[key] = word.substr(eq + 1) + rest;
        break;
      }
      e.facts[key] = word.substr(eq + 1);
    }
    events.push_back(std::move(e));
  }
  return events;
}

/// One line of state_dir/targets/prod/history.jsonl.
struct Outcome {
  std::string result, commit, reason;
};

std::vector<Outcome> read_history(const fs::path& file) {
  std::vector<Outcome> outcomes;
  std::ifstream in(file);
  for (std::string line; std::getline(in, line);) {
    if (line.empty()) continue;
    auto doc = json::parse(line).as_object();
    auto text = [&](const char* key) {
      auto it = doc.find(key);
      return it != doc.end() && it->value().is_string() ? std::string(it->value().as_string()) : std::string();
    };
    outcomes.push_back({text("result"), text("commit"), text("reason")});
  }
  return outcomes;
}

/// How the reason of an outcome the monitor wrote (not a deploy) begins.
constexpr std::string_view kDownReason = "production has been down";

/// The commit a "rejected" outcome is about: its `commit` field, or the SHA its reason names
/// as the marker's ("the marker names commit X ...", "HEAD moved from X ..."); "" if neither.
std::string rejected_commit(const Outcome& o) {
  if (!o.commit.empty()) return o.commit;
  for (std::string prefix : {"the marker names commit ", "HEAD moved from "}) {
    if (o.reason.starts_with(prefix)) return o.reason.substr(prefix.size(), 40);
  }
  return "";
}

/// The status code of GET http://127.0.0.1:PORT/PATH, or 0 when there is no answer within 1 s.
int http_get_status(int port, const std::string& path) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  timeval second{1, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &second, sizeof second);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &second, sizeof second);
  std::string answer;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
    std::string request = "GET " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    if (::send(fd, request.data(), request.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(request.size())) {
      char buf[512];
      for (ssize_t n; answer.size() < 12 && (n = ::recv(fd, buf, sizeof buf, 0)) > 0;)
        answer.append(buf, static_cast<std::size_t>(n));
    }
  }
  ::close(fd);
  return answer.starts_with("HTTP/1.") && answer.size() >= 12 ? std::atoi(answer.c_str() + 9) : 0;
}

unsigned long long env_number(const char* name, unsigned long long fallback) {
  const char* text = std::getenv(name);
  if (text == nullptr || *text == '\0') return fallback;
  return std::strtoull(text, nullptr, 10);
}

/// Stops the agent-sim instance of a state directory when the test ends, however it ends.
struct ServiceGuard {
  fs::path dir;
  ~ServiceGuard() { run_program({AGENT_SIM, "stop", "--state", dir.string()}); }
};

void git(const fs::path& checkout, std::vector<std::string> args) {
  std::vector<std::string> argv = {"git", "-C", checkout.string(), "-c", "user.name=operator", "-c",
                                   "user.email=operator@example.invalid"};
  argv.insert(argv.end(), args.begin(), args.end());
  auto r = run_program(argv);
  REQUIRE_MESSAGE(r.status == 0, "git failed: " << r.err);
}

}  // namespace

TEST_CASE("soak: a randomized day of cycles, deploys, broken commits and outages never kills a cycle and never "
          "loses a deploy") {
  const unsigned long long seed = env_number("SOAK_SEED", 20240611);
  const auto run_time = std::chrono::seconds(env_number("SOAK_SECONDS", 20));
  MESSAGE("soak seed " << seed << " for " << run_time.count() << " s (rerun with SOAK_SEED=" << seed << ")");
  std::mt19937_64 rng(seed);

  TempDir tmp;
  const fs::path checkout = tmp / "checkout", markers = tmp / "markers", state = tmp / "state",
                 svc = tmp / "service", config = tmp / "sentinel.toml";
  const fs::path kept = tmp.path().parent_path() / tmp.path().filename();  // + ".events.log" etc.
  for (const auto& dir : {checkout, markers, svc}) fs::create_directories(dir);
  git(checkout, {"init", "-q", "-b", "main"});
  write_file(checkout / "service.txt", "the service, as the operator left it\n");
  git(checkout, {"add", "-A"});
  git(checkout, {"commit", "-q", "-m", "initial"});

  const int port = free_port();
  const std::string p = std::to_string(port), base = "http://127.0.0.1:" + p;
  const std::vector<std::string> service_args = {
      "--port", p, "--state", svc.string(), "--checkout", checkout.string(), "--marker-dir", markers.string(),
      "--sentinel", SENTINEL_BIN, "--config", config.string(), "--seed", std::to_string(seed)};
  std::string restart_argv = "\"" + std::string(AGENT_SIM) + "\", \"restart\"";
  for (const auto& arg : service_args) restart_argv += ", \"" + arg + "\"";
  write_file(config, "[sentinel]\nstate_dir = \"" + state.string() + "\"\nlog_level = \"debug\"\n\n"
                     "[[target]]\nname = \"prod\"\nmarker_dir = \"" + markers.string() + "\"\ncheckout = \"" +
                     checkout.string() + "\"\nrestart = { command = [" + restart_argv + "], timeout = \"10s\" }\n\n"
                     "[target.health]\nurl = \"" + base + "/health\"\ntimeout = \"500ms\"\ngrace = \"0s\"\n"
                     "interval = \"20ms\"\nsuccesses = 2\ndeadline = \"1s\"\n\n"
                     "[target.idle]\ninterval = \"20ms\"\nquiet = \"60ms\"\ntimeout = \"1s\"\n\n"
                     "[target.idle.http]\nurl = \"" + base + "/status/data\"\npointer = \"/data/activeSessions\"\n"
                     "match = { field = \"agent\", equals = \"leopard\" }\n\n"
                     "[target.cycle]\ncommand = [\"" + std::string(AGENT_SIM) + "\", \"post\", \"" + base +
                     "/cycle\"]\nevery = \"250ms\"\njitter = \"100ms\"\ntimeout = \"2s\"\nafter_recovery = true\n\n"
                     "[target.monitor]\ninterval = \"50ms\"\nfailures = 2\nmax_recoveries = 1000\nwindow = \"1h\"\n");
  auto checked = run_program({SENTINEL_BIN, "check-config", config.string()});
  REQUIRE_MESSAGE(checked.status == 0, "the daemon refuses the soak's config: " << checked.err);

  ServiceGuard guard{svc};
  std::vector<std::string> restart = {AGENT_SIM, "restart"};
  restart.insert(restart.end(), service_args.begin(), service_args.end());
  auto started = run_program(restart, checkout);
  REQUIRE_MESSAGE(started.status == 0, "cannot start agent-sim: " << started.err);

  DaemonProcess daemon(config, fs::path(kept.string() + ".daemon.log"));
  REQUIRE(daemon.wait_for_line("prod: watching") >= 0);

  // The run: the sentinel schedules cycles and deploys; this test only knocks health out, five
  // times (one per 4 s in longer runs), each outage 250-400 ms long, at a random moment of each
  // slot of the run (not in the last second) once production is healthy (a broken deploy is an
  // outage already). Every other one waits until no deploy is pending either: the monitor's case.
  const auto begin = Clock::now();
  std::vector<Clock::duration> outage_at;
  const long long outage_count = std::max<long long>(5, run_time.count() / 4);
  const long long slot = (std::chrono::milliseconds(run_time).count() - 1000) / outage_count;
  for (long long i = 0; i < outage_count; ++i)
    outage_at.push_back(
        std::chrono::milliseconds(i * slot + std::uniform_int_distribution<long long>(0, slot / 2)(rng)));
  int outages_posted = 0, outage_posts_failed = 0;
  auto pump_until = [&](Clock::time_point until) {  // reads the daemon's log so its pipe never fills
    while (Clock::now() < until) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - Clock::now());
      daemon.wait_for_line("\x01 never printed", std::max(left, 1ms), static_cast<int>(daemon.lines().size()));
      REQUIRE_MESSAGE(!process_gone(daemon.pid()), "the daemon exited during the soak");
    }
  };
  for (std::size_t i = 0; i < outage_at.size(); ++i) {
    pump_until(begin + outage_at[i]);
    const bool between_deploys = i % 2 == 0;
    auto ready = [&] {
      const bool pending = fs::exists(markers / ".deploy-ready") || fs::exists(markers / ".deploy-in-progress");
      return http_get_status(port, "/health") == 200 && !(between_deploys && pending);
    };
    for (auto limit = Clock::now() + 2s; !ready() && Clock::now() < limit;) pump_until(Clock::now() + 10ms);
    int ms = std::uniform_int_distribution<int>(250, 400)(rng);
    auto posted = run_program({AGENT_SIM, "post", base + "/admin/outage?ms=" + std::to_string(ms)});
    if (posted.status == 0) {
      ++outages_posted;
    } else {
      ++outage_posts_failed;  // production was restarting
    }
  }
  pump_until(begin + run_time);

  // Drain: from now on cycles commit nothing. Wait until the cycles that could still commit have
  // ended, no deploy is pending and production is healthy, then stop the daemon.
  write_file(svc / "drain", "");
  bool quiet = false;
  for (auto deadline = Clock::now() + 30s; !quiet && Clock::now() < deadline;) {
    std::set<std::string> open;  // cycles started before the drain that have not ended yet
    for (const auto& e : read_events(svc / "events.log")) {
      if (e.word == "start" || e.word == "stop") open.clear();  // cycles die with their process
      if (e.word == "cycle-start" && e.fact("drain") == "0") open.insert(e.fact("id"));
      if (e.word == "cycle-end" || e.word == "cycle-abort") open.erase(e.fact("id"));
    }
    quiet = open.empty() && !fs::exists(markers / ".deploy-ready") && !fs::exists(markers / ".deploy-in-progress") &&
            http_get_status(port, "/health") == 200;
    if (!quiet) pump_until(Clock::now() + 50ms);
  }
  CHECK_MESSAGE(quiet, "a deploy was still pending, a cycle still running or production unhealthy 30 s after the "
                       "drain began");
  CHECK(daemon.stop() == 0);
  const long long daemon_stopped = monotonic_ns();
  run_program({AGENT_SIM, "stop", "--state", svc.string()});

  fs::copy_file(svc / "events.log", kept.string() + ".events.log", fs::copy_options::overwrite_existing);
  const fs::path history_file = state / "targets" / "prod" / "history.jsonl";
  if (fs::exists(history_file))
    fs::copy_file(history_file, kept.string() + ".history.jsonl", fs::copy_options::overwrite_existing);

  // ---- what happened --------------------------------------------------------------------
  const auto events = read_events(svc / "events.log");
  const auto history = read_history(history_file);
  int cycles = 0, completed = 0, aborted = 0, refused = 0, unavailable = 0, pending_starts = 0, killed_cycles = 0,
      lost_cycles = 0, restarts = 0, sigkills = 0, outages = 0, outage_restarts = 0, broken_starts = 0;
  std::vector<std::string> problems;
  std::vector<std::pair<std::string, bool>> staged;  // commit, broken; in staging order
  std::set<std::string> open;
  for (const auto& e : events) {
    if (e.word == "start") {
      for (const auto& id : open) {  // its process died without a word: killed
        ++lost_cycles;
        problems.push_back("cycle " + id + " was lost: production died (SIGKILL?) while it ran");
      }
      open.clear();
      broken_starts += e.fact("broken") == "1";
    } else if (e.word == "cycle-start") {
      ++cycles;
      if (e.fact("pending_deploy") == "1") {
        ++pending_starts;
        problems.push_back("cycle " + e.fact("id") + " started while a deploy was staged or in progress");
      }
      open.insert(e.fact("id"));
    } else if (e.word == "cycle-end") {
      ++completed;
      open.erase(e.fact("id"));
    } else if (e.word == "cycle-abort") {
      ++aborted;
      open.erase(e.fact("id"));
    } else if (e.word == "cycle-refused") {
      ++refused;
      problems.push_back("a cycle was asked for while " + e.fact("running") + " ran");
    } else if (e.word == "cycle-unavailable") {
      ++unavailable;
    } else if (e.word == "stop" && e.ns < daemon_stopped) {
      if (e.fact("active_cycle") != "none") {
        ++killed_cycles;
        problems.push_back("production was stopped during cycle " + e.fact("active_cycle"));
      }
      open.clear();
      outage_restarts += e.fact("outage") == "1";
    } else if (e.word == "restart") {
      ++restarts;
      sigkills += e.fact("killed") == "1";
    } else if (e.word == "outage-start") {
      ++outages;
    } else if (e.word == "staged") {
      staged.emplace_back(e.fact("commit"), e.fact("broken") == "1");
      if (e.fact("replaced") != "none")
        problems.push_back("staging " + e.fact("commit") + " replaced the staged deploy of " + e.fact("replaced"));
    } else if (e.word == "commit-failed" || e.word == "stage-failed") {
      problems.push_back(e.word + " in " + e.fact("id") + ": " + e.fact("message"));
    }
  }

  std::map<std::string, std::vector<std::string>> outcomes_of;  // commit -> results, in order
  std::vector<const Outcome*> unattributed;                      // rejected, naming no commit
  std::map<std::string, int> results;
  int recovered = 0, recovery_reverts = 0;
  for (const auto& o : history) {
    if (o.result.starts_with("cycle")) continue;  // cycles have a history of their own kind
    // The monitor's own outcomes are about production, not about a staged deploy.
    if (o.result == "recovered") {
      ++recovered;
      continue;
    }
    if (o.result == "reverted" && o.reason.starts_with(kDownReason)) {
      ++recovery_reverts;
      continue;
    }
    ++results[o.result];
    std::string commit = o.result == "rejected" ? rejected_commit(o) : o.commit;
    if (commit.empty()) {
      unattributed.push_back(&o);
    } else {
      outcomes_of[commit].push_back(o.result);
    }
  }
  int broken_staged = 0, broken_reverted = 0, good_reverted = 0;
  std::set<std::string> staged_set;
  for (const auto& [commit, broken] : staged) {
    staged_set.insert(commit);
    broken_staged += broken;
    auto& outcomes = outcomes_of[commit];
    if (outcomes.empty() && !unattributed.empty()) {  // the oldest refusal that names no commit
      outcomes.push_back("rejected");
      unattributed.erase(unattributed.begin());
    }
    std::string all;
    for (const auto& r : outcomes) all += " " + r;
    if (outcomes.size() != 1) {
      problems.push_back("staged commit " + commit + (broken ? " (broken)" : "") + " has " +
                         std::to_string(outcomes.size()) + " outcomes:" + all);
      continue;
    }
    if (broken && outcomes[0] == "deployed") problems.push_back("broken commit " + commit + " was deployed");
    if (outcomes[0] == "reverted") (broken ? broken_reverted : good_reverted) += 1;
  }
  for (const auto& [commit, outcomes] : outcomes_of)
    if (!staged_set.contains(commit) && !outcomes.empty())
      problems.push_back("an outcome (" + outcomes[0] + ") for " + commit + ", which the agent never staged");
  for (const Outcome* o : unattributed)
    problems.push_back("a refusal matches no staged commit: " + o->reason);
  for (const auto& o : history)
    if (o.result == "failed") problems.push_back("failed: " + o.commit + ": " + o.reason);
  const int internal_errors = daemon.count_lines("internal error");

  MESSAGE("soak seed " << seed << ": cycles started " << cycles << ", completed " << completed
                       << ", aborted by outages " << aborted << ", refused " << refused
                       << ", asked during an outage " << unavailable << "; deploys staged " << staged.size()
                       << " (broken " << broken_staged << "), deployed " << results["deployed"] << ", reverted "
                       << results["reverted"] << " (broken " << broken_reverted << ", good " << good_reverted
                       << "), rejected " << results["rejected"] << ", failed " << results["failed"]
                       << "; recovered by the monitor " << recovered << " (by a revert " << recovery_reverts
                       << "); restarts by the sentinel " << restarts - 1 << " (SIGKILLed " << sigkills
                       << ", started broken " << broken_starts << "); outages injected " << outages << " (posted "
                       << outages_posted << ", post failed " << outage_posts_failed
                       << "), production restarted during an outage " << outage_restarts << "; daemon log lines "
                       << daemon.lines().size() << ", kept in " << kept.string()
                       << ".{daemon,events}.log and .history.jsonl");
  std::string listed;
  for (const auto& problem : problems) listed += "\n  " + problem;
  CHECK_MESSAGE(problems.empty(), problems.size() << " problems:" << listed);
  CHECK(killed_cycles == 0);
  CHECK(lost_cycles == 0);
  CHECK(pending_starts == 0);
  CHECK(refused == 0);
  CHECK(results["failed"] == 0);
  CHECK(internal_errors == 0);
  // Not vacuous: enough happened for the checks above to mean something.
  CHECK(cycles >= 10);
  CHECK(staged.size() >= 5);
  CHECK(results["deployed"] >= 3);
  CHECK(broken_reverted >= 1);
  CHECK(outages >= 3);
  CHECK(outage_restarts >= 1);
  CHECK(recovered >= 1);
}
