// libFuzzer target: parse_marker on arbitrary bytes, as an agent (or anyone who can write to the
// marker directory) could stage them. Every input must be accepted or refused with a reason; a
// crash, a sanitizer report, an escaping exception, a hang or runaway memory is a bug.
#include "fuzz_check.h"
#include "marker.h"

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace {

using sentinel::fuzz::expect;

/// The longest refusal reason: it goes into one log line and into .deploy-rejected.
constexpr std::size_t kMaxReasonBytes = 512;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const sentinel::MarkerCheck check = sentinel::parse_marker(text);
  expect(check.marker.text == text, "the marker's text is the input, byte for byte");

  if (check.ok) {
    expect(check.reason.empty(), "an accepted marker has no reason");
    const std::string& commit = check.marker.commit;
    expect(commit.empty() || sentinel::looks_like_commit(commit), "an accepted commit is a hex SHA");
    // What `deploy-sentinel stage` writes for this marker reads back as the same marker.
    const sentinel::MarkerCheck again = sentinel::parse_marker(sentinel::marker_json(check.marker));
    expect(again.ok, "a staged copy of an accepted marker is accepted");
    expect(again.marker.commit == commit && again.marker.staged_by == check.marker.staged_by &&
               again.marker.staged_at == check.marker.staged_at &&
               again.marker.message == check.marker.message,
           "a staged copy of an accepted marker has the same fields");
  } else {
    expect(!check.reason.empty(), "a refused marker says why");
    expect(sentinel::fuzz::is_one_printable_line(check.reason),
           "a refusal reason is one printable line (it is logged as one line)");
    expect(check.reason.size() <= kMaxReasonBytes, "a refusal reason is short");
    expect(sentinel::to_valid_utf8(check.reason) == check.reason,
           "a refusal reason is valid UTF-8 (it goes into .deploy-rejected as JSON)");
  }

  // .deploy-rejected quotes marker text through to_valid_utf8: its output must be valid UTF-8,
  // which a second pass leaves as it is.
  const std::string valid = sentinel::to_valid_utf8(text);
  expect(sentinel::to_valid_utf8(valid) == valid, "to_valid_utf8 returns valid UTF-8");
  return 0;
}
