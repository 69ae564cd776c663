#pragma once
// The history of one target: an append-only file of JSON lines (one outcome each), capped in
// size by rotating it to one older generation, and read back by `deploy-sentinel history`.

#include "state_store.h"

#include <boost/system/error_code.hpp>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace sentinel {

/// When the history file would grow past this, it is renamed to `<file>.1` (replacing the older
/// generation) and a new one is started: at most about twice this is kept per target.
inline constexpr std::uintmax_t kHistoryMaxBytes = 1024 * 1024;

/// Appends `outcome` as one JSON line to `file` and fsyncs it (unless `sync` is false), rotating
/// first when the line would take the file past `max_bytes`. Never follows a symbolic link.
boost::system::error_code append_history_line(const std::filesystem::path& file, const Outcome& outcome,
                                              std::uintmax_t max_bytes = kHistoryMaxBytes, bool sync = true);

/// What a history file holds, oldest first.
struct HistoryRead {
  std::vector<Outcome> entries;
  /// Lines that could not be read (a torn last line after a crash or a full disk), as
  /// "FILE:LINE: why"; they are skipped, never fatal.
  std::vector<std::string> skipped;
  /// Files that exist but could not be opened, as "FILE: why".
  std::vector<std::string> errors;
};

/// Reads `<file>.1` then `file` (either may be missing).
HistoryRead read_history(const std::filesystem::path& file);

}  // namespace sentinel
