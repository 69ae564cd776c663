// libFuzzer target: read_lease on a lease file holding arbitrary bytes, as the agent's user (or
// anyone who can write the lease file) could leave it, and parse_utc on the same bytes. A lease
// must be read as some state with one short printable line that describes it; a crash, a
// sanitizer report, an escaping exception, a hang or runaway memory is a bug.
#include "fuzz_check.h"
#include "lease.h"
#include "marker.h"

#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <system_error>

namespace {

namespace fs = std::filesystem;
using sentinel::fuzz::expect;

/// The longest description: it is logged as one line and shown in the status.
constexpr std::size_t kMaxDescribeBytes = 512;

/// A private directory for the lease file, removed when the fuzzer exits normally.
class ScratchDir {
 public:
  ScratchDir() {
    std::string pattern = (fs::temp_directory_path() / "fuzz_lease-XXXXXX").string();
    expect(::mkdtemp(pattern.data()) != nullptr, "a scratch directory can be made");
    path_ = pattern;
  }
  ~ScratchDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

void write_whole(const fs::path& file, std::string_view bytes) {
  const int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  expect(fd >= 0, "the lease file can be written");
  for (std::size_t done = 0; done < bytes.size();) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    expect(n > 0, "the lease file can be written");
    done += static_cast<std::size_t>(n);
  }
  ::close(fd);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const ScratchDir dir;
  const std::string_view text(reinterpret_cast<const char*>(data), size);

  if (const auto time = sentinel::parse_utc(text)) {
    // Years before 1000 are printed with fewer than four digits by strftime's %Y.
    expect(text < "1000" || sentinel::format_utc(*time) == text, "a parsed UTC time formats back to its text");
  }

  const fs::path file = dir.path() / "cycle.lease";
  write_whole(file, text);
  const auto now = *sentinel::parse_utc("2026-11-25T14:00:00Z");
  const sentinel::LeaseView view = sentinel::read_lease(file, now);
  expect(view.state != sentinel::LeaseState::none, "a lease file that exists is not 'no lease'");
  expect(!view.describe.empty(), "a lease is described");
  expect(sentinel::fuzz::is_one_printable_line(view.describe), "a lease's description is one printable line");
  expect(view.describe.size() <= kMaxDescribeBytes, "a lease's description is short");
  expect(sentinel::to_valid_utf8(view.describe) == view.describe, "a lease's description is valid UTF-8");
  if (view.state == sentinel::LeaseState::held && view.lease.pid) {
    expect(*view.lease.pid >= 1, "a lease held by a pid names a real pid");
  }
  if (view.state != sentinel::LeaseState::unreadable) {
    expect(view.lease.expires_at > now || view.state == sentinel::LeaseState::expired,
           "a lease that is not expired ends after now");
  }
  return 0;
}
