#include "log.h"

#include "config.h"

#include <spdlog/sinks/ansicolor_sink.h>
#include <spdlog/sinks/base_sink.h>
#include <spdlog/spdlog.h>

#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>

namespace sentinel {
namespace {

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
  if (stderr_is_journal()) {
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

}  // namespace sentinel
