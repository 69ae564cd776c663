#include "cli.h"

#include "config.h"
#include "daemon.h"
#include "fleet.h"
#include "git.h"
#include "history.h"
#include "lease.h"
#include "log.h"
#include "marker.h"
#include "state_store.h"

#include <CLI/CLI.hpp>
#include <boost/json.hpp>

#include <pwd.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <iostream>

namespace sentinel {
namespace fs = std::filesystem;
namespace json = boost::json;

namespace {

constexpr int kExitUsage = 64;
constexpr int kExitUnavailable = 69;  // EX_UNAVAILABLE: `revert` needs the daemon running
constexpr int kExitTempFail = 75;  // EX_TEMPFAIL: `hold` refused for now, try again
constexpr const char* kDefaultConfig = "/etc/deploy-sentinel/config.toml";
/// Bumped when a field of `status --json` changes meaning or goes away (adding fields does not).
constexpr int kStatusSchemaVersion = 1;

/// "leopard@host" for the marker's staged_by.
std::string who_stages() {
  std::string user;
  if (const passwd* pw = ::getpwuid(::getuid())) user = pw->pw_name;
  if (user.empty()) user = "uid " + std::to_string(::getuid());
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  return user + "@" + host;
}

/// The target a command is about: the one named, or the only one.
const TargetConfig& pick_target(const Config& config, const std::string& name) {
  if (!name.empty()) {
    if (const TargetConfig* target = config.find_target(name)) return *target;
    throw StartupError("no target named \"" + name + "\" in " + config.source.string());
  }
  if (config.targets.size() == 1) return config.targets.front();
  std::string names;
  for (const auto& target : config.targets) names += (names.empty() ? "" : ", ") + target.name;
  throw StartupError("the config has several targets (" + names + "): choose one with --target");
}

int check_config(const std::string& path) {
  Config config = load_config(path);
  std::cout << path << ": ok, " << config.targets.size() << " target" << (config.targets.size() == 1 ? "" : "s");
  if (config.fleet) {
    std::cout << "; host " << config.fleet->host << " of fleet group " << config.fleet->group << " (at most "
              << config.fleet->max_restarting << " restarting at once)";
  }
  std::cout << "\n";
  return 0;
}

int stage(const std::string& config_path, const std::string& target_name, std::string commit,
          const std::string& message) {
  Config config = load_config(config_path);
  const TargetConfig& target = pick_target(config, target_name);
  HeadCommit head = git_head_now(target.checkout);
  if (!head.error.empty()) throw StartupError(head.error);
  std::transform(commit.begin(), commit.end(), commit.begin(), [](unsigned char c) { return std::tolower(c); });
  if (!commit.empty() && !looks_like_commit(commit)) {
    throw StartupError("--commit " + commit + ": expected a SHA of 7 to 40 hex digits");
  }
  if (!commit.empty() && !head.commit.starts_with(commit)) {
    throw StartupError("commit " + commit + " is not the checkout's HEAD (" + head.commit +
                       "): the sentinel deploys what is checked out, so commit or check it out first");
  }
  Marker marker{head.commit, who_stages(), format_utc(std::chrono::system_clock::now()), message, {}};
  const fs::path file = target.marker_dir / marker_file::ready;
  boost::system::error_code ec;
  if (std::string old = read_small_file(file, ec); !ec) {
    std::cerr << "deploy-sentinel: replacing a staged deploy that had not started yet: " << old;
  }
  // Durable: the agent takes "staged" as a promise, so it must survive a power cut.
  if (auto err = write_file_atomic(file, marker_json(marker), true)) {
    throw StartupError("cannot write " + file.string() + ": " + err.message());
  }
  std::cout << "staged " << head.commit << " for " << target.name << " (" << file.string() << ")\n";
  return 0;
}

/// One marker-directory file as `status` shows it: null when absent, else {"commit", ...} from its JSON
/// ("commit" is "" when the file names none, as an empty marker or an unreadable one).
json::value pending_file_json(const fs::path& file, std::initializer_list<std::string_view> keys) {
  if (!marker_present(file.parent_path(), file.filename().string())) return nullptr;
  boost::system::error_code ec;
  const std::string text = read_small_file(file, ec);
  json::object out{{"commit", ""}};
  for (std::string_view key : keys) out[key] = "";
  if (!ec) {
    json::value doc = json::parse(text, ec);
    if (!ec && doc.is_object()) {
      out["commit"] = string_field(doc.as_object(), "commit");
      for (std::string_view key : keys) out[key] = string_field(doc.as_object(), key);
    }
  }
  if (ec) out["problem"] = "cannot be read: " + ec.message();
  return out;
}

/// What waits in the marker directory: a staged marker, a claimed deploy, an operator's revert.
json::object pending_json(const TargetConfig& target) {
  json::value revert = pending_file_json(target.marker_dir / marker_file::revert_request, {"to", "requested_by", "at"});
  if (revert.is_object()) revert.as_object()["commit"] = revert.as_object()["to"];  // where it goes
  return {{"ready", pending_file_json(target.marker_dir / marker_file::ready, {"staged_by", "staged_at", "message"})},
          {"in_progress", pending_file_json(target.marker_dir / marker_file::in_progress, {"phase", "started_at"})},
          {"revert_request", std::move(revert)}};
}

/// What `status` knows of one target, from state_dir and the marker directory.
json::object target_status(const StateStore& store, const TargetConfig& target, bool running) {
  auto status = store.read_status(target.name).value_or(TargetStatus{});
  auto here = [&](std::string_view name) { return marker_present(target.marker_dir, name); };
  json::object obj;
  obj["name"] = target.name;
  obj["phase"] = running ? (status.phase.empty() ? "starting" : status.phase) : "not-running";
  obj["since"] = status.since;
  obj["commit"] = status.commit;
  obj["detail"] = status.detail;
  obj["last_known_good"] = store.known_good(target.name);
  obj["confirm"] = status.confirm;
  obj["staged"] = here(marker_file::ready);
  obj["in_progress"] = here(marker_file::in_progress);
  obj["quarantined"] = here(marker_file::failed);
  if (auto pause = store.pause(target.name, std::chrono::system_clock::now())) {
    obj["paused"] = {{"by", pause->by}, {"at", pause->at}, {"until", pause->until}, {"reason", pause->reason},
                     {"describe", pause->describe()}};
  } else {
    obj["paused"] = nullptr;
  }
  obj["running"] = running;
  const bool waits = status.phase == "waiting-idle" || status.phase == "waiting-fleet";
  obj["waiting"] = running && waits ? json::value(status.detail) : json::value(nullptr);
  obj["next_cycle"] = running && !status.next_cycle.empty() ? json::value(status.next_cycle) : json::value(nullptr);
  obj["pending"] = pending_json(target);
  if (status.last_outcome) {
    const Outcome& o = *status.last_outcome;
    obj["last_outcome"] = {{"result", o.result}, {"commit", o.commit}, {"reason", o.reason}, {"at", o.at},
                           {"process", o.process}};
  } else {
    obj["last_outcome"] = nullptr;
  }
  return obj;
}

int status(const std::string& config_path, bool as_json) {
  Config config = load_config(config_path);
  StateStore store(config.state_dir);
  auto pid = InstanceLock::holder(config.state_dir);
  json::array targets;
  for (const auto& target : config.targets) targets.push_back(target_status(store, target, pid.has_value()));
  if (as_json) {
    json::object doc{{"schema_version", kStatusSchemaVersion}, {"running", pid.has_value()}, {"targets", std::move(targets)}};
    doc["pid"] = pid ? json::value(*pid) : json::value(nullptr);
    std::cout << json::serialize(doc) << "\n";
    return 0;
  }
  std::cout << "deploy-sentinel: " << (pid ? "running as pid " + std::to_string(*pid) : std::string("not running"))
            << " (state in " << config.state_dir.string() << ")\n";
  for (const auto& value : targets) {
    const auto& t = value.as_object();
    auto str = [&](std::string_view key) { return std::string(t.at(key).as_string()); };
    std::cout << "\n" << str("name") << ": " << str("phase");
    if (!str("since").empty() && pid) std::cout << " since " << str("since");
    if (!str("commit").empty()) std::cout << " (" << str("commit").substr(0, 12) << ")";
    if (!str("detail").empty() && str("detail") != str("phase")) std::cout << ": " << str("detail");
    std::cout << "\n  last known-good: " << (str("last_known_good").empty() ? "none yet" : str("last_known_good"))
              << "\n";
    if (t.at("last_outcome").is_object()) {
      const auto& o = t.at("last_outcome").as_object();
      std::cout << "  last outcome:    " << json::value_to<std::string>(o.at("result")) << " "
                << json::value_to<std::string>(o.at("commit")).substr(0, 12) << " at "
                << json::value_to<std::string>(o.at("at"));
      if (auto reason = json::value_to<std::string>(o.at("reason")); !reason.empty()) std::cout << ": " << reason;
      std::cout << "\n";
      if (auto process = json::value_to<std::string>(o.at("process")); !process.empty()) {
        std::cout << "  new process:     " << process << "\n";
      }
    }
    if (!str("confirm").empty()) std::cout << "  confirm: " << str("confirm") << "\n";
    if (t.at("next_cycle").is_string()) std::cout << "  next cycle:      " << str("next_cycle") << "\n";
    const auto& pending = t.at("pending").as_object();
    auto pending_commit = [&](std::string_view key) {
      const std::string commit(pending.at(key).as_object().at("commit").as_string());
      return commit.empty() ? std::string("HEAD") : commit.substr(0, 12);
    };
    if (pending.at("in_progress").is_object()) {
      std::cout << "  in progress:     " << pending_commit("in_progress") << " ("
                << marker_file::in_progress << ")\n";
    }
    if (pending.at("revert_request").is_object()) {
      std::cout << "  revert requested to " << pending_commit("revert_request") << " ("
                << marker_file::revert_request << ")\n";
    }
    if (t.at("staged").as_bool()) {
      std::cout << "  a deploy is staged: " << pending_commit("ready") << " (" << marker_file::ready << ")\n";
    }
    if (t.at("paused").is_object()) {
      std::cout << "  PAUSED: " << json::value_to<std::string>(t.at("paused").at("describe"))
                << " (deploy-sentinel resume ends it)\n";
    }
    if (t.at("quarantined").as_bool()) {
      std::cout << "  QUARANTINED: read and remove " << marker_file::failed << " in the marker directory\n";
    }
  }
  return 0;
}

/// `history`: the last `count` outcomes of one target or of all, oldest first, merged by time.
int history(const std::string& config_path, const std::string& target_name, bool as_json, int count) {
  Config config = load_config(config_path);
  StateStore store(config.state_dir);
  std::vector<const TargetConfig*> targets;
  if (!target_name.empty()) {
    targets.push_back(&pick_target(config, target_name));
  } else {
    for (const auto& target : config.targets) targets.push_back(&target);
  }
  struct Entry {
    std::string target;
    Outcome outcome;
  };
  std::vector<Entry> entries;
  json::array skipped;
  for (const TargetConfig* target : targets) {
    HistoryRead read = read_history(store.history_file(target->name));
    for (auto& outcome : read.entries) entries.push_back({target->name, std::move(outcome)});
    for (const auto& line : read.skipped) {
      skipped.emplace_back(line);
      if (!as_json) std::cerr << "deploy-sentinel: skipped " << line << "\n";
    }
    for (const auto& error : read.errors) {
      throw StartupError("cannot read the history " + error + " (run as a user who can read state_dir " +
                         config.state_dir.string() + ")");
    }
  }
  // Each file is in time order already; a stable sort keeps that order for equal seconds.
  std::stable_sort(entries.begin(), entries.end(),
                   [](const Entry& a, const Entry& b) { return a.outcome.at < b.outcome.at; });
  if (count >= 0 && entries.size() > static_cast<std::size_t>(count)) {
    entries.erase(entries.begin(), entries.end() - count);
  }
  if (as_json) {
    json::array list;
    for (const auto& [target, o] : entries) {
      list.push_back(json::object{{"target", target}, {"result", o.result}, {"commit", o.commit},
                                  {"reason", o.reason}, {"at", o.at}, {"process", o.process}});
    }
    json::object doc{{"schema_version", kStatusSchemaVersion}, {"entries", std::move(list)},
                     {"skipped", std::move(skipped)}};
    std::cout << json::serialize(doc) << "\n";
    return 0;
  }
  if (entries.empty()) std::cout << "no history yet (" << store.dir().string() << ")\n";
  for (const auto& [target, o] : entries) {
    std::cout << o.at << "  " << target << "  " << o.result;
    if (!o.commit.empty()) std::cout << " " << o.commit.substr(0, 12);
    if (!o.reason.empty()) std::cout << ": " << o.reason;
    if (!o.process.empty()) std::cout << " [" << o.process << "]";
    std::cout << "\n";
  }
  return 0;
}

/// `revert`: asks the running daemon to revert `target` (to its last known-good commit, or to `to`)
/// by writing `.deploy-revert-request` into the marker directory; returns once it is written.
int revert(const std::string& config_path, const std::string& target_name, const std::string& to_text, bool now,
           const std::string& reason) {
  Config config = load_config(config_path);
  const TargetConfig& target = pick_target(config, target_name);
  StateStore store(config.state_dir);
  if (!InstanceLock::holder(config.state_dir)) {
    throw StartupError("the daemon is not running (no lock held in " + config.state_dir.string() +
                           "): the revert is carried out by the daemon; start it (systemctl start deploy-sentinel) "
                           "and run this again",
                       kExitUnavailable);
  }
  if (marker_present(target.marker_dir, marker_file::failed)) {
    throw StartupError(target.name + " is quarantined: read " + (target.marker_dir / marker_file::failed).string() +
                           ", remove it, then ask for the revert again",
                       kExitTempFail);
  }
  std::string to = to_text;
  if (to.empty()) {
    KnownGood known = store.read_known_good(target.name);
    if (known.commit.empty()) {
      throw StartupError("no known-good commit is recorded for " + target.name +
                         (known.problem.empty() ? "" : " (" + known.problem + ")") + ": name one with --to SHA");
    }
    to = known.commit;
  }
  HeadCommit resolved = git_resolve_commit_now(target.checkout, to);
  if (!resolved.error.empty()) {
    throw StartupError("--to " + to + ": " + resolved.error +
                           " (pick one from `git -C " + target.checkout.string() + " log`, or fetch it first)",
                       kExitUsage);
  }
  json::object request{{"to", resolved.commit}, {"now", now}, {"requested_by", who_stages()},
                       {"at", format_utc(std::chrono::system_clock::now())}, {"reason", reason}};
  const fs::path file = target.marker_dir / marker_file::revert_request;
  if (marker_present(target.marker_dir, marker_file::revert_request)) {
    std::cerr << "deploy-sentinel: replacing a revert request the daemon had not taken yet\n";
  }
  if (auto err = write_file_atomic(file, json::serialize(request) + "\n", true)) {
    throw StartupError("cannot write " + file.string() + ": " + err.message() +
                       " (run as a user who can write the marker directory)");
  }
  std::cout << "asked the daemon to revert " << target.name << " to " << resolved.commit
            << (now ? " now" : " once the agent is idle") << " (" << file.string()
            << "); follow it with: deploy-sentinel status, deploy-sentinel history -t " << target.name << "\n";
  return 0;
}

/// The lease file of `target`, or a StartupError (exit 78) naming the config file and the key to add.
fs::path lease_file_of(const Config& config, const TargetConfig& target) {
  if (target.idle && !target.idle->lease_file.empty()) return target.idle->lease_file;
  throw StartupError(config.source.string() + ": target \"" + target.name +
                         "\" has no lease file: add lease_file = \"/run/deploy-sentinel/" + target.name +
                         ".lease\" (a directory the agent can write) to its [target.idle] table",
                     ConfigError::kExitCode);
}

/// Writes the lease; the caller holds the LeaseLock and has checked that no restart is under way.
int grant(const TargetConfig& target, const fs::path& lease_file, Lease lease, Duration length) {
  const auto now = std::chrono::system_clock::now();
  lease.held_at = format_utc(now);
  lease.expires_at = std::chrono::ceil<std::chrono::seconds>(now + length);  // at least `length`
  const LeaseView old = read_lease(lease_file, now);
  const bool same_holder = old.lease.pid && lease.pid && *old.lease.pid == *lease.pid &&
                           old.lease.pid_start == lease.pid_start;
  if (old.state == LeaseState::held && !same_holder) {
    std::cerr << "deploy-sentinel: replacing the " << old.describe
              << (old.lease.held_by.empty() ? "" : " (held by " + old.lease.held_by + ")") << "\n";
  }
  if (std::error_code ec = write_lease(lease_file, lease)) {
    throw StartupError("cannot write the lease " + lease_file.string() + ": " + ec.message() +
                       " (its directory must be writable by the user running `hold`)");
  }
  std::cout << "held " << target.name << " until " << format_utc(lease.expires_at)
            << (lease.reason.empty() ? "" : ": " + lease.reason) << " (" << lease_file.string() << ")\n";
  return 0;
}

int hold(const std::string& config_path, const std::string& target_name, const std::string& for_text,
         const std::string& reason, std::optional<pid_t> pid, bool wait) {
  Config config = load_config(config_path);
  const TargetConfig& target = pick_target(config, target_name);
  const fs::path lease_file = lease_file_of(config, target);
  const std::optional<Duration> length = parse_duration(for_text);
  if (!length || *length <= Duration::zero()) {
    throw StartupError("--for " + for_text + ": expected a duration like \"40m\" or \"2h\"", kExitUsage);
  }
  if (*length > std::chrono::days(366)) {  // and the expiry must fit the clock: no lease for centuries
    throw StartupError("--for " + for_text + ": at most a year; release the lease when the work is done", kExitUsage);
  }
  Lease lease{reason, {}, pid, std::nullopt, who_stages(), {}};
  if (pid) {
    lease.pid_start = process_start_time(*pid);
    if (!lease.pid_start) {
      throw StartupError("--pid " + std::to_string(*pid) +
                             ": no such process; give the pid whose end releases the lease (in a shell script, $$)",
                         kExitUsage);
    }
  }
  StateStore store(config.state_dir);
  // Watch before the first look, so a change between that look and the wait is not missed.
  std::optional<StatusWatch> watch;
  if (wait) {
    watch.emplace(store, target.name);
    if (!watch->warning().empty()) std::cerr << "deploy-sentinel: " << watch->warning() << "\n";
  }
  std::string told;
  for (;;) {
    {
      // The daemon records "restarting" under this same lock: while we hold it, the phase we
      // read stays true until the lease is on disk.
      LeaseLock lock = LeaseLock::acquire(lease_file);
      const std::optional<std::string> refusal = hold_refusal(store, target.name);
      if (!refusal) return grant(target, lease_file, lease, *length);
      if (!wait) {
        std::cerr << "deploy-sentinel: " << *refusal << ": try again when it is done, or use --wait\n";
        return kExitTempFail;
      }
      if (*refusal != told) std::cerr << "deploy-sentinel: " << *refusal << ": waiting until it is done\n";
      told = *refusal;
    }
    watch->wait(std::chrono::seconds(1));  // the timeout notices a daemon that died mid-restart
  }
}

int release(const std::string& config_path, const std::string& target_name) {
  Config config = load_config(config_path);
  const TargetConfig& target = pick_target(config, target_name);
  const fs::path lease_file = lease_file_of(config, target);
  // No LeaseLock: removing a lease can only let the daemon restart sooner, never at a wrong moment.
  const LeaseView old = read_lease(lease_file, std::chrono::system_clock::now());
  if (::unlink(lease_file.c_str()) != 0) {
    if (errno == ENOENT) {
      std::cout << "no lease on " << target.name << " to release (" << lease_file.string() << " does not exist)\n";
      return 0;
    }
    throw StartupError("cannot remove the lease " + lease_file.string() + ": " + std::strerror(errno) +
                       " (remove it by hand; the sentinel treats it as held until then)");
  }
  std::cout << "released " << target.name << ": " << old.describe << "\n";
  return 0;
}

int pause(const std::string& config_path, const std::string& target_name, const std::string& for_text,
          const std::string& reason) {
  Config config = load_config(config_path);
  const TargetConfig& target = pick_target(config, target_name);
  Pause pause{reason, who_stages(), format_utc(std::chrono::system_clock::now()), {}};
  if (!for_text.empty()) {
    const std::optional<Duration> length = parse_duration(for_text);
    if (!length || *length <= Duration::zero()) {
      throw StartupError("--for " + for_text + R"(: expected a duration like "2h", "3d" or "2w")", kExitUsage);
    }
    pause.until = format_utc(std::chrono::ceil<std::chrono::seconds>(std::chrono::system_clock::now() + *length));
  }
  StateStore store(config.state_dir);
  store.prepare({target.name});  // a pause may come before the daemon's first start
  {
    // The daemon looks at the pause under this lock right before it records "restarting".
    LeaseLock lock = LeaseLock::acquire(store.pause_file(target.name));
    if (const std::optional<std::string> refusal = hold_refusal(store, target.name)) {
      std::cerr << "deploy-sentinel: cannot pause now: " << *refusal
                << ": try again when it is done (`deploy-sentinel status` shows it)\n";
      return kExitTempFail;
    }
    if (auto ec = store.write_pause(target.name, pause)) {
      throw StartupError("cannot write " + store.pause_file(target.name).string() + ": " + ec.message() +
                         " (run pause as the user the sentinel runs as, or one who may write its state_dir)");
    }
  }
  std::cout << target.name << ": " << pause.describe()
            << "\nstaged deploys and cycles wait (claimed, never dropped); a down production is still recovered. "
               "End it with: deploy-sentinel resume --config " << config_path << " --target " << target.name << "\n";
  return 0;
}

int resume(const std::string& config_path, const std::string& target_name) {
  Config config = load_config(config_path);
  const TargetConfig& target = pick_target(config, target_name);
  StateStore store(config.state_dir);
  const fs::path file = store.pause_file(target.name);
  const std::optional<Pause> old = store.pause(target.name, std::chrono::system_clock::now());
  // No lock: ending a pause can only let the daemon go sooner, never at a wrong moment.
  if (::unlink(file.c_str()) != 0) {
    if (errno == ENOENT) {
      std::cout << target.name << " was not paused\n";
      return 0;
    }
    throw StartupError("cannot remove " + file.string() + ": " + std::strerror(errno) +
                       " (run resume as the user the sentinel runs as)");
  }
  std::cout << target.name << ": resumed" << (old ? " (was " + old->describe() + ")" : " (the pause had ended)")
            << "\n";
  return 0;
}

}  // namespace

int run_cli(int argc, char** argv) {
  CLI::App app{
      "deploy-sentinel: restarts a production service when its agent stages a deploy, never during an agent's\n"
      "cycle; verifies health and reverts to the last known-good commit when the new one is unhealthy."};
  app.set_version_flag("--version", std::string("deploy-sentinel ") + SENTINEL_VERSION);
  app.require_subcommand(1);
  app.footer(
      "Examples:\n"
      "  deploy-sentinel check-config /etc/deploy-sentinel/config.toml\n"
      "  deploy-sentinel run --config /etc/deploy-sentinel/config.toml\n"
      "  deploy-sentinel stage --config /etc/deploy-sentinel/config.toml --message \"faster search\"\n"
      "  deploy-sentinel status --config /etc/deploy-sentinel/config.toml --json\n"
      "  deploy-sentinel history --config /etc/deploy-sentinel/config.toml --target prod -n 10\n"
      "  deploy-sentinel revert --config /etc/deploy-sentinel/config.toml --target prod --reason \"bad answers\"\n"
      "  deploy-sentinel hold --config /etc/deploy-sentinel/config.toml --for 40m --reason \"cycle 812\" --pid $$\n"
      "  deploy-sentinel release --config /etc/deploy-sentinel/config.toml\n"
      "  deploy-sentinel pause --config /etc/deploy-sentinel/config.toml --for 2w --reason \"database migration\"\n"
      "  deploy-sentinel resume --config /etc/deploy-sentinel/config.toml\n"
      "Files the agent reads in its marker directory: .deploy-reverted (why a deploy was undone),\n"
      ".deploy-rejected (why a marker was refused), .deploy-failed (revert failed; remove to resume).");

  std::string config_path = kDefaultConfig;
  auto* run = app.add_subcommand("run", "Run the daemon in the foreground (as the systemd service does).");
  run->add_option("-c,--config", config_path, "Config file")->capture_default_str();

  std::string check_path;
  auto* check = app.add_subcommand(
      "check-config", "Validate a config file: prints FILE:LINE:COL: key: problem and exits 78 when invalid.");
  check->add_option("file", check_path, "Config file to check")->required();

  std::string target_name, commit, message;
  auto* stage_cmd = app.add_subcommand(
      "stage", "Stage a deploy of the checkout's HEAD: writes .deploy-ready atomically for the daemon to pick up.");
  stage_cmd->add_option("-c,--config", config_path, "Config file")->capture_default_str();
  stage_cmd->add_option("-t,--target", target_name, "Target to deploy (needed when the config has several)");
  stage_cmd->add_option("--commit", commit,
                        "Commit you expect to deploy (full or abbreviated SHA); refused unless it is HEAD");
  stage_cmd->add_option("-m,--message", message, "Why: shown in logs, status and history");

  bool as_json = false;
  auto* status_cmd = app.add_subcommand(
      "status", "Show what each target is doing and why, its last known-good commit and last outcome. Works "
                "whether or not the daemon runs.");
  status_cmd->add_option("-c,--config", config_path, "Config file")->capture_default_str();
  status_cmd->add_flag("--json", as_json,
                       "One JSON object, schema in the README (\"status --json\"): {\"schema_version\":1,\"running\","
                       "\"pid\",\"targets\":[{\"name\",\"phase\",\"since\",\"waiting\",\"pending\",\"last_known_good\","
                       "\"last_outcome\",\"next_cycle\",...}]}");

  bool history_json = false;
  int history_count = 20;
  auto* history_cmd = app.add_subcommand(
      "history",
      "Show the last deploys, reverts, recoveries, rejections and cycles, oldest first (from "
      "STATE_DIR/targets/NAME/history.jsonl, rotated to history.jsonl.1 past 1 MiB). A torn line is skipped "
      "and named on stderr. Works whether or not the daemon runs.");
  history_cmd->add_option("-c,--config", config_path, "Config file")->capture_default_str();
  history_cmd->add_option("-t,--target", target_name, "Only this target (default: every target, merged by time)");
  history_cmd->add_option("-n", history_count, "How many entries at most (the newest); -1 for all")
      ->capture_default_str()
      ->check(CLI::Range(-1, 1'000'000));
  history_cmd->add_flag("--json", history_json,
                        "One JSON object: {\"schema_version\":1,\"entries\":[{\"target\",\"result\",\"commit\","
                        "\"reason\",\"at\",\"process\"}],\"skipped\":[\"FILE:LINE: why\"]}");

  std::string revert_to, revert_reason;
  bool revert_now = false;
  auto* revert_cmd = app.add_subcommand(
      "revert",
      "Ask the running daemon to revert a target to its last known-good commit (or --to SHA): it resets the "
      "checkout (git reset --hard), rebuilds, restarts and verifies, as after a failed deploy, waiting for the "
      "agent to be idle first unless --now. Returns once the request is written (.deploy-revert-request in the "
      "marker directory); the outcome shows in status and history (\"reverted\", reason \"operator: ...\"). Exits "
      "69 when the daemon is not running, 64 when the commit is not in the checkout, 75 when quarantined.");
  revert_cmd->add_option("-c,--config", config_path, "Config file")->capture_default_str();
  revert_cmd->add_option("-t,--target", target_name, "Target to revert (needed when the config has several)");
  revert_cmd->add_option("--to", revert_to,
                         "Commit to go back to (any SHA or revision git knows in the checkout; default: the last "
                         "known-good commit)");
  revert_cmd->add_flag("--now", revert_now, "Do not wait for the agent to be idle (its cycle is cut short)");
  revert_cmd->add_option("-r,--reason", revert_reason, "Why: recorded in the history and in .deploy-reverted");

  std::string for_text, reason;
  pid_t pid = 0;
  bool wait = false;
  auto* hold_cmd = app.add_subcommand(
      "hold", "Hold a lease: the sentinel starts no deploy restart until it is released, expires or its --pid "
              "exits (a production that is down is still brought back). Exits 0 at once; exits 75 while a "
              "restart is under way (unless --wait).");
  hold_cmd->add_option("-c,--config", config_path, "Config file")->capture_default_str();
  hold_cmd->add_option("-t,--target", target_name, "Target to hold (needed when the config has several)");
  hold_cmd->add_option("--for", for_text, "How long at most, like \"40m\" or \"2h\"")->required();
  hold_cmd->add_option("-r,--reason", reason, "Why: shown in the sentinel's log and status");
  auto* pid_opt =
      hold_cmd->add_option("--pid", pid, "The process the lease is for: it is released when that process exits")
          ->check(CLI::PositiveNumber);
  hold_cmd->add_flag("--wait", wait, "While a restart is under way, wait until it is done instead of exiting 75");

  auto* release_cmd = app.add_subcommand(
      "release", "Release the lease taken with hold (exits 0 also when there was none).");
  release_cmd->add_option("-c,--config", config_path, "Config file")->capture_default_str();
  release_cmd->add_option("-t,--target", target_name, "Target to release (needed when the config has several)");

  std::string pause_for, pause_reason;
  auto* pause_cmd = app.add_subcommand(
      "pause", "Pause a target: staged deploys and scheduled cycles wait (claimed, never dropped) until resume or "
               "--for ends; a production that is down is still recovered. Kept in state_dir, so it survives a "
               "restart of the daemon. Exits 75 while a restart is under way.");
  pause_cmd->add_option("-c,--config", config_path, "Config file")->capture_default_str();
  pause_cmd->add_option("-t,--target", target_name, "Target to pause (needed when the config has several)");
  pause_cmd->add_option("--for", pause_for, "How long, like \"6h\", \"3d\" or \"2w\" (default: until resume)");
  pause_cmd->add_option("-r,--reason", pause_reason, "Why: shown in status and the log")->required();

  auto* resume_cmd = app.add_subcommand(
      "resume", "End a pause: what waited goes as soon as the deploy window, min_interval and the agent allow.");
  resume_cmd->add_option("-c,--config", config_path, "Config file")->capture_default_str();
  resume_cmd->add_option("-t,--target", target_name, "Target to resume (needed when the config has several)");

  bool fleet_json = false;
  auto* fleet_cmd = app.add_subcommand(
      "fleet", "The fleet group of [fleet], as etcd holds it (fleet mode: at most max_restarting hosts of the group "
               "restart at once, and a commit reverted on one host is refused by the others).");
  fleet_cmd->require_subcommand(1);
  auto* fleet_status_cmd = fleet_cmd->add_subcommand(
      "status", "Who holds the restart slots, each host's last outcome and commit, and the commits the group saw "
                "fail. Exits 69 when etcd cannot be reached, 78 without [fleet].");
  fleet_status_cmd->add_option("-c,--config", config_path, "Config file")->capture_default_str();
  fleet_status_cmd->add_flag("--json", fleet_json,
                             "One JSON object: {\"group\",\"max_restarting\",\"slots\":[{\"slot\",\"host\",\"target\","
                             "\"commit\",\"since\"}],\"hosts\":[{\"host\",\"target\",\"running\",\"result\",\"commit\",\"reason\","
                             "\"at\"}],\"bad\":[{\"commit\",\"host\",\"target\",\"reason\",\"at\"}]}");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? 0 : kExitUsage;
  }

  try {
    if (*check) return check_config(check_path);
    if (*stage_cmd) return stage(config_path, target_name, commit, message);
    if (*status_cmd) return status(config_path, as_json);
    if (*history_cmd) return history(config_path, target_name, history_json, history_count);
    if (*revert_cmd) return revert(config_path, target_name, revert_to, revert_now, revert_reason);
    if (*hold_cmd) {
      return hold(config_path, target_name, for_text, reason,
                  pid_opt->count() > 0 ? std::optional<pid_t>(pid) : std::nullopt, wait);
    }
    if (*release_cmd) return release(config_path, target_name);
    if (*pause_cmd) return pause(config_path, target_name, pause_for, pause_reason);
    if (*resume_cmd) return resume(config_path, target_name);
    if (*fleet_status_cmd) return print_fleet_status(load_config(config_path), fleet_json);
    Config config = load_config(config_path);
    setup_logging(config.log_level);
    return run_daemon(config);
  } catch (const ConfigError& e) {
    std::fprintf(stderr, "%s\n", e.what());  // FILE:LINE:COL first, as compilers do
    return e.exit_code();
  } catch (const StartupError& e) {
    std::fprintf(stderr, "deploy-sentinel: %s\n", e.what());
    return e.exit_code();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "deploy-sentinel: %s\n", e.what());
    return 1;
  }
}

}  // namespace sentinel
