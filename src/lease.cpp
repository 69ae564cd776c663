#include "lease.h"

#include "config.h"
#include "marker.h"
#include "state_store.h"

#include <boost/json.hpp>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <limits>

namespace sentinel {
namespace fs = std::filesystem;
namespace json = boost::json;
using std::chrono::system_clock;

namespace {

constexpr std::size_t kMaxLeaseBytes = 64 * 1024;

std::error_code last_error() { return std::error_code(errno, std::system_category()); }

/// "'cycle 812'", or nothing for a lease without a reason: "lease 'cycle 812' held ..." / "lease held ...".
/// The reason is the lease writer's text and ends up in one log line: quoted_for_log keeps it there.
std::string lease_name(const Lease& lease) {
  return lease.reason.empty() ? std::string("lease") : "lease " + quoted_for_log(lease.reason, '\'');
}

/// "14:05:00Z" when `t` is within a day of `now`, the full "2026-11-25T14:05:00Z" otherwise.
std::string short_time(system_clock::time_point t, system_clock::time_point now) {
  const std::string full = format_utc(t);
  const auto distance = t > now ? t - now : now - t;
  return distance < std::chrono::hours(24) ? full.substr(11) : full;
}

LeaseView unreadable(const fs::path& file, const std::string& why) {
  LeaseView view;
  view.state = LeaseState::unreadable;
  view.describe = "lease file " + file.string() + " is unreadable: " + why +
                  "; deploys wait until it is removed with `deploy-sentinel release`";
  return view;
}

/// The integer at `key`: nullopt when missing or null, `bad` set when it is anything else but an
/// integer in [min, max].
template <typename T>
std::optional<T> integer_field(const json::object& obj, std::string_view key, T min, bool& bad) {
  auto it = obj.find(key);
  if (it == obj.end() || it->value().is_null()) return std::nullopt;
  const json::value& v = it->value();
  if (!v.is_int64() && !v.is_uint64()) {
    bad = true;
    return std::nullopt;
  }
  boost::system::error_code ec;
  T n = v.to_number<T>(ec);
  if (ec || n < min) {
    bad = true;
    return std::nullopt;
  }
  return n;
}

/// Opens (creating it 0664 if missing) the lock file for `lease_file`; -1 with `ec` on failure.
int open_lock_file(const fs::path& lock, std::error_code& ec) {
  ec.clear();
  // flock needs no write access, so read-only suits a lock file owned by the other user.
  for (int attempt = 0; attempt < 3; ++attempt) {
    int fd = ::open(lock.c_str(), O_RDONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0664);
    if (fd >= 0) {
      ::fchmod(fd, 0664);  // whatever the umask: the other user's group may need to open it
      return fd;
    }
    if (errno != EEXIST) break;
    fd = ::open(lock.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT) continue;  // removed between the two opens
    if (fd < 0) break;
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd);
      ec = std::make_error_code(std::errc::invalid_argument);
      return -1;
    }
    return fd;
  }
  ec = errno == ELOOP ? std::make_error_code(std::errc::invalid_argument) : last_error();
  return -1;
}

}  // namespace

std::string lease_lock_problem(const fs::path& lock, const std::error_code& ec) {
  if (ec == std::errc::invalid_argument) {
    return lock.string() + " is not a regular file (a symlink, a directory, ...): remove it; `hold` and the sentinel "
                           "recreate it";
  }
  return "cannot open the lease lock file " + lock.string() + ": " + ec.message() + " (its directory " +
         lock.parent_path().string() +
         ", that of idle.lease_file, must exist and be writable by the users who run `deploy-sentinel hold` "
         "and the sentinel)";
}

std::optional<unsigned long long> process_start_time(pid_t pid) {
  if (pid <= 0) return std::nullopt;
  const std::string path = "/proc/" + std::to_string(pid) + "/stat";
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  std::array<char, 4096> buf{};
  std::size_t size = 0;
  for (ssize_t n; size < buf.size() - 1 && (n = ::read(fd, buf.data() + size, buf.size() - 1 - size)) != 0;) {
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) break;
    size += static_cast<std::size_t>(n);
  }
  ::close(fd);
  // "PID (COMM) STATE ..." where COMM may hold spaces and parentheses: count from the last ')'.
  const std::string_view line(buf.data(), size);
  const std::size_t close_paren = line.rfind(')');
  if (close_paren == std::string_view::npos || close_paren + 2 >= line.size()) return std::nullopt;
  const char state = line[close_paren + 2];
  if (state == 'Z' || state == 'X') return std::nullopt;  // exited, waiting to be reaped
  std::size_t pos = close_paren + 2;
  for (int field = 3; field < 22; ++field) {  // field 3 is STATE, field 22 is starttime
    pos = line.find(' ', pos);
    if (pos == std::string_view::npos) return std::nullopt;
    ++pos;
  }
  const std::string digits(line.substr(pos, line.find(' ', pos) - pos));
  if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos) return std::nullopt;
  return std::strtoull(digits.c_str(), nullptr, 10);
}

std::optional<system_clock::time_point> parse_utc(std::string_view text) {
  // YYYY-MM-DDTHH:MM:SSZ
  constexpr std::string_view shape = "dddd-dd-ddTdd:dd:ddZ";
  if (text.size() != shape.size()) return std::nullopt;
  for (std::size_t i = 0; i < shape.size(); ++i) {
    const bool digit = text[i] >= '0' && text[i] <= '9';
    if (shape[i] == 'd' ? !digit : text[i] != shape[i]) return std::nullopt;
  }
  auto number = [&](std::size_t at, std::size_t len) {
    int n = 0;
    for (std::size_t i = at; i < at + len; ++i) n = n * 10 + (text[i] - '0');
    return n;
  };
  std::tm tm{};
  tm.tm_year = number(0, 4) - 1900;
  tm.tm_mon = number(5, 2) - 1;
  tm.tm_mday = number(8, 2);
  tm.tm_hour = number(11, 2);
  tm.tm_min = number(14, 2);
  tm.tm_sec = number(17, 2);
  const std::tm asked = tm;
  const std::time_t secs = ::timegm(&tm);
  // timegm normalises February 30 into March 2: a date that changed was not a date.
  if (secs == static_cast<std::time_t>(-1) || tm.tm_year != asked.tm_year || tm.tm_mon != asked.tm_mon ||
      tm.tm_mday != asked.tm_mday || tm.tm_hour != asked.tm_hour || tm.tm_min != asked.tm_min ||
      tm.tm_sec != asked.tm_sec) {
    return std::nullopt;
  }
  // from_time_t multiplies into nanoseconds: "9999-12-31T23:59:59Z" would overflow (undefined; in
  // practice it wrapped to 1816, and a lease meant to last forever read as long expired).
  using std::chrono::seconds;
  const auto limit = std::chrono::duration_cast<seconds>(system_clock::duration::max()).count();
  if (secs > limit || secs < -limit) return std::nullopt;
  return system_clock::from_time_t(secs);
}

fs::path lease_lock_file(const fs::path& lease_file) { return fs::path(lease_file.string() + ".lock"); }

LeaseView read_lease(const fs::path& file, system_clock::time_point now) {
  boost::system::error_code ec;
  const std::string text = read_small_file(file, ec, kMaxLeaseBytes);
  if (ec == boost::system::errc::no_such_file_or_directory) return LeaseView{LeaseState::none, {}, "no lease"};
  if (ec == boost::system::errc::too_many_symbolic_link_levels) return unreadable(file, "it is a symbolic link");
  if (ec == boost::system::errc::file_too_large) {
    return unreadable(file, "it is larger than " + std::to_string(kMaxLeaseBytes / 1024) + " KiB");
  }
  if (ec == boost::system::errc::invalid_argument) return unreadable(file, "it is not a regular file");
  if (ec) return unreadable(file, ec.message());

  json::value doc = json::parse(text, ec);
  if (ec) return unreadable(file, "it is not JSON (" + ec.message() + ")");
  if (!doc.is_object()) return unreadable(file, "its JSON is not an object");
  const json::object& obj = doc.as_object();

  LeaseView view;
  Lease& lease = view.lease;
  const std::string expires = string_field(obj, "expires_at");
  const auto expires_at = parse_utc(expires);
  if (!expires_at) {
    return unreadable(file, expires.empty() ? std::string("it has no \"expires_at\"")
                                            : "its \"expires_at\" is not a UTC time like \"2026-11-25T14:05:00Z\" (up to 2262)");
  }
  lease.expires_at = *expires_at;
  bool bad_pid = false, bad_start = false;
  lease.pid = integer_field<pid_t>(obj, "pid", 1, bad_pid);
  lease.pid_start = integer_field<unsigned long long>(obj, "pid_start", 0, bad_start);
  if (bad_pid) return unreadable(file, "its \"pid\" is not a positive integer");
  if (bad_start) return unreadable(file, "its \"pid_start\" is not a non-negative integer");
  lease.reason = string_field(obj, "reason");
  lease.held_by = string_field(obj, "held_by");
  lease.held_at = string_field(obj, "held_at");

  const std::string name = lease_name(lease);
  if (now >= lease.expires_at) {
    view.state = LeaseState::expired;
    view.describe = name + " expired at " + short_time(lease.expires_at, now);
    return view;
  }
  if (lease.pid) {
    const pid_t pid = *lease.pid;
    const std::optional<unsigned long long> start = process_start_time(pid);
    // /proc mounted with hidepid hides other users' processes; kill() still tells that one runs.
    const bool hidden = !start && ::kill(pid, 0) != 0 && errno == EPERM;
    if (!start && !hidden) {
      view.state = LeaseState::holder_gone;
      view.describe = name + ": holder pid " + std::to_string(pid) + " is gone";
      return view;
    }
    if (start && lease.pid_start && *start != *lease.pid_start) {
      view.state = LeaseState::holder_gone;
      view.describe =
          name + ": holder pid " + std::to_string(pid) + " is gone (the pid now belongs to another process)";
      return view;
    }
    view.state = LeaseState::held;
    view.describe = name + " held by pid " + std::to_string(pid) + " until " + short_time(lease.expires_at, now);
    return view;
  }
  view.state = LeaseState::held;
  view.describe = name + " (no pid) until " + short_time(lease.expires_at, now);
  return view;
}

std::error_code write_lease(const fs::path& file, const Lease& lease) {
  json::object doc;
  // Boost.JSON copies bytes as they are: a reason that is not UTF-8 would make the lease unreadable.
  doc["reason"] = to_valid_utf8(lease.reason);
  doc["expires_at"] = format_utc(lease.expires_at);
  if (lease.pid) doc["pid"] = *lease.pid;
  if (lease.pid_start) doc["pid_start"] = *lease.pid_start;
  doc["held_by"] = to_valid_utf8(lease.held_by);
  doc["held_at"] = lease.held_at;
  // Durable: the holder goes on to do work it believes protected; a lease lost in a power cut is
  // a restart in the middle of it.
  return write_file_atomic(file, json::serialize(doc) + "\n", true);
}

// ---- LeaseLock ----

std::optional<LeaseLock> LeaseLock::try_acquire(const fs::path& lease_file, std::error_code& ec) {
  int fd = open_lock_file(lease_lock_file(lease_file), ec);
  if (fd < 0) return std::nullopt;
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    if (errno != EWOULDBLOCK) ec = last_error();
    ::close(fd);
    return std::nullopt;
  }
  return LeaseLock(fd);
}

LeaseLock LeaseLock::acquire(const fs::path& lease_file) {
  const fs::path lock = lease_lock_file(lease_file);
  std::error_code ec;
  int fd = open_lock_file(lock, ec);
  if (fd < 0) throw StartupError(lease_lock_problem(lock, ec));
  while (::flock(fd, LOCK_EX) != 0) {
    if (errno == EINTR) continue;
    ec = last_error();
    ::close(fd);
    throw StartupError("cannot lock " + lock.string() + ": " + ec.message());
  }
  return LeaseLock(fd);
}

LeaseLock::~LeaseLock() {
  if (fd_ >= 0) ::close(fd_);
}

LeaseLock::LeaseLock(LeaseLock&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}

LeaseLock& LeaseLock::operator=(LeaseLock&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = std::exchange(other.fd_, -1);
  }
  return *this;
}

// ---- the hold decision ----

bool phase_blocks_hold(std::string_view phase) {
  return phase == "restarting" || phase == "verifying" || phase == "reverting" || phase == "rebuilding";
}

std::optional<std::string> hold_refusal(const StateStore& store, const std::string& target) {
  // read_status and holder say "nothing" for a file they may not read: that must not pass for "idle".
  const fs::path status_file = store.dir() / "targets" / target / "status.json";
  for (const fs::path& file : {status_file, store.dir() / "deploy-sentinel.lock"}) {
    if (::access(file.c_str(), R_OK) != 0 && errno != ENOENT) {
      throw StartupError("cannot read " + file.string() + " (" + std::strerror(errno) +
                         "), so cannot tell whether a restart is under way: let this user read the sentinel's "
                         "state_dir " + store.dir().string());
    }
  }
  const std::optional<TargetStatus> status = store.read_status(target);
  if (!status || !phase_blocks_hold(status->phase)) return std::nullopt;
  if (!InstanceLock::holder(store.dir())) return std::nullopt;  // a dead daemon's last words
  std::string text = target + " is " + status->phase;
  std::string facts;
  if (!status->since.empty()) {
    // "2026-11-25T14:02:11Z" -> "14:02:11"
    const bool iso = status->since.size() == 20 && status->since[10] == 'T';
    facts += "since " + (iso ? status->since.substr(11, 8) : status->since);
  }
  if (!status->commit.empty()) {
    facts += (facts.empty() ? "" : ", ") + std::string("commit ") + status->commit.substr(0, 7);
  }
  return facts.empty() ? text : text + " (" + facts + ")";
}

// ---- StatusWatch ----

StatusWatch::StatusWatch(const StateStore& store, const std::string& target)
    // The layout StateStore writes: state_dir/targets/NAME/status.json.
    : status_dir_(store.dir() / "targets" / target), state_dir_(store.dir()) {
  fd_ = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (fd_ < 0) {
    warning_ = std::string("cannot use inotify (") + std::strerror(errno) +
               (errno == EMFILE ? "; raise fs.inotify.max_user_instances" : "") + "): checking every second instead";
    return;
  }
  add_watches();
}

StatusWatch::~StatusWatch() {
  if (fd_ >= 0) ::close(fd_);
}

void StatusWatch::add_watches() {
  if (fd_ < 0) return;
  auto add = [&](int& wd, const fs::path& dir, std::uint32_t mask) {
    if (wd >= 0) return;
    wd = ::inotify_add_watch(fd_, dir.c_str(), mask | IN_ONLYDIR);
    if (wd < 0 && errno != ENOENT && errno != ENOTDIR && warning_.empty()) {
      warning_ = "cannot watch " + dir.string() + " (" + std::strerror(errno) +
                 (errno == ENOSPC ? "; raise fs.inotify.max_user_watches" : "") + "): checking every second instead";
    }
  };
  // StateStore renames status.json into place; the daemon's lock file is closed when it exits.
  add(status_wd_, status_dir_, IN_MOVED_TO | IN_CLOSE_WRITE | IN_CREATE | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF);
  add(state_wd_, state_dir_, IN_CLOSE_WRITE | IN_CREATE | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF);
}

void StatusWatch::wait(std::chrono::milliseconds fallback) {
  add_watches();  // a directory that did not exist yet may exist now
  const int timeout = static_cast<int>(std::min<long long>(fallback.count(), std::numeric_limits<int>::max()));
  if (fd_ < 0) {
    ::poll(nullptr, 0, timeout);
    return;
  }
  pollfd p{fd_, POLLIN, 0};
  if (::poll(&p, 1, timeout) <= 0) return;
  alignas(inotify_event) char buf[4096];
  for (;;) {
    const ssize_t n = ::read(fd_, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // drained (EAGAIN)
    for (ssize_t at = 0; at + static_cast<ssize_t>(sizeof(inotify_event)) <= n;) {
      inotify_event event;
      std::memcpy(&event, buf + at, sizeof event);
      // A directory removed or moved away: watch it again (once it exists) on the next wait.
      if (event.mask & IN_IGNORED) {
        if (event.wd == status_wd_) status_wd_ = -1;
        if (event.wd == state_wd_) state_wd_ = -1;
      }
      at += static_cast<ssize_t>(sizeof(inotify_event) + event.len);
    }
  }
}

}  // namespace sentinel
