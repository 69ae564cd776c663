#include "systemd.h"

#include "log.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/steady_timer.hpp>
#include <spdlog/spdlog.h>

#include <systemd/sd-daemon.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>
#include <set>

namespace sentinel {
namespace asio = boost::asio;

namespace {

/// "prod: restarting 3f2c1a9e0b4d", "prod: reverting to 3f2c1a9e0b4d (not healthy within 60s)",
/// "prod: deployed 3f2c1a9e0b4d": for STATUS= and the journal entry's MESSAGE=.
std::string describe(const Transition& t) {
  std::string text = std::string(t.target) + ": " + std::string(t.result.empty() ? t.phase : t.result);
  if (!t.commit.empty()) {
    text += t.result.empty() && t.phase == "reverting" ? " to " : " ";
    text += t.commit.substr(0, 12);
  }
  if (!t.detail.empty() && t.detail != t.phase) text += " (" + std::string(t.detail) + ")";
  return text;
}

}  // namespace

struct ServiceNotifier::State {
  explicit State(asio::any_io_executor executor) : watchdog(std::move(executor)) {}

  /// sd_notify, logging a failure once: the unit's view may go stale, the daemon goes on.
  void notify(const std::string& message) {
    const int r = sd_notify(0, message.c_str());
    if (r < 0 && !notify_failed) {
      spdlog::warn("cannot notify systemd ({}): {}", message.substr(0, message.find('\n')), std::strerror(-r));
      notify_failed = true;
    }
  }

  /// STATUS= with every target's state, and READY=1 the first time every target has started.
  void update(const Transition& t) {
    auto it = states.find(std::string(t.target));
    if (it == states.end()) return;
    it->second = describe(t);
    if (t.phase != "starting") started.insert(it->first);
    std::string status;
    for (const auto& [target, state] : states) status += (status.empty() ? "" : "; ") + state;
    const bool becomes_ready = !ready && started.size() == states.size();
    if (status == sent_status && !becomes_ready) return;
    sent_status = status;
    std::string message = "STATUS=" + status;
    if (becomes_ready) {
      ready = true;
      message = "READY=1\n" + message;
    }
    if (!stopped && !reloading) notify(message);
  }

  void ping_watchdog() {
    notify("WATCHDOG=1");
    watchdog.expires_after(watchdog_interval);
    watchdog.async_wait([weak = std::weak_ptr<State>(self)](const boost::system::error_code& ec) {
      auto state = weak.lock();
      if (ec || !state || state->stopped) return;
      state->ping_watchdog();
    });
  }

  std::weak_ptr<State> self;
  std::map<std::string, std::string> states;  // target -> its part of STATUS=
  std::set<std::string> started;
  std::string sent_status;
  bool ready = false;
  bool stopped = false;
  bool reloading = false;  // the next notifier takes over with READY=1
  bool notify_failed = false;
  asio::steady_timer watchdog;
  std::chrono::microseconds watchdog_interval{0};
};

namespace {

ServiceNotifier::State* current = nullptr;

int priority_of(std::string_view result) {
  if (result == "failed") return 2;                          // crit: the target is quarantined
  if (result == "reverted" || result == "rejected") return 4;  // warning
  if (!result.empty()) return 5;                             // notice: deployed, recovered
  return 6;                                                  // info: a phase
}

}  // namespace

void report_transition(const Transition& t, bool new_phase) {
  try {
    if (current != nullptr) current->update(t);
    if (!logging_to_journal() || (t.result.empty() && (!new_phase || t.phase == "watching"))) return;
    const std::string message = describe(t);
    JournalFields fields{{"DEPLOY_TARGET", t.target}, {"DEPLOY_PHASE", t.phase}};
    if (!t.commit.empty()) fields.emplace_back("DEPLOY_COMMIT", t.commit);
    if (!t.result.empty()) fields.emplace_back("DEPLOY_RESULT", t.result);
    journal_event(priority_of(t.result), message, fields);
  } catch (const std::exception&) {
    // Out of memory: the human log line has said it already.
  }
}

ServiceNotifier::ServiceNotifier(asio::any_io_executor executor, std::vector<std::string> targets)
    : state_(std::make_shared<State>(std::move(executor))) {
  state_->self = state_;
  const char* socket = std::getenv("NOTIFY_SOCKET");
  if (socket == nullptr || *socket == '\0') return;  // not run by systemd (or not Type=notify)
  for (auto& target : targets) state_->states.emplace(std::move(target), std::string());
  for (auto& [target, state] : state_->states) state = target + ": starting";
  current = state_.get();
  uint64_t usec = 0;
  if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0) {
    state_->watchdog_interval = std::chrono::microseconds(usec / 2);
    state_->ping_watchdog();
  }
  if (state_->states.empty()) {
    state_->ready = true;
    state_->notify("READY=1");
  }
}

void ServiceNotifier::reloading() {
  if (current != state_.get() || state_->stopped) return;
  state_->reloading = true;
  state_->notify("RELOADING=1\nSTATUS=reloading the config");
}

void ServiceNotifier::stopping() {
  if (current != state_.get() || state_->stopped) return;
  state_->reloading = false;
  state_->stopped = true;
  state_->watchdog.cancel();
  state_->notify("STOPPING=1\nSTATUS=stopping");
}

ServiceNotifier::~ServiceNotifier() {
  if (!state_->reloading) stopping();
  if (current == state_.get()) current = nullptr;
}

}  // namespace sentinel
