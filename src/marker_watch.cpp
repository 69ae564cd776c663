#include "marker_watch.h"

#include "config.h"
#include "marker.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <spdlog/spdlog.h>

#include <sys/inotify.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace sentinel {
namespace asio = boost::asio;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

constexpr std::uint32_t kDirMask = IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_MOVED_FROM |
                                   IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR;
constexpr std::uint32_t kParentMask = IN_CREATE | IN_MOVED_TO | IN_ONLYDIR;

/// The message for a failed inotify call, with the fix where there is one.
std::string inotify_failure(const char* what, const fs::path& dir, int err) {
  std::string msg = std::string(what) + " " + dir.string() + ": " + std::strerror(err);
  if (err == ENOSPC) {
    msg += " (the inotify watch limit is reached: raise it with "
           "`sysctl fs.inotify.max_user_watches=524288`)";
  } else if (err == EMFILE) {
    msg += " (too many inotify instances: raise `sysctl fs.inotify.max_user_instances`)";
  } else if (err == ENOENT) {
    msg += " (create the directory, or fix marker_dir or idle.lease_file in the config)";
  } else if (err == ENOTDIR) {
    msg += " (marker_dir must be a directory)";
  } else if (err == EACCES) {
    msg += " (the sentinel's user needs read access to it)";
  }
  return msg;
}

}  // namespace

struct MarkerWatch::Impl : std::enable_shared_from_this<MarkerWatch::Impl> {
  Impl(asio::any_io_executor executor, fs::path d, std::string l, std::function<void(std::string_view)> cb,
       std::vector<std::string> a)
      : inotify(executor),
        retry(executor),
        dir(std::move(d)),
        label(std::move(l)),
        on_change(std::move(cb)),
        also(std::move(a)) {}

  asio::posix::stream_descriptor inotify;
  asio::steady_timer retry;
  fs::path dir;
  std::string label;
  std::function<void(std::string_view)> on_change;
  std::vector<std::string> also;
  int dir_wd = -1;
  int parent_wd = -1;
  bool stopped = false;
  bool follow_symlink = false;  // the directory was configured as a symbolic link
  bool said_symlink = false;

  int add_dir_watch() {
    dir_wd = inotify_add_watch(inotify.native_handle(), dir.c_str(), kDirMask | (follow_symlink ? 0 : IN_DONT_FOLLOW));
    return dir_wd >= 0 ? 0 : errno;
  }

  void notify(std::string_view why) {
    spdlog::debug("{}: marker directory event: {}", label, why);
    on_change(why);
  }

  /// The directory went away: wait for it to come back by watching its parent.
  void dir_gone() {
    if (dir_wd < 0 && parent_wd >= 0) return;
    dir_wd = -1;
    spdlog::warn("{}: marker directory {} disappeared; waiting for it to come back", label, dir.string());
    watch_parent();
  }

  void watch_parent() {
    if (stopped) return;
    parent_wd = inotify_add_watch(inotify.native_handle(), dir.parent_path().c_str(), kParentMask);
    if (parent_wd < 0) {
      retry.expires_after(1s);
      retry.async_wait([self = shared_from_this()](boost::system::error_code ec) {
        if (!ec) self->watch_parent();
      });
      return;
    }
    try_dir_back();  // it may have come back before the parent watch was in place
  }

  void try_dir_back() {
    if (int err = add_dir_watch(); err != 0) {
      // A directory swapped for a link would send the sentinel's claims and records elsewhere.
      if (err == ENOTDIR && !said_symlink && fs::is_symlink(dir)) {
        spdlog::error("{}: marker directory {} came back as a symbolic link; nothing in it is deployed until it is "
                      "a directory again", label, dir.string());
        said_symlink = true;
      }
      return;
    }
    said_symlink = false;
    if (parent_wd >= 0) inotify_rm_watch(inotify.native_handle(), parent_wd);
    parent_wd = -1;
    spdlog::info("{}: marker directory {} is back; rescanning it", label, dir.string());
    notify("directory back");
  }

  void handle(const inotify_event& ev) {
    const std::string_view name = ev.len > 0 ? std::string_view(ev.name) : std::string_view();
    if (ev.mask & IN_Q_OVERFLOW) {
      spdlog::info("{}: inotify queue overflowed; rescanning {}", label, dir.string());
      notify("queue overflow");
      return;
    }
    if (ev.wd == parent_wd) {
      if (ev.mask & IN_IGNORED) {  // the parent went too: wait for it in turn
        parent_wd = -1;
        watch_parent();
      } else if (name == dir.filename().string()) {
        try_dir_back();
      }
      return;
    }
    if (ev.wd != dir_wd) return;  // a watch we already dropped
    if (ev.mask & IN_MOVE_SELF) {
      inotify_rm_watch(inotify.native_handle(), dir_wd);  // the watch would follow it elsewhere
      dir_gone();
      return;
    }
    if (ev.mask & (IN_DELETE_SELF | IN_IGNORED)) {
      dir_gone();
      return;
    }
    if (name == marker_file::ready) {
      if (ev.mask & (IN_CLOSE_WRITE | IN_MOVED_TO)) {
        notify(ev.mask & IN_MOVED_TO ? "marker renamed in" : "marker written");
      } else if (ev.mask & IN_CREATE) {
        // A new plain file is still being written: its close-write will follow. Anything else
        // (symlink, FIFO, directory, hard link) will never be "written", so look at it now.
        struct stat st {};
        const fs::path path = dir / marker_file::ready;
        if (::lstat(path.c_str(), &st) == 0 && (!S_ISREG(st.st_mode) || st.st_nlink > 1)) {
          notify("marker created");
        }
      }
    } else if (name == marker_file::failed && (ev.mask & (IN_DELETE | IN_MOVED_FROM))) {
      notify("quarantine marker removed");
    }
    if (!name.empty() && (ev.mask & (IN_CLOSE_WRITE | IN_MOVED_TO | IN_DELETE | IN_MOVED_FROM)) &&
        std::find(also.begin(), also.end(), name) != also.end()) {
      notify(ev.mask & (IN_DELETE | IN_MOVED_FROM) ? "watched file removed" : "watched file written");
    }
  }

  asio::awaitable<void> read_loop() {
    auto self = shared_from_this();
    alignas(inotify_event) char buf[64 * 1024];
    for (;;) {
      auto [ec, n] = co_await inotify.async_read_some(asio::buffer(buf), asio::as_tuple(asio::use_awaitable));
      if (ec == asio::error::operation_aborted || stopped) co_return;
      if (ec) {
        spdlog::error("{}: reading inotify events failed: {}; rescanning", label, ec.message());
        notify("read error");
        co_return;
      }
      for (std::size_t off = 0; off + sizeof(inotify_event) <= n;) {
        const auto* ev = reinterpret_cast<const inotify_event*>(buf + off);
        handle(*ev);
        off += sizeof(inotify_event) + ev->len;
      }
    }
  }
};

MarkerWatch::MarkerWatch(asio::any_io_executor executor, fs::path dir, std::string label,
                         std::function<void(std::string_view)> on_change, std::vector<std::string> also)
    : impl_(std::make_shared<Impl>(std::move(executor), std::move(dir), std::move(label), std::move(on_change),
                                   std::move(also))) {}

MarkerWatch::~MarkerWatch() {
  impl_->stopped = true;
  boost::system::error_code ec;
  impl_->retry.cancel();
  impl_->inotify.close(ec);
}

void MarkerWatch::start() {
  int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (fd < 0) throw StartupError(inotify_failure("cannot watch", impl_->dir, errno));
  impl_->inotify.assign(fd);
  impl_->follow_symlink = fs::is_symlink(impl_->dir);
  if (int err = impl_->add_dir_watch(); err != 0) {
    throw StartupError(inotify_failure("cannot watch directory", impl_->dir, err));
  }
  asio::co_spawn(impl_->inotify.get_executor(), impl_->read_loop(), [label = impl_->label](std::exception_ptr e) {
    if (!e) return;
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& ex) {
      spdlog::critical("{}: marker watch stopped: {}", label, ex.what());
    }
  });
}

}  // namespace sentinel
