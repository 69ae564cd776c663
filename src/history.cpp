#include "history.h"

#include "marker.h"

#include <boost/json.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>

namespace sentinel {
namespace fs = std::filesystem;
namespace json = boost::json;
using boost::system::error_code;

namespace {

error_code last_error() { return error_code(errno, boost::system::system_category()); }

void read_one(const fs::path& file, HistoryRead& out) {
  std::error_code missing;
  if (!fs::exists(fs::symlink_status(file, missing))) return;
  std::ifstream in(file, std::ios::binary);
  if (!in) {
    out.errors.push_back(file.string() + ": " + std::strerror(errno));
    return;
  }
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    const bool torn = in.eof();  // no newline after it: the write never finished
    if (line.empty() && !torn) continue;
    error_code ec;
    json::value doc = json::parse(line, ec);
    if (ec || !doc.is_object() || string_field(doc.as_object(), "result").empty()) {
      out.skipped.push_back(file.string() + ":" + std::to_string(number) + ": " +
                            (torn ? "torn line (the write did not finish)" : "not a history entry"));
      continue;
    }
    const auto& obj = doc.as_object();
    out.entries.push_back(Outcome{string_field(obj, "result"), string_field(obj, "commit"), string_field(obj, "reason"),
                                  string_field(obj, "at"), string_field(obj, "process")});
  }
}

}  // namespace

error_code append_history_line(const fs::path& file, const Outcome& o, std::uintmax_t max_bytes, bool sync) {
  json::object doc{{"result", o.result}, {"commit", o.commit}, {"reason", o.reason}, {"at", o.at}};
  if (!o.process.empty()) doc["process"] = o.process;
  const std::string line = json::serialize(doc) + "\n";
  struct stat st {};
  if (::lstat(file.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
      static_cast<std::uintmax_t>(st.st_size) + line.size() > max_bytes) {
    const fs::path old = file.string() + ".1";
    if (::rename(file.c_str(), old.c_str()) != 0) return last_error();
  }
  int fd = ::open(file.c_str(), O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0644);
  if (fd < 0) return last_error();
  error_code ec;
  // A torn line (a full disk, a crash mid-write) is skipped by read_history; the next line starts
  // on a line of its own only if the torn one is ended first.
  if (const off_t size = ::lseek(fd, 0, SEEK_END); size > 0) {
    char last = '\n';
    if (::pread(fd, &last, 1, size - 1) == 1 && last != '\n') {
      if (::write(fd, "\n", 1) != 1) ec = last_error();
    }
  }
  if (!ec && (::write(fd, line.data(), line.size()) != static_cast<ssize_t>(line.size()) || (sync && ::fsync(fd) != 0))) {
    ec = last_error();
  }
  ::close(fd);
  return ec;
}

HistoryRead read_history(const fs::path& file) {
  HistoryRead out;
  read_one(file.string() + ".1", out);
  read_one(file, out);
  return out;
}

}  // namespace sentinel
