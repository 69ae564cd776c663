#include "health_probe.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>
#include <boost/asio/write.hpp>
#include "canned_http.h"

#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <cerrno>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#ifndef FAKE_SERVICE
#error "FAKE_SERVICE must name the fake-service binary"
#endif

extern char** environ;

namespace {

using namespace std::chrono_literals;
using sentinel::HttpUrl;
using sentinel::parse_http_url;
using sentinel::ProbeResult;
using Clock = std::chrono::steady_clock;

/// A file descriptor closed on scope exit.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) { REQUIRE(fd_ >= 0); }
  Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Fd& operator=(Fd&&) = delete;
  ~Fd() {
    if (fd_ >= 0) close(fd_);
  }
  int get() const { return fd_; }

 private:
  int fd_;
};

sockaddr_in loopback(std::uint16_t port) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return addr;
}

/// A TCP socket bound to 127.0.0.1 on a port the kernel picked; listening if asked.
Fd bound_socket(bool listening) {
  Fd fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in addr = loopback(0);
  REQUIRE(bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  if (listening) REQUIRE(listen(fd.get(), 16) == 0);
  return fd;
}

std::uint16_t port_of(const Fd& fd) {
  sockaddr_in addr{};
  socklen_t len = sizeof addr;
  REQUIRE(getsockname(fd.get(), reinterpret_cast<sockaddr*>(&addr), &len) == 0);
  return ntohs(addr.sin_port);
}

/// A port on 127.0.0.1 that nobody listens on (free when this returns).
std::uint16_t free_port() { return port_of(bound_socket(false)); }

bool accepts_connection(std::uint16_t port) {
  Fd fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in addr = loopback(port);
  return connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
}

/// A fresh directory under /tmp, removed with everything in it on scope exit.
class TempDir {
 public:
  TempDir() {
    std::string pattern =
        (std::filesystem::temp_directory_path() / "health-probe-test.XXXXXX").string();
    REQUIRE(mkdtemp(pattern.data()) != nullptr);
    path_ = pattern;
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

/// A spawned child, its stdout and stderr appended to `log`; SIGKILLed and reaped on scope
/// exit unless already reaped.
class Child {
 public:
  Child(std::vector<std::string> args, const std::filesystem::path& log) {
    std::vector<char*> argv;
    for (auto& arg : args) argv.push_back(arg.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
    int error = posix_spawn(&pid_, argv[0], &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    REQUIRE(error == 0);
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  ~Child() {
    if (pid_ <= 0) return;
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  /// True (and reaped) if the child has exited.
  bool exited() {
    if (pid_ > 0 && waitpid(pid_, nullptr, WNOHANG) == pid_) pid_ = 0;
    return pid_ == 0;
  }

 private:
  pid_t pid_ = 0;
};

/// A real fake-service on 127.0.0.1, running in `mode` and listening when constructed.
class FakeService {
 public:
  explicit FakeService(const std::string& mode)
      : port_(free_port()),
        child_({FAKE_SERVICE, "serve", "--port", std::to_string(port_), "--mode", mode, "--state",
                dir_.path().string()},
               dir_.path() / "service.log") {
    const auto deadline = Clock::now() + 5s;
    while (!(std::filesystem::exists(dir_.path() / "service.pid") && accepts_connection(port_))) {
      REQUIRE_MESSAGE(!child_.exited(), "fake-service exited before listening: " << log());
      REQUIRE_MESSAGE(Clock::now() < deadline, "fake-service did not listen within 5 s: " << log());
      std::this_thread::sleep_for(5ms);
    }
  }
  std::string log() const {
    std::ifstream in(dir_.path() / "service.log");
    return std::string(std::istreambuf_iterator<char>(in), {});
  }
  std::string url(const std::string& path) const {
    return "http://127.0.0.1:" + std::to_string(port_) + path;
  }
  std::uint16_t port() const { return port_; }

 private:
  TempDir dir_;
  std::uint16_t port_;
  Child child_;
};

ProbeResult probe(const std::string& url_text, sentinel::Duration timeout = 2s) {
  auto url = parse_http_url(url_text);
  REQUIRE(url);
  boost::asio::io_context ctx;
  auto fut =
      boost::asio::co_spawn(ctx, sentinel::probe_http(*url, timeout), boost::asio::use_future);
  ctx.run();
  return fut.get();
}

}  // namespace

TEST_CASE("a plain http URL gives its host, port and target") {
  auto url = parse_http_url("http://example.com:8080/health?verbose=1");
  REQUIRE(url);
  CHECK(url->host == "example.com");
  CHECK(url->port == 8080);
  CHECK(url->target == "/health?verbose=1");
}

TEST_CASE("a URL without port or path means port 80 and target /") {
  auto url = parse_http_url("http://127.0.0.1");
  REQUIRE(url);
  CHECK(url->host == "127.0.0.1");
  CHECK(url->port == 80);
  CHECK(url->target == "/");
  CHECK(parse_http_url("HTTP://localhost/")->target == "/");
  CHECK(parse_http_url("http://localhost?x=1")->target == "/?x=1");
  CHECK(parse_http_url("http://localhost/a#fragment")->target == "/a");
  CHECK(parse_http_url("http://localhost:65535")->port == 65535);
}

TEST_CASE("an IPv6 literal in brackets is a host and may carry a port") {
  auto url = parse_http_url("http://[::1]:9000/health");
  REQUIRE(url);
  CHECK(url->host == "::1");
  CHECK(url->port == 9000);
  CHECK(url->target == "/health");
  CHECK(parse_http_url("http://[fe80::1]")->port == 80);
}

TEST_CASE("https, a missing host, a bad port and junk are rejected") {
  for (const char* bad : {"https://example.com/",
                          "ftp://example.com",
                          "example.com/health",
                          "",
                          "http://",
                          "http:///health",
                          "http://:8080/",
                          "http://host:0/",
                          "http://host:65536/",
                          "http://host:99999999999/",
                          "http://host:http/",
                          "http://host:80x/",
                          "http://host:/",
                          "http://host:-1/",
                          "http://[::1/",
                          "http://[not-ipv6]/",
                          "http://[::1]x/",
                          "http://user@host/",
                          "http://ho st/",
                          "http://host/a b",
                          "http://host/\x01"}) {
    CAPTURE(bad);
    CHECK_FALSE(parse_http_url(bad));
  }
}

TEST_CASE("a healthy service answers 200 and is healthy") {
  FakeService service("healthy");
  auto result = probe(service.url("/health"));
  CHECK(result.healthy);
  CHECK(result.reason == "HTTP 200");
}

TEST_CASE("an unhealthy service answers 503 and is not healthy") {
  FakeService service("unhealthy");
  auto result = probe(service.url("/health"));
  CHECK_FALSE(result.healthy);
  CHECK(result.reason == "HTTP 503");
}

TEST_CASE("a path the service does not know is not healthy") {
  FakeService service("healthy");
  auto result = probe(service.url("/nope"));
  CHECK_FALSE(result.healthy);
  CHECK(result.reason == "HTTP 404");
}

TEST_CASE("a host name is resolved and each address tried until one answers") {
  FakeService service("healthy");  // listens on 127.0.0.1 only; localhost may resolve to ::1 first
  auto result = probe("http://localhost:" + std::to_string(service.port()) + "/health");
  CHECK(result.healthy);
  CHECK(result.reason == "HTTP 200");
}

TEST_CASE("a service that closes the connection without answering is not healthy") {
  FakeService service("crash:0");
  auto result = probe(service.url("/health"));
  CHECK_FALSE(result.healthy);
  CHECK(result.reason == "end of stream");
}

TEST_CASE("a port where nothing listens is connection refused") {
  auto result = probe("http://127.0.0.1:" + std::to_string(free_port()) + "/health");
  CHECK_FALSE(result.healthy);
  CHECK(result.reason == "connection refused");
}

TEST_CASE("a listener that never answers times out within the timeout") {
  Fd listener = bound_socket(true);  // the kernel completes the handshake; nobody accepts
  const auto start = Clock::now();
  auto result = probe("http://127.0.0.1:" + std::to_string(port_of(listener)) + "/health", 300ms);
  const auto elapsed = Clock::now() - start;
  CHECK_FALSE(result.healthy);
  CHECK(result.reason == "timed out after 300ms");
  CHECK(elapsed >= 290ms);
  CHECK(elapsed < 1s);
}

TEST_CASE("a timeout of whole seconds is reported in seconds") {
  Fd listener = bound_socket(true);
  const auto start = Clock::now();
  auto result = probe("http://127.0.0.1:" + std::to_string(port_of(listener)) + "/", 1s);
  CHECK_FALSE(result.healthy);
  CHECK(result.reason == "timed out after 1s");
  CHECK(Clock::now() - start < 1700ms);
}

TEST_CASE("a host name that does not resolve is not healthy and names the host") {
  auto result = probe("http://nonexistent.invalid/health");  // RFC 6761: never resolves
  CHECK_FALSE(result.healthy);
  bool named = result.reason.starts_with("cannot resolve nonexistent.invalid: ");
  CHECK_MESSAGE((named || result.reason == "timed out after 2s"), result.reason);
}

// http_get against a real server on 127.0.0.1 that answers with canned bytes.
namespace {

namespace asio = boost::asio;
using asio::ip::tcp;
using sentinel::HttpAnswer;

using sentinel::test::answer_once;
using sentinel::test::Then;

template <class T>
struct Served {
  T result;
  std::string request;  // the request head the server saw
};

/// Runs `client("http://127.0.0.1:PORT")` next to a server on that port that answers one
/// connection with `response`; both run to the end on one io_context.
template <class Client>
auto served(std::string response, Client client, Then then = Then::close) {
  asio::io_context ctx;
  tcp::acceptor acceptor(ctx, tcp::endpoint(asio::ip::make_address_v4("127.0.0.1"), 0));
  std::string request;
  asio::co_spawn(ctx, answer_once(acceptor, std::move(response), request, then),
                 [](std::exception_ptr e) {
                   if (e) std::rethrow_exception(e);
                 });
  auto fut = asio::co_spawn(
      ctx, client("http://127.0.0.1:" + std::to_string(acceptor.local_endpoint().port())),
      asio::use_future);
  ctx.run();
  return Served<decltype(fut.get())>{fut.get(), request};
}

/// An HTTP/1.1 answer with a Content-Length body.
std::string canned(unsigned status, const std::string& body) {
  return "HTTP/1.1 " + std::to_string(status) + (status == 200 ? " OK" : " Not OK") +
         "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
         "\r\nConnection: close\r\n\r\n" + body;
}

/// A client that GETs `path` with `limit`.
auto getter(std::string path, std::size_t limit, sentinel::Duration timeout = 2s) {
  return [path, limit, timeout](std::string base) {
    auto url = parse_http_url(base + path);
    REQUIRE(url);
    return sentinel::http_get(*url, timeout, limit);
  };
}

}  // namespace

TEST_CASE("http_get returns the status and the whole body of an answer") {
  auto served_answer = served(canned(200, R"({"data":{"activeSessions":[]}})"), getter("/status/data", 1024));
  const HttpAnswer& answer = served_answer.result;
  CHECK(answer.ok);
  CHECK(answer.status == 200);
  CHECK(answer.body == R"({"data":{"activeSessions":[]}})");
  CHECK(answer.reason == "HTTP 200");
}

TEST_CASE("http_get sends one GET for the URL's target with a Host header and Connection: close") {
  auto got = served(canned(200, "{}"), getter("/status/data?verbose=1", 1024));
  CHECK(got.result.ok);
  const std::string& request = got.request;
  CHECK(request.starts_with("GET /status/data?verbose=1 HTTP/1.1\r\n"));
  CHECK(request.find("\r\nHost: 127.0.0.1:") != std::string::npos);
  CHECK(request.find("\r\nConnection: close\r\n") != std::string::npos);
}

TEST_CASE("a non-2xx answer is still a full answer with its status and body") {
  auto answer = served(canned(503, "down for maintenance"), getter("/", 1024)).result;
  CHECK(answer.ok);
  CHECK(answer.status == 503);
  CHECK(answer.body == "down for maintenance");
  CHECK(answer.reason == "HTTP 503");
}

TEST_CASE("a chunked answer is read to its end") {
  std::string response =
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
  auto answer = served(response, getter("/", 1024)).result;
  CHECK(answer.ok);
  CHECK(answer.body == "hello world");
}

TEST_CASE("an answer of exactly the body limit is read whole") {
  auto answer = served(canned(200, std::string(1024, 'x')), getter("/", 1024)).result;
  CHECK(answer.ok);
  CHECK(answer.body.size() == 1024);
}

TEST_CASE("an answer one byte over the body limit is an error that keeps the status, not a cut body") {
  auto answer = served(canned(200, std::string(1025, 'x')), getter("/", 1024)).result;
  CHECK_FALSE(answer.ok);
  CHECK(answer.status == 200);
  CHECK(answer.body.empty());
  CHECK(answer.reason == "answer larger than 1 KiB");
}

TEST_CASE("a chunked answer that grows past the body limit is an error too") {
  std::string chunk(600, 'x');
  std::string response = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n258\r\n" + chunk +
                         "\r\n258\r\n" + chunk + "\r\n0\r\n\r\n";  // 0x258 = 600
  auto answer = served(response, getter("/", 1000)).result;
  CHECK_FALSE(answer.ok);
  CHECK(answer.body.empty());
  CHECK(answer.reason == "answer larger than 1000 bytes");
}

TEST_CASE("an answer that stops halfway times out without a status") {
  const auto start = Clock::now();
  auto answer = served("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc", getter("/", 1024, 300ms),
                       Then::stall)
                    .result;
  CHECK_FALSE(answer.ok);
  CHECK(answer.status == 0);
  CHECK(answer.reason == "timed out after 300ms");
  CHECK(Clock::now() - start < 1s);
}

TEST_CASE("http_get to a port where nothing listens is connection refused") {
  auto url = parse_http_url("http://127.0.0.1:" + std::to_string(free_port()) + "/");
  REQUIRE(url);
  asio::io_context ctx;
  auto fut = asio::co_spawn(ctx, sentinel::http_get(*url, 2s, 1024), asio::use_future);
  ctx.run();
  HttpAnswer answer = fut.get();
  CHECK_FALSE(answer.ok);
  CHECK(answer.status == 0);
  CHECK(answer.reason == "connection refused");
}

TEST_CASE("the health probe judges an answer over 64 KiB by its status") {
  auto probe_of = [](std::string base) { return sentinel::probe_http(*parse_http_url(base + "/health"), 2s); };
  auto healthy = served(canned(200, std::string(100 * 1024, 'x')), probe_of).result;
  CHECK(healthy.healthy);
  CHECK(healthy.reason == "HTTP 200");
  auto unhealthy = served(canned(503, std::string(100 * 1024, 'x')), probe_of).result;
  CHECK_FALSE(unhealthy.healthy);
  CHECK(unhealthy.reason == "HTTP 503");
}

namespace {

ProbeResult probe_through(const std::string& url_text, sentinel::SocketSource open_socket) {
  auto url = parse_http_url(url_text);
  REQUIRE(url);
  boost::asio::io_context ctx;
  auto fut = boost::asio::co_spawn(ctx, sentinel::probe_http(*url, 2s, std::move(open_socket)),
                                   boost::asio::use_future);
  ctx.run();
  return fut.get();
}

}  // namespace

TEST_CASE("a probe given a socket source connects through the socket it supplies") {
  FakeService service("healthy");
  int supplied = 0;
  auto result = probe_through(service.url("/health"), [&] {
    ++supplied;
    return ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  });
  CHECK(result.healthy);
  CHECK(supplied == 1);
}

TEST_CASE("a probe whose socket source fails is not healthy and says why") {
  FakeService service("healthy");
  auto result = probe_through(service.url("/health"), [] { return -EPERM; });
  CHECK(!result.healthy);
  CHECK(result.reason == "cannot open a socket: Operation not permitted");
}
