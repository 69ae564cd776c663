#pragma once
// The command line: run, check-config, stage, status, hold, release.

namespace sentinel {

/// Parses the arguments, runs the chosen command and returns the process exit code
/// (0 ok, 1 failure, 64 usage error, 75 try again later, 78 bad config). Prints errors to stderr.
int run_cli(int argc, char** argv);

}  // namespace sentinel
