#include "log.h"

#include "config.h"

#include <spdlog/sinks/ansicolor_sink.h>
#include <spdlog/sinks/base_sink.h>
#include <spdlog/spdlog.h>

// CODE_FILE= and CODE_LINE= would name this file, not the transition's.
#define SD_JOURNAL_SUPPRESS_LOCATION
#include <systemd/sd-journal.h>

#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

namespace sentinel {
namespace {

bool to_journal = false;

/// True when stderr is the journal stream systemd gave us ($JOURNAL_STREAM is "DEV:INODE").
bool stderr_is_journal() {
  const char* stream = std::getenv("JOURNAL_STREAM");
  if (stream == nullptr) return false;
  struct stat st {};
  if (fstat(STDERR_FILENO, &st) != 0) return false;
  unsigned long long dev = 0, ino = 0;
  if (std::sscanf(stream, "%llu:%llu", &dev, &ino) != 2) return false;
  return dev == st.st_dev && ino == st.st_ino;
}

/// Writes "<N>message" lines that journald turns into entries with priority N.
class JournalStreamSink final : public spdlog::sinks::base_sink<std::mutex> {
 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    spdlog::memory_buf_t line;
    fmt::format_to(std::back_inserter(line), "<{}>", priority(msg.level));
    formatter_->format(msg, line);
    std::fwrite(line.data(), 1, line.size(), stderr);
  }
  void flush_() override { std::fflush(stderr); }

 private:
  static int priority(spdlog::level::level_enum level) {
    switch (level) {
      case spdlog::level::critical: return 2;
      case spdlog::level::err: return 3;
      case spdlog::level::warn: return 4;
      case spdlog::level::info: return 6;
      default: return 7;
    }
  }
};

}  // namespace

void setup_logging(std::string_view level_name) {
  auto level = spdlog::level::from_str(std::string(level_name));
  if (level == spdlog::level::off && level_name != "off") {
    throw StartupError("unknown log level \"" + std::string(level_name) +
                       "\": use trace, debug, info, warn, error, critical or off");
  }
  std::shared_ptr<spdlog::logger> logger;
  to_journal = stderr_is_journal();
  if (to_journal) {
    auto sink = std::make_shared<JournalStreamSink>();
    sink->set_pattern("%v");
    logger = std::make_shared<spdlog::logger>("sentinel", std::move(sink));
  } else {
    auto sink = std::make_shared<spdlog::sinks::ansicolor_stderr_sink_mt>(spdlog::color_mode::automatic);
    sink->set_pattern("%Y-%m-%d %H:%M:%S.%e %^%-5l%$ %v");
    logger = std::make_shared<spdlog::logger>("sentinel", std::move(sink));
  }
  logger->set_level(level);
  logger->flush_on(spdlog::level::trace);
  spdlog::set_default_logger(std::move(logger));
}

bool logging_to_journal() { return to_journal; }

void journal_event(int priority, std::string_view message, const JournalFields& fields) {
  if (!to_journal) return;
  const auto level = priority <= 2 ? spdlog::level::critical
                     : priority == 3 ? spdlog::level::err
                     : priority == 4 ? spdlog::level::warn
                     : priority <= 6 ? spdlog::level::info
                                     : spdlog::level::debug;
  if (!spdlog::should_log(level)) return;
  try {
    std::vector<std::string> items;
    items.reserve(fields.size() + 3);
    items.push_back("MESSAGE=" + std::string(message));
    items.push_back("PRIORITY=" + std::to_string(priority));
    // The same identifier as the unit's stderr lines, so `journalctl -t deploy-sentinel` has both.
    items.push_back("SYSLOG_IDENTIFIER=" + std::string(program_invocation_short_name));
    for (const auto& [name, value] : fields) items.push_back(std::string(name) + "=" + std::string(value));
    std::vector<iovec> iov;
    for (auto& item : items) iov.push_back({item.data(), item.size()});
    const int r = sd_journal_sendv(iov.data(), static_cast<int>(iov.size()));
    if (r < 0) spdlog::debug("cannot send a journal entry: {}", std::strerror(-r));
  } catch (const std::exception&) {
    // Out of memory while formatting: the human log line has said it already.
  }
}

}  // namespace sentinel
