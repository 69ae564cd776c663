#pragma once
// The few git operations the sentinel needs on a production checkout.

#include "subprocess.h"

#include <boost/asio/awaitable.hpp>

#include <filesystem>
#include <optional>
#include <string>

namespace sentinel {

/// The checkout's HEAD as a full 40-character SHA, or an error sentence.
struct HeadCommit {
  std::string commit;
  std::string error;
};

/// HEAD of `checkout` read from the repository's files (HEAD, loose refs, packed-refs, linked
/// worktrees); nullopt for anything it does not understand (then ask git).
std::optional<std::string> read_head(const std::filesystem::path& checkout);

/// HEAD of `checkout`: read_head, or `git rev-parse --verify HEAD^{commit}` when that fails.
boost::asio::awaitable<HeadCommit> git_head(std::filesystem::path checkout);

/// Runs `git reset --hard COMMIT` in `checkout`, output logged under `log_tag`.
boost::asio::awaitable<RunResult> git_reset_hard(std::filesystem::path checkout, std::string commit,
                                                 std::string log_tag);

/// `rev` (a SHA, full or abbreviated, or any revision git understands) as the full SHA of a
/// commit that exists in `checkout`, or an error sentence naming the checkout.
boost::asio::awaitable<HeadCommit> git_resolve_commit(std::filesystem::path checkout, std::string rev);
/// git_resolve_commit for command-line tools.
HeadCommit git_resolve_commit_now(const std::filesystem::path& checkout, const std::string& rev);
/// git_head for command-line tools that have no event loop of their own.
HeadCommit git_head_now(const std::filesystem::path& checkout);

}  // namespace sentinel
