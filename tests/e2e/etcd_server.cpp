#include "etcd_server.h"

#include "harness.h"

#include <boost/json.hpp>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <stdexcept>
#include <thread>

extern char** environ;

namespace sentinel::test {
namespace fs = std::filesystem;
namespace json = boost::json;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

namespace {

constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

std::string base64_encode(const std::string& in) {
  std::string out;
  std::size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    const unsigned n = static_cast<unsigned char>(in[i]) << 16 | static_cast<unsigned char>(in[i + 1]) << 8 |
                       static_cast<unsigned char>(in[i + 2]);
    for (int shift : {18, 12, 6, 0}) out += kAlphabet[(n >> shift) & 63];
  }
  if (i < in.size()) {
    unsigned n = static_cast<unsigned char>(in[i]) << 16;
    if (i + 1 < in.size()) n |= static_cast<unsigned char>(in[i + 1]) << 8;
    out += kAlphabet[(n >> 18) & 63];
    out += kAlphabet[(n >> 12) & 63];
    out += i + 1 < in.size() ? kAlphabet[(n >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

std::string base64_decode(std::string_view in) {
  std::string out;
  unsigned n = 0;
  int bits = 0;
  for (char c : in) {
    const char* at = std::strchr(kAlphabet, c);
    if (c == '=' || c == '\0' || at == nullptr) break;
    n = n << 6 | static_cast<unsigned>(at - kAlphabet);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((n >> bits) & 0xff);
    }
  }
  return out;
}

/// The end of the range of keys that start with `prefix` (etcd's range_end): the prefix with its
/// last byte that is not 0xff incremented.
std::string prefix_end(std::string prefix) {
  while (!prefix.empty()) {
    auto& last = reinterpret_cast<unsigned char&>(prefix.back());
    if (last < 0xff) {
      ++last;
      return prefix;
    }
    prefix.pop_back();
  }
  return std::string(1, '\0');
}

int decode_status(int status) { return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status); }

}  // namespace

HttpReply http_request(int port, const std::string& method, const std::string& path, const std::string& body) {
  HttpReply reply;
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return reply;
  timeval timeout{2, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<std::uint16_t>(port));
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return reply;
  }
  const std::string request = method + " " + path + " HTTP/1.0\r\nHost: 127.0.0.1:" + std::to_string(port) +
                              "\r\nContent-Type: application/json\r\nContent-Length: " +
                              std::to_string(body.size()) + "\r\n\r\n" + body;
  for (std::size_t sent = 0; sent < request.size();) {
    ssize_t n = ::send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) {
      ::close(fd);
      return reply;
    }
    sent += static_cast<std::size_t>(n);
  }
  std::string response;
  char buf[4096];
  for (ssize_t n; (n = ::recv(fd, buf, sizeof buf, 0)) > 0;) response.append(buf, static_cast<std::size_t>(n));
  ::close(fd);
  const auto space = response.find(' ');
  const auto blank = response.find("\r\n\r\n");
  if (!response.starts_with("HTTP/") || space == std::string::npos || blank == std::string::npos) return reply;
  reply.status = std::atoi(response.c_str() + space + 1);
  reply.body = response.substr(blank + 4);
  return reply;
}

EtcdServer::EtcdServer(std::optional<Tls> tls)
    : client_port_(free_port()), peer_port_(free_port()), tls_(std::move(tls)) {
  while (peer_port_ == client_port_) peer_port_ = free_port();
  if (tls_) {
    metrics_port_ = free_port();
    while (metrics_port_ == client_port_ || metrics_port_ == peer_port_) metrics_port_ = free_port();
  }
  start();
}

EtcdServer::~EtcdServer() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGKILL);
  ::waitpid(pid_, nullptr, 0);
}

void EtcdServer::start() {
  if (pid_ > 0) return;
  const std::string client = endpoint();
  const std::string peer = "http://127.0.0.1:" + std::to_string(peer_port_);
  // On a second start the data dir has the member already and etcd ignores the initial-* flags.
  std::vector<std::string> argv = {
      "etcd",
      "--name=fleet-test",
      "--data-dir=" + (dir_ / "data").string(),
      "--listen-client-urls=" + client,
      "--advertise-client-urls=" + client,
      "--listen-peer-urls=" + peer,
      "--initial-advertise-peer-urls=" + peer,
      "--initial-cluster=fleet-test=" + peer,
      "--initial-cluster-state=new",
      "--initial-cluster-token=fleet-test-" + std::to_string(client_port_),
      "--logger=zap",
      "--log-outputs=stderr",
  };
  if (tls_) {
    // etcd's gateway calls etcd itself with the server's certificate: it must allow client use too.
    argv.insert(argv.end(), {"--cert-file=" + tls_->cert.string(), "--key-file=" + tls_->key.string(),
                             "--trusted-ca-file=" + tls_->ca.string(), "--client-cert-auth",
                             "--listen-metrics-urls=http://127.0.0.1:" + std::to_string(metrics_port_)});
  }
  int log_fd = ::open(log().c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd < 0) throw std::runtime_error("cannot open " + log().string() + ": " + std::strerror(errno));
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, log_fd, 1);
  posix_spawn_file_actions_adddup2(&actions, log_fd, 2);
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const int err = posix_spawnp(&pid_, "etcd", &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  ::close(log_fd);
  if (err != 0) {
    pid_ = -1;
    throw std::runtime_error(std::string("cannot start etcd (Debian package etcd-server): ") + std::strerror(err));
  }
  wait_until_healthy();
}

void EtcdServer::wait_until_healthy() {
  // etcd gives no readiness signal a test can wait on (no sd_notify without systemd, nothing on
  // its stdout meant for machines), so it is asked, as a load balancer would, until it answers
  // as healthy: /health says true once the member has a leader and serves reads.
  const auto deadline = Clock::now() + 15s;
  while (Clock::now() < deadline) {
    if (int status = 0; ::waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      const std::string text = read_file(log());
      throw std::runtime_error("etcd exited (status " + std::to_string(decode_status(status)) + "); its log ends:\n" +
                               text.substr(text.size() > 3000 ? text.size() - 3000 : 0));
    }
    const HttpReply health = http_request(tls_ ? metrics_port_ : client_port_, "GET", "/health");
    if (health.status == 200 && health.body.find("\"true\"") != std::string::npos) return;
    std::this_thread::sleep_for(50ms);
  }
  const std::string text = read_file(log());
  throw std::runtime_error("etcd was not healthy within 15 s; its log ends:\n" +
                           text.substr(text.size() > 3000 ? text.size() - 3000 : 0));
}

void EtcdServer::stop() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGTERM);
  const auto deadline = Clock::now() + 10s;
  int status = 0;
  while (::waitpid(pid_, &status, WNOHANG) != pid_) {
    if (Clock::now() > deadline) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, &status, 0);
      break;
    }
    std::this_thread::sleep_for(20ms);
  }
  pid_ = -1;
}

std::vector<EtcdKeyValue> EtcdServer::range(const std::string& prefix) const {
  json::object request{{"key", base64_encode(prefix)}, {"range_end", base64_encode(prefix_end(prefix))}};
  const HttpReply reply = http_request(client_port_, "POST", "/v3/kv/range", json::serialize(request));
  if (reply.status != 200) {
    throw std::runtime_error("etcd range " + prefix + ": HTTP " + std::to_string(reply.status) + " " + reply.body);
  }
  std::vector<EtcdKeyValue> kvs;
  const json::object answer = json::parse(reply.body).as_object();
  const json::value* list = answer.if_contains("kvs");
  if (list == nullptr) return kvs;
  for (const json::value& item : list->as_array()) {
    const json::object& kv = item.as_object();
    EtcdKeyValue one;
    one.key = base64_decode(kv.at("key").as_string());
    if (const json::value* v = kv.if_contains("value")) one.value = base64_decode(v->as_string());
    if (const json::value* l = kv.if_contains("lease")) {
      one.lease = l->is_string() ? std::stoll(std::string(l->as_string())) : l->to_number<long long>();
    }
    kvs.push_back(std::move(one));
  }
  return kvs;
}

}  // namespace sentinel::test
