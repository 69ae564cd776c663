// Marker files on a real file system: reading them safely, claiming, rejecting, atomic writes.
#include "marker.h"
#include "test_support.h"

#include <boost/json.hpp>
#include <doctest/doctest.h>

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;
namespace json = boost::json;
using namespace std::chrono_literals;
using namespace sentinel;

using ScratchDir = sentinel::test::TempDir;

void write_text(const fs::path& file, const std::string& text) {
  std::ofstream out(file, std::ios::binary | std::ios::trunc);
  out << text;
  REQUIRE(out.good());
}

std::string read_text(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  std::stringstream buf;
  buf << in.rdbuf();
  return buf.str();
}

/// The names in `dir`, sorted, as "a | b", so a failed check shows them.
std::string names_in(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir)) names.push_back(entry.path().filename().string());
  std::sort(names.begin(), names.end());
  std::string out;
  for (const auto& name : names) out += (out.empty() ? "" : " | ") + name;
  return out;
}

/// True for "YYYY-MM-DDTHH:MM:SSZ".
bool looks_like_utc(std::string_view t) {
  if (t.size() != 20) return false;
  for (std::size_t i = 0; i < t.size(); ++i) {
    const char c = t[i];
    switch (i) {
      case 4: case 7: if (c != '-') return false; break;
      case 10: if (c != 'T') return false; break;
      case 13: case 16: if (c != ':') return false; break;
      case 19: if (c != 'Z') return false; break;
      default: if (c < '0' || c > '9') return false;
    }
  }
  return true;
}

MarkerCheck read_ready(const ScratchDir& dir, const std::string& text) {
  write_text(dir / marker_file::ready, text);
  return read_marker(dir / marker_file::ready);
}

}  // namespace

// ---- read_marker --------------------------------------------------------------------------

TEST_CASE("an empty marker is accepted and names no commit") {
  ScratchDir dir;
  MarkerCheck check = read_ready(dir, "");
  CHECK(check.ok);
  CHECK(check.reason.empty());
  CHECK(check.marker.commit.empty());
  CHECK(check.marker.text.empty());
}

TEST_CASE("a marker of only whitespace is accepted like an empty one") {
  ScratchDir dir;
  MarkerCheck check = read_ready(dir, " \n\t\r\n");
  CHECK(check.ok);
  CHECK(check.marker.commit.empty());
  CHECK(check.marker.text == " \n\t\r\n");
}

TEST_CASE("a JSON marker's commit, message and stager are read, and its text is kept") {
  ScratchDir dir;
  const std::string text =
      R"({"commit": "0123456789abcdef0123456789ABCDEF01234567", "message": "fix the login page",)"
      R"( "staged_by": "agent-7", "staged_at": "2026-11-25T14:03:12Z"})"
      "\n";
  MarkerCheck check = read_ready(dir, text);
  REQUIRE(check.ok);
  CHECK(check.marker.commit == "0123456789abcdef0123456789ABCDEF01234567");
  CHECK(check.marker.message == "fix the login page");
  CHECK(check.marker.staged_by == "agent-7");
  CHECK(check.marker.staged_at == "2026-11-25T14:03:12Z");
  CHECK(check.marker.text == text);
}

TEST_CASE("unknown fields in a JSON marker are ignored, whatever their type, and null fields count as absent") {
  ScratchDir dir;
  MarkerCheck check = read_ready(
      dir, R"({"commit": "abc1234", "priority": 3, "tags": ["a", "b"], "extra": {"x": null}, "message": null})");
  REQUIRE(check.ok);
  CHECK(check.marker.commit == "abc1234");
  CHECK(check.marker.message.empty());
}

TEST_CASE("a marker written by marker_json reads back with the same fields") {
  ScratchDir dir;
  Marker written{"deadbeef", "stage-cli", "2026-11-25T14:03:12Z", "a \"quoted\"\nmessage", ""};
  MarkerCheck check = read_ready(dir, marker_json(written));
  REQUIRE(check.ok);
  CHECK(check.marker.commit == written.commit);
  CHECK(check.marker.staged_by == written.staged_by);
  CHECK(check.marker.staged_at == written.staged_at);
  CHECK(check.marker.message == written.message);
  CHECK(check.marker.text.back() == '\n');
}

TEST_CASE("a marker that is a symbolic link is refused, even when it points at a good marker") {
  ScratchDir dir;
  write_text(dir / "real-marker", R"({"commit": "abc1234"})");
  REQUIRE(::symlink((dir / "real-marker").c_str(), (dir / marker_file::ready).c_str()) == 0);
  MarkerCheck check = read_marker(dir / marker_file::ready);
  CHECK_FALSE(check.ok);
  CHECK(check.reason.find("symbolic link") != std::string::npos);
  CHECK(check.marker.text.empty());
}

TEST_CASE("a marker that is a FIFO is refused without blocking on it") {
  ScratchDir dir;
  const fs::path fifo = dir / marker_file::ready;
  REQUIRE(::mkfifo(fifo.c_str(), 0644) == 0);
  auto reading = std::async(std::launch::async, [&] { return read_marker(fifo); });
  if (reading.wait_for(5s) != std::future_status::ready) {
    // read_marker is stuck opening the FIFO: release it by opening the other end, then fail.
    int fd = ::open(fifo.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd >= 0) ::close(fd);
    FAIL_CHECK("read_marker blocked on a FIFO for 5s");
  }
  MarkerCheck check = reading.get();
  CHECK_FALSE(check.ok);
  CHECK(check.reason.find("FIFO") != std::string::npos);
}

TEST_CASE("a marker that is a directory is refused") {
  ScratchDir dir;
  fs::create_directory(dir / marker_file::ready);
  MarkerCheck check = read_marker(dir / marker_file::ready);
  CHECK_FALSE(check.ok);
  CHECK(check.reason.find("directory") != std::string::npos);
}

TEST_CASE("a marker that does not exist is refused with the system's reason") {
  ScratchDir dir;
  MarkerCheck check = read_marker(dir / marker_file::ready);
  CHECK_FALSE(check.ok);
  CHECK(check.reason.find(".deploy-ready") != std::string::npos);
  CHECK(check.reason.find("No such file or directory") != std::string::npos);
}

TEST_CASE("a marker over 64 KiB is refused unread, and one of exactly 64 KiB is not refused for its size") {
  ScratchDir dir;
  MarkerCheck too_big = read_ready(dir, std::string(kMaxMarkerBytes + 1, ' '));
  CHECK_FALSE(too_big.ok);
  CHECK(too_big.reason.find(std::to_string(kMaxMarkerBytes + 1) + " bytes") != std::string::npos);
  CHECK(too_big.marker.text.empty());

  MarkerCheck at_limit = read_ready(dir, std::string(kMaxMarkerBytes, ' '));
  CHECK(at_limit.ok);
}

TEST_CASE("a sparse 1 GiB marker is refused by its size without being read") {
  ScratchDir dir;
  const fs::path file = dir / marker_file::ready;
  int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  REQUIRE(fd >= 0);
  REQUIRE(::ftruncate(fd, 1LL << 30) == 0);
  ::close(fd);
  MarkerCheck check = read_marker(file);
  CHECK_FALSE(check.ok);
  CHECK(check.reason.find("1073741824 bytes") != std::string::npos);
  CHECK(check.marker.text.empty());
}

TEST_CASE("a marker that is a socket or a device is refused without being opened") {
  ScratchDir dir;
  const fs::path file = dir / marker_file::ready;
  SUBCASE("socket") {
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd >= 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    REQUIRE(file.string().size() < sizeof addr.sun_path);
    std::strcpy(addr.sun_path, file.c_str());
    REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    MarkerCheck check = read_marker(file);
    ::close(fd);
    CHECK_FALSE(check.ok);
    CHECK(check.reason.find("socket") != std::string::npos);
  }
  SUBCASE("device") {
    if (::mknod(file.c_str(), S_IFCHR | 0644, ::makedev(1, 3)) != 0) {  // /dev/null's numbers
      MESSAGE("mknod needs root; not checked");
      return;
    }
    MarkerCheck check = read_marker(file);
    CHECK_FALSE(check.ok);
    CHECK(check.reason.find("device") != std::string::npos);
  }
}

TEST_CASE("a marker that is a hard link to a file elsewhere is refused unread") {
  ScratchDir dir;
  write_text(dir / "secret", R"({"commit": "abc1234", "message": "the secret"})");
  REQUIRE(::link((dir / "secret").c_str(), (dir / marker_file::ready).c_str()) == 0);
  MarkerCheck check = read_marker(dir / marker_file::ready);
  CHECK_FALSE(check.ok);
  CHECK(check.reason.find("hard link") != std::string::npos);
  CHECK(check.marker.text.empty());
}

TEST_CASE("a marker owned by a user outside allowed_owners is refused, one inside is read") {
  ScratchDir dir;
  write_text(dir / marker_file::ready, R"({"commit": "abc1234"})");
  const uid_t me = ::getuid();
  const std::vector<uid_t> others{me + 1, me + 2};
  MarkerCheck refused = read_marker(dir / marker_file::ready, others);
  CHECK_FALSE(refused.ok);
  CHECK(refused.reason.find("owned by uid " + std::to_string(me)) != std::string::npos);
  CHECK(refused.reason.find("allowed_owners") != std::string::npos);
  CHECK(refused.marker.text.empty());
  const std::vector<uid_t> mine{me + 1, me};
  CHECK(read_marker(dir / marker_file::ready, mine).ok);
}

TEST_CASE("a deeply nested JSON marker is refused, not recursed into") {
  ScratchDir dir;
  MarkerCheck check = read_ready(dir, std::string(10000, '[') + std::string(10000, ']'));
  CHECK_FALSE(check.ok);
  CHECK(check.reason.find("nor valid JSON: too deep") != std::string::npos);
}

TEST_CASE("a marker that is neither empty nor valid JSON is refused") {
  ScratchDir dir;
  for (const char* text : {"deploy please", "{\"commit\": \"abc1234\"", "{} trailing", "{\"a\":1,}"}) {
    CAPTURE(text);
    MarkerCheck check = read_ready(dir, text);
    CHECK_FALSE(check.ok);
    CHECK(check.reason.find("neither empty nor valid JSON") != std::string::npos);
    CHECK(check.marker.text == text);  // kept for the rejection record
  }
}

TEST_CASE("a JSON marker that is not an object is refused") {
  ScratchDir dir;
  for (const char* text : {R"(["abc1234"])", R"("abc1234")", "42", "null"}) {
    CAPTURE(text);
    MarkerCheck check = read_ready(dir, text);
    CHECK_FALSE(check.ok);
    CHECK(check.reason == "the marker's JSON is not an object");
  }
}

TEST_CASE("a commit that is not a 7-40 digit hex SHA is refused and named in the reason") {
  ScratchDir dir;
  for (const char* commit : {"main", "HEAD~1", "abc123", "0123456789abcdef0123456789abcdef012345678", "abc 1234"}) {
    CAPTURE(commit);
    MarkerCheck check = read_ready(dir, std::string(R"({"commit": ")") + commit + "\"}");
    CHECK_FALSE(check.ok);
    CHECK(check.reason.find(std::string("\"") + commit + "\"") != std::string::npos);
  }
}

// Found by fuzz_marker's one-line check: the commit went into the reason as it was, and the reason
// is logged as one line, so a "\n<0>..." in a marker forged a journal entry of any priority.
TEST_CASE("a commit with line breaks or control characters is refused with them escaped, on one line") {
  const MarkerCheck check = parse_marker(R"({"commit": "abc\n<0>forged\r\u001b[2J\u0000\u009b\"\\"})");
  CHECK_FALSE(check.ok);
  CHECK(check.reason == R"(the marker's commit "abc\u000a<0>forged\u000d\u001b[2J\u0000\u009b\"\\" is not a 7-40 digit hex SHA)");
}

// Found by fuzz_marker's length check: a 60 KiB commit made a 60 KiB log line.
TEST_CASE("a long commit is cut in the reason at a character boundary") {
  std::string two_byte_chars;
  for (int i = 0; i < 100; ++i) two_byte_chars += "\xc3\xa9";  // é
  const MarkerCheck check = parse_marker(R"({"commit": "x)" + std::string(40, 'a') + two_byte_chars + "\"}");
  CHECK_FALSE(check.ok);
  CHECK(check.reason == "the marker's commit \"x" + std::string(40, 'a') + two_byte_chars.substr(0, 22) +
                            "\"... is not a 7-40 digit hex SHA");
  CHECK(to_valid_utf8(check.reason) == check.reason);
}

TEST_CASE("parse_marker judges text as read_marker judges a file with that text") {
  ScratchDir dir;
  for (const char* text : {"", " \n", R"({"commit": "abc1234", "message": "m"})", R"({"commit": "main"})", "[1]", "{"}) {
    CAPTURE(text);
    const MarkerCheck from_file = read_ready(dir, text);
    const MarkerCheck from_text = parse_marker(text);
    CHECK(from_text.ok == from_file.ok);
    CHECK(from_text.reason == from_file.reason);
    CHECK(from_text.truncated_json == from_file.truncated_json);
    CHECK(from_text.marker.commit == from_file.marker.commit);
    CHECK(from_text.marker.message == from_file.marker.message);
    CHECK(from_text.marker.text == text);
  }
}

TEST_CASE("a known field that is not a string is refused, naming the field") {
  ScratchDir dir;
  MarkerCheck commit = read_ready(dir, R"({"commit": 1234567})");
  CHECK_FALSE(commit.ok);
  CHECK(commit.reason == "the marker's \"commit\" is not a string");

  MarkerCheck message = read_ready(dir, R"({"commit": "abc1234", "message": ["x"]})");
  CHECK_FALSE(message.ok);
  CHECK(message.reason == "the marker's \"message\" is not a string");
}

// ---- read_small_file ----------------------------------------------------------------------

TEST_CASE("read_small_file reads a regular file and refuses one over its limit") {
  ScratchDir dir;
  write_text(dir / "f", "hello");
  boost::system::error_code ec;
  CHECK(read_small_file(dir / "f", ec) == "hello");
  CHECK_FALSE(ec);
  CHECK(read_small_file(dir / "f", ec, 4).empty());
  CHECK(ec == boost::system::errc::file_too_large);
}

TEST_CASE("read_small_file does not follow a symbolic link") {
  ScratchDir dir;
  write_text(dir / "f", "hello");
  REQUIRE(::symlink((dir / "f").c_str(), (dir / "link").c_str()) == 0);
  boost::system::error_code ec;
  CHECK(read_small_file(dir / "link", ec).empty());
  CHECK(ec.value() == ELOOP);
}

// ---- claim_marker -------------------------------------------------------------------------

TEST_CASE("claiming renames .deploy-ready to .deploy-in-progress with its content") {
  ScratchDir dir;
  write_text(dir / marker_file::ready, R"({"commit": "abc1234"})");
  boost::system::error_code ec;
  CHECK(claim_marker(dir.path(), ec));
  CHECK_FALSE(ec);
  CHECK_FALSE(fs::exists(dir / marker_file::ready));
  CHECK(read_text(dir / marker_file::in_progress) == R"({"commit": "abc1234"})");
}

TEST_CASE("claiming when no marker is there returns false without an error") {
  ScratchDir dir;
  boost::system::error_code ec = boost::system::errc::make_error_code(boost::system::errc::io_error);
  CHECK_FALSE(claim_marker(dir.path(), ec));
  CHECK_FALSE(ec);
  CHECK(names_in(dir.path()).empty());
}

TEST_CASE("claiming never replaces a deploy already in progress") {
  ScratchDir dir;
  write_text(dir / marker_file::ready, "new");
  write_text(dir / marker_file::in_progress, "running");
  boost::system::error_code ec;
  CHECK_FALSE(claim_marker(dir.path(), ec));
  CHECK(ec.value() == EEXIST);
  CHECK(read_text(dir / marker_file::ready) == "new");
  CHECK(read_text(dir / marker_file::in_progress) == "running");
}

// ---- reject_marker ------------------------------------------------------------------------

TEST_CASE("rejecting moves the marker aside and records the reason, the time and the marker's text") {
  ScratchDir dir;
  const std::string text = R"({"commit": "not-a-sha"})";
  write_text(dir / marker_file::in_progress, text);
  auto ec = reject_marker(dir.path(), marker_file::in_progress, "the marker's commit is bad", text);
  CHECK_FALSE(ec);
  CHECK_FALSE(fs::exists(dir / marker_file::in_progress));
  CHECK(read_text(dir / marker_file::rejected_marker) == text);

  const std::string record = read_text(dir / marker_file::rejected);
  CHECK(record.back() == '\n');
  json::value doc = json::parse(record);
  REQUIRE(doc.is_object());
  CHECK(doc.at("reason").as_string() == "the marker's commit is bad");
  CHECK(looks_like_utc(doc.at("at").as_string()));
  CHECK(doc.at("marker").as_string() == text);
  CHECK(names_in(dir.path()) == ".deploy-rejected | .deploy-rejected.marker");
}

TEST_CASE("rejecting replaces an older rejected marker, even one that is a directory") {
  ScratchDir dir;
  fs::create_directories(dir / marker_file::rejected_marker / "nested");
  write_text(dir / marker_file::rejected_marker / "nested" / "file", "old");
  write_text(dir / marker_file::ready, "newer");
  CHECK_FALSE(reject_marker(dir.path(), marker_file::ready, "why", "newer"));
  CHECK(fs::is_regular_file(fs::symlink_status(dir / marker_file::rejected_marker)));
  CHECK(read_text(dir / marker_file::rejected_marker) == "newer");
  CHECK_FALSE(fs::exists(dir / marker_file::ready));
}

TEST_CASE("rejecting a symbolic link moves the link aside and leaves its target alone") {
  ScratchDir dir;
  write_text(dir / "target", "precious");
  REQUIRE(::symlink((dir / "target").c_str(), (dir / marker_file::ready).c_str()) == 0);
  CHECK_FALSE(reject_marker(dir.path(), marker_file::ready, "the marker is a symbolic link", ""));
  CHECK(fs::is_symlink(dir / marker_file::rejected_marker));
  CHECK(read_text(dir / "target") == "precious");
  json::value doc = json::parse(read_text(dir / marker_file::rejected));
  CHECK_FALSE(doc.as_object().contains("marker"));
}

TEST_CASE("the rejection record leaves out a marker text that is large or not printable") {
  ScratchDir dir;
  for (const std::string& text : {std::string("bin\x01\x02ary", 8), std::string(5000, 'x'), std::string()}) {
    CAPTURE(text.size());
    write_text(dir / marker_file::ready, text);
    CHECK_FALSE(reject_marker(dir.path(), marker_file::ready, "why", text));
    json::value doc = json::parse(read_text(dir / marker_file::rejected));
    CHECK(doc.at("reason").as_string() == "why");
    CHECK_FALSE(doc.as_object().contains("marker"));
    CHECK(read_text(dir / marker_file::rejected_marker) == text);
  }
}

TEST_CASE("the rejection record is valid JSON even when the marker's text is not UTF-8") {
  ScratchDir dir;
  for (const std::string& text : {std::string("caf\xe9 au lait"),  // Latin-1
                                  std::string("\xc0\xaf"),         // overlong '/'
                                  std::string("\xed\xa0\x80"),     // a UTF-16 surrogate
                                  std::string("cut \xe2\x82")}) {  // truncated sequence
    CAPTURE(text);
    write_text(dir / marker_file::ready, text);
    CHECK_FALSE(reject_marker(dir.path(), marker_file::ready, "the marker is neither empty nor valid JSON", text));
    boost::system::error_code ec;
    json::value doc = json::parse(read_text(dir / marker_file::rejected), ec);
    REQUIRE_FALSE(ec);
    CHECK(doc.at("reason").as_string() == "the marker is neither empty nor valid JSON");
    CHECK_FALSE(doc.as_object().contains("marker"));
    CHECK(read_text(dir / marker_file::rejected_marker) == text);
  }
}

TEST_CASE("the rejection record keeps a marker text in UTF-8 beyond ASCII") {
  ScratchDir dir;
  const std::string text = "caf\xc3\xa9 \xe2\x9c\x93 \xf0\x9f\x9a\x80";  // café ✓ 🚀
  write_text(dir / marker_file::ready, text);
  CHECK_FALSE(reject_marker(dir.path(), marker_file::ready, "why", text));
  json::value doc = json::parse(read_text(dir / marker_file::rejected));
  CHECK(doc.at("marker").as_string() == text);
}

TEST_CASE("rejecting a marker that has vanished still writes the record") {
  ScratchDir dir;
  CHECK_FALSE(reject_marker(dir.path(), marker_file::ready, "gone", ""));
  CHECK_FALSE(fs::exists(fs::symlink_status(dir / marker_file::rejected_marker)));
  CHECK(json::parse(read_text(dir / marker_file::rejected)).at("reason").as_string() == "gone");
}

// ---- write_file_atomic --------------------------------------------------------------------

TEST_CASE("an atomic write replaces the content and leaves no temporary file behind") {
  for (bool durable : {false, true}) {
    CAPTURE(durable);
    ScratchDir dir;
    write_text(dir / "state.json", "old content that is longer than the new");
    CHECK_FALSE(write_file_atomic(dir / "state.json", "new", durable));
    CHECK(read_text(dir / "state.json") == "new");
    CHECK(names_in(dir.path()) == "state.json");

    CHECK_FALSE(write_file_atomic(dir / "fresh", "", durable));
    CHECK(read_text(dir / "fresh").empty());
    CHECK(names_in(dir.path()) == "fresh | state.json");
  }
}

TEST_CASE("an atomic write replaces a symbolic link instead of writing through it") {
  ScratchDir dir;
  write_text(dir / "target", "precious");
  REQUIRE(::symlink((dir / "target").c_str(), (dir / "record").c_str()) == 0);
  CHECK_FALSE(write_file_atomic(dir / "record", "mine", false));
  CHECK(fs::is_regular_file(fs::symlink_status(dir / "record")));
  CHECK(read_text(dir / "record") == "mine");
  CHECK(read_text(dir / "target") == "precious");
}

TEST_CASE("an atomic write into a missing directory fails cleanly") {
  ScratchDir dir;
  for (bool durable : {false, true}) {
    CAPTURE(durable);
    auto ec = write_file_atomic(dir / "missing" / "state.json", "content", durable);
    CHECK(ec.value() == ENOENT);
    CHECK(names_in(dir.path()).empty());
  }
}

TEST_CASE("a record swapped in replaces the old one at once and leaves the old text for later removal") {
  ScratchDir dir;
  write_text(dir / "record", "claimed marker");
  std::filesystem::path old;
  REQUIRE_FALSE(swap_file_in(dir / "record", "the new record", old));
  CHECK(read_text(dir / "record") == "the new record");
  REQUIRE_FALSE(old.empty());
  CHECK(read_text(old) == "claimed marker");

  std::filesystem::path none;
  REQUIRE_FALSE(swap_file_in(dir / "fresh", "first", none));  // nothing to swap with: a plain rename
  CHECK(read_text(dir / "fresh") == "first");
  CHECK(none.empty());
}

TEST_CASE("make_durable succeeds on a file and reports a missing one") {
  ScratchDir dir;
  write_text(dir / "f", "x");
  CHECK_FALSE(make_durable(dir / "f"));
  CHECK(make_durable(dir / "missing").value() == ENOENT);
}

// ---- small helpers ------------------------------------------------------------------------

TEST_CASE("a commit looks like 7 to 40 hex digits in either case") {
  CHECK(looks_like_commit("abc1234"));
  CHECK(looks_like_commit("ABCDEF0"));
  CHECK(looks_like_commit(std::string(40, 'f')));
  CHECK_FALSE(looks_like_commit(""));
  CHECK_FALSE(looks_like_commit("abc123"));
  CHECK_FALSE(looks_like_commit(std::string(41, 'f')));
  CHECK_FALSE(looks_like_commit("abc123g"));
  CHECK_FALSE(looks_like_commit("abc 1234"));
  CHECK_FALSE(looks_like_commit("-abc1234"));
}

TEST_CASE("times are formatted as UTC in ISO 8601 with a Z") {
  using std::chrono::system_clock;
  CHECK(format_utc(system_clock::time_point{}) == "1970-01-01T00:00:00Z");
  CHECK(format_utc(system_clock::from_time_t(1795615392)) == "2026-11-25T14:03:12Z");
  CHECK(format_utc(system_clock::from_time_t(1795615392) + 999ms) == "2026-11-25T14:03:12Z");
  CHECK(looks_like_utc(format_utc(system_clock::now())));
}
