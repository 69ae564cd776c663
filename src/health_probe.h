#pragma once
// One health probe of a production service over HTTP.

#include "duration.h"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

namespace sentinel {

/// The parts of an `http://host[:port]/path` URL that a probe needs.
struct HttpUrl {
  std::string host;
  std::uint16_t port = 80;
  std::string target = "/";  // path and query, always starting with '/'
};

/// Parses a plain-HTTP URL; nullopt for https, a missing host, a bad port or anything else.
std::optional<HttpUrl> parse_http_url(std::string_view url);

/// What one HTTP GET brought back.
struct HttpAnswer {
  bool ok = false;      // a full HTTP response arrived (any status), its body within the limit
  unsigned status = 0;  // the status when `ok`, and also when only the body was too large; else 0
  std::string body;     // the whole body when `ok`; empty otherwise
  std::string reason;   // "HTTP 200", "connection refused", "timed out after 2s",
                        // "answer larger than 64 KiB", "cannot resolve host: ..."
};

/// Supplies the socket a probe connects through (a SOCK_STREAM fd of the URL's address family,
/// owned by the caller from then on), or -errno. Pre-flight uses it to probe inside a shadow's
/// network namespace: a socket stays in the namespace it was created in.
using SocketSource = std::function<int()>;

/// GETs `url` over one fresh connection (Connection: close) and reads the whole answer.
/// The whole exchange (resolve, connect, write, read) ends within `timeout`. A body longer
/// than `body_limit` bytes is never truncated: the answer is then not `ok` (status kept,
/// body empty). Never throws for network failures; they come back as not `ok` with a reason.
/// `url` is taken by value so the coroutine owns it.
/// With `open_socket`, the host must be an IP address and the connection uses its socket.
boost::asio::awaitable<HttpAnswer> http_get(HttpUrl url, Duration timeout, std::size_t body_limit,
                                            SocketSource open_socket = {});

/// What one probe found: healthy or not, and why in a few words ("HTTP 200",
/// "HTTP 503", "connection refused", "timed out after 2s").
struct ProbeResult {
  bool healthy = false;
  std::string reason;
  std::string body;  // the HTTP answer's body (at most 64 KiB), for confirm = { pointer, equals }
};

/// For `confirm = { pointer, equals }`: nullopt when the JSON `body` holds `equals` at `pointer`
/// (with "{commit}" in `equals` standing for `commit`; a value that is just "{commit}" also
/// accepts a prefix of the commit of at least 7 characters), else why not, in a few words:
/// "/version is \"1f3e2d4\", not 3f2c1a9…", "/version is missing", "the answer is not JSON".
std::optional<std::string> confirm_mismatch(std::string_view body, const std::string& pointer,
                                            const std::string& equals, const std::string& commit);

/// GETs `url` with `http_get` and calls a 2xx answer healthy; a body over 64 KiB is not read
/// but its status still counts. The whole probe ends within `timeout`; `url` is taken by
/// value so the coroutine owns it. Never throws for network failures; they come back as
/// unhealthy with a reason.
boost::asio::awaitable<ProbeResult> probe_http(HttpUrl url, Duration timeout, SocketSource open_socket = {});

}  // namespace sentinel
