#include "state_store.h"

#include "test_support.h"

#include <doctest/doctest.h>

#include <filesystem>

using namespace sentinel;
using sentinel::test::read_file;
using sentinel::test::TempDir;

namespace {

constexpr const char* kGood = "1111111111111111111111111111111111111111";
constexpr const char* kNext = "2222222222222222222222222222222222222222";
constexpr const char* kOther = "3333333333333333333333333333333333333333";

}  // namespace

TEST_CASE("a commit staged as known-good becomes the known-good one only when it is promoted") {
  TempDir dir;
  StateStore store(dir.path());
  store.prepare({"prod"});
  REQUIRE_FALSE(store.set_known_good("prod", kGood));
  REQUIRE_FALSE(store.stage_known_good("prod", kNext));
  CHECK(store.known_good("prod") == kGood);  // staged is not deployed: a revert still goes to kGood
  REQUIRE_FALSE(store.promote_known_good("prod", kNext));
  CHECK(store.known_good("prod") == kNext);
  CHECK_FALSE(std::filesystem::exists(dir / "targets" / "prod" / "known-good.next"));
}

TEST_CASE("promoting a commit other than the staged one records the promoted commit") {
  TempDir dir;
  StateStore store(dir.path());
  store.prepare({"prod"});
  REQUIRE_FALSE(store.stage_known_good("prod", kNext));
  REQUIRE_FALSE(store.promote_known_good("prod", kOther));
  CHECK(store.known_good("prod") == kOther);
  REQUIRE_FALSE(store.promote_known_good("prod", kGood));  // nothing staged for it at all
  CHECK(store.known_good("prod") == kGood);
}

TEST_CASE("a history line appended without fsync is there at once, and syncing it succeeds") {
  TempDir dir;
  StateStore store(dir.path());
  store.prepare({"prod"});
  REQUIRE_FALSE(store.append_history("prod", Outcome{"deployed", kNext, "", "2026-12-05T23:00:00Z", ""}, false));
  CHECK(read_file(dir / "targets" / "prod" / "history.jsonl").find(kNext) != std::string::npos);
  CHECK_FALSE(store.sync_history("prod"));
  CHECK(store.sync_history("other"));  // no history: an error, not a crash
}
