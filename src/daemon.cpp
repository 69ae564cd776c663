#include "daemon.h"

#include "config.h"
#include "deploy_machine.h"
#include "fleet.h"
#include "log.h"
#include "marker.h"
#include "marker_watch.h"
#include "metrics.h"
#include "state_store.h"
#include "systemd.h"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <spdlog/spdlog.h>

#include <linux/close_range.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <memory>
#include <optional>

namespace sentinel {
namespace asio = boost::asio;

namespace {

/// Everything one target needs at run time. Owned by its running coroutine, so it lives as long
/// as any of its asynchronous work does.
struct TargetRuntime {
  TargetRuntime(const TargetConfig& target, const StateStore& store, asio::any_io_executor executor)
      : actions(target, executor, [this] { machine.poke(); }),
        machine(target, store, actions, executor),
        watch(executor, target.marker_dir, target.name, [this](std::string_view) { machine.poke(); },
              marker_dir_names(target)),
        // `pause` and `resume` write and remove the pause file in the target's state directory.
        pause_watch(executor, store.pause_file(target.name).parent_path(), target.name + " pause",
                    [this](std::string_view) { machine.poke(); }, {store.pause_file(target.name).filename().string()}) {
    // A lease outside the marker directory gets a watch of its own.
    if (target.idle && !target.idle->lease_file.empty() && target.idle->lease_file.parent_path() != target.marker_dir) {
      const auto& lease = target.idle->lease_file;
      lease_watch.emplace(executor, lease.parent_path(), target.name + " lease", [this](std::string_view) { machine.poke(); },
                          lease_names(target, lease.parent_path()));
    }
  }

  void start() {
    watch.start();
    pause_watch.start();
    if (lease_watch) lease_watch->start();
  }

  /// The lease file's name when it lives in `dir`.
  static std::vector<std::string> lease_names(const TargetConfig& target, const std::filesystem::path& dir) {
    if (!target.idle || target.idle->lease_file.empty() || target.idle->lease_file.parent_path() != dir) return {};
    return {target.idle->lease_file.filename().string()};
  }

  /// Files in the marker directory reported beside the markers: the lease, the operator's revert request.
  static std::vector<std::string> marker_dir_names(const TargetConfig& target) {
    std::vector<std::string> names = lease_names(target, target.marker_dir);
    names.emplace_back(marker_file::revert_request);
    return names;
  }

  TargetProcesses actions;
  DeployMachine machine;
  MarkerWatch watch;
  MarkerWatch pause_watch;
  std::optional<MarkerWatch> lease_watch;
};

/// The config file read again for SIGHUP, or nullptr (logged, with the file's own position of
/// the problem) when it does not validate.
std::unique_ptr<Config> reload_config(const Config& running) {
  try {
    return std::make_unique<Config>(load_config(running.source));
  } catch (const StartupError& e) {
    spdlog::error("SIGHUP: keeping the running config: {}", e.what());
    return nullptr;
  }
}

/// One run of every target of `config` on `ctx`, until a stop, or until SIGHUP brings a config
/// that validates: then returns it, with every target finished and `signals` free for the next run.
std::unique_ptr<Config> run_targets(asio::io_context& ctx, asio::signal_set& signals, const Config& config) {
  std::vector<std::string> names;
  for (const auto& target : config.targets) names.push_back(target.name);
  StateStore store(config.state_dir);
  store.prepare(names);
  InstanceLock lock(config.state_dir);

  ServiceNotifier service_manager(ctx.get_executor(), names);
  // Outlives a reload: its counters count since the daemon started.
  static MetricsFile metrics;
  metrics.set_path(config.metrics_file);
  // [fleet]: every target restarts in the group (the slots bound the hosts, not the targets).
  std::optional<Fleet> fleet;
  if (config.fleet) {
    fleet.emplace(*config.fleet, ctx.get_executor());
    spdlog::info("fleet: host {} in group {} (at most {} restarting at once; etcd {})", config.fleet->host,
                 config.fleet->group, config.fleet->max_restarting, config.fleet->etcd.front().url);
  }
  std::vector<std::shared_ptr<TargetRuntime>> runtimes;
  for (const auto& target : config.targets) {
    auto runtime = std::make_shared<TargetRuntime>(target, store, ctx.get_executor());
    runtime->machine.set_metrics(&metrics);
    if (fleet) runtime->machine.set_fleet(&*fleet);
    metrics.add_target(target.name);
    runtime->start();  // the watches are set before the first look at the disk, so nothing slips between
    runtimes.push_back(std::move(runtime));
  }
  // Once a stop is asked for, the loop ends when every target has finished: detached readers
  // of a left-behind daemon's output must not keep it alive.
  std::size_t running = runtimes.size();
  bool stopping = false;
  std::unique_ptr<Config> reload;
  for (std::size_t i = 0; i < runtimes.size(); ++i) {
    auto run = [](std::shared_ptr<TargetRuntime> rt) -> asio::awaitable<void> { co_await rt->machine.run(); };
    asio::co_spawn(ctx, run(runtimes[i]), [&, name = config.targets[i].name](std::exception_ptr e) {
      if (e) {
        try {
          std::rethrow_exception(e);
        } catch (const std::exception& ex) {
          spdlog::critical("{}: stopped by an internal error: {}; other targets go on", name, ex.what());
        }
      }
      if (--running == 0 && stopping) ctx.stop();
    });
  }
  metrics.write();  // the file exists from the start, with every counter at 0
  std::vector<std::weak_ptr<TargetRuntime>> targets(runtimes.begin(), runtimes.end());
  runtimes.clear();  // the coroutines own them now

  auto stop_targets = [&] {
    stopping = true;
    for (auto& weak : targets) {
      if (auto target = weak.lock()) target->machine.request_stop();
    }
    if (running == 0) ctx.stop();
  };
  std::function<void(const boost::system::error_code&, int)> on_signal =
      [&](const boost::system::error_code& ec, int signo) {
        if (ec) return;  // cancelled at the end of this run: touch nothing of it
        const char* name = signo == SIGTERM ? "SIGTERM" : signo == SIGINT ? "SIGINT" : "SIGHUP";
        if (signo == SIGHUP) {
          if (stopping) {
            spdlog::warn("SIGHUP while stopping: ignored");
          } else if ((reload = reload_config(config))) {
            spdlog::info("SIGHUP: {} is valid; applying it once running commands have finished (each target "
                         "resumes from its record)", config.source.string());
            service_manager.reloading();
            stop_targets();
          }
        } else if (stopping && !reload) {
          spdlog::warn("{} again: stopping now; running commands are killed", name);
          ctx.stop();
          return;
        } else if (stopping) {
          spdlog::info("{}: stopping instead of reloading; running commands may finish, up to their timeouts", name);
          service_manager.stopping();
          reload.reset();
        } else {
          spdlog::info("{}: stopping; running commands may finish, up to their timeouts", name);
          service_manager.stopping();
          stop_targets();
        }
        signals.async_wait(on_signal);
      };
  signals.async_wait(on_signal);

  spdlog::info("deploy-sentinel {} watching {} target{} (state in {})", SENTINEL_VERSION, config.targets.size(),
               config.targets.size() == 1 ? "" : "s", config.state_dir.string());
  ctx.run();
  if (reload) {
    // Every target has finished. The pending signal wait refers to this frame: end it here. A
    // signal that comes before the next run's wait is kept by the signal_set, not lost.
    signals.cancel();
    ctx.restart();
    ctx.poll();
    ctx.restart();
  }
  return reload;
}

}  // namespace

int run_daemon(const Config& first) {
  // Whatever the daemon was started with beyond stdio (a shell's stray fds, a test runner's
  // pipes) must not reach production's restart command either.
  if (::close_range(3, ~0U, CLOSE_RANGE_CLOEXEC) != 0) {
    spdlog::warn("cannot mark inherited file descriptors close-on-exec: {}", std::strerror(errno));
  }
  // The loop and the signals outlive a reload: output of daemons left behind by earlier
  // restarts is still read (closing it would kill them with SIGPIPE), and no SIGTERM or SIGHUP
  // meets a default disposition in between.
  asio::io_context ctx;
  asio::signal_set signals(ctx, SIGTERM, SIGINT, SIGHUP);
  Config current = first;
  std::unique_ptr<Config> next = run_targets(ctx, signals, current);
  while (next) {
    // A config can parse and still not run (a marker directory that does not exist): then the
    // one that ran goes on, as a bad file is kept out.
    try {
      setup_logging(next->log_level);
      std::unique_ptr<Config> after = run_targets(ctx, signals, *next);
      current = std::move(*next);
      next = std::move(after);
    } catch (const StartupError& e) {
      setup_logging(current.log_level);
      spdlog::error("SIGHUP: cannot apply {}: {}; going on with the config that ran", next->source.string(),
                    e.what());
      next = run_targets(ctx, signals, current);
    }
  }
  return 0;
}

}  // namespace sentinel
