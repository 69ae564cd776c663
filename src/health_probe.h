#pragma once
// One health probe of a production service over HTTP.

#include "duration.h"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>

#include <cstdint>
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

/// What one probe found: healthy or not, and why in a few words ("HTTP 200",
/// "HTTP 503", "connection refused", "timed out after 2s").
struct ProbeResult {
  bool healthy = false;
  std::string reason;
};

/// GETs `url` over one fresh connection (Connection: close) and calls a 2xx answer healthy.
/// The whole probe (resolve, connect, write, read) ends within `timeout`; `url` is taken by
/// value so the coroutine owns it. Never throws for
/// network failures; they come back as unhealthy with a reason.
boost::asio::awaitable<ProbeResult> probe_http(HttpUrl url, Duration timeout);

}  // namespace sentinel
