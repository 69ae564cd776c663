#pragma once
// Small helpers shared by the tests: temporary directories and files, processes.

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <stdlib.h>
#include <sys/types.h>
#include <unistd.h>

namespace sentinel::test {

/// A fresh directory under /tmp, removed with everything in it at scope exit.
class TempDir {
 public:
  explicit TempDir(const std::filesystem::path& base = std::filesystem::temp_directory_path()) {
    std::string pattern = (base / "sentinel-test-XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(std::string_view name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

inline void write_file(const std::filesystem::path& file, const std::string& text) {
  std::ofstream out(file, std::ios::binary | std::ios::trunc);
  out << text;
}

inline std::string read_file(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  std::stringstream buf;
  buf << in.rdbuf();
  return buf.str();
}

/// True when `pid` no longer runs (gone, or a zombie waiting for its parent).
inline bool process_gone(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  if (!stat) return true;
  std::string line;
  std::getline(stat, line);
  auto close_paren = line.rfind(')');
  return close_paren != std::string::npos && close_paren + 2 < line.size() && line[close_paren + 2] == 'Z';
}

/// Host pids, other than this process, whose command line contains `needle` and that still run
/// (zombies excluded).
inline std::vector<pid_t> processes_with(const std::string& needle) {
  std::vector<pid_t> found;
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const std::string name = entry.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream in(entry.path() / "cmdline", std::ios::binary);
    std::string cmdline((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::replace(cmdline.begin(), cmdline.end(), '\0', ' ');
    const pid_t pid = static_cast<pid_t>(std::stol(name));
    if (cmdline.find(needle) != std::string::npos && pid != ::getpid() && !process_gone(pid)) found.push_back(pid);
  }
  return found;
}

#ifdef FAKE_SERVICE
/// fake-service copied, once per test process, into a directory outside /tmp that lives as long
/// as the process: a pre-flight sandbox mounts a private /tmp, which would hide a build (and a
/// test's files) under /tmp, as in a CI clone there. Files beside it are outside /tmp too.
inline const std::string& shadow_service() {
  static TempDir dir("/var/tmp");
  static const std::string path = [] {
    const std::filesystem::path copy = dir / "fake-service";
    std::filesystem::copy_file(FAKE_SERVICE, copy, std::filesystem::copy_options::overwrite_existing);
    return copy.string();
  }();
  return path;
}
#endif

}  // namespace sentinel::test
