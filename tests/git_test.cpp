// Reading HEAD from a real git repository's files, checked against git itself.
#include "git.h"
#include "e2e/harness.h"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_future.hpp>
#include <doctest/doctest.h>

#include <unistd.h>

using namespace sentinel;
using sentinel::test::run_program;
using sentinel::test::TempDir;

namespace {

std::string git(const std::filesystem::path& dir, std::vector<std::string> args) {
  std::vector<std::string> argv = {"git", "-C", dir.string(), "-c", "user.name=t", "-c", "user.email=t@t.invalid"};
  argv.insert(argv.end(), args.begin(), args.end());
  auto r = run_program(argv);
  REQUIRE(r.status == 0);
  return r.out.substr(0, r.out.find('\n'));
}

}  // namespace

TEST_CASE("HEAD is read from a branch's loose ref, from packed-refs, and when detached, as git sees it") {
  TempDir tmp;
  auto repo = tmp / "repo";
  std::filesystem::create_directories(repo);
  git(repo, {"init", "-q", "-b", "main"});
  CHECK_FALSE(read_head(repo));  // no commit yet: git must answer
  git(repo, {"commit", "-q", "--allow-empty", "-m", "one"});
  CHECK(read_head(repo) == git(repo, {"rev-parse", "HEAD"}));

  git(repo, {"pack-refs", "--all"});
  CHECK_FALSE(std::filesystem::exists(repo / ".git/refs/heads/main"));
  CHECK(read_head(repo) == git(repo, {"rev-parse", "HEAD"}));

  git(repo, {"commit", "-q", "--allow-empty", "-m", "two"});
  std::string two = git(repo, {"rev-parse", "HEAD"});
  git(repo, {"checkout", "-q", "--detach", "HEAD~1"});
  CHECK(read_head(repo) == git(repo, {"rev-parse", "HEAD"}));
  CHECK(read_head(repo) != two);
}

TEST_CASE("HEAD of a linked worktree is its own, not the main checkout's") {
  TempDir tmp;
  auto repo = tmp / "repo";
  std::filesystem::create_directories(repo);
  git(repo, {"init", "-q", "-b", "main"});
  git(repo, {"commit", "-q", "--allow-empty", "-m", "one"});
  git(repo, {"worktree", "add", "-q", "-b", "side", (tmp / "side").string()});
  git(tmp / "side", {"commit", "-q", "--allow-empty", "-m", "two"});
  CHECK(read_head(tmp / "side") == git(tmp / "side", {"rev-parse", "HEAD"}));
  CHECK(read_head(repo) == git(repo, {"rev-parse", "HEAD"}));
  CHECK(read_head(repo) != read_head(tmp / "side"));
}

TEST_CASE("git_head falls back to git and says why when the checkout is not a repository") {
  TempDir tmp;
  boost::asio::io_context ctx;
  auto result = boost::asio::co_spawn(ctx, git_head(tmp.path()), boost::asio::use_future);
  ctx.run();
  HeadCommit head = result.get();
  CHECK(head.commit.empty());
  CHECK(head.error.find("cannot read HEAD of " + tmp.path().string()) == 0);
}

TEST_CASE("a revert resets a checkout that another user owns, as when the daemon runs as root") {
  if (::geteuid() != 0) return;  // only root can hand the checkout to another user
  TempDir tmp;
  auto repo = tmp / "repo";
  std::filesystem::create_directories(repo);
  git(repo, {"init", "-q", "-b", "main"});
  git(repo, {"commit", "-q", "--allow-empty", "-m", "one"});
  std::string one = git(repo, {"rev-parse", "HEAD"});
  git(repo, {"commit", "-q", "--allow-empty", "-m", "two"});
  REQUIRE(run_program({"chown", "-R", "nobody", repo.string()}).status == 0);

  boost::asio::io_context ctx;
  auto result = boost::asio::co_spawn(ctx, git_reset_hard(repo, one, "test git"), boost::asio::use_future);
  ctx.run();
  RunResult reset = result.get();
  CHECK(reset.ok());
  CHECK(read_head(repo) == one);
}
