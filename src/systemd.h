#pragma once
// The daemon's side of systemd: readiness, status, the watchdog and stopping (sd_notify), and one
// journal entry with structured fields per state transition. Nothing of it outside systemd.

#include <boost/asio/any_io_executor.hpp>

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace sentinel {

/// One state transition of a target, as systemd and the journal are told about it.
struct Transition {
  std::string_view target;
  std::string_view phase;   // as `status` shows it: "waiting-idle", "restarting", ...
  std::string_view commit;  // full SHA, or empty
  std::string_view detail;  // why, in a few words
  std::string_view result;  // at the end of a deploy or recovery: "deployed", "reverted", ...; else empty
};

/// Reports a target's transition. Always: the target's part of the unit's STATUS= (sent only
/// when a ServiceNotifier lives). When the log goes to the journal, also one journal entry with
/// DEPLOY_TARGET=, DEPLOY_PHASE=, DEPLOY_COMMIT=, DEPLOY_RESULT= for a result and for a phase
/// entered anew (`new_phase`) other than "watching". Never throws.
void report_transition(const Transition& transition, bool new_phase);

/// The daemon as its service manager sees it, for as long as this lives (one at a time). When
/// $NOTIFY_SOCKET is set: READY=1 once every target in `targets` has left the phase "starting"
/// (its watches set and its start-up look at the disk done); STATUS= with every target's state
/// on each change; WATCHDOG=1 from a timer on `executor` at half of $WATCHDOG_USEC, so a stuck
/// event loop stops the pings; STOPPING=1 on stopping() or at the latest when destroyed.
/// Without $NOTIFY_SOCKET it sends nothing and arms no timer.
class ServiceNotifier {
 public:
  ServiceNotifier(boost::asio::any_io_executor executor, std::vector<std::string> targets);
  ~ServiceNotifier();
  ServiceNotifier(const ServiceNotifier&) = delete;
  ServiceNotifier& operator=(const ServiceNotifier&) = delete;

  /// Tells systemd the daemon is stopping and ends the watchdog pings.
  void stopping();
  /// Tells systemd the daemon is reloading its config (RELOADING=1): the next ServiceNotifier's
  /// READY=1 ends the reload. The watchdog pings go on meanwhile, and nothing more is sent.
  void reloading();

  struct State;

 private:
  std::shared_ptr<State> state_;
};

}  // namespace sentinel
