#pragma once
// Watching one marker directory with inotify, inside the event loop.

#include <boost/asio/any_io_executor.hpp>

#include <filesystem>
#include <functional>
#include <memory>
#include <string_view>
#include <vector>

namespace sentinel {

/// Tells its owner when the marker directory may have changed in a way that matters: a
/// `.deploy-ready` finished (written and closed, renamed in, or appeared as something that is
/// not a plain new file, such as a symlink or a FIFO, so it can be refused), `.deploy-failed`
/// removed, the event queue overflowed, or the directory came back after it was removed or
/// renamed. It reports facts and never touches the directory: the owner looks at the disk,
/// which stays the truth. Costs nothing while nothing happens (no timers, no polling), except
/// while the directory is missing and its parent is missing too (then it retries every second).
/// Files named in `also` (a lease, say) are reported whenever they are written, renamed in or
/// out, or removed.
class MarkerWatch {
 public:
  /// `on_change(why)` runs on `executor`, never from inside start().
  MarkerWatch(boost::asio::any_io_executor executor, std::filesystem::path dir, std::string label,
              std::function<void(std::string_view why)> on_change, std::vector<std::string> also = {});
  ~MarkerWatch();
  MarkerWatch(const MarkerWatch&) = delete;
  MarkerWatch& operator=(const MarkerWatch&) = delete;

  /// Sets the watch. Throws StartupError naming the directory and the fix (missing directory,
  /// no permission, inotify limits with the sysctl to raise).
  void start();

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace sentinel
