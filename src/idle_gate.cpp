#include "idle_gate.h"

#include "config.h"
#include "health_probe.h"

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <boost/json/value.hpp>

#include <algorithm>
#include <string_view>
#include <utility>

namespace sentinel {

namespace json = boost::json;

bool QuietTracker::observe(IdleAnswer::State state, Clock::time_point now) {
  if (state != IdleAnswer::State::idle) {
    idle_since_.reset();
    return false;
  }
  if (!idle_since_) idle_since_ = now;
  return now - *idle_since_ >= quiet_;
}

Duration QuietTracker::remaining(Clock::time_point now) const {
  if (!idle_since_) return quiet_;
  auto held = std::chrono::duration_cast<Duration>(now - *idle_since_);
  return held >= quiet_ ? Duration::zero() : quiet_ - held;
}

IdleAnswer idle_answer_from_exit(bool exited, int code, const std::string& description) {
  if (exited && code == 0) return {IdleAnswer::State::idle, "idle command says idle"};
  if (exited && code == 1) return {IdleAnswer::State::busy, "idle command says busy"};
  return {IdleAnswer::State::unknown, "idle command " + description + " (treated as busy)"};
}

namespace {

IdleAnswer unknown_from(const IdleHttpConfig& config, const std::string& problem) {
  return {IdleAnswer::State::unknown, "idle URL " + config.url + ": " + problem + " (treated as busy)"};
}

/// "/data/activeSessions" or, for the empty pointer, "the answer".
std::string subject(const std::string& pointer) {
  return pointer.empty() ? "the answer" : pointer;
}

/// "at /data/activeSessions" or, for the empty pointer, "in the answer".
std::string place(const std::string& pointer) {
  return pointer.empty() ? "in the answer" : "at " + pointer;
}

std::string kind_name(const json::value& v) {
  switch (v.kind()) {
    case json::kind::object: return "an object";
    case json::kind::array: return "an array";
    case json::kind::string: return "a string";
    case json::kind::int64:
    case json::kind::uint64:
    case json::kind::double_: return "a number";
    case json::kind::bool_: return "a boolean";
    case json::kind::null: return "null";
  }
  return "something else";
}

/// The first bytes of `body`, printable ASCII only, to show what came instead of JSON.
std::string opening_of(std::string_view body) {
  constexpr std::size_t shown = 32;
  std::string text;
  for (unsigned char c : body.substr(0, shown)) text += (c >= 0x20 && c < 0x7f) ? char(c) : '?';
  return "\"" + text + (body.size() > shown ? "...\"" : "\"");
}

bool member_matches(const json::value& element, const IdleHttpConfig& config) {
  if (config.match_field.empty()) return true;
  const json::object* object = element.if_object();
  if (!object) return false;
  const json::value* member = object->if_contains(config.match_field);
  if (!member) return false;
  if (const json::string* text = member->if_string())
    return std::string_view(text->data(), text->size()) == config.match_equals;
  if (member->is_number() || member->is_bool()) return json::serialize(*member) == config.match_equals;
  return false;
}

std::string sessions(std::size_t count) {
  return std::to_string(count) + (count == 1 ? " active session" : " active sessions");
}

}  // namespace

IdleAnswer idle_answer_from_http(const HttpAnswer& answer, const IdleHttpConfig& config) {
  if (!answer.ok) return unknown_from(config, answer.reason);
  if (answer.status < 200 || answer.status > 299)
    return {IdleAnswer::State::unknown, "idle URL " + config.url + " answered HTTP " +
                                            std::to_string(answer.status) + " (treated as busy)"};
  if (answer.body.empty()) return unknown_from(config, "empty answer, not JSON");

  boost::system::error_code ec;
  json::value document = json::parse(answer.body, ec);
  if (ec)
    return unknown_from(config,
                        "not JSON (" + ec.message() + "), the answer begins " + opening_of(answer.body));

  const json::value* found = document.find_pointer(config.pointer, ec);
  if (ec == json::error::missing_slash || ec == json::error::invalid_escape)
    return unknown_from(config, "pointer \"" + config.pointer + "\" is not a JSON pointer (" +
                                    ec.message() + ")");
  if (!found) return unknown_from(config, "no " + config.pointer + " in the answer");
  const json::array* array = found->if_array();
  if (!array) return unknown_from(config, subject(config.pointer) + " is " + kind_name(*found) + ", not an array");

  std::size_t matching = 0;
  for (const json::value& element : *array)
    if (member_matches(element, config)) ++matching;

  const bool filtered = !config.match_field.empty();
  const std::string match = config.match_field + "=" + config.match_equals;
  if (matching == 0 && config.cap && array->size() >= *config.cap) {
    IdleAnswer capped = unknown_from(config, subject(config.pointer) + " lists " + std::to_string(array->size()) +
                                                 " elements, as many as it ever lists (cap = " +
                                                 std::to_string(*config.cap) + "), so a busy session may have been "
                                                 "cut off the end");
    capped.capped = true;
    return capped;
  }
  if (matching == 0)
    return {IdleAnswer::State::idle, filtered ? "no active session matches " + match + " " + place(config.pointer)
                                              : "no active session " + place(config.pointer)};
  return {IdleAnswer::State::busy,
          sessions(matching) + (filtered ? " of " + match : " " + place(config.pointer)) + " (" +
              config.url + ")"};
}

boost::asio::awaitable<IdleAnswer> check_idle_http(IdleHttpConfig config, Duration timeout) {
  auto url = parse_http_url(config.url);
  if (!url)
    co_return IdleAnswer{IdleAnswer::State::unknown,
                         "idle URL " + config.url + " is not a plain http:// URL (treated as busy)"};
  auto get = http_get(std::move(*url), timeout, kIdleHttpBodyLimit);
  HttpAnswer answer = co_await std::move(get);
  co_return idle_answer_from_http(answer, config);
}

IdleAnswer combine_idle(const std::vector<IdleAnswer>& answers) {
  if (answers.empty()) return {IdleAnswer::State::idle, "no idle source configured"};
  auto any = [&](IdleAnswer::State state) {
    return std::any_of(answers.begin(), answers.end(),
                       [state](const IdleAnswer& answer) { return answer.state == state; });
  };
  auto reasons_of = [&](IdleAnswer::State state) {
    std::string reasons;
    for (const IdleAnswer& answer : answers) {
      if (answer.state != state) continue;
      if (!reasons.empty()) reasons += "; ";
      reasons += answer.reason;
    }
    return IdleAnswer{state, reasons};
  };
  if (any(IdleAnswer::State::busy)) return reasons_of(IdleAnswer::State::busy);
  if (any(IdleAnswer::State::unknown)) return reasons_of(IdleAnswer::State::unknown);
  return reasons_of(IdleAnswer::State::idle);
}

}  // namespace sentinel
