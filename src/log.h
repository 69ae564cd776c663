#pragma once
// Where log lines go: the journal (with <N> priority prefixes), a terminal (colour), or a file.

#include <string_view>
#include <utility>
#include <vector>

namespace sentinel {

/// Installs the process-wide spdlog logger writing to stderr: with systemd priority prefixes
/// ("<6>...") and no timestamp when stderr is the journal (JOURNAL_STREAM matches stderr),
/// in colour on a terminal, plain with timestamps otherwise. Throws StartupError for an
/// unknown level name.
void setup_logging(std::string_view level);

/// True when setup_logging() found stderr to be the journal.
bool logging_to_journal();

/// Journal fields of one entry, as NAME and value ("DEPLOY_COMMIT", "3f2c...").
using JournalFields = std::vector<std::pair<std::string_view, std::string_view>>;

/// Sends one journal entry with `message` at syslog `priority` (0-7) and `fields`, natively
/// (sd_journal_send), when the log goes to the journal and the log level lets `priority` through;
/// does nothing otherwise: on a terminal the human log lines already say it. Never throws.
void journal_event(int priority, std::string_view message, const JournalFields& fields);

}  // namespace sentinel
