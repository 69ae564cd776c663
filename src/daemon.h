#pragma once
// The daemon: every target's watch and deploy machine on one event loop.

namespace sentinel {

struct Config;

/// Runs until SIGTERM or SIGINT. Throws StartupError when it cannot start (lock held, marker
/// directory missing, state_dir not writable); returns the process exit code otherwise.
int run_daemon(const Config& config);

}  // namespace sentinel
