#pragma once
// The daemon: every target's watch and deploy machine on one event loop.

namespace sentinel {

struct Config;

/// Runs until SIGTERM or SIGINT. SIGHUP reads the config file again: a bad one is logged with
/// its FILE:LINE:COL and the running config kept; a good one is applied once every target has
/// stopped as for SIGTERM (running commands finish), and each target resumes from its record.
/// Throws StartupError when it cannot start (lock held, marker directory missing, state_dir not
/// writable); returns the process exit code otherwise.
int run_daemon(const Config& config);

}  // namespace sentinel
