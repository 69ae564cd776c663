#pragma once
// A small client of etcd's v3 HTTP/JSON gateway (/v3/kv/..., /v3/lease/...), on the caller's
// event loop: leases, a create-if-absent transaction, puts and prefix reads. Each call is one
// POST over a fresh connection: calls are rare (a few per deploy, one per poll), and a fresh
// connection goes to the next endpoint as soon as one stops answering.

#include "config.h"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/json/object.hpp>

#include <cstdint>
#include <exception>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace boost::asio::ssl {
class context;
}

namespace sentinel {

/// No usable answer from etcd: no endpoint reachable, a timeout, TLS failing, or etcd refusing
/// the request. Every one of them means the same to a deploy: no word from etcd, so no restart.
class EtcdError : public std::runtime_error {
 public:
  /// `status`: the HTTP status etcd refused the request with (404: no such lease), 0 for no answer.
  explicit EtcdError(const std::string& what, unsigned status = 0) : std::runtime_error(what), status_(status) {}
  unsigned status() const { return status_; }

 private:
  unsigned status_;
};

/// One key as etcd holds it.
struct EtcdKey {
  std::string key;
  std::string value;
  std::int64_t lease = 0;  // 0 = none
};

/// etcd's JSON gateway carries keys and values as base64.
std::string base64_encode(std::string_view bytes);
/// nullopt when `text` is not base64.
std::optional<std::string> base64_decode(std::string_view text);

class EtcdClient {
 public:
  /// TLS settings (ca_file, cert_file, key_file) are read for https endpoints; a file that cannot
  /// be loaded throws StartupError naming it.
  EtcdClient(boost::asio::any_io_executor executor, const FleetConfig& config);
  ~EtcdClient();
  EtcdClient(const EtcdClient&) = delete;
  EtcdClient& operator=(const EtcdClient&) = delete;

  /// A new lease of `ttl` (whole seconds, rounded up); its ID.
  boost::asio::awaitable<std::int64_t> grant_lease(Duration ttl);
  /// Renews `lease`; its TTL in seconds from now, 0 when the lease no longer exists.
  boost::asio::awaitable<std::int64_t> keep_alive(std::int64_t lease);
  /// Ends `lease` at once, deleting every key bound to it.
  boost::asio::awaitable<void> revoke(std::int64_t lease);
  /// Puts `key` bound to `lease` only if the key does not exist (one transaction): true when
  /// it was put; false when someone holds it.
  boost::asio::awaitable<bool> create(std::string key, std::string value, std::int64_t lease);
  boost::asio::awaitable<void> put(std::string key, std::string value);
  boost::asio::awaitable<std::optional<EtcdKey>> get(std::string key);
  /// Every key that starts with `prefix` (not empty), in key order.
  boost::asio::awaitable<std::vector<EtcdKey>> list(std::string prefix);

 private:
  /// POSTs `body` to `path` at the endpoint that answered last, then at the others in turn;
  /// the answer's JSON object. Throws EtcdError when no endpoint gives one.
  boost::asio::awaitable<boost::json::object> call(std::string path, boost::json::object body);
  boost::asio::awaitable<std::string> post(const EtcdEndpoint& endpoint, const std::string& path,
                                           const std::string& body);

  boost::asio::any_io_executor executor_;
  std::vector<EtcdEndpoint> endpoints_;
  Duration timeout_;
  std::size_t current_ = 0;  // the endpoint that answered last
  std::unique_ptr<boost::asio::ssl::context> tls_;  // for https endpoints
};

/// `call`, or EtcdError if it has not finished within `limit` (it is then cancelled): for etcd
/// calls made while holding something others wait for.
template <typename T>
boost::asio::awaitable<T> within(boost::asio::awaitable<T> call, Duration limit) {
  struct Ended {
    std::optional<T> value;
    std::exception_ptr error;
  };
  // Wrapped so that a quick failure ends the race too: `||` waits for a success.
  auto guarded = [](boost::asio::awaitable<T> c) -> boost::asio::awaitable<Ended> {
    try {
      T value = co_await std::move(c);
      co_return Ended{std::move(value), nullptr};
    } catch (...) {
      co_return Ended{std::nullopt, std::current_exception()};
    }
  };
  boost::asio::steady_timer timer(co_await boost::asio::this_coro::executor, limit);
  using boost::asio::experimental::awaitable_operators::operator||;
  auto race = guarded(std::move(call)) || timer.async_wait(boost::asio::use_awaitable);
  auto result = co_await std::move(race);
  if (result.index() == 1) throw EtcdError("no answer from etcd within " + format_duration(limit));
  Ended& ended = std::get<0>(result);
  if (ended.error) std::rethrow_exception(ended.error);
  co_return std::move(*ended.value);
}

}  // namespace sentinel
