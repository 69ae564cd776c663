#pragma once
// What the fuzz targets share: a check that stops the run with a message when a promise of the
// code under test is broken. libFuzzer saves the input that did it.

#include <cstdio>
#include <cstdlib>
#include <string_view>

namespace sentinel::fuzz {

/// Aborts with `what` when `ok` is false. An abort is what libFuzzer reports as a crash.
inline void expect(bool ok, const char* what) {
  if (ok) return;
  std::fprintf(stderr, "broken promise: %s\n", what);
  std::abort();
}

/// True when `text` is one line of printable text: no control characters at all.
inline bool is_one_printable_line(std::string_view text) {
  for (const char c : text) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte < 0x20 || byte == 0x7f) return false;
  }
  return true;
}

}  // namespace sentinel::fuzz
