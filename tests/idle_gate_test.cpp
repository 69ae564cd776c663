// The "idle continuously for quiet" rule on a fake clock; reading the idle URL's answer;
// and the idle URL asked for real, of a server on 127.0.0.1.
#include "idle_gate.h"

#include "config.h"
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

#include <exception>
#include <string>

using namespace sentinel;
using namespace std::chrono_literals;
using State = IdleAnswer::State;

TEST_CASE("idle must hold continuously for quiet before it counts") {
  QuietTracker quiet(30s);
  QuietTracker::Clock::time_point t0{};
  CHECK_FALSE(quiet.observe(State::idle, t0));
  CHECK(quiet.remaining(t0 + 10s) == 20s);
  CHECK_FALSE(quiet.observe(State::idle, t0 + 29s));
  CHECK(quiet.observe(State::idle, t0 + 30s));
  CHECK(quiet.remaining(t0 + 31s) == 0s);
}

TEST_CASE("a busy answer starts the quiet period again") {
  QuietTracker quiet(30s);
  QuietTracker::Clock::time_point t0{};
  quiet.observe(State::idle, t0);
  quiet.observe(State::busy, t0 + 20s);
  CHECK_FALSE(quiet.idle_since());
  CHECK_FALSE(quiet.observe(State::idle, t0 + 25s));
  CHECK_FALSE(quiet.observe(State::idle, t0 + 50s));
  CHECK(quiet.observe(State::idle, t0 + 55s));
}

TEST_CASE("an unknown answer (the idle command failed) counts as busy") {
  QuietTracker quiet(5s);
  QuietTracker::Clock::time_point t0{};
  quiet.observe(State::idle, t0);
  CHECK_FALSE(quiet.observe(State::unknown, t0 + 6s));
  CHECK_FALSE(quiet.observe(State::idle, t0 + 7s));
}

TEST_CASE("a quiet of zero is satisfied by the first idle answer") {
  QuietTracker quiet(0s);
  CHECK(quiet.observe(State::idle, QuietTracker::Clock::time_point{}));
}

TEST_CASE("the idle command's exit status maps to idle, busy, or unknown") {
  CHECK(idle_answer_from_exit(true, 0, "exited with status 0").state == State::idle);
  CHECK(idle_answer_from_exit(true, 1, "exited with status 1").state == State::busy);
  auto odd = idle_answer_from_exit(true, 2, "exited with status 2");
  CHECK(odd.state == State::unknown);
  CHECK(odd.reason == "idle command exited with status 2 (treated as busy)");
  CHECK(idle_answer_from_exit(false, 9, "killed by SIGKILL").state == State::unknown);
}

// ---- reading the idle URL's answer (pure) ----

namespace {

const std::string kUrl = "http://127.0.0.1:8080/status/data";

/// The botical service's idle source: busy while a session of agent "leopard" is active.
IdleHttpConfig botical() { return {kUrl, "/data/activeSessions", "agent", "leopard", {}}; }

HttpAnswer ok_json(const std::string& body) { return {true, 200, body, "HTTP 200"}; }

IdleAnswer read_answer(const std::string& body, const IdleHttpConfig& config = botical()) {
  return idle_answer_from_http(ok_json(body), config);
}

}  // namespace

TEST_CASE("an active session of the matching agent makes the agent busy and says where it was seen") {
  auto answer = read_answer(
      R"({"data":{"activeSessions":[{"agent":"leopard","id":"s1","startedAt":"2024-05-01T10:00:00Z"}]}})");
  CHECK(answer.state == State::busy);
  CHECK(answer.reason == "1 active session of agent=leopard (" + kUrl + ")");
}

TEST_CASE("several matching sessions are counted") {
  auto answer = read_answer(
      R"({"data":{"activeSessions":[{"agent":"leopard"},{"agent":"tiger"},{"agent":"leopard"}]}})");
  CHECK(answer.state == State::busy);
  CHECK(answer.reason == "2 active sessions of agent=leopard (" + kUrl + ")");
}

TEST_CASE("sessions of other agents only leave the agent idle") {
  auto answer = read_answer(R"({"data":{"activeSessions":[{"agent":"tiger"},{"name":"leopard"}]}})");
  CHECK(answer.state == State::idle);
  CHECK(answer.reason == "no active session matches agent=leopard at /data/activeSessions");
}

TEST_CASE("a list as long as its cap is unknown, never idle, since a busy session may have been cut off") {
  IdleHttpConfig capped = botical();
  capped.cap = 3;
  const std::string three = R"({"data":{"activeSessions":[{"agent":"tiger"},{"agent":"lynx"},{"agent":"puma"}]}})";
  auto full = read_answer(three, capped);
  CHECK(full.state == State::unknown);
  CHECK(full.capped);
  CHECK(full.reason == "idle URL " + kUrl + ": /data/activeSessions lists 3 elements, as many as it ever lists "
                       "(cap = 3), so a busy session may have been cut off the end (treated as busy)");
  // Longer than the cap is cut short too; one shorter is judged as usual.
  CHECK(read_answer(R"({"data":{"activeSessions":[{},{},{},{}]}})", capped).state == State::unknown);
  auto shorter = read_answer(R"({"data":{"activeSessions":[{"agent":"tiger"},{"agent":"lynx"}]}})", capped);
  CHECK(shorter.state == State::idle);
  CHECK_FALSE(shorter.capped);
  // A matching session in a full list is busy: that much is certain.
  CHECK(read_answer(R"({"data":{"activeSessions":[{"agent":"leopard"},{},{}]}})", capped).state == State::busy);
  // Without a cap the same full list is idle.
  CHECK(read_answer(three).state == State::idle);
}

TEST_CASE("an empty session list means idle") {
  auto answer = read_answer(R"({"data":{"activeSessions":[]}})");
  CHECK(answer.state == State::idle);
  CHECK(answer.reason == "no active session matches agent=leopard at /data/activeSessions");
}

TEST_CASE("elements that are not objects, or whose member is null or an object, never match") {
  auto answer = read_answer(
      R"({"data":{"activeSessions":["leopard",null,["leopard"],{"agent":null},{"agent":{"name":"leopard"}}]}})");
  CHECK(answer.state == State::idle);
}

TEST_CASE("a number or boolean member is compared by its JSON text") {
  IdleHttpConfig by_pid{kUrl, "/sessions", "pid", "42", {}};
  CHECK(read_answer(R"({"sessions":[{"pid":42}]})", by_pid).state == State::busy);
  CHECK(read_answer(R"({"sessions":[{"pid":"42"}]})", by_pid).state == State::busy);
  CHECK(read_answer(R"({"sessions":[{"pid":420}]})", by_pid).state == State::idle);
  IdleHttpConfig by_flag{kUrl, "/sessions", "running", "true", {}};
  CHECK(read_answer(R"({"sessions":[{"running":true}]})", by_flag).state == State::busy);
  CHECK(read_answer(R"({"sessions":[{"running":false}]})", by_flag).state == State::idle);
}

TEST_CASE("with no match field any element of the array means busy") {
  IdleHttpConfig any_session{kUrl, "/data/activeSessions", "", "", {}};
  auto busy = read_answer(R"({"data":{"activeSessions":[1,"x"]}})", any_session);
  CHECK(busy.state == State::busy);
  CHECK(busy.reason == "2 active sessions at /data/activeSessions (" + kUrl + ")");
  auto idle = read_answer(R"({"data":{"activeSessions":[]}})", any_session);
  CHECK(idle.state == State::idle);
  CHECK(idle.reason == "no active session at /data/activeSessions");
}

TEST_CASE("the empty pointer makes the whole answer the array") {
  IdleHttpConfig whole{kUrl, "", "agent", "leopard", {}};
  CHECK(read_answer(R"([{"agent":"leopard"}])", whole).state == State::busy);
  auto idle = read_answer(R"([])", whole);
  CHECK(idle.state == State::idle);
  CHECK(idle.reason == "no active session matches agent=leopard in the answer");
  auto object = read_answer(R"({"activeSessions":[]})", whole);
  CHECK(object.state == State::unknown);
  CHECK(object.reason == "idle URL " + kUrl + ": the answer is an object, not an array (treated as busy)");
}

TEST_CASE("a pointer follows RFC 6901 escapes and array indexes") {
  IdleHttpConfig escaped{kUrl, "/a~1b/m~0n/1", "agent", "leopard", {}};
  CHECK(read_answer(R"({"a/b":{"m~n":[[],[{"agent":"leopard"}]]}})", escaped).state == State::busy);
}

TEST_CASE("a pointer that leads nowhere is unknown and names what is missing") {
  const std::string missing =
      "idle URL " + kUrl + ": no /data/activeSessions in the answer (treated as busy)";
  for (const char* body : {R"({"data":{}})", R"({})", R"({"data":"down"})", R"({"data":[1,2]})",
                           R"([])"}) {
    CAPTURE(body);
    auto answer = read_answer(body);
    CHECK(answer.state == State::unknown);
    CHECK(answer.reason == missing);
  }
}

TEST_CASE("something other than an array at the pointer is unknown and says what it is") {
  auto object = read_answer(R"({"data":{"activeSessions":{"agent":"leopard"}}})");
  CHECK(object.state == State::unknown);
  CHECK(object.reason ==
        "idle URL " + kUrl + ": /data/activeSessions is an object, not an array (treated as busy)");
  CHECK(read_answer(R"({"data":{"activeSessions":null}})").reason ==
        "idle URL " + kUrl + ": /data/activeSessions is null, not an array (treated as busy)");
  CHECK(read_answer(R"({"data":{"activeSessions":3}})").reason ==
        "idle URL " + kUrl + ": /data/activeSessions is a number, not an array (treated as busy)");
}

TEST_CASE("a pointer that is not a JSON pointer is unknown and says so") {
  IdleHttpConfig no_slash{kUrl, "data/activeSessions", "agent", "leopard", {}};
  auto answer = read_answer(R"({"data":{"activeSessions":[]}})", no_slash);
  CHECK(answer.state == State::unknown);
  CHECK(answer.reason.starts_with("idle URL " + kUrl +
                                  ": pointer \"data/activeSessions\" is not a JSON pointer ("));
  IdleHttpConfig bad_escape{kUrl, "/data~2", "agent", "leopard", {}};
  CHECK(read_answer(R"({"data~2":[]})", bad_escape).state == State::unknown);
}

TEST_CASE("an answer that is not JSON is unknown and shows how it begins") {
  auto html = read_answer("<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>");
  CHECK(html.state == State::unknown);
  CHECK(html.reason.starts_with("idle URL " + kUrl + ": not JSON ("));
  CHECK(html.reason.ends_with(
      R"(), the answer begins "<html><head><title>502 Bad Gatew..." (treated as busy))"));
  auto cut = read_answer(R"({"data":{"activeSessions":[)");
  CHECK(cut.state == State::unknown);
  CHECK(cut.reason.find("not JSON") != std::string::npos);
  auto empty = read_answer("");
  CHECK(empty.state == State::unknown);
  CHECK(empty.reason == "idle URL " + kUrl + ": empty answer, not JSON (treated as busy)");
}

TEST_CASE("a non-2xx answer is unknown whatever its body says") {
  auto answer = idle_answer_from_http({true, 503, R"({"data":{"activeSessions":[]}})", "HTTP 503"}, botical());
  CHECK(answer.state == State::unknown);
  CHECK(answer.reason == "idle URL " + kUrl + " answered HTTP 503 (treated as busy)");
  CHECK(idle_answer_from_http({true, 302, "", "HTTP 302"}, botical()).state == State::unknown);
}

TEST_CASE("a failed request is unknown and keeps its reason") {
  auto refused = idle_answer_from_http({false, 0, "", "connection refused"}, botical());
  CHECK(refused.state == State::unknown);
  CHECK(refused.reason == "idle URL " + kUrl + ": connection refused (treated as busy)");
  auto too_big = idle_answer_from_http({false, 200, "", "answer larger than 1 MiB"}, botical());
  CHECK(too_big.state == State::unknown);
  CHECK(too_big.reason == "idle URL " + kUrl + ": answer larger than 1 MiB (treated as busy)");
}

// ---- every source together ----

TEST_CASE("no idle source at all means idle") {
  auto answer = combine_idle({});
  CHECK(answer.state == State::idle);
  CHECK(answer.reason == "no idle source configured");
}

TEST_CASE("every source idle means idle, with every reason") {
  auto answer = combine_idle({{State::idle, "idle command says idle"}, {State::idle, "no session"}});
  CHECK(answer.state == State::idle);
  CHECK(answer.reason == "idle command says idle; no session");
}

TEST_CASE("one busy source makes the agent busy, with only the busy reasons") {
  auto answer = combine_idle({{State::idle, "I"}, {State::busy, "B1"}, {State::unknown, "U"},
                              {State::busy, "B2"}});
  CHECK(answer.state == State::busy);
  CHECK(answer.reason == "B1; B2");
}

TEST_CASE("an unknown source without a busy one makes the agent unknown, never idle") {
  auto answer = combine_idle({{State::idle, "I"}, {State::unknown, "U1"}, {State::unknown, "U2"}});
  CHECK(answer.state == State::unknown);
  CHECK(answer.reason == "U1; U2");
}

// ---- the idle URL asked for real ----

namespace {

namespace asio = boost::asio;
using asio::ip::tcp;

using sentinel::test::answer_once;

struct Checked {
  IdleAnswer answer;
  std::string url;      // the idle URL asked
  std::string request;  // the request head the server saw
};

/// Runs check_idle_http for `path` on 127.0.0.1 against a server there that answers 200 with
/// `body`; both run to the end on one io_context.
Checked check_served(const std::string& body, const std::string& path = "/status/data") {
  asio::io_context ctx;
  tcp::acceptor acceptor(ctx, tcp::endpoint(asio::ip::make_address_v4("127.0.0.1"), 0));
  std::string response = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " +
                         std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + body;
  Checked checked;
  asio::co_spawn(ctx, answer_once(acceptor, std::move(response), checked.request),
                 [](std::exception_ptr e) {
                   if (e) std::rethrow_exception(e);
                 });
  checked.url = "http://127.0.0.1:" + std::to_string(acceptor.local_endpoint().port()) + path;
  IdleHttpConfig config = botical();
  config.url = checked.url;
  auto fut = asio::co_spawn(ctx, check_idle_http(config, 2s), asio::use_future);
  ctx.run();
  checked.answer = fut.get();
  return checked;
}

IdleAnswer check_unserved(const std::string& url) {
  asio::io_context ctx;
  IdleHttpConfig config = botical();
  config.url = url;
  auto fut = asio::co_spawn(ctx, check_idle_http(config, 2s), asio::use_future);
  ctx.run();
  return fut.get();
}

/// `{"data":{"activeSessions":[...]},"pad":"xxx..."}` of exactly `size` bytes.
std::string padded_answer(const std::string& sessions, std::size_t size) {
  std::string head = R"({"data":{"activeSessions":[)" + sessions + R"(]},"pad":")", tail = "\"}";
  REQUIRE(size >= head.size() + tail.size());
  return head + std::string(size - head.size() - tail.size(), 'x') + tail;
}

}  // namespace

TEST_CASE("the idle URL is asked with a GET and a matching session there means busy") {
  auto checked = check_served(R"({"data":{"activeSessions":[{"agent":"leopard","id":"s1"}]}})");
  CHECK(checked.request.starts_with("GET /status/data HTTP/1.1\r\n"));
  CHECK(checked.answer.state == State::busy);
  CHECK(checked.answer.reason == "1 active session of agent=leopard (" + checked.url + ")");
}

TEST_CASE("the idle URL listing no session means idle") {
  auto checked = check_served(R"({"data":{"activeSessions":[]}})");
  CHECK(checked.answer.state == State::idle);
  CHECK(checked.answer.reason == "no active session matches agent=leopard at /data/activeSessions");
}

TEST_CASE("an idle answer of exactly 1 MiB is read and judged") {
  auto checked = check_served(padded_answer(R"({"agent":"leopard"})", kIdleHttpBodyLimit));
  CHECK(kIdleHttpBodyLimit == 1024 * 1024);
  CHECK(checked.answer.state == State::busy);
}

TEST_CASE("an idle answer over 1 MiB is unknown, not cut short and judged") {
  auto checked = check_served(padded_answer("", kIdleHttpBodyLimit + 1));
  CHECK(checked.answer.state == State::unknown);
  CHECK(checked.answer.reason ==
        "idle URL " + checked.url + ": answer larger than 1 MiB (treated as busy)");
}

TEST_CASE("an idle URL where nothing listens is unknown: connection refused") {
  std::uint16_t port = 0;
  {
    asio::io_context ctx;
    tcp::acceptor probe(ctx, tcp::endpoint(asio::ip::make_address_v4("127.0.0.1"), 0));
    port = probe.local_endpoint().port();
  }  // closed: nobody listens there now
  const std::string url = "http://127.0.0.1:" + std::to_string(port) + "/status/data";
  auto answer = check_unserved(url);
  CHECK(answer.state == State::unknown);
  CHECK(answer.reason == "idle URL " + url + ": connection refused (treated as busy)");
}

TEST_CASE("an idle URL that is not plain http is unknown and says so") {
  auto answer = check_unserved("https://botical.example/status/data");
  CHECK(answer.state == State::unknown);
  CHECK(answer.reason ==
        "idle URL https://botical.example/status/data is not a plain http:// URL (treated as busy)");
}
