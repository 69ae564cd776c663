#include "etcd.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/ssl/host_name_verification.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>

#include <array>
#include <charconv>

namespace sentinel {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace json = boost::json;
using asio::ip::tcp;
using boost::system::error_code;
using namespace asio::experimental::awaitable_operators;

namespace {

constexpr auto kNoThrow = asio::as_tuple(asio::use_awaitable);
constexpr std::uint64_t kAnswerLimit = 16 * 1024 * 1024;  // a whole group's keys, with room to spare
constexpr std::string_view kAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// etcd's JSON carries 64-bit integers as strings ("ID": "7587862072935437826").
std::int64_t int_field(const json::object& object, std::string_view key) {
  const json::value* value = object.if_contains(key);
  if (value == nullptr) return 0;
  if (const json::string* text = value->if_string()) {
    std::int64_t n = 0;
    std::from_chars(text->data(), text->data() + text->size(), n);
    return n;
  }
  if (const std::int64_t* n = value->if_int64()) return *n;
  if (const std::uint64_t* n = value->if_uint64()) return static_cast<std::int64_t>(*n);
  return 0;
}

/// The first key after every key that starts with `prefix`: etcd's range_end for a prefix.
std::string prefix_end(std::string prefix) {
  while (!prefix.empty() && static_cast<unsigned char>(prefix.back()) == 0xff) prefix.pop_back();
  if (!prefix.empty()) prefix.back() = static_cast<char>(prefix.back() + 1);
  return prefix;
}

EtcdKey key_from(const json::value& kv) {
  EtcdKey key;
  if (!kv.is_object()) return key;
  const json::object& object = kv.as_object();
  auto bytes = [&](std::string_view field) {
    const json::value* value = object.if_contains(field);
    if (value == nullptr || !value->is_string()) return std::string();
    return base64_decode(value->as_string()).value_or(std::string());
  };
  key.key = bytes("key");
  key.value = bytes("value");
  key.lease = int_field(object, "lease");
  return key;
}

/// One HTTP exchange over a connected stream (plain TCP or TLS): the answer's body, or throws.
template <typename Stream>
asio::awaitable<std::string> exchange(Stream& stream, const http::request<http::string_body>& request,
                                      const std::string& where) {
  auto write = http::async_write(stream, request, kNoThrow);
  auto [write_ec, written] = co_await std::move(write);
  if (write_ec) throw EtcdError(where + ": " + write_ec.message());
  beast::flat_buffer buffer;
  http::response_parser<http::string_body> parser;
  parser.body_limit(kAnswerLimit);
  auto read = http::async_read(stream, buffer, parser, kNoThrow);
  auto [read_ec, bytes] = co_await std::move(read);
  if (read_ec == beast::error::timeout) throw EtcdError(where + ": timed out");
  if (read_ec) throw EtcdError(where + ": " + read_ec.message());
  http::response<http::string_body> answer = parser.release();
  if (answer.result() != http::status::ok) {
    // etcd says what it refused in {"error": ..., "message": ...}.
    error_code ec;
    const json::value doc = json::parse(answer.body(), ec);
    std::string message = "HTTP " + std::to_string(answer.result_int());
    if (!ec && doc.is_object()) {
      if (const json::value* text = doc.as_object().if_contains("message"); text != nullptr && text->is_string()) {
        message += ": " + std::string(text->as_string());
      }
    }
    throw EtcdError(where + ": " + message, answer.result_int());
  }
  co_return std::move(answer.body());
}

}  // namespace

std::string base64_encode(std::string_view bytes) {
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  std::size_t i = 0;
  for (; i + 3 <= bytes.size(); i += 3) {
    const unsigned n = static_cast<unsigned char>(bytes[i]) << 16 | static_cast<unsigned char>(bytes[i + 1]) << 8 |
                       static_cast<unsigned char>(bytes[i + 2]);
    for (int shift : {18, 12, 6, 0}) out += kAlphabet[(n >> shift) & 63];
  }
  if (const std::size_t left = bytes.size() - i; left > 0) {
    unsigned n = static_cast<unsigned char>(bytes[i]) << 16;
    if (left == 2) n |= static_cast<unsigned char>(bytes[i + 1]) << 8;
    out += kAlphabet[(n >> 18) & 63];
    out += kAlphabet[(n >> 12) & 63];
    out += left == 2 ? kAlphabet[(n >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

std::optional<std::string> base64_decode(std::string_view text) {
  if (text.size() % 4 != 0) return std::nullopt;
  std::string out;
  out.reserve(text.size() / 4 * 3);
  for (std::size_t i = 0; i < text.size(); i += 4) {
    unsigned n = 0;
    int padding = 0;
    for (std::size_t j = 0; j < 4; ++j) {
      const char c = text[i + j];
      std::size_t digit = 0;
      if (c == '=' && i + 4 == text.size() && j >= 2) {
        ++padding;
      } else if (padding > 0 || (digit = kAlphabet.find(c)) == std::string_view::npos) {
        return std::nullopt;
      }
      n = n << 6 | static_cast<unsigned>(digit);
    }
    out += static_cast<char>(n >> 16);
    if (padding < 2) out += static_cast<char>((n >> 8) & 0xff);
    if (padding < 1) out += static_cast<char>(n & 0xff);
  }
  return out;
}

EtcdClient::EtcdClient(asio::any_io_executor executor, const FleetConfig& config)
    : executor_(std::move(executor)), endpoints_(config.etcd), timeout_(config.timeout) {
  const bool any_tls = std::any_of(endpoints_.begin(), endpoints_.end(), [](const EtcdEndpoint& e) { return e.tls; });
  if (!any_tls) return;
  tls_ = std::make_unique<asio::ssl::context>(asio::ssl::context::tls_client);
  tls_->set_verify_mode(asio::ssl::verify_peer);
  auto load = [](std::string_view what, const std::filesystem::path& file, auto&& step) {
    error_code ec;
    step(file.string(), ec);
    if (ec) throw StartupError("[fleet] " + std::string(what) + " " + file.string() + ": cannot load it: " + ec.message());
  };
  if (config.ca_file.empty()) {
    tls_->set_default_verify_paths();
  } else {
    load("ca_file", config.ca_file, [&](const std::string& f, error_code& ec) { tls_->load_verify_file(f, ec); });
  }
  if (!config.cert_file.empty()) {
    load("cert_file", config.cert_file,
         [&](const std::string& f, error_code& ec) { tls_->use_certificate_chain_file(f, ec); });
    load("key_file", config.key_file,
         [&](const std::string& f, error_code& ec) { tls_->use_private_key_file(f, asio::ssl::context::pem, ec); });
  }
}

EtcdClient::~EtcdClient() = default;

asio::awaitable<std::string> EtcdClient::post(const EtcdEndpoint& endpoint, const std::string& path,
                                              const std::string& body) {
  const std::string where = endpoint.url;
  // The resolver has no deadline of its own: race it against one.
  tcp::resolver resolver(executor_);
  asio::steady_timer deadline(executor_, timeout_);
  auto resolve = resolver.async_resolve(endpoint.host, std::to_string(endpoint.port), tcp::resolver::numeric_service,
                                        kNoThrow);
  auto expire = deadline.async_wait(kNoThrow);
  auto resolved = co_await (std::move(resolve) || std::move(expire));
  if (resolved.index() == 1) throw EtcdError(where + ": cannot resolve " + endpoint.host + ": timed out");
  auto [resolve_ec, addresses] = std::get<0>(std::move(resolved));
  if (resolve_ec) throw EtcdError(where + ": cannot resolve " + endpoint.host + ": " + resolve_ec.message());

  http::request<http::string_body> request{http::verb::post, path, 11};
  request.set(http::field::host, endpoint.host + ":" + std::to_string(endpoint.port));
  request.set(http::field::user_agent, "deploy-sentinel");
  request.set(http::field::content_type, "application/json");
  request.set(http::field::connection, "close");
  request.body() = body;
  request.prepare_payload();

  beast::tcp_stream tcp_stream(executor_);
  tcp_stream.expires_after(timeout_);
  auto connect = tcp_stream.async_connect(addresses, kNoThrow);
  auto [connect_ec, connected] = co_await std::move(connect);
  if (connect_ec == beast::error::timeout) throw EtcdError(where + ": connect timed out");
  if (connect_ec) throw EtcdError(where + ": " + connect_ec.message());
  if (!endpoint.tls) {
    auto plain = exchange(tcp_stream, request, where);
    co_return co_await std::move(plain);
  }

  beast::ssl_stream<beast::tcp_stream> tls_stream(std::move(tcp_stream), *tls_);
  tls_stream.set_verify_callback(asio::ssl::host_name_verification(endpoint.host));
  if (!SSL_set_tlsext_host_name(tls_stream.native_handle(), endpoint.host.c_str())) {
    throw EtcdError(where + ": cannot set the TLS server name");
  }
  auto handshake = tls_stream.async_handshake(asio::ssl::stream_base::client, kNoThrow);
  auto [handshake_ec] = co_await std::move(handshake);
  if (handshake_ec) throw EtcdError(where + ": TLS handshake: " + handshake_ec.message());
  auto secure = exchange(tls_stream, request, where);
  co_return co_await std::move(secure);
}

asio::awaitable<json::object> EtcdClient::call(std::string path, json::object body) {
  const std::string text = json::serialize(body);
  std::string errors;
  unsigned refused = 0;  // the status an endpoint refused the request with, rather than not answering
  for (std::size_t tried = 0; tried < endpoints_.size(); ++tried) {
    const std::size_t index = (current_ + tried) % endpoints_.size();
    try {
      auto request = post(endpoints_[index], path, text);
      std::string answer = co_await std::move(request);
      error_code ec;
      json::value doc = json::parse(answer, ec);
      if (ec || !doc.is_object()) throw EtcdError(endpoints_[index].url + ": " + path + " answered with something not JSON");
      current_ = index;
      co_return std::move(doc.as_object());
    } catch (const EtcdError& e) {
      // No such lease, a malformed request: wrong on every member.
      if (e.status() == 400 || e.status() == 404) throw;
      errors += (errors.empty() ? "" : "; ") + std::string(e.what());
      if (e.status() != 0) refused = e.status();
    }
  }
  throw EtcdError(errors, refused);
}

asio::awaitable<std::int64_t> EtcdClient::grant_lease(Duration ttl) {
  const auto seconds = std::chrono::ceil<std::chrono::seconds>(ttl).count();
  auto request = call("/v3/lease/grant", {{"TTL", std::to_string(seconds)}});
  json::object answer = co_await std::move(request);
  const std::int64_t id = int_field(answer, "ID");
  if (id == 0) {
    const json::value* error = answer.if_contains("error");
    throw EtcdError("etcd granted no lease" + (error != nullptr ? ": " + json::serialize(*error) : std::string()));
  }
  co_return id;
}

asio::awaitable<std::int64_t> EtcdClient::keep_alive(std::int64_t lease) {
  // A stream in gRPC; through the gateway, one request gives one {"result": ...} answer.
  auto request = call("/v3/lease/keepalive", {{"ID", std::to_string(lease)}});
  json::object answer = co_await std::move(request);
  const json::value* result = answer.if_contains("result");
  if (result == nullptr || !result->is_object()) throw EtcdError("etcd answered a lease renewal without a result");
  co_return int_field(result->as_object(), "TTL");
}

asio::awaitable<void> EtcdClient::revoke(std::int64_t lease) {
  auto request = call("/v3/lease/revoke", {{"ID", std::to_string(lease)}});
  co_await std::move(request);
}

asio::awaitable<bool> EtcdClient::create(std::string key, std::string value, std::int64_t lease) {
  const std::string k = base64_encode(key);
  json::object txn{
      {"compare", json::array{json::object{{"key", k}, {"target", "CREATE"}, {"result", "EQUAL"}, {"create_revision", "0"}}}},
      {"success", json::array{json::object{
                      {"request_put", json::object{{"key", k}, {"value", base64_encode(value)}, {"lease", std::to_string(lease)}}}}}},
  };
  auto request = call("/v3/kv/txn", std::move(txn));
  json::object answer = co_await std::move(request);
  const json::value* succeeded = answer.if_contains("succeeded");  // left out when false
  co_return succeeded != nullptr && succeeded->is_bool() && succeeded->as_bool();
}

asio::awaitable<void> EtcdClient::put(std::string key, std::string value) {
  auto request = call("/v3/kv/put", {{"key", base64_encode(key)}, {"value", base64_encode(value)}});
  co_await std::move(request);
}

asio::awaitable<std::optional<EtcdKey>> EtcdClient::get(std::string key) {
  auto request = call("/v3/kv/range", {{"key", base64_encode(key)}});
  json::object answer = co_await std::move(request);
  const json::value* kvs = answer.if_contains("kvs");
  if (kvs == nullptr || !kvs->is_array() || kvs->as_array().empty()) co_return std::nullopt;
  co_return key_from(kvs->as_array().front());
}

asio::awaitable<std::vector<EtcdKey>> EtcdClient::list(std::string prefix) {
  auto request = call("/v3/kv/range", {{"key", base64_encode(prefix)}, {"range_end", base64_encode(prefix_end(prefix))}});
  json::object answer = co_await std::move(request);
  std::vector<EtcdKey> keys;
  if (const json::value* kvs = answer.if_contains("kvs"); kvs != nullptr && kvs->is_array()) {
    for (const json::value& kv : kvs->as_array()) keys.push_back(key_from(kv));
  }
  co_return keys;
}

}  // namespace sentinel
