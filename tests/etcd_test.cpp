#include "etcd.h"

#include <doctest/doctest.h>

#include <string>

namespace sentinel {
namespace {

TEST_CASE("base64 as etcd's JSON gateway writes keys and values (RFC 4648 test vectors)") {
  const std::pair<std::string, std::string> vectors[] = {
      {"", ""}, {"f", "Zg=="}, {"fo", "Zm8="}, {"foo", "Zm9v"}, {"foob", "Zm9vYg=="}, {"fooba", "Zm9vYmE="},
      {"foobar", "Zm9vYmFy"}, {"deploy-sentinel/g/slot/0", "ZGVwbG95LXNlbnRpbmVsL2cvc2xvdC8w"}};
  for (const auto& [plain, encoded] : vectors) {
    CAPTURE(plain);
    CHECK(base64_encode(plain) == encoded);
    CHECK(base64_decode(encoded) == plain);
  }
}

TEST_CASE("base64 carries every byte value both ways") {
  std::string bytes;
  for (int c = 0; c < 256; ++c) bytes += static_cast<char>(c);
  for (std::size_t n = 0; n <= bytes.size(); n += 37) {
    const std::string part = bytes.substr(0, n);
    CHECK(base64_decode(base64_encode(part)) == part);
  }
}

TEST_CASE("text that is not base64 decodes to nothing") {
  CHECK_FALSE(base64_decode("Zg="));     // not a multiple of 4
  CHECK_FALSE(base64_decode("Z!=="));    // not in the alphabet
  CHECK_FALSE(base64_decode("Zg==Zg==")); // padding before the end
  CHECK_FALSE(base64_decode("Z=g="));     // data after padding
  CHECK_FALSE(base64_decode("===="));
}

}  // namespace
}  // namespace sentinel
