#include "marker.h"

#include <boost/json.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <ctime>

namespace sentinel {
namespace fs = std::filesystem;
namespace json = boost::json;
using boost::system::error_code;

namespace {

error_code last_error() { return error_code(errno, boost::system::system_category()); }

/// Owns a file descriptor.
struct Fd {
  int fd;
  explicit Fd(int f) : fd(f) {}
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
};

bool is_printable(std::string_view text) {
  return std::all_of(text.begin(), text.end(), [](unsigned char c) {
    return c == '\n' || c == '\t' || c == '\r' || c >= 0x20;
  });
}

/// True when `text` is well-formed UTF-8, which a JSON reader insists on.
/// The length of the well-formed UTF-8 sequence at text[i], or 0 when it is not one
/// (overlong forms, surrogates, values above U+10FFFF and cut-off sequences are not).
std::size_t utf8_sequence_length(std::string_view text, std::size_t i) {
  const unsigned char c = text[i];
  if (c < 0x80) return 1;
  std::size_t len = 0;
  unsigned char lo = 0x80, hi = 0xBF;  // the allowed range of the second byte
  if (c >= 0xC2 && c <= 0xDF) {
    len = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    len = 3;
    if (c == 0xE0) lo = 0xA0;  // overlong
    if (c == 0xED) hi = 0x9F;  // surrogates
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4;
    if (c == 0xF0) lo = 0x90;  // overlong
    if (c == 0xF4) hi = 0x8F;  // above U+10FFFF
  } else {
    return 0;
  }
  if (text.size() - i < len) return 0;
  for (std::size_t k = 1; k < len; ++k) {
    const unsigned char next = text[i + k];
    if (next < (k == 1 ? lo : 0x80) || next > (k == 1 ? hi : 0xBF)) return 0;
  }
  return len;
}

bool is_utf8(std::string_view text) {
  for (std::size_t i = 0, n; i < text.size(); i += n) {
    if ((n = utf8_sequence_length(text, i)) == 0) return false;
  }
  return true;
}

std::string describe_type(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISCHR(mode) || S_ISBLK(mode)) return "a device";
  return "not a regular file";
}

error_code fsync_dir(const fs::path& dir) {
  Fd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (fd.fd < 0 || ::fsync(fd.fd) != 0) return last_error();
  return {};
}

}  // namespace

std::string to_valid_utf8(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size();) {
    if (std::size_t n = utf8_sequence_length(text, i)) {
      out.append(text.substr(i, n));
      i += n;
    } else {
      out.append("\xEF\xBF\xBD");  // U+FFFD REPLACEMENT CHARACTER
      ++i;
    }
  }
  return out;
}

std::string quoted_for_log(std::string_view text, char quote, std::size_t max_bytes) {
  const bool cut = text.size() > max_bytes;
  if (cut) {
    std::size_t end = max_bytes;
    while (end > 0 && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80) --end;
    text = text.substr(0, end);
  }
  std::string out(1, quote);
  for (std::size_t i = 0; i < text.size(); ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    const bool c1 = c == 0xC2 && i + 1 < text.size() && static_cast<unsigned char>(text[i + 1]) <= 0x9F;
    if (c == static_cast<unsigned char>(quote) || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20 || c == 0x7f || c1) {
      const unsigned code = c1 ? static_cast<unsigned char>(text[++i]) : c;
      char escape[8];
      std::snprintf(escape, sizeof escape, "\\u%04x", code);
      out += escape;
    } else {
      out += static_cast<char>(c);
    }
  }
  out += quote;
  return cut ? out + "..." : out;
}

std::string format_utc(std::chrono::system_clock::time_point t) {
  std::time_t secs = std::chrono::system_clock::to_time_t(t);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

bool marker_present(const fs::path& dir, std::string_view name) {
  std::error_code ec;
  return fs::symlink_status(dir / name, ec).type() != fs::file_type::not_found && !ec;
}

std::string string_field(const json::object& obj, std::string_view key) {
  auto it = obj.find(key);
  return it != obj.end() && it->value().is_string() ? std::string(it->value().as_string()) : std::string();
}

bool looks_like_commit(std::string_view text) {
  return text.size() >= 7 && text.size() <= 40 &&
         std::all_of(text.begin(), text.end(), [](unsigned char c) { return std::isxdigit(c); });
}

std::string read_small_file(const fs::path& file, error_code& ec, std::size_t limit, struct stat* opened) {
  ec.clear();
  Fd fd(::open(file.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY));
  if (fd.fd < 0) {
    ec = last_error();
    return {};
  }
  struct stat st {};
  if (::fstat(fd.fd, &st) != 0) {
    ec = last_error();
    return {};
  }
  if (opened != nullptr) *opened = st;
  if (!S_ISREG(st.st_mode)) {
    ec = boost::system::errc::make_error_code(boost::system::errc::invalid_argument);
    return {};
  }
  if (static_cast<std::size_t>(st.st_size) > limit) {
    ec = boost::system::errc::make_error_code(boost::system::errc::file_too_large);
    return {};
  }
  std::string text;
  char buf[8192];
  for (;;) {
    ssize_t n = ::read(fd.fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      ec = last_error();
      return {};
    }
    if (n == 0) break;
    text.append(buf, static_cast<std::size_t>(n));
    if (text.size() > limit) {  // grew while we read
      ec = boost::system::errc::make_error_code(boost::system::errc::file_too_large);
      return {};
    }
  }
  return text;
}

MarkerCheck read_marker(const fs::path& file, std::span<const uid_t> allowed_owners) {
  MarkerCheck check;
  const std::string name = file.filename().string();
  struct stat st {};
  if (::lstat(file.c_str(), &st) != 0) {
    check.reason = name + " could not be read: " + last_error().message();
    return check;
  }
  if (S_ISLNK(st.st_mode)) {
    check.reason = "the marker is a symbolic link; stage a regular file (deploy-sentinel stage does)";
    return check;
  }
  if (!S_ISREG(st.st_mode)) {
    check.reason = "the marker is " + describe_type(st.st_mode) + ", not a regular file";
    return check;
  }
  if (static_cast<std::size_t>(st.st_size) > kMaxMarkerBytes) {
    check.reason = "the marker is " + std::to_string(st.st_size) + " bytes; at most " +
                   std::to_string(kMaxMarkerBytes) + " are accepted";
    return check;
  }
  // Another name for the same file means it was not written for us: a link to a file elsewhere
  // (a secret, another service's data) must not be read into a rejection record or a log.
  auto foreign = [&](const struct stat& s) -> std::string {
    if (s.st_nlink > 1) {
      return "the marker is a hard link to a file with " + std::to_string(s.st_nlink) +
             " names; stage a file of its own (deploy-sentinel stage does)";
    }
    if (!allowed_owners.empty() &&
        std::find(allowed_owners.begin(), allowed_owners.end(), s.st_uid) == allowed_owners.end()) {
      return "the marker is owned by uid " + std::to_string(s.st_uid) +
             ", who is not in allowed_owners; stage it as the agent's user, or add the user to allowed_owners";
    }
    return {};
  };
  if (check.reason = foreign(st); !check.reason.empty()) return check;
  error_code ec;
  struct stat opened {};
  std::string text = read_small_file(file, ec, kMaxMarkerBytes, &opened);
  if (ec) {
    check.reason = "the marker could not be read safely: " + ec.message();
    return check;
  }
  if (opened.st_ino != st.st_ino || opened.st_dev != st.st_dev) {
    check.reason = "the marker was replaced while it was being read";
    return check;
  }
  if (check.reason = foreign(opened); !check.reason.empty()) return check;
  return parse_marker(text);
}

MarkerCheck parse_marker(std::string_view text) {
  MarkerCheck check;
  check.marker.text = std::string(text);
  if (std::all_of(text.begin(), text.end(), [](unsigned char c) { return std::isspace(c); })) {
    check.ok = true;
    return check;
  }
  error_code ec;
  json::value doc = json::parse(text, ec);
  if (ec == json::error::incomplete) check.truncated_json = true;
  if (ec || !doc.is_object()) {
    check.reason = ec ? "the marker is neither empty nor valid JSON: " + ec.message()
                      : std::string("the marker's JSON is not an object");
    return check;
  }
  for (const auto& [key, value] : doc.as_object()) {
    std::string* field = key == "commit"      ? &check.marker.commit
                         : key == "staged_by" ? &check.marker.staged_by
                         : key == "staged_at" ? &check.marker.staged_at
                         : key == "message"   ? &check.marker.message
                                              : nullptr;
    if (field == nullptr) continue;  // newer stagers may add fields
    if (!value.is_string() && !value.is_null()) {
      check.reason = "the marker's \"" + std::string(key) + "\" is not a string";
      return check;
    }
    if (value.is_string()) *field = std::string(value.as_string());
  }
  if (!check.marker.commit.empty() && !looks_like_commit(check.marker.commit)) {
    check.reason = "the marker's commit " + quoted_for_log(check.marker.commit, '"') + " is not a 7-40 digit hex SHA";
    return check;
  }
  check.ok = true;
  return check;
}

std::string marker_json(const Marker& marker) {
  json::object doc;
  doc["commit"] = marker.commit;
  doc["staged_by"] = marker.staged_by;
  doc["staged_at"] = marker.staged_at;
  doc["message"] = marker.message;
  return json::serialize(doc) + "\n";
}

bool claim_marker(const fs::path& dir, error_code& ec) {
  ec.clear();
  const fs::path from = dir / marker_file::ready;
  const fs::path to = dir / marker_file::in_progress;
  if (::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_NOREPLACE) == 0) return true;
  if (errno != ENOENT) ec = last_error();
  return false;
}

error_code reject_marker(const fs::path& dir, std::string_view name, std::string_view reason,
                         std::string_view text, const RejectionDetail* detail) {
  error_code first;
  const fs::path aside = dir / marker_file::rejected_marker;
  error_code ec;
  fs::remove_all(aside, ec);
  if (::rename((dir / name).c_str(), aside.c_str()) != 0 && errno != ENOENT) first = last_error();

  json::object doc;
  doc["reason"] = reason;
  doc["at"] = format_utc(std::chrono::system_clock::now());
  // Boost.JSON writes strings byte for byte: text that is not UTF-8 would make the record unreadable.
  if (!text.empty() && text.size() <= 4096 && is_printable(text) && is_utf8(text)) doc["marker"] = text;
  if (detail != nullptr) {
    doc["commit"] = detail->commit;
    doc["phase"] = detail->phase;
    json::array lines;
    for (const std::string& line : detail->output) lines.emplace_back(to_valid_utf8(line));
    doc["output"] = std::move(lines);
  }
  ec = write_file_atomic(dir / marker_file::rejected, json::serialize(doc) + "\n", false);
  return first ? first : ec;
}

error_code make_durable(const fs::path& file) {
  Fd fd(::open(file.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
  if (fd.fd < 0 || ::fsync(fd.fd) != 0) return last_error();
  return fsync_dir(file.parent_path());
}

namespace {

/// Writes `content` to a fresh temporary file beside `file` and returns its path; removes it
/// and returns an empty path on failure.
fs::path write_temp(const fs::path& file, std::string_view content, bool durable, error_code& ec) {
  fs::path tmp = file;
  tmp += ".tmp." + std::to_string(::getpid());
  ::unlink(tmp.c_str());  // a leftover of ours, or something planted: never write through it
  Fd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0644));
  if (fd.fd < 0) {
    ec = last_error();
    return {};
  }
  const char* p = content.data();
  std::size_t left = content.size();
  ec.clear();
  while (left > 0) {
    ssize_t n = ::write(fd.fd, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      ec = last_error();
      break;
    }
    p += n;
    left -= static_cast<std::size_t>(n);
  }
  if (!ec && durable && ::fsync(fd.fd) != 0) ec = last_error();
  if (ec) {
    ::unlink(tmp.c_str());
    return {};
  }
  return tmp;
}

}  // namespace

error_code write_file_atomic(const fs::path& file, std::string_view content, bool durable) {
  if (!durable) {  // swapped in, the old text removed at once: cheaper than a rename over it
    fs::path old;
    error_code ec = swap_file_in(file, content, old);
    if (!ec && !old.empty()) ::unlink(old.c_str());
    return ec;
  }
  error_code ec;
  const fs::path tmp = write_temp(file, content, durable, ec);
  if (ec) return ec;
  if (::rename(tmp.c_str(), file.c_str()) != 0) {
    ec = last_error();
    ::unlink(tmp.c_str());
    return ec;
  }
  return durable ? fsync_dir(file.parent_path()) : error_code{};
}

error_code swap_file_in(const fs::path& file, std::string_view content, fs::path& old_left_at) {
  old_left_at.clear();
  error_code ec;
  const fs::path tmp = write_temp(file, content, false, ec);
  if (ec) return ec;
  if (::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, file.c_str(), RENAME_EXCHANGE) == 0) {
    old_left_at = tmp;
    return {};
  }
  // No file to swap with, or a file system without RENAME_EXCHANGE: the plain rename.
  if (::rename(tmp.c_str(), file.c_str()) != 0) {
    ec = last_error();
    ::unlink(tmp.c_str());
  }
  return ec;
}

}  // namespace sentinel
