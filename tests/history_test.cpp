#include "history.h"

#include "test_support.h"

#include <doctest/doctest.h>

#include <filesystem>
#include <string>

using namespace sentinel;
using sentinel::test::read_file;
using sentinel::test::TempDir;
using sentinel::test::write_file;
namespace fs = std::filesystem;

namespace {

Outcome outcome(const std::string& result, int n) {
  return Outcome{result, std::string(40, 'a'), "entry " + std::to_string(n), "2026-12-01T00:00:00Z", {}};
}

}  // namespace

TEST_CASE("history entries are read back in the order they were appended") {
  TempDir tmp;
  const fs::path file = tmp / "history.jsonl";
  REQUIRE_FALSE(append_history_line(file, outcome("deployed", 1)));
  REQUIRE_FALSE(append_history_line(file, outcome("reverted", 2)));
  REQUIRE_FALSE(append_history_line(file, outcome("cycle", 3)));
  HistoryRead read = read_history(file);
  REQUIRE(read.entries.size() == 3);
  CHECK(read.entries[0].result == "deployed");
  CHECK(read.entries[1].reason == "entry 2");
  CHECK(read.entries[2].result == "cycle");
  CHECK(read.skipped.empty());
  CHECK(read.errors.empty());
}

TEST_CASE("a history that would grow past its cap is rotated to one older generation, and both are read") {
  TempDir tmp;
  const fs::path file = tmp / "history.jsonl";
  constexpr std::uintmax_t cap = 400;
  int appended = 0;
  while (!fs::exists(file.string() + ".1")) {
    REQUIRE_FALSE(append_history_line(file, outcome("deployed", appended++), cap));
    REQUIRE(appended < 100);
  }
  CHECK(fs::file_size(file) <= cap);
  CHECK(fs::file_size(file.string() + ".1") <= cap);
  HistoryRead both = read_history(file);
  REQUIRE_FALSE(both.entries.empty());
  CHECK(both.entries.back().reason == "entry " + std::to_string(appended - 1));
  CHECK(both.entries.size() == static_cast<std::size_t>(appended));
  // Rotating again replaces the older generation: at most two are kept.
  for (int i = 0; i < 20; ++i) REQUIRE_FALSE(append_history_line(file, outcome("deployed", appended++), cap));
  CHECK(fs::file_size(file.string() + ".1") <= cap);
  CHECK_FALSE(fs::exists(file.string() + ".2"));
  HistoryRead later = read_history(file);
  CHECK(later.entries.size() < static_cast<std::size_t>(appended));
  CHECK(later.entries.back().reason == "entry " + std::to_string(appended - 1));
}

TEST_CASE("a torn last line is skipped and reported, and the next entry starts on a line of its own") {
  TempDir tmp;
  const fs::path file = tmp / "history.jsonl";
  REQUIRE_FALSE(append_history_line(file, outcome("deployed", 1)));
  write_file(file, read_file(file) + R"({"result":"reverted","com)");
  HistoryRead torn = read_history(file);
  REQUIRE(torn.entries.size() == 1);
  REQUIRE(torn.skipped.size() == 1);
  CHECK(torn.skipped[0] == file.string() + ":2: torn line (the write did not finish)");

  REQUIRE_FALSE(append_history_line(file, outcome("recovered", 3)));
  HistoryRead after = read_history(file);
  REQUIRE(after.entries.size() == 2);
  CHECK(after.entries[1].result == "recovered");
  CHECK(after.skipped.size() == 1);
}

TEST_CASE("a missing history is empty, not an error") {
  TempDir tmp;
  HistoryRead read = read_history(tmp / "history.jsonl");
  CHECK(read.entries.empty());
  CHECK(read.skipped.empty());
  CHECK(read.errors.empty());
}

TEST_CASE("a history file that is a symbolic link is not appended through") {
  TempDir tmp;
  write_file(tmp / "elsewhere", "");
  fs::create_symlink(tmp / "elsewhere", tmp / "history.jsonl");
  CHECK(append_history_line(tmp / "history.jsonl", outcome("deployed", 1)));
  CHECK(read_file(tmp / "elsewhere").empty());
}
