#include "state_store.h"

#include "config.h"
#include "marker.h"

#include <boost/json.hpp>

#include <fcntl.h>
#include <sys/file.h>
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
  for (const auto& target : targets) {
    error_code ec;
    fs::create_directories(target_dir(target), ec);
    if (ec) {
      throw StartupError("cannot create state directory " + target_dir(target).string() + ": " + ec.message() +
                         " (check state_dir in the config and the sentinel user's permissions)");
    }
  }
}

std::string StateStore::known_good(const std::string& target) const {
  error_code ec;
  std::string text = read_small_file(target_dir(target) / "known-good", ec, 1024);
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) text.pop_back();
  return looks_like_commit(text) ? text : std::string();
}

error_code StateStore::set_known_good(const std::string& target, const std::string& commit) const {
  return write_file_atomic(target_dir(target) / "known-good", commit + "\n", true);
}

error_code StateStore::stage_known_good(const std::string& target, const std::string& commit) const {
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
                   {"confirm", s.confirm},  {"pid", ::getpid()}};
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
  if (auto it = obj.find("last_outcome"); it != obj.end() && it->value().is_object()) {
    s.last_outcome = outcome_from(it->value().as_object());
  }
  return s;
}

error_code StateStore::append_history(const std::string& target, const Outcome& outcome, bool sync) const {
  const fs::path file = target_dir(target) / "history.jsonl";
  int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0644);
  if (fd < 0) return error_code(errno, boost::system::system_category());
  const std::string line = json::serialize(outcome_json(outcome)) + "\n";
  error_code ec;
  if (::write(fd, line.data(), line.size()) != static_cast<ssize_t>(line.size()) || (sync && ::fsync(fd) != 0)) {
    ec = error_code(errno, boost::system::system_category());
  }
  ::close(fd);
  return ec;
}

error_code StateStore::sync_history(const std::string& target) const {
  const fs::path file = target_dir(target) / "history.jsonl";
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
