#pragma once
// A real etcd (Debian's etcd-server) for the fleet tests: one member on 127.0.0.1, its data in
// a temp dir, reached through its HTTP/JSON gateway as the daemon reaches it.

#include "test_support.h"

#include <sys/types.h>

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace sentinel::test {

/// What an HTTP request got back: the status code (-1 when no answer came) and the body.
struct HttpReply {
  int status = -1;
  std::string body;
};

/// One HTTP/1.0 request to 127.0.0.1:`port` (the connection closes after the answer, so the
/// body is what comes before EOF); gives up after about 2 s.
HttpReply http_request(int port, const std::string& method, const std::string& path, const std::string& body = "");

/// A key and what etcd holds for it, decoded.
struct EtcdKeyValue {
  std::string key;
  std::string value;
  long long lease = 0;  // 0: not bound to a lease
};

/// A single-member etcd on free ports of 127.0.0.1. Runs from construction to destruction
/// unless stopped; its log goes to `log()`.
class EtcdServer {
 public:
  /// Serving clients over https only, to clients with a certificate signed by `ca` (PEM files).
  struct Tls {
    std::filesystem::path ca, cert, key;
  };
  /// Starts etcd and waits until it answers as healthy; throws (with the log's tail) if it
  /// does not within 15 s. With `tls`, /health is asked on a plain metrics port, and range()
  /// cannot be used.
  explicit EtcdServer(std::optional<Tls> tls = std::nullopt);
  /// Kills etcd (SIGKILL) if it still runs.
  ~EtcdServer();
  EtcdServer(const EtcdServer&) = delete;
  EtcdServer& operator=(const EtcdServer&) = delete;

  /// Starts etcd again on the same ports and data dir and waits until it is healthy.
  void start();
  /// SIGTERM, and waits until etcd has exited (SIGKILL after 10 s).
  void stop();
  bool running() const { return pid_ > 0; }

  /// The client URL, as the [fleet] section's `etcd` list names it.
  std::string endpoint() const {
    return (tls_ ? "https://127.0.0.1:" : "http://127.0.0.1:") + std::to_string(client_port_);
  }
  int client_port() const { return client_port_; }
  std::filesystem::path log() const { return dir_ / "etcd.log"; }

  /// Every key that starts with `prefix`, in key order (POST /v3/kv/range); throws when etcd
  /// does not answer.
  std::vector<EtcdKeyValue> range(const std::string& prefix) const;

 private:
  void wait_until_healthy();
  TempDir dir_;
  int client_port_ = 0;
  int peer_port_ = 0;
  int metrics_port_ = 0;  // with TLS: where /health is asked over plain HTTP
  std::optional<Tls> tls_;
  pid_t pid_ = -1;
};

}  // namespace sentinel::test
