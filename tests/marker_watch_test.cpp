// MarkerWatch with real inotify on a directory under /tmp.
#include "marker_watch.h"
#include "test_support.h"

#include "config.h"
#include "marker.h"

#include <boost/asio/io_context.hpp>
#include <doctest/doctest.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

namespace asio = boost::asio;
namespace fs = std::filesystem;
using namespace std::chrono_literals;
using namespace sentinel;
using Clock = std::chrono::steady_clock;
using Calls = std::vector<std::string>;

using ScratchDir = sentinel::test::TempDir;

/// "a | b | c", so a failed check shows the calls.
std::string joined(const Calls& calls) {
  std::string out;
  for (const auto& call : calls) out += (out.empty() ? "" : " | ") + call;
  return out;
}

void write_text(const fs::path& file, const std::string& text) {
  std::ofstream out(file, std::ios::binary | std::ios::trunc);
  out << text;
  REQUIRE(out.good());
}

/// A started MarkerWatch on `dir` that records every on_change call.
struct Watched {
  explicit Watched(const fs::path& dir)
      : watch(ctx.get_executor(), dir, "test", [this](std::string_view why) { calls.emplace_back(why); }) {
    watch.start();
  }

  /// Runs handlers until `n` calls have been recorded or `limit` has passed; true when they were.
  bool wait_for_calls(std::size_t n, std::chrono::milliseconds limit = 5s) {
    const auto deadline = Clock::now() + limit;
    while (calls.size() < n && Clock::now() < deadline) {
      if (ctx.stopped()) ctx.restart();
      ctx.run_one_for(deadline - Clock::now());
    }
    return calls.size() >= n;
  }

  /// Runs every handler that is ready. The kernel queues an inotify event before the syscall
  /// that caused it returns, so events of calls made before this are handled by it.
  void settle() {
    for (int i = 0; i < 5; ++i) {
      if (ctx.stopped()) ctx.restart();
      ctx.poll();
    }
  }

  asio::io_context ctx;
  Calls calls;
  MarkerWatch watch;
};

/// Writes a marker under a temporary name and renames it in, the way `deploy-sentinel stage` does.
void rename_marker_in(const fs::path& dir) {
  const fs::path staging = dir / ".deploy-ready.staging";
  write_text(staging, "{}");
  REQUIRE(::rename(staging.c_str(), (dir / marker_file::ready).c_str()) == 0);
}

}  // namespace

TEST_CASE("a marker renamed into the directory is reported") {
  ScratchDir scratch;
  const fs::path dir = scratch / "markers";
  fs::create_directory(dir);
  Watched w(dir);
  CHECK(w.calls.empty());  // never from inside start()
  rename_marker_in(dir);
  REQUIRE(w.wait_for_calls(1));
  CHECK(joined(w.calls) == "marker renamed in");
}

TEST_CASE("a marker written in place is reported when it is closed, not when it is created") {
  ScratchDir dir;
  Watched w(dir.path());
  const fs::path marker = dir / marker_file::ready;
  const int fd = ::open(marker.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
  REQUIRE(fd >= 0);
  w.settle();
  CHECK(w.calls.empty());

  const char text[] = "{\"commit\": \"abc1234\"}\n";
  CHECK(::write(fd, text, sizeof text - 1) == static_cast<ssize_t>(sizeof text - 1));
  w.settle();
  CHECK(w.calls.empty());

  ::close(fd);
  REQUIRE(w.wait_for_calls(1));
  CHECK(joined(w.calls) == "marker written");
}

TEST_CASE("a marker that appears as a symbolic link is reported at once, so it can be refused") {
  ScratchDir scratch;
  write_text(scratch / "target", "{}");
  const fs::path dir = scratch / "markers";
  fs::create_directory(dir);
  Watched w(dir);
  REQUIRE(::symlink((scratch / "target").c_str(), (dir / marker_file::ready).c_str()) == 0);
  REQUIRE(w.wait_for_calls(1));
  CHECK(joined(w.calls) == "marker created");
}

TEST_CASE("a marker that appears as a FIFO is reported at once, so it can be refused") {
  ScratchDir dir;
  Watched w(dir.path());
  REQUIRE(::mkfifo((dir / marker_file::ready).c_str(), 0644) == 0);
  REQUIRE(w.wait_for_calls(1));
  CHECK(joined(w.calls) == "marker created");
}

TEST_CASE("a marker that appears as a directory or a hard link is reported at once") {
  ScratchDir scratch;
  const fs::path dir = scratch / "markers";
  fs::create_directory(dir);
  Watched w(dir);

  fs::create_directory(dir / marker_file::ready);
  REQUIRE(w.wait_for_calls(1));
  CHECK(joined(w.calls) == "marker created");
  fs::remove(dir / marker_file::ready);

  write_text(scratch / "elsewhere", "{}");
  REQUIRE(::link((scratch / "elsewhere").c_str(), (dir / marker_file::ready).c_str()) == 0);
  REQUIRE(w.wait_for_calls(2));
  CHECK(joined(w.calls) == "marker created | marker created");
}

TEST_CASE("files with other names are not reported") {
  ScratchDir scratch;
  const fs::path dir = scratch / "markers";
  fs::create_directory(dir);
  Watched w(dir);

  for (const char* name : {"other", ".deploy-ready.tmp", ".deploy-readyx", "deploy-ready", ".deploy-in-progress",
                           ".deploy-rejected"}) {
    write_text(dir / name, "{}");
    fs::rename(dir / name, dir / (std::string(name) + ".moved"));
    fs::remove(dir / (std::string(name) + ".moved"));
  }
  write_text(dir / marker_file::failed, "{}");  // only its removal matters
  REQUIRE(::symlink("/nonexistent", (dir / "link").c_str()) == 0);
  REQUIRE(::mkfifo((dir / "fifo").c_str(), 0644) == 0);
  fs::create_directory(dir / "sub");
  write_text(dir / "sub" / marker_file::ready, "{}");  // inotify does not look into subdirectories
  w.settle();
  CHECK(w.calls.empty());

  // Events arrive in order: once this one is reported, all the above were seen and ignored.
  rename_marker_in(dir);
  REQUIRE(w.wait_for_calls(1));
  w.settle();
  CHECK(joined(w.calls) == "marker renamed in");
}

TEST_CASE("removing the quarantine marker is reported, whether deleted or renamed away") {
  ScratchDir dir;
  write_text(dir / marker_file::failed, "{}");
  Watched w(dir.path());

  fs::remove(dir / marker_file::failed);
  REQUIRE(w.wait_for_calls(1));
  CHECK(joined(w.calls) == "quarantine marker removed");

  write_text(dir / marker_file::failed, "{}");
  fs::rename(dir / marker_file::failed, dir / "failed.seen");
  REQUIRE(w.wait_for_calls(2));
  CHECK(joined(w.calls) == "quarantine marker removed | quarantine marker removed");
}

TEST_CASE("a directory removed and created again at once is watched again") {
  ScratchDir scratch;
  const fs::path dir = scratch / "markers";
  fs::create_directory(dir);
  Watched w(dir);

  fs::remove(dir);
  fs::create_directory(dir);
  REQUIRE(w.wait_for_calls(1));
  CHECK(joined(w.calls) == "directory back");

  rename_marker_in(dir);
  REQUIRE(w.wait_for_calls(2));
  CHECK(joined(w.calls) == "directory back | marker renamed in");
}

TEST_CASE("a directory that stays away for a while is watched again when it comes back") {
  ScratchDir scratch;
  const fs::path dir = scratch / "markers";
  fs::create_directory(dir);
  Watched w(dir);

  fs::remove(dir);
  w.settle();  // the watch now knows it is gone and watches the parent
  CHECK(w.calls.empty());

  fs::create_directory(dir);
  REQUIRE(w.wait_for_calls(1));
  CHECK(joined(w.calls) == "directory back");

  rename_marker_in(dir);
  REQUIRE(w.wait_for_calls(2));
  CHECK(joined(w.calls) == "directory back | marker renamed in");
}

TEST_CASE("a directory renamed away is no longer watched; the one that replaces it is") {
  ScratchDir scratch;
  const fs::path dir = scratch / "markers";
  const fs::path old_dir = scratch / "markers.old";
  fs::create_directory(dir);
  Watched w(dir);

  fs::rename(dir, old_dir);
  w.settle();
  CHECK(w.calls.empty());

  // Set up elsewhere with a marker already inside, then renamed into place: the owner must be
  // told to look, since no event names the marker.
  const fs::path fresh = scratch / "fresh";
  fs::create_directory(fresh);
  write_text(fresh / marker_file::ready, "{}");
  fs::rename(fresh, dir);
  REQUIRE(w.wait_for_calls(1));
  CHECK(joined(w.calls) == "directory back");

  rename_marker_in(old_dir);  // not the watched directory any more
  fs::remove(dir / marker_file::ready);
  rename_marker_in(dir);
  REQUIRE(w.wait_for_calls(2));
  w.settle();
  CHECK(joined(w.calls) == "directory back | marker renamed in");
}

TEST_CASE("a directory renamed over the watched one is watched and reported") {
  ScratchDir scratch;
  const fs::path dir = scratch / "markers";
  fs::create_directory(dir);
  Watched w(dir);

  const fs::path fresh = scratch / "fresh";
  fs::create_directory(fresh);
  write_text(fresh / marker_file::ready, "{}");
  REQUIRE(::rename(fresh.c_str(), dir.c_str()) == 0);  // replaces the empty watched directory
  REQUIRE(w.wait_for_calls(1));
  CHECK(joined(w.calls) == "directory back");

  fs::remove(dir / marker_file::ready);
  rename_marker_in(dir);
  REQUIRE(w.wait_for_calls(2));
  CHECK(joined(w.calls) == "directory back | marker renamed in");
}

TEST_CASE("a directory whose parent went away too is watched again once both are back") {
  ScratchDir scratch;
  const fs::path parent = scratch / "parent";
  const fs::path dir = parent / "markers";
  fs::create_directories(dir);
  Watched w(dir);

  fs::remove_all(parent);
  w.settle();
  CHECK(w.calls.empty());

  fs::create_directories(dir);  // found by the once-a-second retry
  REQUIRE(w.wait_for_calls(1, 3s));
  CHECK(joined(w.calls) == "directory back");

  rename_marker_in(dir);
  REQUIRE(w.wait_for_calls(2));
  CHECK(joined(w.calls) == "directory back | marker renamed in");
}

TEST_CASE("an overflowed event queue is reported so the owner rescans") {
  std::ifstream limit_file("/proc/sys/fs/inotify/max_queued_events");
  long limit = 0;
  limit_file >> limit;
  if (limit <= 0 || limit > 100'000) {
    MESSAGE("max_queued_events is " << limit << "; skipping the overflow test");
    return;
  }
  ScratchDir dir;
  Watched w(dir.path());
  // Without running the loop, queue more events than the kernel keeps. Two names take turns
  // so that the kernel cannot merge an event with the one before it.
  long failed_opens = 0;
  for (long i = 0; i <= limit; ++i) {
    const fs::path file = dir / (i % 2 == 0 ? "a" : "b");
    const int fd = ::open(file.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
    if (fd < 0) ++failed_opens;
    else ::close(fd);
  }
  REQUIRE(failed_opens == 0);
  REQUIRE(w.wait_for_calls(1));
  CHECK(joined(w.calls) == "queue overflow");
}

TEST_CASE("after the watch is destroyed, nothing is reported and the loop has no work left") {
  ScratchDir dir;
  Calls calls;
  asio::io_context ctx;
  {
    MarkerWatch watch(ctx.get_executor(), dir.path(), "test",
                      [&](std::string_view why) { calls.emplace_back(why); });
    watch.start();
    ctx.poll();
  }
  rename_marker_in(dir.path());
  const auto started = Clock::now();
  ctx.run_for(5s);  // returns as soon as the read loop has ended
  CHECK(ctx.stopped());
  CHECK(Clock::now() - started < 4s);
  CHECK(calls.empty());
}

TEST_CASE("watching a missing directory fails at start naming the directory and the fix") {
  ScratchDir scratch;
  const fs::path dir = scratch / "missing";
  asio::io_context ctx;
  MarkerWatch watch(ctx.get_executor(), dir, "test", [](std::string_view) {});
  try {
    watch.start();
    FAIL("start() did not throw");
  } catch (const StartupError& e) {
    const std::string what = e.what();
    CHECK(what.find(dir.string()) != std::string::npos);
    CHECK(what.find("No such file or directory") != std::string::npos);
    CHECK(what.find("create the directory") != std::string::npos);
  }
}

TEST_CASE("watching a path that is a file fails at start saying it must be a directory") {
  ScratchDir scratch;
  const fs::path file = scratch / "not-a-dir";
  write_text(file, "");
  asio::io_context ctx;
  MarkerWatch watch(ctx.get_executor(), file, "test", [](std::string_view) {});
  try {
    watch.start();
    FAIL("start() did not throw");
  } catch (const StartupError& e) {
    const std::string what = e.what();
    CHECK(what.find(file.string()) != std::string::npos);
    CHECK(what.find("must be a directory") != std::string::npos);
  }
}
