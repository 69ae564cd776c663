#pragma once
// Operator hooks: a program run once when a deploy ends (deployed, reverted, failed, recovered),
// told what happened through its environment. Fire and forget: the deploy never waits for it.

#include "config.h"
#include "subprocess.h"

#include <boost/asio/any_io_executor.hpp>

#include <string>

namespace sentinel {

/// What a hook is told, as DEPLOY_* environment variables.
struct HookEvent {
  std::string result;    // "deployed", "reverted", "failed", "recovered": picks on_<result>
  std::string commit;    // DEPLOY_COMMIT: the commit production runs now (for "failed": the one that failed)
  std::string previous;  // DEPLOY_PREVIOUS: the commit it ran before, or the one a revert undid
  std::string reason;    // DEPLOY_REASON: "" for "deployed"
};

/// The run of `target`'s hook for `event`, or nullopt when it has none for that result.
/// The environment is the target's command environment plus DEPLOY_TARGET, DEPLOY_RESULT,
/// DEPLOY_COMMIT, DEPLOY_PREVIOUS and DEPLOY_REASON; it runs in the checkout.
std::optional<RunSpec> hook_spec(const TargetConfig& target, const HookEvent& event);

/// Starts the hook for `event` (if any) on `executor` and returns at once. Its end is logged: a
/// failure, a timeout or a hook that cannot start is a warning and changes nothing else.
void start_hook(const boost::asio::any_io_executor& executor, const TargetConfig& target, const HookEvent& event);

}  // namespace sentinel
