#include "git.h"

#include "marker.h"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_future.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <fstream>
#include <optional>
#include <string_view>

namespace sentinel {
namespace asio = boost::asio;
using namespace std::chrono_literals;

namespace fs = std::filesystem;

namespace {

/// The first line of a small file (HEAD, a loose ref: one line each), read with one read():
/// it sits between the marker and the restart, where a std::ifstream cost more than the reads.
std::optional<std::string> first_line(const fs::path& file) {
  const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  char buf[512];
  ssize_t n;
  do {
    n = ::read(fd, buf, sizeof buf);
  } while (n < 0 && errno == EINTR);
  ::close(fd);
  if (n <= 0) return std::nullopt;
  std::string_view text(buf, static_cast<std::size_t>(n));
  if (auto nl = text.find('\n'); nl != std::string_view::npos) return std::string(text.substr(0, nl));
  if (static_cast<std::size_t>(n) == sizeof buf) return std::nullopt;  // not a short one-line file
  return std::string(text);
}

bool is_full_sha(std::string_view text) { return text.size() == 40 && looks_like_commit(text); }

/// The commit a ref points to, from a loose ref file or packed-refs; nullopt when not found.
std::optional<std::string> resolve_ref(const fs::path& git_dir, const fs::path& common_dir, const std::string& ref) {
  for (const auto& dir : {git_dir, common_dir}) {
    if (auto sha = first_line(dir / ref); sha && is_full_sha(*sha)) return sha;
  }
  std::ifstream packed(common_dir / "packed-refs");
  for (std::string line; std::getline(packed, line);) {
    if (line.size() == 41 + ref.size() && line[40] == ' ' && line.compare(41, std::string::npos, ref) == 0 &&
        is_full_sha(std::string_view(line).substr(0, 40))) {
      return line.substr(0, 40);
    }
  }
  return std::nullopt;
}

/// git in `checkout`, trusting it although another user (the agent) owns it: the daemon often
/// runs as root or as its own user, and git refuses "dubious ownership" otherwise.
std::vector<std::string> git_argv(const fs::path& checkout, std::initializer_list<std::string> args) {
  std::vector<std::string> argv = {"git", "-c", "safe.directory=" + checkout.string(), "-C", checkout.string()};
  argv.insert(argv.end(), args);
  return argv;
}

}  // namespace

std::optional<std::string> read_head(const fs::path& checkout) {
  fs::path git_dir = checkout / ".git";
  std::error_code ec;
  if (fs::is_regular_file(git_dir, ec)) {  // a linked worktree or submodule: "gitdir: PATH"
    auto line = first_line(git_dir);
    if (!line || !line->starts_with("gitdir: ")) return std::nullopt;
    fs::path target = line->substr(8);
    git_dir = target.is_absolute() ? target : checkout / target;
  }
  fs::path common_dir = git_dir;
  if (auto common = first_line(git_dir / "commondir")) {
    fs::path c = *common;
    common_dir = c.is_absolute() ? c : git_dir / c;
  }
  auto head = first_line(git_dir / "HEAD");
  if (!head) return std::nullopt;
  if (is_full_sha(*head)) return head;  // detached
  if (!head->starts_with("ref: ")) return std::nullopt;
  return resolve_ref(git_dir, common_dir, head->substr(5));
}

boost::asio::awaitable<HeadCommit> git_head(std::filesystem::path checkout) {
  // Reading the files takes microseconds; running git takes a millisecond or more, right on
  // the path from marker to restart. git itself is the fallback for anything unusual.
  if (auto sha = read_head(checkout)) co_return HeadCommit{*sha, {}};
  RunSpec spec;
  spec.argv = git_argv(checkout, {"rev-parse", "--verify", "--quiet", "HEAD^{commit}"});
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
  spec.argv = git_argv(checkout, {"reset", "--hard", "--quiet", commit});
  spec.timeout = 120s;
  spec.log_tag = std::move(log_tag);
  co_return co_await run_command(std::move(spec));
}

boost::asio::awaitable<HeadCommit> git_resolve_commit(std::filesystem::path checkout, std::string rev) {
  if (rev.empty() || rev.starts_with('-')) co_return HeadCommit{{}, "\"" + rev + "\" is not a commit"};
  RunSpec spec;
  spec.argv = git_argv(checkout, {"rev-parse", "--verify", "--quiet", rev + "^{commit}"});
  spec.timeout = 30s;
  spec.tail_lines = 5;
  RunResult r = co_await run_command(std::move(spec));
  if (r.ok() && !r.tail.empty() && r.tail.back().size() == 40 && looks_like_commit(r.tail.back())) {
    co_return HeadCommit{r.tail.back(), {}};
  }
  if (r.end == RunResult::End::exited && r.code == 1) {
    co_return HeadCommit{{}, rev + " is not a commit in " + checkout.string()};
  }
  std::string why = r.tail.empty() ? r.describe() : r.describe() + ": " + r.tail.back();
  co_return HeadCommit{{}, "cannot look up " + rev + " in " + checkout.string() + " (git " + why + ")"};
}

HeadCommit git_resolve_commit_now(const std::filesystem::path& checkout, const std::string& rev) {
  asio::io_context ctx;
  auto result = asio::co_spawn(ctx, git_resolve_commit(checkout, rev), asio::use_future);
  while (result.wait_for(std::chrono::seconds(0)) != std::future_status::ready) ctx.run_one();
  return result.get();
}

HeadCommit git_head_now(const std::filesystem::path& checkout) {
  asio::io_context ctx;
  auto result = asio::co_spawn(ctx, git_head(checkout), asio::use_future);
  while (result.wait_for(std::chrono::seconds(0)) != std::future_status::ready) ctx.run_one();
  return result.get();
}

}  // namespace sentinel
