#include "state_store.h"

#include "config.h"

#include "test_support.h"

#include <doctest/doctest.h>

#include <filesystem>
#include <string>

using namespace sentinel;
using sentinel::test::read_file;
using sentinel::test::TempDir;
using sentinel::test::write_file;

namespace {

const std::string kOld = "1111111111111111111111111111111111111111";
const std::string kNew = "2222222222222222222222222222222222222222";

struct Store {
  TempDir tmp;
  StateStore store{tmp / "state"};
  Store() { store.prepare({"prod"}); }
  std::filesystem::path file(const char* name) const { return tmp / "state" / "targets" / "prod" / name; }
};

}  // namespace

TEST_CASE("no known-good file means none was recorded, and is no problem") {
  Store s;
  KnownGood kg = s.store.read_known_good("prod");
  CHECK(kg.commit.empty());
  CHECK(kg.problem.empty());
}

TEST_CASE("recording a known-good commit keeps the one it replaces as the previous generation") {
  Store s;
  REQUIRE_FALSE(s.store.set_known_good("prod", kOld));
  CHECK_FALSE(std::filesystem::exists(s.file("known-good.bak")));
  REQUIRE_FALSE(s.store.set_known_good("prod", kNew));
  CHECK(s.store.known_good("prod") == kNew);
  CHECK(read_file(s.file("known-good.bak")) == kOld + "\n");
  REQUIRE_FALSE(s.store.set_known_good("prod", kNew));  // the same again does not lose the older one
  CHECK(read_file(s.file("known-good.bak")) == kOld + "\n");
}

TEST_CASE("a torn known-good file is reported and the previous generation is used, not none") {
  Store s;
  REQUIRE_FALSE(s.store.set_known_good("prod", kOld));
  REQUIRE_FALSE(s.store.set_known_good("prod", kNew));
  write_file(s.file("known-good"), kNew.substr(0, 5));  // a write cut short
  KnownGood kg = s.store.read_known_good("prod");
  CHECK(kg.commit == kOld);
  CHECK(kg.problem.find(s.file("known-good").string() + " is corrupt") != std::string::npos);
  CHECK(kg.problem.find("known-good.bak") != std::string::npos);
}

TEST_CASE("a known-good file of garbage with no previous generation is reported with the fix") {
  Store s;
  write_file(s.file("known-good"), std::string("\0\xff garbage", 10));
  KnownGood kg = s.store.read_known_good("prod");
  CHECK(kg.commit.empty());
  CHECK(kg.problem.find("is corrupt") != std::string::npos);
  CHECK(kg.problem.find("no previous generation") != std::string::npos);
  CHECK(kg.problem.find("write the commit SHA") != std::string::npos);
}

TEST_CASE("a known-good file that is not a regular file is unreadable, and the previous generation is used") {
  Store s;
  REQUIRE_FALSE(s.store.set_known_good("prod", kOld));
  REQUIRE_FALSE(s.store.set_known_good("prod", kNew));
  std::filesystem::remove(s.file("known-good"));
  std::filesystem::create_directory(s.file("known-good"));
  KnownGood kg = s.store.read_known_good("prod");
  CHECK(kg.commit == kOld);
  CHECK(kg.problem.find("cannot be read") != std::string::npos);
}

TEST_CASE("recording over a corrupt known-good file keeps the good previous generation") {
  Store s;
  REQUIRE_FALSE(s.store.set_known_good("prod", kOld));
  REQUIRE_FALSE(s.store.set_known_good("prod", kNew));
  write_file(s.file("known-good"), "torn");
  REQUIRE_FALSE(s.store.set_known_good("prod", "3333333333333333333333333333333333333333"));
  CHECK(read_file(s.file("known-good.bak")) == kOld + "\n");
}

TEST_CASE("a world-writable state_dir is refused with the fix") {
  TempDir tmp;
  std::filesystem::create_directory(tmp / "state");
  std::filesystem::permissions(tmp / "state", std::filesystem::perms::others_write, std::filesystem::perm_options::add);
  StateStore store{tmp / "state"};
  CHECK_THROWS_WITH_AS(store.prepare({"prod"}),
                       ("state_dir " + (tmp / "state").string() + " is world-writable, so anyone could change the "
                        "known-good commit that the sentinel reverts to; fix it with: chmod o-w " + (tmp / "state").string())
                           .c_str(),
                       StartupError);
}

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

TEST_CASE("promoting a staged commit keeps the one it replaces as the previous generation") {
  Store s;
  REQUIRE_FALSE(s.store.set_known_good("prod", kOld));
  REQUIRE_FALSE(s.store.stage_known_good("prod", kNew));
  REQUIRE_FALSE(s.store.promote_known_good("prod", kNew));
  CHECK(s.store.known_good("prod") == kNew);
  CHECK(read_file(s.file("known-good.bak")) == kOld + "\n");
}
