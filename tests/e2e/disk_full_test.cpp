// A marker directory on a full file system: a private, tiny tmpfs in a mount namespace of the
// test's own, so nothing outside the test sees it.
#include "harness.h"

#include <doctest/doctest.h>

#include <fcntl.h>
#include <sched.h>
#include <sys/mount.h>
#include <unistd.h>

#include <cerrno>
#include <string>

using namespace sentinel::test;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

/// Writes `file` until the file system is full; true when it filled up.
bool fill(const fs::path& file) {
  const int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return false;
  const std::string block(4096, 'x');
  bool full = false;
  for (int i = 0; i < 1024 && !full; ++i) full = ::write(fd, block.data(), block.size()) < 0 && errno == ENOSPC;
  ::close(fd);
  return full;
}

/// Unmounts at scope exit, before the directory under it is removed.
struct Unmount {
  fs::path dir;
  ~Unmount() { ::umount2(dir.c_str(), MNT_DETACH); }
};

}  // namespace

TEST_CASE("on a full disk a staged deploy does not start, says why, and goes once there is space again") {
  if (::geteuid() != 0) {
    FAIL("needs root to mount a private tmpfs (CI runs as root)");
    return;
  }
  REQUIRE(::unshare(CLONE_NEWNS) == 0);
  REQUIRE(::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) == 0);
  Production prod;
  REQUIRE(::mount("tmpfs", prod.markers.c_str(), "tmpfs", 0, "size=16k,mode=0755") == 0);
  Unmount unmount{prod.markers};
  REQUIRE(fill(prod.markers / "filler"));

  auto& daemon = prod.start_watching();
  const std::size_t restarts = prod.restarts().size();
  std::string sha = prod.commit("healthy");
  prod.stage_by_rename();  // an empty marker needs no block, only an inode
  const int waits = daemon.wait_for_line("cannot record the restart of " + short_sha(sha));
  REQUIRE(waits >= 0);
  CHECK(daemon.lines()[static_cast<std::size_t>(waits)].find("No space left on device") != std::string::npos);
  CHECK(prod.restarts().size() == restarts);  // production was not touched
  CHECK(prod.has(".deploy-in-progress"));     // and the deploy is kept

  fs::remove(prod.markers / "filler");
  REQUIRE(daemon.wait_for_line("deployed " + short_sha(sha), 15s, waits) >= 0);
  CHECK(prod.restarts().size() == restarts + 1);
  CHECK(daemon.count_lines("cannot record the restart of") == 1);
}
