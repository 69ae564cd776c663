#include "health_probe.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/error.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/json.hpp>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <memory>
#include <string>
#include <vector>
#include <unistd.h>

namespace sentinel {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using asio::ip::tcp;
using boost::system::error_code;

namespace {

constexpr auto kNoThrow = asio::as_tuple(asio::use_awaitable);
constexpr std::size_t kProbeBodyLimit = 64 * 1024;

bool valid_host_name(std::string_view host) {
  return !host.empty() && std::all_of(host.begin(), host.end(), [](unsigned char c) {
    return std::isalnum(c) || c == '-' || c == '.' || c == '_';
  });
}

// Request-target characters allowed by RFC 3986 (no spaces, controls or non-ASCII).
bool valid_target(std::string_view target) {
  return std::all_of(target.begin(), target.end(), [](unsigned char c) {
    return c > 0x20 && c < 0x7f && c != '"' && c != '<' && c != '>' && c != '\\' && c != '^' &&
           c != '`' && c != '{' && c != '|' && c != '}';
  });
}

bool iequals_prefix(std::string_view text, std::string_view prefix) {
  return text.size() >= prefix.size() &&
         std::equal(prefix.begin(), prefix.end(), text.begin(), [](char a, char b) {
           return std::tolower(static_cast<unsigned char>(a)) ==
                  std::tolower(static_cast<unsigned char>(b));
         });
}

std::string describe_timeout(Duration timeout) {
  auto ms = timeout.count();
  if (ms < 1000) return std::to_string(ms) + "ms";
  std::string text = std::to_string(ms / 1000);
  if (auto fraction = ms % 1000; fraction != 0) {
    std::string digits = std::to_string(1000 + fraction).substr(1);  // "050" for 50 ms
    text += "." + digits.substr(0, digits.find_last_not_of('0') + 1);
  }
  return text + "s";
}

/// "1 MiB", "64 KiB", "1000 bytes".
std::string describe_size(std::size_t bytes) {
  constexpr std::size_t kib = 1024, mib = 1024 * 1024;
  if (bytes >= mib && bytes % mib == 0) return std::to_string(bytes / mib) + " MiB";
  if (bytes >= kib && bytes % kib == 0) return std::to_string(bytes / kib) + " KiB";
  return std::to_string(bytes) + (bytes == 1 ? " byte" : " bytes");
}

std::string host_header(const HttpUrl& url) {
  bool ipv6 = url.host.find(':') != std::string::npos;
  std::string host = ipv6 ? "[" + url.host + "]" : url.host;
  return url.port == 80 ? host : host + ":" + std::to_string(url.port);
}

/// A name lookup that the caller can stop waiting for at a deadline. getaddrinfo cannot be
/// interrupted, so a late answer lands in this shared state after the probe has given up.
struct Lookup {
  explicit Lookup(const asio::any_io_executor& ex) : resolver(ex), done(ex) {}
  tcp::resolver resolver;
  asio::steady_timer done;
  bool finished = false;
  error_code ec;
  tcp::resolver::results_type results;
};

}  // namespace

std::optional<HttpUrl> parse_http_url(std::string_view url) {
  constexpr std::string_view scheme = "http://";
  if (!iequals_prefix(url, scheme)) return std::nullopt;
  url.remove_prefix(scheme.size());
  url = url.substr(0, url.find('#'));
  auto authority_end = std::min(url.find('/'), url.find('?'));
  std::string_view authority = url.substr(0, authority_end);
  std::string_view rest = authority_end == std::string_view::npos ? "" : url.substr(authority_end);

  HttpUrl result;
  std::string_view port_text;
  bool has_port = false;
  if (authority.starts_with('[')) {
    auto close = authority.find(']');
    if (close == std::string_view::npos) return std::nullopt;
    result.host = std::string(authority.substr(1, close - 1));
    error_code ec;
    asio::ip::make_address_v6(result.host, ec);
    if (ec) return std::nullopt;
    std::string_view after = authority.substr(close + 1);
    if (!after.empty() && !after.starts_with(':')) return std::nullopt;
    has_port = !after.empty();
    if (has_port) port_text = after.substr(1);
  } else {
    auto colon = authority.find(':');
    result.host = std::string(authority.substr(0, colon));
    if (!valid_host_name(result.host)) return std::nullopt;
    has_port = colon != std::string_view::npos;
    if (has_port) port_text = authority.substr(colon + 1);
  }
  if (has_port) {
    unsigned port = 0;
    auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
    if (port_text.empty() || ec != std::errc{} || end != port_text.data() + port_text.size() ||
        port == 0 || port > 65535)
      return std::nullopt;
    result.port = static_cast<std::uint16_t>(port);
  }
  if (!valid_target(rest)) return std::nullopt;
  if (rest.starts_with('?'))
    result.target = "/" + std::string(rest);
  else if (!rest.empty())
    result.target = std::string(rest);
  return result;
}

asio::awaitable<HttpAnswer> http_get(HttpUrl url, Duration timeout, std::size_t body_limit,
                                     SocketSource open_socket) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  const HttpAnswer timed_out{false, 0, {}, "timed out after " + describe_timeout(timeout)};
  auto ex = co_await asio::this_coro::executor;

  std::vector<tcp::endpoint> endpoints;
  error_code numeric_ec;
  auto address = asio::ip::make_address(url.host, numeric_ec);
  if (!numeric_ec) {
    endpoints.emplace_back(address, url.port);
  } else if (open_socket) {
    co_return HttpAnswer{false, 0, {}, "cannot resolve " + url.host + " here: an IP address is needed"};
  } else {
    auto lookup = std::make_shared<Lookup>(ex);
    lookup->done.expires_at(deadline);
    auto on_resolved = [lookup](error_code ec, tcp::resolver::results_type results) {
      lookup->finished = true;
      lookup->ec = ec;
      lookup->results = std::move(results);
      // Wakes the wait below, whether it has started yet or not.
      lookup->done.expires_at(asio::steady_timer::time_point::min());
    };
    lookup->resolver.async_resolve(url.host, std::to_string(url.port),
                                   tcp::resolver::numeric_service, std::move(on_resolved));
    auto wait = lookup->done.async_wait(kNoThrow);
    co_await std::move(wait);
    if (!lookup->finished) {
      lookup->resolver.cancel();
      co_return timed_out;
    }
    if (lookup->ec)
      co_return HttpAnswer{false, 0, {}, "cannot resolve " + url.host + ": " + lookup->ec.message()};
    for (const auto& entry : lookup->results) endpoints.push_back(entry.endpoint());
  }

  beast::tcp_stream stream(ex);
  stream.expires_at(deadline);
  error_code ec;
  if (open_socket) {
    const int fd = open_socket();
    if (fd < 0) co_return HttpAnswer{false, 0, {}, "cannot open a socket: " + error_code(-fd, boost::system::system_category()).message()};
    stream.socket().assign(endpoints.front().protocol(), fd, ec);
    if (ec) {
      ::close(fd);
      co_return HttpAnswer{false, 0, {}, "cannot use the socket: " + ec.message()};
    }
    auto connect = stream.async_connect(endpoints.front(), kNoThrow);
    auto [connect_ec] = co_await std::move(connect);
    ec = connect_ec;
  } else {
    auto connect = stream.async_connect(endpoints, kNoThrow);
    auto [connect_ec, endpoint] = co_await std::move(connect);
    ec = connect_ec;
  }

  http::response_parser<http::string_body> parser;
  if (!ec) {
    http::request<http::empty_body> request{http::verb::get, url.target, 11};
    request.set(http::field::host, host_header(url));
    request.set(http::field::user_agent, "deploy-sentinel");
    request.set(http::field::connection, "close");
    auto write = http::async_write(stream, request, kNoThrow);
    auto [write_ec, written] = co_await std::move(write);
    ec = write_ec;
  }
  if (!ec) {
    beast::flat_buffer buffer;
    parser.body_limit(static_cast<std::uint64_t>(body_limit));
    auto read = http::async_read(stream, buffer, parser, kNoThrow);
    auto [read_ec, bytes] = co_await std::move(read);
    ec = read_ec;
  }
  error_code ignored;
  stream.socket().shutdown(tcp::socket::shutdown_both, ignored);

  if (ec == http::error::body_limit && parser.is_header_done())
    co_return HttpAnswer{false, parser.get().result_int(), {},
                         "answer larger than " + describe_size(body_limit)};
  if (ec == beast::error::timeout) co_return timed_out;
  if (ec == asio::error::connection_refused) co_return HttpAnswer{false, 0, {}, "connection refused"};
  if (ec) co_return HttpAnswer{false, 0, {}, ec.message()};
  unsigned status = parser.get().result_int();
  co_return HttpAnswer{true, status, parser.release().body(), "HTTP " + std::to_string(status)};
}

asio::awaitable<ProbeResult> probe_http(HttpUrl url, Duration timeout, SocketSource open_socket) {
  auto get = http_get(std::move(url), timeout, kProbeBodyLimit, std::move(open_socket));
  HttpAnswer answer = co_await std::move(get);
  // An oversized body still carries a status worth reporting.
  if (answer.status == 0) co_return ProbeResult{false, std::move(answer.reason), {}};
  co_return ProbeResult{answer.status >= 200 && answer.status <= 299, "HTTP " + std::to_string(answer.status),
                        std::move(answer.body)};
}

std::optional<std::string> confirm_mismatch(std::string_view body, const std::string& pointer,
                                            const std::string& equals, const std::string& commit) {
  error_code ec;
  const boost::json::value doc = boost::json::parse(body, ec);
  if (ec) return "the health answer is not JSON (" + ec.message() + ")";
  const boost::json::value* found = doc.find_pointer(pointer, ec);
  if (found == nullptr) return pointer + " is missing from the health answer";
  const std::string value = found->is_string() ? std::string(found->as_string()) : boost::json::serialize(*found);
  std::string wanted = equals;
  for (std::size_t at; (at = wanted.find("{commit}")) != std::string::npos;) wanted.replace(at, 8, commit);
  if (value == wanted) return std::nullopt;
  auto lower = [](std::string text) {
    std::transform(text.begin(), text.end(), text.begin(), [](unsigned char c) { return std::tolower(c); });
    return text;
  };
  if (equals == "{commit}" && value.size() >= 7 && lower(commit).starts_with(lower(value))) return std::nullopt;
  std::string shown = value.size() > 80 ? value.substr(0, 80) + "..." : value;
  return pointer + " is \"" + shown + "\", not " + (equals == "{commit}" ? commit.substr(0, 12) : wanted);
}

}  // namespace sentinel
