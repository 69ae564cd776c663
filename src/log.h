#pragma once
// Where log lines go: the journal (with <N> priority prefixes), a terminal (colour), or a file.

#include <string_view>

namespace sentinel {

/// Installs the process-wide spdlog logger writing to stderr: with systemd priority prefixes
/// ("<6>...") and no timestamp when stderr is the journal (JOURNAL_STREAM matches stderr),
/// in colour on a terminal, plain with timestamps otherwise. Throws StartupError for an
/// unknown level name.
void setup_logging(std::string_view level);

}  // namespace sentinel
