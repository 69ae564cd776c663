#include "hooks.h"

#include <boost/asio/co_spawn.hpp>
#include <spdlog/spdlog.h>

#include <exception>

namespace sentinel {
namespace asio = boost::asio;

std::optional<RunSpec> hook_spec(const TargetConfig& target, const HookEvent& event) {
  if (!target.hooks) return std::nullopt;
  const HooksConfig& hooks = *target.hooks;
  const std::vector<std::string>* argv = event.result == "deployed"    ? &hooks.on_deployed
                                         : event.result == "reverted"  ? &hooks.on_reverted
                                         : event.result == "failed"    ? &hooks.on_failed
                                         : event.result == "recovered" ? &hooks.on_recovered
                                                                       : nullptr;
  if (argv == nullptr || argv->empty()) return std::nullopt;
  auto extra = target.env;
  extra.emplace_back("DEPLOY_TARGET", target.name);
  extra.emplace_back("DEPLOY_RESULT", event.result);
  extra.emplace_back("DEPLOY_COMMIT", event.commit);
  extra.emplace_back("DEPLOY_PREVIOUS", event.previous);
  extra.emplace_back("DEPLOY_REASON", event.reason);
  RunSpec spec;
  spec.argv = *argv;
  spec.cwd = target.checkout;
  spec.timeout = hooks.timeout;
  spec.kill_grace = std::chrono::seconds(2);
  spec.log_tag = target.name + " on_" + event.result;
  spec.tail_lines = 1;
  spec.env = command_environment(extra);
  return spec;
}

void start_hook(const asio::any_io_executor& executor, const TargetConfig& target, const HookEvent& event) {
  std::optional<RunSpec> spec = hook_spec(target, event);
  if (!spec) return;
  const std::string what = target.name + ": hook on_" + event.result;
  spdlog::debug("{} started ({})", what, spec->argv.front());
  // Owns everything it needs: the target's config may be replaced by a reload while it runs.
  auto run = [](RunSpec spec, std::string what) -> asio::awaitable<void> {
    RunResult r = co_await run_command(std::move(spec));
    if (r.ok()) {
      spdlog::info("{} finished in {}", what, format_duration(r.elapsed));
    } else {
      spdlog::warn("{} {}{}; the deploy's outcome stands", what, r.describe(),
                   r.tail.empty() ? "" : " (" + r.tail.back() + ")");
    }
  };
  asio::co_spawn(executor, run(std::move(*spec), what), [what](std::exception_ptr e) {
    if (!e) return;
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& ex) {
      spdlog::warn("{}: {}", what, ex.what());
    }
  });
}

}  // namespace sentinel
