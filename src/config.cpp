#include "config.h"

#include "deploy_window.h"

#include <toml++/toml.h>

#include <algorithm>
#include <charconv>
#include <array>
#include <cctype>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <numeric>
#include <span>
#include <utility>

#include <pwd.h>
#include <unistd.h>
#include <sys/stat.h>

namespace sentinel {

const TargetConfig* Config::find_target(std::string_view name) const {
  const auto found =
      std::find_if(targets.begin(), targets.end(),
                   [name](const TargetConfig& target) { return target.name == name; });
  return found == targets.end() ? nullptr : &*found;
}

namespace {

namespace fs = std::filesystem;
using namespace std::string_view_literals;

constexpr std::string_view kDefaultStateDir = "/var/lib/deploy-sentinel";
constexpr Duration kDefaultBuildTimeout = 15min;
constexpr std::size_t kMaxTargetNameLength = 64;
constexpr std::size_t kMaxSuggestionDistance = 2;

constexpr std::string_view kCommandExample = R"(["systemctl", "restart", "app"])";
constexpr std::string_view kUrlExample = R"("http://127.0.0.1:8080/health")";

using KeyList = std::span<const std::string_view>;

constexpr std::array kTopLevelKeys{"sentinel"sv, "target"sv, "fleet"sv};
constexpr std::array kFleetKeys{"etcd"sv,    "group"sv,   "host"sv,    "max_restarting"sv, "lease_ttl"sv,
                                "timeout"sv, "ca_file"sv, "cert_file"sv, "key_file"sv};
constexpr std::array kSentinelKeys{"state_dir"sv, "log_level"sv, "metrics_file"sv};
constexpr std::array kTargetKeys{"name"sv,   "marker_dir"sv, "checkout"sv, "restart"sv, "build"sv,
                                 "health"sv, "idle"sv,       "cycle"sv,    "monitor"sv, "env"sv, "allowed_owners"sv,
                                 "window"sv, "min_interval"sv, "preflight"sv,
                                 "hooks"sv};
constexpr std::array kHooksKeys{"on_deployed"sv, "on_reverted"sv, "on_failed"sv, "on_recovered"sv, "timeout"sv};
constexpr std::array kCommandSpecKeys{"command"sv, "timeout"sv, "kill_grace"sv};
constexpr std::array kConfirmKeys{"pointer"sv, "equals"sv};
constexpr std::array kHealthKeys{"confirm"sv,  "url"sv,      "command"sv,   "timeout"sv, "grace"sv,
                                 "interval"sv, "successes"sv, "deadline"sv};
constexpr std::array kIdleKeys{"command"sv, "http"sv,     "lease_file"sv, "interval"sv,
                               "quiet"sv,   "timeout"sv,  "max_wait"sv,   "on_max_wait"sv};
constexpr std::array kIdleHttpKeys{"url"sv, "pointer"sv, "match"sv, "cap"sv};
constexpr std::array kWindowKeys{"days"sv, "start"sv, "end"sv, "time_zone"sv};
constexpr std::array kMatchKeys{"field"sv, "equals"sv};
constexpr std::array kCycleKeys{"command"sv, "every"sv, "jitter"sv, "after_recovery"sv, "timeout"sv, "kill_grace"sv};
constexpr std::array kMonitorKeys{"interval"sv, "failures"sv, "max_recoveries"sv, "window"sv};
constexpr std::array kPreflightKeys{"command"sv, "env"sv,      "snapshot"sv,  "snapshot_command"sv, "health"sv,
                                    "timeout"sv, "grace"sv,    "interval"sv,  "successes"sv,        "deadline"sv,
                                    "isolate"sv};
constexpr Duration kDefaultCycleTimeout = 60s;
// The longest duration a key may have. Deadlines are computed as a clock's now() plus the duration
// in 64-bit nanoseconds, which overflow (undefined behaviour) a few hundred years out.
constexpr Duration kMaxDuration = std::chrono::days(36500);
constexpr std::array kLogLevels{"trace"sv, "debug"sv,    "info"sv, "warn"sv,
                                "error"sv, "critical"sv, "off"sv};

/// The uid of user `name` from the system's user database, or nullopt.
std::optional<uid_t> lookup_user(const std::string& name) {
  struct passwd entry {};
  struct passwd* found = nullptr;
  std::array<char, 16384> buffer{};
  if (::getpwnam_r(name.c_str(), &entry, buffer.data(), buffer.size(), &found) != 0 || found == nullptr) {
    return std::nullopt;
  }
  return found->pw_uid;
}

/// `text` in double quotes, with quotes, backslashes and control characters escaped.
std::string in_quotes(std::string_view text) {
  std::string out = "\"";
  for (const char c : text) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      char escape[8];
      std::snprintf(escape, sizeof escape, "\\u%04x", static_cast<unsigned>(c));
      out += escape;
    } else {
      out += c;
    }
  }
  return out + "\"";
}

/// `text` with control characters escaped (\n, \r, \t, \u0001), so it stays on one line.
std::string on_one_line(std::string_view text) {
  std::string out;
  for (const char c : text) {
    if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      char escape[8];
      std::snprintf(escape, sizeof escape, "\\u%04x", static_cast<unsigned>(c));
      out += escape;
    } else {
      out += c;
    }
  }
  return out;
}

/// `key` as a user writes it in TOML: bare when it can be, quoted otherwise.
std::string display_key(std::string_view key) {
  const bool bare = !key.empty() && std::all_of(key.begin(), key.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-';
  });
  return bare ? std::string(key) : in_quotes(key);
}

/// "a string", "an integer", ... for messages about a value of the wrong type.
std::string_view describe_type(toml::node_type type) {
  switch (type) {
    case toml::node_type::table:
      return "a table";
    case toml::node_type::array:
      return "an array";
    case toml::node_type::string:
      return "a string";
    case toml::node_type::integer:
      return "an integer";
    case toml::node_type::floating_point:
      return "a floating-point number";
    case toml::node_type::boolean:
      return "a boolean";
    case toml::node_type::date:
      return "a date";
    case toml::node_type::time:
      return "a time";
    case toml::node_type::date_time:
      return "a date-time";
    case toml::node_type::none:
      break;
  }
  return "nothing";
}

/// The Levenshtein distance: single-character insertions, deletions and substitutions.
std::size_t edit_distance(std::string_view from, std::string_view to) {
  std::vector<std::size_t> previous(to.size() + 1);
  std::vector<std::size_t> current(to.size() + 1);
  std::iota(previous.begin(), previous.end(), std::size_t{0});
  for (std::size_t i = 1; i <= from.size(); ++i) {
    current[0] = i;
    for (std::size_t j = 1; j <= to.size(); ++j) {
      const std::size_t substitution = previous[j - 1] + (from[i - 1] == to[j - 1] ? 0 : 1);
      current[j] = std::min({previous[j] + 1, current[j - 1] + 1, substitution});
    }
    std::swap(previous, current);
  }
  return previous[to.size()];
}

/// "unknown key" with the closest of `known_keys` as a suggestion, or all of them when none
/// is close.
std::string unknown_key_message(std::string_view key, KeyList known_keys) {
  std::string_view closest;
  std::size_t closest_distance = std::numeric_limits<std::size_t>::max();
  for (const std::string_view known : known_keys) {
    if (const std::size_t distance = edit_distance(key, known); distance < closest_distance) {
      closest = known;
      closest_distance = distance;
    }
  }
  if (closest_distance <= kMaxSuggestionDistance) {
    return "unknown key (did you mean " + in_quotes(closest) + "?)";
  }
  std::string listed;
  for (const std::string_view known : known_keys) {
    listed += listed.empty() ? "" : ", ";
    listed += known;
  }
  return "unknown key (valid keys here: " + listed + ")";
}

/// `text` as a path: relative ones are taken from `base_dir`; `.` and `..` are resolved
/// lexically and a trailing slash is dropped.
fs::path resolve_path(const fs::path& base_dir, std::string_view text) {
  fs::path path = (base_dir / fs::path(text)).lexically_normal();
  if (!path.has_filename() && path.has_relative_path()) path = path.parent_path();
  return path;
}

bool is_host_char(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '_';
}

bool is_ipv6_char(char c) {
  return std::isxdigit(static_cast<unsigned char>(c)) || c == ':' || c == '.';
}

bool is_valid_port(std::string_view port) {
  if (port.empty() || port.size() > 5) return false;
  int number = 0;
  for (const char c : port) {
    if (c < '0' || c > '9') return false;
    number = number * 10 + (c - '0');
  }
  return number >= 1 && number <= 65535;
}

/// What is wrong with `url` as a health URL (`http://host[:port][/path]`), or nullopt when
/// nothing is.
std::optional<std::string> http_url_problem(std::string_view url) {
  constexpr std::string_view kScheme = "http://";
  if (url.starts_with("https://")) {
    return "HTTPS is not supported; probe the service's plain-HTTP port, like " +
           std::string(kUrlExample);
  }
  if (!url.starts_with(kScheme)) {
    return "expected an http:// URL, like " + std::string(kUrlExample) + ", got " + in_quotes(url);
  }
  const std::string_view after_scheme = url.substr(kScheme.size());
  const std::string_view authority = after_scheme.substr(0, after_scheme.find_first_of("/?#"));

  std::string_view host = authority;
  std::optional<std::string_view> port;
  if (authority.starts_with('[')) {
    const std::size_t close = authority.find(']');
    host = authority.substr(1, close == std::string_view::npos ? close : close - 1);
    const std::string_view rest =
        close == std::string_view::npos ? std::string_view{} : authority.substr(close + 1);
    if (close == std::string_view::npos || host.empty() ||
        !std::all_of(host.begin(), host.end(), is_ipv6_char) ||
        !(rest.empty() || rest.starts_with(':'))) {
      return "the host in " + in_quotes(url) + " is not an IPv6 address like [::1]";
    }
    if (!rest.empty()) port = rest.substr(1);
  } else {
    if (const std::size_t colon = authority.find(':'); colon != std::string_view::npos) {
      host = authority.substr(0, colon);
      port = authority.substr(colon + 1);
    }
    if (host.empty()) return "the URL has no host; write it like " + std::string(kUrlExample);
    if (!std::all_of(host.begin(), host.end(), is_host_char)) {
      return "the host " + in_quotes(host) + " is not a host name or IP address";
    }
  }
  if (port && !is_valid_port(*port)) {
    return "the port must be a number from 1 to 65535, got " + in_quotes(*port);
  }
  return std::nullopt;
}

/// Turns a position and a subject into the one message format of ConfigError:
/// "FILE:LINE:COL: SUBJECT: MESSAGE".
class ErrorReporter {
 public:
  explicit ErrorReporter(std::string file) : file_(std::move(file)) {}

  /// Throws ConfigError pointing at `where` (1:1 when toml++ knows no position).
  [[noreturn]] void fail(const toml::source_region& where, std::string_view subject,
                         std::string_view message) const {
    const bool known = where.begin.line > 0;
    throw ConfigError(file_ + ":" + std::to_string(known ? where.begin.line : 1) + ":" +
                      std::to_string(known ? where.begin.column : 1) + ": " + std::string(subject) +
                      ": " + std::string(message));
  }

 private:
  std::string file_;
};

/// Whether a duration of zero makes sense for a key ("0s" grace) or not ("0s" timeout).
enum class ZeroDuration { allowed, rejected };

/// One TOML table of the config, read with its dotted key path (`target[1].health`) so that
/// every error names the key and points at the right line and column. Every read returns
/// nullopt for an absent key and throws ConfigError for a present one of the wrong shape;
/// the `required_` reads throw "required key missing" instead of returning nullopt.
class TableReader {
 public:
  /// Throws ConfigError for the first key (in document order) that is not one of `known_keys`.
  TableReader(const toml::table& table, std::string path, const ErrorReporter& errors,
              KeyList known_keys)
      : table_(table), path_(std::move(path)), errors_(errors) {
    const toml::key* first_unknown = nullptr;
    for (const auto& [key, value] : table_) {
      const bool known =
          std::find(known_keys.begin(), known_keys.end(), key.str()) != known_keys.end();
      if (!known && (first_unknown == nullptr || comes_before(key, *first_unknown))) {
        first_unknown = &key;
      }
    }
    if (first_unknown != nullptr) {
      errors_.fail(first_unknown->source(), key_path(first_unknown->str()),
                   unknown_key_message(first_unknown->str(), known_keys));
    }
  }

  bool has(std::string_view key) const { return table_.contains(key); }

  const ErrorReporter& errors() const { return errors_; }

  /// The raw value of `key`, or nullptr.
  const toml::node* find(std::string_view key) const { return table_.get(key); }

  /// `key` under this table as a user writes it: "target[1].health.url".
  std::string key_path(std::string_view key) const {
    return path_.empty() ? display_key(key) : path_ + "." + display_key(key);
  }

  /// Throws ConfigError about the value of `key`, which must be present.
  [[noreturn]] void fail(std::string_view key, std::string_view message) const {
    errors_.fail(table_.get(key)->source(), key_path(key), message);
  }

  /// Throws ConfigError about `key` pointing at this table, for a key that is absent.
  [[noreturn]] void fail_missing(std::string_view key,
                                 std::string_view message = "required key missing") const {
    errors_.fail(table_.source(), key_path(key), message);
  }

  /// Throws ConfigError about `subject` at `where` (an element inside one of this table's values).
  [[noreturn]] void fail_at(const toml::source_region& where, std::string_view subject, std::string_view message) const {
    errors_.fail(where, subject, message);
  }

  /// Throws ConfigError about this table as a whole.
  [[noreturn]] void fail_table(std::string_view message) const {
    errors_.fail(table_.source(), path_, message);
  }

  std::optional<std::string> string(std::string_view key) const {
    const toml::node* node = table_.get(key);
    if (node == nullptr) return std::nullopt;
    if (!node->is_string()) {
      fail(key, "expected a string, got " + std::string(describe_type(node->type())));
    }
    return node->as_string()->get();
  }

  std::string required_string(std::string_view key) const { return present(string(key), key); }

  std::optional<std::int64_t> integer(std::string_view key) const {
    const toml::node* node = table_.get(key);
    if (node == nullptr) return std::nullopt;
    if (!node->is_integer()) {
      fail(key, "expected an integer, got " + std::string(describe_type(node->type())));
    }
    return node->as_integer()->get();
  }

  std::optional<bool> boolean(std::string_view key) const {
    const toml::node* node = table_.get(key);
    if (node == nullptr) return std::nullopt;
    if (!node->is_boolean()) {
      fail(key, "expected true or false, got " + std::string(describe_type(node->type())));
    }
    return node->as_boolean()->get();
  }

  /// An integer from 1 to INT_MAX.
  std::optional<int> count(std::string_view key) const {
    const std::optional<std::int64_t> value = integer(key);
    if (!value) return std::nullopt;
    if (*value < 1) fail(key, "must be at least 1, got " + std::to_string(*value));
    if (*value > std::numeric_limits<int>::max()) {
      fail(key, "must be at most " + std::to_string(std::numeric_limits<int>::max()) + ", got " +
                    std::to_string(*value));
    }
    return static_cast<int>(*value);
  }

  std::optional<Duration> duration(std::string_view key, ZeroDuration zero) const {
    const toml::node* node = table_.get(key);
    if (node == nullptr) return std::nullopt;
    const std::string expected = R"(expected a duration like "30s" or "500ms", got )";
    if (const toml::value<std::int64_t>* number = node->as_integer()) {
      fail(key, expected + std::to_string(number->get()) + " (a duration is a string with a unit)");
    }
    if (!node->is_string()) fail(key, expected + std::string(describe_type(node->type())));
    const std::string& text = node->as_string()->get();
    const std::optional<Duration> parsed = parse_duration(text);
    if (!parsed) fail(key, expected + in_quotes(text));
    if (zero == ZeroDuration::rejected && parsed->count() == 0) {
      fail(key, R"(must be longer than zero, like "1s")");
    }
    if (*parsed > kMaxDuration) fail(key, R"(must be at most "36500d" (100 years), got )" + in_quotes(text));
    return parsed;
  }

  /// A non-empty array of non-empty strings: a program and its arguments.
  std::optional<std::vector<std::string>> command(std::string_view key) const {
    const toml::node* node = table_.get(key);
    if (node == nullptr) return std::nullopt;
    const std::string expected =
        "expected an array of strings, like " + std::string(kCommandExample);
    const toml::array* array = node->as_array();
    if (array == nullptr) fail(key, expected);
    if (array->empty()) fail(key, "is empty; " + expected);

    std::vector<std::string> argv;
    for (std::size_t i = 0; i < array->size(); ++i) {
      const toml::node& element = (*array)[i];
      const std::string element_path = key_path(key) + "[" + std::to_string(i + 1) + "]";
      if (!element.is_string()) {
        errors_.fail(element.source(), element_path,
                     "expected a string, got " + std::string(describe_type(element.type())));
      }
      const std::string& word = element.as_string()->get();
      if (word.empty()) errors_.fail(element.source(), element_path, "must not be an empty string");
      argv.push_back(word);
    }
    return argv;
  }

  std::vector<std::string> required_command(std::string_view key) const {
    return present(command(key), key);
  }

  /// A non-empty path, resolved against `base_dir`.
  std::optional<fs::path> path(std::string_view key, const fs::path& base_dir) const {
    const std::optional<std::string> text = string(key);
    if (!text) return std::nullopt;
    if (text->empty()) fail(key, "must not be empty; give a directory");
    if (text->starts_with('~')) {
      fail(key, R"("~" is not expanded here; write the full path, like "/home/user/app")");
    }
    return resolve_path(base_dir, *text);
  }

  fs::path required_path(std::string_view key, const fs::path& base_dir) const {
    return present(path(key, base_dir), key);
  }

  /// A sub-table, written as `[a.b]`, as `b = { ... }` or through dotted keys.
  std::optional<TableReader> table(std::string_view key, KeyList known_keys) const {
    const toml::node* node = table_.get(key);
    if (node == nullptr) return std::nullopt;
    if (!node->is_table()) {
      fail(key, "expected a table ([section] or { ... }), got " +
                    std::string(describe_type(node->type())));
    }
    return TableReader(*node->as_table(), key_path(key), errors_, known_keys);
  }

  TableReader required_table(std::string_view key, KeyList known_keys) const {
    return present(table(key, known_keys), key);
  }

  /// A table of string values, like `env = { NODE_ENV = "production" }`, in document order.
  std::vector<std::pair<std::string, std::string>> string_table(std::string_view key) const {
    const toml::node* node = table_.get(key);
    if (node == nullptr) return {};
    const std::string expected = R"(expected a table of strings, like { NODE_ENV = "production" })";
    const toml::table* table = node->as_table();
    if (table == nullptr) fail(key, expected + ", got " + std::string(describe_type(node->type())));
    std::vector<std::pair<std::string, std::string>> entries;
    for (const auto& [name, value] : *table) {
      const std::string entry_path = key_path(key) + "." + display_key(name.str());
      if (!value.is_string()) {
        errors_.fail(value.source(), entry_path, "expected a string, got " + std::string(describe_type(value.type())));
      }
      entries.emplace_back(name.str(), value.as_string()->get());
    }
    return entries;
  }

  /// An array of user names or numeric uids, each resolved to a uid.
  std::vector<uid_t> users(std::string_view key) const {
    const toml::node* node = table_.get(key);
    if (node == nullptr) return {};
    const std::string expected = R"(expected an array of user names or uids, like ["deploy", "root"])";
    const toml::array* array = node->as_array();
    if (array == nullptr) fail(key, expected + ", got " + std::string(describe_type(node->type())));
    if (array->empty()) fail(key, "is empty, so no marker would ever be accepted; " + expected);
    std::vector<uid_t> uids;
    for (std::size_t i = 0; i < array->size(); ++i) {
      const toml::node& element = (*array)[i];
      const std::string element_path = key_path(key) + "[" + std::to_string(i + 1) + "]";
      if (const auto* number = element.as_integer()) {
        if (number->get() < 0 || number->get() > std::numeric_limits<uid_t>::max() - 1) {
          errors_.fail(element.source(), element_path, "is not a valid uid");
        }
        uids.push_back(static_cast<uid_t>(number->get()));
        continue;
      }
      if (!element.is_string()) errors_.fail(element.source(), element_path, expected);
      const std::string& name = element.as_string()->get();
      std::optional<uid_t> uid = lookup_user(name);
      if (!uid) errors_.fail(element.source(), element_path, "no user " + in_quotes(name) + " on this system");
      uids.push_back(*uid);
    }
    return uids;
  }

 private:
  static bool comes_before(const toml::key& a, const toml::key& b) {
    const toml::source_position& pa = a.source().begin;
    const toml::source_position& pb = b.source().begin;
    return std::pair(pa.line, pa.column) < std::pair(pb.line, pb.column);
  }

  template <typename T>
  T present(std::optional<T> value, std::string_view key) const {
    if (!value) fail_missing(key);
    return *std::move(value);
  }

  const toml::table& table_;
  std::string path_;
  const ErrorReporter& errors_;
};

CommandSpec read_command_spec(const TableReader& table, Duration default_timeout) {
  CommandSpec spec;
  spec.argv = table.required_command("command");
  spec.timeout = table.duration("timeout", ZeroDuration::rejected).value_or(default_timeout);
  spec.kill_grace = table.duration("kill_grace", ZeroDuration::allowed).value_or(spec.kill_grace);
  return spec;
}

/// A JSON pointer as RFC 6901 writes it: empty, or "/" followed by tokens where "~" is only
/// followed by 0 or 1.
bool is_json_pointer(std::string_view pointer) {
  if (!pointer.empty() && pointer.front() != '/') return false;
  for (std::size_t i = 0; i < pointer.size(); ++i) {
    if (pointer[i] == '~' && (i + 1 == pointer.size() || (pointer[i + 1] != '0' && pointer[i + 1] != '1'))) {
      return false;
    }
  }
  return true;
}

/// True when `url` (valid) names this host: localhost, 127.0.0.0/8 or ::1, where the listening
/// process can be seen.
bool names_local_host(std::string_view url) {
  std::string_view rest = url.substr(std::string_view("http://").size());
  rest = rest.substr(0, rest.find_first_of("/?#"));
  std::string_view host = rest;
  if (host.starts_with('[')) {
    host = host.substr(1, host.find(']') - 1);
    return host == "::1";
  }
  host = host.substr(0, host.find(':'));
  const bool dotted_digits = !host.empty() && host.find_first_not_of("0123456789.") == std::string_view::npos;
  return host == "localhost" || (host.starts_with("127.") && dotted_digits);
}

ConfirmConfig read_confirm(const TableReader& table, const HealthConfig& health) {
  constexpr std::string_view kExpected =
      R"(expected "listener", "none" or { pointer = "/version", equals = "{commit}" })";
  ConfirmConfig confirm;
  const toml::node* node = table.find("confirm");
  if (node == nullptr) {
    if (!health.url.empty() && names_local_host(health.url)) confirm.kind = ConfirmConfig::Kind::listener;
    return confirm;
  }
  if (node->is_table()) {
    const TableReader fields = *table.table("confirm", kConfirmKeys);
    confirm.kind = ConfirmConfig::Kind::pointer;
    confirm.pointer = fields.required_string("pointer");
    confirm.equals = fields.required_string("equals");
    if (!is_json_pointer(confirm.pointer) || confirm.pointer.empty()) {
      fields.fail("pointer", R"(expected a JSON pointer like "/version" (RFC 6901), got )" + in_quotes(confirm.pointer));
    }
    if (health.url.empty()) table.fail("confirm", "a pointer needs the health answer of a url, not a command");
    return confirm;
  }
  const std::optional<std::string> text = table.string("confirm");
  if (*text == "none") return confirm;
  if (*text != "listener") table.fail("confirm", std::string(kExpected) + ", got " + in_quotes(*text));
  if (health.url.empty()) table.fail("confirm", R"("listener" needs a url whose port the new process listens on)");
  if (!names_local_host(health.url)) {
    table.fail("confirm", R"("listener" can only see processes on this host: use a url on 127.0.0.1 or [::1])");
  }
  confirm.kind = ConfirmConfig::Kind::listener;
  return confirm;
}

HealthConfig read_health(const TableReader& table) {
  HealthConfig health;
  const bool has_url = table.has("url");
  const bool has_command = table.has("command");
  if (has_url && has_command) {
    table.fail_table("give either url or command, not both");
  }
  if (!has_url && !has_command) {
    table.fail_table("needs url = " + std::string(kUrlExample) +
                     " or command = " + std::string(kCommandExample));
  }
  if (has_url) {
    health.url = table.required_string("url");
    if (const std::optional<std::string> problem = http_url_problem(health.url)) {
      table.fail("url", *problem);
    }
  } else {
    health.command = table.required_command("command");
  }

  health.timeout = table.duration("timeout", ZeroDuration::rejected).value_or(health.timeout);
  health.grace = table.duration("grace", ZeroDuration::allowed).value_or(health.grace);
  health.interval = table.duration("interval", ZeroDuration::rejected).value_or(health.interval);
  health.deadline = table.duration("deadline", ZeroDuration::rejected).value_or(health.deadline);
  health.successes = table.count("successes").value_or(health.successes);
  health.confirm = read_confirm(table, health);
  return health;
}

IdleHttpConfig read_idle_http(const TableReader& table) {
  IdleHttpConfig http;
  http.url = table.required_string("url");
  if (const std::optional<std::string> problem = http_url_problem(http.url)) table.fail("url", *problem);
  http.pointer = table.string("pointer").value_or("");
  if (!is_json_pointer(http.pointer)) {
    table.fail("pointer", R"(expected a JSON pointer like "/data/activeSessions" (RFC 6901), got )" +
                              in_quotes(http.pointer));
  }
  if (const std::optional<TableReader> match = table.table("match", kMatchKeys)) {
    http.match_field = match->required_string("field");
    http.match_equals = match->required_string("equals");
    if (http.match_field.empty()) match->fail("field", "must not be empty; name the member to compare, like \"agent\"");
  }
  if (const std::optional<int> cap = table.count("cap")) http.cap = static_cast<std::size_t>(*cap);
  return http;
}

IdleConfig read_idle(const TableReader& table, const fs::path& base_dir) {
  IdleConfig idle;
  idle.command = table.command("command").value_or(std::vector<std::string>{});
  if (const std::optional<TableReader> http = table.table("http", kIdleHttpKeys)) idle.http = read_idle_http(*http);
  if (const std::optional<std::string> lease = table.string("lease_file")) {
    if (lease->empty() || lease->ends_with('/')) {
      table.fail("lease_file", R"(expected a file path, like "/run/botical/cycle.lease", got )" + in_quotes(*lease));
    }
    idle.lease_file = *table.path("lease_file", base_dir);
  }
  if (idle.command.empty() && !idle.http && idle.lease_file.empty()) {
    table.fail_table(R"(needs at least one idle source: command = ["/usr/local/bin/agent-is-idle"], )"
                     R"([target.idle.http] with url = "http://127.0.0.1:6001/status/data", )"
                     R"(or lease_file = "/run/agent/cycle.lease")");
  }
  idle.interval = table.duration("interval", ZeroDuration::rejected).value_or(idle.interval);
  idle.quiet = table.duration("quiet", ZeroDuration::allowed).value_or(idle.quiet);
  idle.timeout = table.duration("timeout", ZeroDuration::rejected).value_or(idle.timeout);
  idle.max_wait = table.duration("max_wait", ZeroDuration::rejected);
  if (const std::optional<std::string> on_max_wait = table.string("on_max_wait")) {
    if (*on_max_wait == "keep-waiting") {
      idle.on_max_wait = OnMaxWait::keep_waiting;
    } else if (*on_max_wait == "deploy") {
      idle.on_max_wait = OnMaxWait::deploy;
    } else {
      table.fail("on_max_wait", R"(expected "keep-waiting" or "deploy", got )" + in_quotes(*on_max_wait));
    }
    if (!idle.max_wait) table.fail("on_max_wait", R"(only means something with max_wait, like max_wait = "2h")");
  }
  return idle;
}

CycleConfig read_cycle(const TableReader& table) {
  CycleConfig cycle;
  cycle.command = read_command_spec(table, kDefaultCycleTimeout);
  if (!table.has("every")) table.fail_missing("every", R"(required key missing; how often a cycle starts, like "2h")");
  cycle.every = *table.duration("every", ZeroDuration::rejected);
  cycle.jitter = table.duration("jitter", ZeroDuration::allowed).value_or(cycle.jitter);
  cycle.after_recovery = table.boolean("after_recovery").value_or(cycle.after_recovery);
  return cycle;
}

WindowConfig read_window(const TableReader& table) {
  WindowConfig window;
  if (const toml::node* node = table.find("days")) {
    constexpr std::string_view kExpected = R"(expected an array of days, like ["mon", "tue", "wed", "thu", "fri"])";
    const toml::array* array = node->as_array();
    if (array == nullptr) table.fail("days", kExpected);
    if (array->empty()) table.fail("days", "is empty, so the window would never open; " + std::string(kExpected));
    window.days = 0;
    for (std::size_t i = 0; i < array->size(); ++i) {
      const toml::node& element = (*array)[i];
      const std::optional<unsigned> day =
          element.is_string() ? parse_weekday(element.as_string()->get()) : std::optional<unsigned>();
      if (!day) {
        const std::string got = element.is_string() ? in_quotes(element.as_string()->get())
                                                    : std::string(describe_type(element.type()));
        table.errors().fail(element.source(), table.key_path("days") + "[" + std::to_string(i + 1) + "]",
                            R"(expected a day like "mon" or "monday", got )" + got);
      }
      window.days |= 1u << *day;
    }
  }
  auto time_of_day = [&](std::string_view key) {
    const std::optional<std::string> text = table.string(key);
    if (!text) return std::chrono::seconds(0);
    const std::optional<std::chrono::seconds> parsed = parse_time_of_day(*text);
    if (!parsed) table.fail(key, R"(expected a local time like "22:00" or "22:00:30", got )" + in_quotes(*text));
    return *parsed;
  };
  if (!table.has("start")) table.fail_missing("start", R"(required key missing; when the window opens, like "22:00")");
  if (!table.has("end")) table.fail_missing("end", R"(required key missing; when the window closes, like "05:00")");
  window.start = time_of_day("start");
  window.end = time_of_day("end");
  window.time_zone = table.string("time_zone").value_or("");
  if (table.has("time_zone")) {
    std::string error;
    if (window.time_zone.empty() || find_time_zone(window.time_zone, error) == nullptr) {
      table.fail("time_zone", "unknown time zone " + in_quotes(window.time_zone) +
                                  R"( (an IANA name like "Europe/Berlin" or "UTC", as in /usr/share/zoneinfo))");
    }
  } else if (std::string error; find_time_zone("", error) == nullptr) {
    table.fail_table("this system's local time zone cannot be read (" + error +
                     R"(): set time_zone, like time_zone = "Europe/Berlin")");
  }
  return window;
}

MonitorConfig read_monitor(const TableReader& table) {
  MonitorConfig monitor;
  monitor.interval = table.duration("interval", ZeroDuration::rejected).value_or(monitor.interval);
  monitor.failures = table.count("failures").value_or(monitor.failures);
  monitor.max_recoveries = table.count("max_recoveries").value_or(monitor.max_recoveries);
  monitor.window = table.duration("window", ZeroDuration::rejected).value_or(monitor.window);
  return monitor;
}

/// What is wrong with the placeholders in `text` (only {port} and {data} exist), or nullopt.
std::optional<std::string> placeholder_problem(std::string_view text) {
  for (std::size_t open = text.find('{'); open != std::string_view::npos; open = text.find('{', open + 1)) {
    const std::size_t close = text.find('}', open);
    const std::string_view name = close == std::string_view::npos ? text.substr(open) : text.substr(open, close - open + 1);
    if (name != "{port}" && name != "{data}") {
      return "unknown placeholder " + in_quotes(name) + "; the placeholders are {port} and {data}";
    }
  }
  return std::nullopt;
}

/// Checks the placeholders of each string in the array or table at `key`, pointing at the string.
void check_placeholders(const TableReader& table, std::string_view key) {
  const toml::node* node = table.find(key);
  if (node == nullptr) return;
  auto check = [&](const toml::node& value, const std::string& where) {
    if (!value.is_string()) return;
    if (auto problem = placeholder_problem(value.as_string()->get())) {
      table.fail_at(value.source(), where, *problem);
    }
  };
  if (const toml::array* array = node->as_array()) {
    for (std::size_t i = 0; i < array->size(); ++i) check((*array)[i], table.key_path(key) + "[" + std::to_string(i + 1) + "]");
  } else if (const toml::table* entries = node->as_table()) {
    for (const auto& [name, value] : *entries) check(value, table.key_path(key) + "." + display_key(name.str()));
  }
}

PreflightConfig read_preflight(const TableReader& table, const fs::path& base_dir) {
  PreflightConfig preflight;
  preflight.command = table.required_command("command");
  preflight.env = table.string_table("env");
  for (const auto& [name, value] : preflight.env) {
    if (name.empty() || name.find('=') != std::string::npos) {
      table.fail("env", in_quotes(name) + " cannot be the name of an environment variable");
    }
  }
  check_placeholders(table, "env");
  if (table.has("snapshot") && table.has("snapshot_command")) {
    table.fail("snapshot_command", "give either snapshot or snapshot_command, not both");
  }
  if (const toml::node* node = table.find("snapshot")) {
    const toml::array* array = node->as_array();
    if (array == nullptr) table.fail("snapshot", R"(expected an array of paths, like ["/srv/app/data"])");
    for (std::size_t i = 0; i < array->size(); ++i) {
      const toml::node& element = (*array)[i];
      const bool usable = element.is_string() && !element.as_string()->get().empty() &&
                          !element.as_string()->get().starts_with('~');
      if (!usable) {
        table.fail_at(element.source(), table.key_path("snapshot") + "[" + std::to_string(i + 1) + "]",
                      R"(expected a path, like "/srv/app/data")");
      }
      preflight.snapshot.push_back(resolve_path(base_dir, element.as_string()->get()));
    }
  }
  preflight.snapshot_command = table.command("snapshot_command").value_or(std::vector<std::string>{});
  check_placeholders(table, "snapshot_command");
  preflight.health = table.required_string("health");
  if (auto problem = placeholder_problem(preflight.health)) table.fail("health", *problem);
  std::string example = preflight.health;
  for (std::size_t at; (at = example.find("{port}")) != std::string::npos;) example.replace(at, 6, "1");
  for (std::size_t at; (at = example.find("{data}")) != std::string::npos;) example.replace(at, 6, "data");
  if (auto problem = http_url_problem(example)) table.fail("health", *problem);
  preflight.timeout = table.duration("timeout", ZeroDuration::rejected).value_or(preflight.timeout);
  preflight.grace = table.duration("grace", ZeroDuration::allowed).value_or(preflight.grace);
  preflight.interval = table.duration("interval", ZeroDuration::rejected).value_or(preflight.interval);
  preflight.successes = table.count("successes").value_or(preflight.successes);
  preflight.deadline = table.duration("deadline", ZeroDuration::rejected).value_or(preflight.deadline);
  preflight.isolate = table.boolean("isolate").value_or(preflight.isolate);
  return preflight;
}

HooksConfig read_hooks(const TableReader& table) {
  HooksConfig hooks;
  hooks.on_deployed = table.command("on_deployed").value_or(hooks.on_deployed);
  hooks.on_reverted = table.command("on_reverted").value_or(hooks.on_reverted);
  hooks.on_failed = table.command("on_failed").value_or(hooks.on_failed);
  hooks.on_recovered = table.command("on_recovered").value_or(hooks.on_recovered);
  hooks.timeout = table.duration("timeout", ZeroDuration::rejected).value_or(hooks.timeout);
  return hooks;
}

void check_target_name(const TableReader& table, std::string_view name) {
  const bool allowed_chars = !name.empty() && std::all_of(name.begin(), name.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-';
  });
  if (!allowed_chars) {
    table.fail("name",
               R"(expected a name made of letters, digits, ".", "_" and "-", like "prod", got )" +
                   in_quotes(name));
  }
  if (name == "." || name == "..") {
    table.fail("name", in_quotes(name) + " cannot be a name (names are used in file names)");
  }
  if (name.size() > kMaxTargetNameLength) {
    table.fail("name", "is " + std::to_string(name.size()) + " characters long; the limit is " +
                           std::to_string(kMaxTargetNameLength));
  }
}

TargetConfig read_target(const TableReader& table, const fs::path& base_dir) {
  TargetConfig target;
  target.name = table.required_string("name");
  check_target_name(table, target.name);
  target.marker_dir = table.required_path("marker_dir", base_dir);
  target.checkout = table.required_path("checkout", base_dir);
  target.restart =
      read_command_spec(table.required_table("restart", kCommandSpecKeys), CommandSpec{}.timeout);
  if (const std::optional<TableReader> build = table.table("build", kCommandSpecKeys)) {
    target.build = read_command_spec(*build, kDefaultBuildTimeout);
  }
  target.health = read_health(table.required_table("health", kHealthKeys));
  if (const std::optional<TableReader> idle = table.table("idle", kIdleKeys)) {
    target.idle = read_idle(*idle, base_dir);
  }
  if (const std::optional<TableReader> cycle = table.table("cycle", kCycleKeys)) target.cycle = read_cycle(*cycle);
  if (const std::optional<TableReader> monitor = table.table("monitor", kMonitorKeys)) {
    target.monitor = read_monitor(*monitor);
  }
  if (const std::optional<TableReader> preflight = table.table("preflight", kPreflightKeys)) {
    target.preflight = read_preflight(*preflight, base_dir);
  }
  target.env = table.string_table("env");
  for (const auto& [name, value] : target.env) {
    if (name.empty() || name.find('=') != std::string::npos) {
      table.fail("env", in_quotes(name) + " cannot be the name of an environment variable");
    }
  }
  target.allowed_owners = table.users("allowed_owners");
  if (const std::optional<TableReader> window = table.table("window", kWindowKeys)) target.window = read_window(*window);
  target.min_interval = table.duration("min_interval", ZeroDuration::allowed).value_or(target.min_interval);
  if (const std::optional<TableReader> hooks = table.table("hooks", kHooksKeys)) target.hooks = read_hooks(*hooks);
  return target;
}

void read_sentinel(const TableReader& table, const fs::path& base_dir, Config& config) {
  config.state_dir = table.path("state_dir", base_dir).value_or(config.state_dir);
  config.metrics_file = table.path("metrics_file", base_dir).value_or(config.metrics_file);
  if (const std::optional<std::string> level = table.string("log_level")) {
    if (std::find(kLogLevels.begin(), kLogLevels.end(), *level) == kLogLevels.end()) {
      table.fail("log_level",
                 "expected one of trace, debug, info, warn, error, critical, off, got " +
                     in_quotes(*level));
    }
    config.log_level = *level;
  }
}

/// "http://host:port" or "https://host:port" (the port defaults to 2379), or why not.
std::optional<EtcdEndpoint> parse_etcd_endpoint(std::string_view url, std::string& why) {
  EtcdEndpoint endpoint;
  endpoint.url = url;
  std::string_view rest = url;
  if (rest.starts_with("https://")) {
    endpoint.tls = true;
    rest.remove_prefix(8);
  } else if (rest.starts_with("http://")) {
    rest.remove_prefix(7);
  } else {
    why = "must start with http:// or https://, like \"http://etcd-1.example:2379\"";
    return std::nullopt;
  }
  if (rest.ends_with('/')) rest.remove_suffix(1);
  if (rest.find('/') != std::string_view::npos) {
    why = "must name only a host and a port, without a path: etcd's gateway lives at /v3/";
    return std::nullopt;
  }
  const std::size_t colon = rest.rfind(':');
  endpoint.host = std::string(rest.substr(0, colon));
  if (colon != std::string_view::npos) {
    const std::string_view digits = rest.substr(colon + 1);
    unsigned port = 0;
    const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), port);
    if (ec != std::errc() || end != digits.data() + digits.size() || port == 0 || port > 65535) {
      why = "has a bad port " + in_quotes(digits) + "; etcd's client port is usually 2379";
      return std::nullopt;
    }
    endpoint.port = static_cast<std::uint16_t>(port);
  }
  const bool host_ok = !endpoint.host.empty() && std::all_of(endpoint.host.begin(), endpoint.host.end(), [](unsigned char c) {
    return std::isalnum(c) || c == '-' || c == '.' || c == '_';
  });
  if (!host_ok) {
    why = "has no valid host name or IPv4 address";
    return std::nullopt;
  }
  return endpoint;
}

/// A group or host name: it becomes part of etcd keys, and shows in every host's status.
bool valid_fleet_name(std::string_view name) {
  return !name.empty() && name.size() <= 64 && std::all_of(name.begin(), name.end(), [](unsigned char c) {
    return std::isalnum(c) || c == '-' || c == '.' || c == '_';
  });
}

FleetConfig read_fleet(const TableReader& table, const fs::path& base_dir) {
  FleetConfig fleet;
  const toml::node* node = table.find("etcd");
  if (node == nullptr) table.fail_missing("etcd", R"(required key missing; list etcd's endpoints, like etcd = ["http://etcd-1.example:2379"])");
  const toml::array* array = node->as_array();
  if (array == nullptr || array->empty()) {
    table.fail("etcd", R"(expected a non-empty array of URLs, like ["http://etcd-1.example:2379"])");
  }
  for (std::size_t i = 0; i < array->size(); ++i) {
    const toml::node& element = (*array)[i];
    const std::string where = table.key_path("etcd") + "[" + std::to_string(i + 1) + "]";
    if (!element.is_string()) table.fail_at(element.source(), where, "expected a URL string, got " + std::string(describe_type(element.type())));
    std::string why;
    std::optional<EtcdEndpoint> endpoint = parse_etcd_endpoint(element.as_string()->get(), why);
    if (!endpoint) table.fail_at(element.source(), where, why);
    fleet.etcd.push_back(*std::move(endpoint));
  }
  constexpr std::string_view kNameRule = "must be 1 to 64 letters, digits, '.', '-' or '_'";
  fleet.group = table.required_string("group");
  if (!valid_fleet_name(fleet.group)) table.fail("group", std::string(kNameRule) + ", like \"botical-prod\"");
  if (std::optional<std::string> host = table.string("host")) {
    if (!valid_fleet_name(*host)) table.fail("host", std::string(kNameRule) + ", like \"web-1\"");
    fleet.host = *host;
  } else {
    char name[256] = {};
    if (::gethostname(name, sizeof name - 1) != 0 || !valid_fleet_name(name)) {
      table.fail_table("this machine's host name cannot name it in the group: set host, like host = \"web-1\"");
    }
    fleet.host = name;
  }
  fleet.max_restarting = table.count("max_restarting").value_or(fleet.max_restarting);
  if (fleet.max_restarting > 1000) table.fail("max_restarting", "must be at most 1000");
  fleet.lease_ttl = table.duration("lease_ttl", ZeroDuration::rejected).value_or(fleet.lease_ttl);
  if (fleet.lease_ttl < 2s || fleet.lease_ttl > 1h) {
    table.fail("lease_ttl", R"(must be from "2s" (etcd's shortest lease) to "1h": it is how long a dead host's slot stays taken)");
  }
  fleet.timeout = table.duration("timeout", ZeroDuration::rejected).value_or(fleet.timeout);
  fleet.ca_file = table.path("ca_file", base_dir).value_or(fs::path());
  fleet.cert_file = table.path("cert_file", base_dir).value_or(fs::path());
  fleet.key_file = table.path("key_file", base_dir).value_or(fs::path());
  if (fleet.cert_file.empty() != fleet.key_file.empty()) {
    table.fail(fleet.cert_file.empty() ? "key_file" : "cert_file", "cert_file and key_file go together: set both, or neither");
  }
  const bool any_tls = std::any_of(fleet.etcd.begin(), fleet.etcd.end(), [](const EtcdEndpoint& e) { return e.tls; });
  if (!any_tls) {
    for (std::string_view key : {"ca_file"sv, "cert_file"sv, "key_file"sv}) {
      if (table.has(key)) table.fail(key, "is used only with https:// endpoints; every endpoint here is http://");
    }
  }
  return fleet;
}

void read_targets(const TableReader& root, const ErrorReporter& errors, const fs::path& base_dir,
                  Config& config) {
  constexpr std::string_view kAtLeastOne = "at least one [[target]] is required";
  const toml::node* node = root.find("target");
  if (node == nullptr) errors.fail(toml::source_region{}, "target", kAtLeastOne);
  const toml::array* array = node->as_array();
  if (array == nullptr) {
    const std::string_view hint = node->is_table() ? " (write [[target]], not [target])" : "";
    root.fail("target", "expected [[target]] tables, got " +
                            std::string(describe_type(node->type())) + std::string(hint));
  }
  if (array->empty()) root.fail("target", kAtLeastOne);

  for (std::size_t i = 0; i < array->size(); ++i) {
    const toml::node& element = (*array)[i];
    const std::string path = "target[" + std::to_string(i + 1) + "]";
    if (!element.is_table()) {
      errors.fail(element.source(), path,
                  "expected a table, got " + std::string(describe_type(element.type())));
    }
    const TableReader table(*element.as_table(), path, errors, kTargetKeys);
    TargetConfig target = read_target(table, base_dir);
    if (const TargetConfig* earlier = config.find_target(target.name)) {
      const auto earlier_index = earlier - config.targets.data() + 1;
      table.fail("name", "duplicate target name " + in_quotes(target.name) + " (target[" +
                             std::to_string(earlier_index) + "] has it too); names must be unique");
    }
    config.targets.push_back(std::move(target));
  }
}

}  // namespace

Config parse_config(std::string_view text, const fs::path& source) {
  const ErrorReporter errors(source.string());
  toml::table document;
  try {
    document = toml::parse(text, source.string());
  } catch (const toml::parse_error& error) {
    // toml++ quotes what it saw as it was, a line break included: "expected 'inf', saw 'in<LF>'".
    errors.fail(error.source(), "syntax error", on_one_line(error.description()));
  }

  Config config;
  config.source = source.empty() ? source : fs::absolute(source).lexically_normal();
  config.state_dir = kDefaultStateDir;
  const fs::path base_dir = source.empty() ? fs::current_path() : config.source.parent_path();

  const TableReader root(document, "", errors, kTopLevelKeys);
  if (const std::optional<TableReader> sentinel = root.table("sentinel", kSentinelKeys)) {
    read_sentinel(*sentinel, base_dir, config);
  }
  read_targets(root, errors, base_dir, config);
  if (const std::optional<TableReader> fleet = root.table("fleet", kFleetKeys)) config.fleet = read_fleet(*fleet, base_dir);
  return config;
}

Config load_config(const fs::path& path) {
  const std::string name = path.string();
  const std::unique_ptr<std::FILE, int (*)(std::FILE*)> file(std::fopen(name.c_str(), "rb"),
                                                             &std::fclose);
  if (!file) throw ConfigError(name + ": cannot read: " + std::strerror(errno));
  struct stat st {};
  if (::fstat(::fileno(file.get()), &st) == 0 && (st.st_mode & S_IWOTH) != 0) {
    throw ConfigError(name + ": is world-writable, so anyone could make the sentinel run their commands; " +
                      "fix it with: chmod o-w " + name);
  }

  std::string text;
  char buffer[64 * 1024];
  while (const std::size_t n = std::fread(buffer, 1, sizeof buffer, file.get())) {
    text.append(buffer, n);
  }
  if (std::ferror(file.get())) throw ConfigError(name + ": cannot read: " + std::strerror(errno));
  return parse_config(text, path);
}

}  // namespace sentinel
