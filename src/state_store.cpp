#include "state_store.h"

#include "config.h"
#include "history.h"
#include "lease.h"
#include "marker.h"

#include <boost/json.hpp>

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace sentinel {
namespace fs = std::filesystem;
namespace json = boost::json;
using boost::system::error_code;

namespace {

constexpr const char* kLockName = "deploy-sentinel.lock";

json::object outcome_json(const Outcome& o) {
  json::object doc{{"result", o.result}, {"commit", o.commit}, {"reason", o.reason}, {"at", o.at}};
  if (!o.process.empty()) doc["process"] = o.process;
  return doc;
}

Outcome outcome_from(const json::object& obj) {
  return {string_field(obj, "result"), string_field(obj, "commit"), string_field(obj, "reason"), string_field(obj, "at"),
          string_field(obj, "process")};
}

}  // namespace

StateStore::StateStore(fs::path state_dir) : dir_(std::move(state_dir)) {}

fs::path StateStore::target_dir(const std::string& target) const { return dir_ / "targets" / target; }

void StateStore::prepare(const std::vector<std::string>& targets) const {
  struct stat st {};
  if (::stat(dir_.c_str(), &st) == 0 && (st.st_mode & S_IWOTH) != 0) {
    throw StartupError("state_dir " + dir_.string() + " is world-writable, so anyone could change the known-good " +
                       "commit that the sentinel reverts to; fix it with: chmod o-w " + dir_.string());
  }
  for (const auto& target : targets) {
    error_code ec;
    fs::create_directories(target_dir(target), ec);
    if (ec) {
      throw StartupError("cannot create state directory " + target_dir(target).string() + ": " + ec.message() +
                         " (check state_dir in the config and the sentinel user's permissions)");
    }
  }
}

namespace {

/// The commit in one generation of the known-good file; `problem` set when it exists but is unusable.
std::string read_commit_file(const fs::path& file, bool& missing, std::string& problem) {
  error_code ec;
  std::string text = read_small_file(file, ec, 1024);
  missing = ec == std::errc::no_such_file_or_directory;
  if (missing) return {};
  if (ec) {
    problem = file.string() + " cannot be read (" + ec.message() + ")";
    return {};
  }
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) text.pop_back();
  if (!looks_like_commit(text)) {
    problem = file.string() + " is corrupt (it does not hold a commit SHA)";
    return {};
  }
  return text;
}

}  // namespace

KnownGood StateStore::read_known_good(const std::string& target) const {
  const fs::path current = target_dir(target) / "known-good";
  const fs::path previous = target_dir(target) / "known-good.bak";
  bool missing = false;
  std::string problem;
  std::string commit = read_commit_file(current, missing, problem);
  if (!commit.empty()) return {commit, ""};
  // Only a known-good file that is there but unusable sends us to the previous generation: a
  // missing one means none was ever recorded (the .bak is written only beside a good one).
  if (missing) return {};
  bool previous_missing = false;
  std::string previous_problem;
  commit = read_commit_file(previous, previous_missing, previous_problem);
  if (!commit.empty()) return {commit, problem + "; using the previous generation in " + previous.string()};
  return {"", problem + (previous_missing ? "; and there is no previous generation"
                                          : "; and " + previous_problem) +
                  ": no known-good commit (remove the file, or write the commit SHA that production runs into it)"};
}

error_code StateStore::set_known_good(const std::string& target, const std::string& commit) const {
  const fs::path current = target_dir(target) / "known-good";
  bool missing = false;
  std::string problem;
  std::string replaced = read_commit_file(current, missing, problem);
  if (!replaced.empty() && replaced != commit) {
    // Written first, so a crash between the two writes leaves two good generations.
    if (auto ec = write_file_atomic(target_dir(target) / "known-good.bak", replaced + "\n", true)) return ec;
  }
  return write_file_atomic(current, commit + "\n", true);
}

error_code StateStore::stage_known_good(const std::string& target, const std::string& commit) const {
  // The generation it will replace goes to known-good.bak now, off the critical path, as
  // set_known_good does at once: a torn known-good later falls back to it.
  bool missing = false;
  std::string problem;
  const std::string replaced = read_commit_file(target_dir(target) / "known-good", missing, problem);
  if (!replaced.empty() && replaced != commit) {
    if (auto ec = write_file_atomic(target_dir(target) / "known-good.bak", replaced + "\n", true)) return ec;
  }
  const fs::path file = target_dir(target) / "known-good.next";
  int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
  if (fd < 0) return error_code(errno, boost::system::system_category());
  const std::string line = commit + "\n";
  error_code ec;
  if (::write(fd, line.data(), line.size()) != static_cast<ssize_t>(line.size()) || ::fsync(fd) != 0) {
    ec = error_code(errno, boost::system::system_category());
  }
  ::close(fd);
  return ec;
}

error_code StateStore::promote_known_good(const std::string& target, const std::string& commit) const {
  const fs::path dir = target_dir(target);
  error_code ec;
  std::string staged = read_small_file(dir / "known-good.next", ec, 1024);
  // Written and fsynced in full by stage_known_good, or not used: then the slow way.
  if (ec || staged != commit + "\n" || ::rename((dir / "known-good.next").c_str(), (dir / "known-good").c_str()) != 0) {
    return set_known_good(target, commit);
  }
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return error_code(errno, boost::system::system_category());
  if (::fsync(fd) != 0) ec = error_code(errno, boost::system::system_category());
  ::close(fd);
  return ec;
}

error_code StateStore::write_status(const std::string& target, const TargetStatus& s) const {
  json::object doc{{"name", target},       {"phase", s.phase},   {"since", s.since},
                   {"commit", s.commit},   {"detail", s.detail}, {"last_known_good", s.last_known_good},
                   {"confirm", s.confirm},  {"pid", ::getpid()}, {"next_cycle", s.next_cycle}};
  doc["last_outcome"] = s.last_outcome ? json::value(outcome_json(*s.last_outcome)) : json::value(nullptr);
  return write_file_atomic(target_dir(target) / "status.json", json::serialize(doc) + "\n", false);
}

std::optional<TargetStatus> StateStore::read_status(const std::string& target) const {
  error_code ec;
  std::string text = read_small_file(target_dir(target) / "status.json", ec);
  if (ec) return std::nullopt;
  json::value doc = json::parse(text, ec);
  if (ec || !doc.is_object()) return std::nullopt;
  const auto& obj = doc.as_object();
  TargetStatus s;
  s.phase = string_field(obj, "phase");
  s.since = string_field(obj, "since");
  s.commit = string_field(obj, "commit");
  s.detail = string_field(obj, "detail");
  s.last_known_good = string_field(obj, "last_known_good");
  s.confirm = string_field(obj, "confirm");
  s.next_cycle = string_field(obj, "next_cycle");
  if (auto it = obj.find("last_outcome"); it != obj.end() && it->value().is_object()) {
    s.last_outcome = outcome_from(it->value().as_object());
  }
  return s;
}

error_code StateStore::append_history(const std::string& target, const Outcome& outcome, bool sync) const {
  return append_history_line(history_file(target), outcome, kHistoryMaxBytes, sync);
}

fs::path StateStore::history_file(const std::string& target) const { return target_dir(target) / "history.jsonl"; }

std::string Pause::describe() const {
  std::string text = "paused";
  if (!by.empty()) text += " by " + by;
  if (!at.empty()) text += " at " + at;
  text += until.empty() ? " until resumed" : " until " + until;
  return reason.empty() ? text : text + ": " + reason;
}

fs::path StateStore::pause_file(const std::string& target) const { return target_dir(target) / "pause.json"; }

std::optional<Pause> StateStore::pause(const std::string& target, std::chrono::system_clock::time_point now) const {
  const fs::path file = pause_file(target);
  error_code ec;
  const std::string text = read_small_file(file, ec);
  if (ec == boost::system::errc::no_such_file_or_directory) return std::nullopt;
  json::value doc;
  if (!ec) doc = json::parse(text, ec);
  if (ec || !doc.is_object()) {
    return Pause{"the pause file " + file.string() + " is unreadable (" + (ec ? ec.message() : "not a JSON object") +
                     "); end it with `deploy-sentinel resume`",
                 {}, {}, {}};
  }
  const auto& obj = doc.as_object();
  Pause p{string_field(obj, "reason"), string_field(obj, "by"), string_field(obj, "at"), string_field(obj, "until")};
  if (!p.until.empty()) {
    const auto until = parse_utc(p.until);
    if (until && now >= *until) return std::nullopt;
  }
  return p;
}

error_code StateStore::write_pause(const std::string& target, const Pause& p) const {
  json::object doc{{"reason", to_valid_utf8(p.reason)}, {"by", to_valid_utf8(p.by)}, {"at", p.at}};
  if (!p.until.empty()) doc["until"] = p.until;
  return write_file_atomic(pause_file(target), json::serialize(doc) + "\n", true);
}

std::optional<std::chrono::system_clock::time_point> StateStore::last_deploy_restart(const std::string& target) const {
  error_code ec;
  std::string text = read_small_file(target_dir(target) / "last-deploy-restart", ec, 1024);
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) text.pop_back();
  if (ec) return std::nullopt;
  return parse_utc(text);
}

error_code StateStore::set_last_deploy_restart(const std::string& target, std::chrono::system_clock::time_point at) const {
  // Not fsynced: losing it in a power cut only lets the next deploy come sooner after the reboot.
  // Rounded up to the whole second the file can hold, so that the interval is never cut short.
  return write_file_atomic(target_dir(target) / "last-deploy-restart",
                           format_utc(std::chrono::ceil<std::chrono::seconds>(at)) + "\n", false);
}

error_code StateStore::sync_history(const std::string& target) const {
  const fs::path file = history_file(target);
  int fd = ::open(file.c_str(), O_WRONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) return error_code(errno, boost::system::system_category());
  error_code ec;
  if (::fsync(fd) != 0) ec = error_code(errno, boost::system::system_category());
  ::close(fd);
  return ec;
}

InstanceLock::InstanceLock(const fs::path& state_dir) {
  const fs::path file = state_dir / kLockName;
  fd_ = ::open(file.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
  if (fd_ < 0) {
    throw StartupError("cannot open lock file " + file.string() + ": " + std::strerror(errno));
  }
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    auto pid = holder(state_dir);
    ::close(fd_);
    fd_ = -1;
    throw StartupError("deploy-sentinel is already running as pid " + (pid ? std::to_string(*pid) : "?") +
                       " with state_dir " + state_dir.string());
  }
  const std::string pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, pid.data(), pid.size(), 0) < 0) {
    throw StartupError("cannot write lock file " + file.string() + ": " + std::strerror(errno));
  }
}

InstanceLock::~InstanceLock() {
  if (fd_ >= 0) ::close(fd_);
}

std::optional<pid_t> InstanceLock::holder(const fs::path& state_dir) {
  const fs::path file = state_dir / kLockName;
  int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) return std::nullopt;
  std::optional<pid_t> pid;
  if (::flock(fd, LOCK_SH | LOCK_NB) != 0 && errno == EWOULDBLOCK) {
    char buf[32] = {};
    ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
    pid = n > 0 ? static_cast<pid_t>(std::atoi(buf)) : 0;
  }
  ::close(fd);
  return pid;
}

}  // namespace sentinel
