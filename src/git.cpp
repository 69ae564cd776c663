#include "git.h"

#include "marker.h"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_future.hpp>

#include <algorithm>

namespace sentinel {
namespace asio = boost::asio;
using namespace std::chrono_literals;

boost::asio::awaitable<HeadCommit> git_head(std::filesystem::path checkout) {
  RunSpec spec;
  spec.argv = {"git", "-C", checkout.string(), "rev-parse", "--verify", "--quiet", "HEAD^{commit}"};
  spec.timeout = 30s;
  spec.tail_lines = 5;
  RunResult r = co_await run_command(std::move(spec));
  if (r.ok() && !r.tail.empty() && r.tail.back().size() == 40 && looks_like_commit(r.tail.back())) {
    co_return HeadCommit{r.tail.back(), {}};
  }
  std::string why = r.tail.empty() ? r.describe() : r.describe() + ": " + r.tail.back();
  co_return HeadCommit{{}, "cannot read HEAD of " + checkout.string() + " (git " + why + ")"};
}

boost::asio::awaitable<RunResult> git_reset_hard(std::filesystem::path checkout, std::string commit,
                                                 std::string log_tag) {
  RunSpec spec;
  spec.argv = {"git", "-C", checkout.string(), "reset", "--hard", "--quiet", commit};
  spec.timeout = 120s;
  spec.log_tag = std::move(log_tag);
  co_return co_await run_command(std::move(spec));
}

HeadCommit git_head_now(const std::filesystem::path& checkout) {
  asio::io_context ctx;
  auto result = asio::co_spawn(ctx, git_head(checkout), asio::use_future);
  ctx.run();
  return result.get();
}

}  // namespace sentinel
