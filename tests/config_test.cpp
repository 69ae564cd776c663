#include "config.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

namespace sentinel {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

constexpr const char* kSource = "/etc/ds.toml";

/// The text of a raw string literal without the newline that follows `R"(`, so that line 1
/// of the config is the first line written.
std::string_view lines(std::string_view text) {
  if (text.starts_with('\n')) text.remove_prefix(1);
  return text;
}

Config parse(std::string_view text) { return parse_config(lines(text), kSource); }

/// The ConfigError message that parsing `text` throws, or "(no error)".
std::string error_in(std::string_view text) {
  try {
    parse(text);
  } catch (const ConfigError& error) {
    CHECK(error.exit_code() == ConfigError::kExitCode);
    return error.what();
  }
  return "(no error)";
}

/// A target with every required key and nothing else, to append keys or tables to.
const std::string kMinimalTarget = R"(
[[target]]
name = "prod"
marker_dir = "/srv/markers"
checkout = "/srv/app"
restart = { command = ["systemctl", "restart", "app"] }
health = { url = "http://127.0.0.1:6001/health" }
)";

/// A directory under the system temp dir, removed with everything in it.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "config_test.XXXXXX").string();
    REQUIRE(mkdtemp(pattern.data()) != nullptr);
    path_ = pattern;
  }
  ~TempDir() { fs::remove_all(path_); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

TEST_CASE("the documented example config parses with every value") {
  const Config config = parse(R"(
[sentinel]
state_dir = "/var/lib/deploy-sentinel"   # required? default "/var/lib/deploy-sentinel"
log_level = "info"                        # trace|debug|info|warn|error|critical|off

[[target]]                                # at least one
name = "prod"
marker_dir = "/home/leopard/.botical-prod"
checkout = "/home/leopard/botical-prod"
restart = { command = ["systemctl", "restart", "botical-prod"], timeout = "90s", kill_grace = "5s" }
build = { command = ["bash", "-lc", "make"], timeout = "15m" }

[target.health]
url = "http://127.0.0.1:6001/health/ready"
timeout = "2s"
grace = "2s"
interval = "1s"
successes = 3
deadline = "60s"

[target.idle]
command = ["/usr/local/bin/agent-idle"]
interval = "5s"
quiet = "30s"
timeout = "30s"
)");
  CHECK(config.source == "/etc/ds.toml");
  CHECK(config.state_dir == "/var/lib/deploy-sentinel");
  CHECK(config.log_level == "info");
  REQUIRE(config.targets.size() == 1);

  const TargetConfig& target = config.targets[0];
  CHECK(target.name == "prod");
  CHECK(target.marker_dir == "/home/leopard/.botical-prod");
  CHECK(target.checkout == "/home/leopard/botical-prod");
  CHECK(target.restart.argv == std::vector<std::string>{"systemctl", "restart", "botical-prod"});
  CHECK(target.restart.timeout == 90s);
  CHECK(target.restart.kill_grace == 5s);
  REQUIRE(target.build.has_value());
  CHECK(target.build->argv == std::vector<std::string>{"bash", "-lc", "make"});
  CHECK(target.build->timeout == 15min);
  CHECK(target.build->kill_grace == 5s);
  CHECK(target.health.url == "http://127.0.0.1:6001/health/ready");
  CHECK(target.health.command.empty());
  CHECK(target.health.timeout == 2s);
  CHECK(target.health.grace == 2s);
  CHECK(target.health.interval == 1s);
  CHECK(target.health.successes == 3);
  CHECK(target.health.deadline == 60s);
  REQUIRE(target.idle.has_value());
  CHECK(target.idle->command == std::vector<std::string>{"/usr/local/bin/agent-idle"});
  CHECK(target.idle->interval == 5s);
  CHECK(target.idle->quiet == 30s);
  CHECK(target.idle->timeout == 30s);
}

TEST_CASE("values left out take their documented defaults") {
  const Config config = parse(kMinimalTarget);
  CHECK(config.state_dir == "/var/lib/deploy-sentinel");
  CHECK(config.log_level == "info");
  REQUIRE(config.targets.size() == 1);

  const TargetConfig& target = config.targets[0];
  CHECK(target.restart.timeout == 90s);
  CHECK(target.restart.kill_grace == 5s);
  CHECK_FALSE(target.build.has_value());
  CHECK(target.health.timeout == 2s);
  CHECK(target.health.grace == 2s);
  CHECK(target.health.interval == 1s);
  CHECK(target.health.successes == 3);
  CHECK(target.health.deadline == 60s);
  CHECK_FALSE(target.idle.has_value());
}

TEST_CASE("a build gets a 15 minute timeout and a 5 second kill grace by default") {
  const Config config = parse(kMinimalTarget + R"(build = { command = ["make"] })");
  REQUIRE(config.targets[0].build.has_value());
  CHECK(config.targets[0].build->timeout == 15min);
  CHECK(config.targets[0].build->kill_grace == 5s);
}

TEST_CASE("an idle table with only a command gets the documented defaults") {
  const Config config = parse(kMinimalTarget + R"(idle = { command = ["agent-idle"] })");
  REQUIRE(config.targets[0].idle.has_value());
  CHECK(config.targets[0].idle->interval == 5s);
  CHECK(config.targets[0].idle->quiet == 30s);
  CHECK(config.targets[0].idle->timeout == 30s);
}

TEST_CASE("restart and build read the same as sub-tables as inline tables") {
  const Config config = parse(R"(
[[target]]
name = "prod"
marker_dir = "/srv/markers"
checkout = "/srv/app"
health.command = ["curl", "-f", "http://localhost/"]

[target.restart]
command = ["systemctl", "restart", "app"]
timeout = "2m"
kill_grace = "0s"

[target.build]
command = ["make"]
timeout = "1h"
)");
  const TargetConfig& target = config.targets[0];
  CHECK(target.restart.argv == std::vector<std::string>{"systemctl", "restart", "app"});
  CHECK(target.restart.timeout == 2min);
  CHECK(target.restart.kill_grace == 0s);
  REQUIRE(target.build.has_value());
  CHECK(target.build->argv == std::vector<std::string>{"make"});
  CHECK(target.build->timeout == 1h);
  CHECK(target.health.command == std::vector<std::string>{"curl", "-f", "http://localhost/"});
  CHECK(target.health.url.empty());
}

TEST_CASE("relative paths are taken from the config's directory and normalised") {
  const Config config = parse_config(R"(
[sentinel]
state_dir = "state/"

[[target]]
name = "prod"
marker_dir = "./markers/../markers/prod"
checkout = "/srv//app/./"
restart = { command = ["restart"] }
health = { url = "http://localhost/" }
)",
                                     "/etc/deploy-sentinel/../deploy-sentinel/ds.toml");
  CHECK(config.source == "/etc/deploy-sentinel/ds.toml");
  CHECK(config.state_dir == "/etc/deploy-sentinel/state");
  CHECK(config.targets[0].marker_dir == "/etc/deploy-sentinel/markers/prod");
  CHECK(config.targets[0].checkout == "/srv/app");
}

TEST_CASE("a relative config path is made absolute from the working directory") {
  const Config config = parse_config(
      "[sentinel]\nstate_dir = \"state\"\n" + std::string(lines(kMinimalTarget)), "conf/ds.toml");
  CHECK(config.source == fs::current_path() / "conf/ds.toml");
  CHECK(config.state_dir == fs::current_path() / "conf/state");
}

TEST_CASE("text without a source name anchors relative paths at the working directory") {
  const Config config =
      parse_config("[sentinel]\nstate_dir = \"state\"\n" + std::string(lines(kMinimalTarget)), "");
  CHECK(config.source.empty());
  CHECK(config.state_dir == fs::current_path() / "state");
}

TEST_CASE("every log level is accepted") {
  for (const char* level : {"trace", "debug", "info", "warn", "error", "critical", "off"}) {
    CAPTURE(level);
    const Config config =
        parse("[sentinel]\nlog_level = \"" + std::string(level) + "\"\n" + kMinimalTarget);
    CHECK(config.log_level == level);
  }
}

TEST_CASE("several targets are kept in file order and found by name") {
  const Config config = parse(kMinimalTarget + R"(
[[target]]
name = "staging.v2_b-1"
marker_dir = "/srv/staging-markers"
checkout = "/srv/staging"
restart = { command = ["restart-staging"] }
health = { url = "http://[::1]:8080/ready" }
)");
  REQUIRE(config.targets.size() == 2);
  CHECK(config.targets[0].name == "prod");
  CHECK(config.targets[1].name == "staging.v2_b-1");
  CHECK(config.find_target("staging.v2_b-1") == &config.targets[1]);
  CHECK(config.find_target("prod") == &config.targets[0]);
  CHECK(config.find_target("dev") == nullptr);
}

TEST_CASE("health urls with a host, an optional port and a path are accepted") {
  for (const char* url :
       {"http://localhost", "http://127.0.0.1:1/", "http://app.internal:65535/a?b=c",
        "http://[::1]/health", "http://host_name:80#frag"}) {
    CAPTURE(url);
    const Config config = parse(R"(
[[target]]
name = "prod"
marker_dir = "/m"
checkout = "/c"
restart = { command = ["r"] }
health = { url = ")" + std::string(url) +
                                "\" }\n");
    CHECK(config.targets[0].health.url == url);
  }
}

TEST_CASE("a typo'd key is reported with its line and column and a suggestion") {
  CHECK(error_in(R"(
[[target]]
name = "prod"
marker_dir = "/srv/markers"
checkout = "/srv/app"
restart = { command = ["r"] }
helth = { url = "http://localhost/" }
)") == R"(/etc/ds.toml:6:1: target[1].helth: unknown key (did you mean "health"?))");
}

TEST_CASE("a typo'd table header is reported at the misspelt name") {
  CHECK(error_in(R"(
[sentinal]
state_dir = "/x"
)") == R"(/etc/ds.toml:1:2: sentinal: unknown key (did you mean "sentinel"?))");
  CHECK(error_in(kMinimalTarget + R"(
[target.idel]
command = ["idle"]
)") == R"(/etc/ds.toml:8:9: target[1].idel: unknown key (did you mean "idle"?))");
}

TEST_CASE("an unknown key with no close match lists the valid keys") {
  CHECK(error_in(R"(
[sentinel]
colour = true
)") == "/etc/ds.toml:2:1: sentinel.colour: unknown key (valid keys here: state_dir, log_level, metrics_file)");
}

TEST_CASE("unknown keys are rejected in every table") {
  SUBCASE("top level") {
    CHECK(error_in("targets = 1\n") ==
          R"(/etc/ds.toml:1:1: targets: unknown key (did you mean "target"?))");
  }
  SUBCASE("target") {
    CHECK(error_in(kMinimalTarget + "verbose = true\n") ==
          "/etc/ds.toml:7:1: target[1].verbose: unknown key (valid keys here: name, marker_dir, "
          "checkout, restart, build, health, idle, cycle, monitor, env, allowed_owners, window, min_interval, preflight, hooks)");
  }
  SUBCASE("restart") {
    CHECK(error_in(R"(
[[target]]
name = "prod"
marker_dir = "/m"
checkout = "/c"
restart = { command = ["r"], timout = "1s" }
)") == R"(/etc/ds.toml:5:30: target[1].restart.timout: unknown key (did you mean "timeout"?))");
  }
  SUBCASE("build") {
    CHECK(error_in(kMinimalTarget + R"(
[target.build]
command = ["make"]
killgrace = "1s"
)") == R"(/etc/ds.toml:10:1: target[1].build.killgrace: unknown key (did you mean "kill_grace"?))");
  }
  SUBCASE("health") {
    CHECK(error_in(R"(
[[target]]
name = "prod"
marker_dir = "/m"
checkout = "/c"
restart = { command = ["r"] }

[target.health]
url = "http://localhost/"
sucesses = 3
)") == R"(/etc/ds.toml:9:1: target[1].health.sucesses: unknown key (did you mean "successes"?))");
  }
  SUBCASE("idle") {
    CHECK(error_in(kMinimalTarget + R"(
[target.idle]
command = ["idle"]
quite = "5s"
)") == R"(/etc/ds.toml:10:1: target[1].idle.quite: unknown key (did you mean "quiet"?))");
  }
}

TEST_CASE("of several unknown keys the first in the file is reported") {
  CHECK(error_in(R"(
zzz = 1
aaa = 2
)") == "/etc/ds.toml:1:1: zzz: unknown key (valid keys here: sentinel, target)");
}

TEST_CASE("a key that needs quotes is shown quoted") {
  CHECK(error_in(R"(
[sentinel]
"log level" = "info"
)") == R"(/etc/ds.toml:2:1: sentinel."log level": unknown key (did you mean "log_level"?))");
}

TEST_CASE("a duration without a unit or with words is reported with what was written") {
  const std::string target = R"(
[[target]]
name = "prod"
marker_dir = "/m"
checkout = "/c"
restart = { command = ["r"] }

[target.health]
url = "http://localhost/"
)";
  CHECK(
      error_in(target + R"(interval = "5 seconds")") ==
      R"(/etc/ds.toml:9:12: target[1].health.interval: expected a duration like "30s" or "500ms", got "5 seconds")");
  CHECK(
      error_in(target + "deadline = 60") ==
      R"(/etc/ds.toml:9:12: target[1].health.deadline: expected a duration like "30s" or "500ms", got 60 (a duration is a string with a unit))");
  CHECK(
      error_in(target + "grace = true") ==
      R"(/etc/ds.toml:9:9: target[1].health.grace: expected a duration like "30s" or "500ms", got a boolean)");
}

TEST_CASE("a zero timeout, interval or deadline is rejected but a zero grace is not") {
  CHECK(error_in(R"(
[[target]]
name = "prod"
marker_dir = "/m"
checkout = "/c"
restart = { command = ["r"], timeout = "0s" }
)") == R"(/etc/ds.toml:5:40: target[1].restart.timeout: must be longer than zero, like "1s")");
  CHECK(error_in(kMinimalTarget + R"(idle = { command = ["i"], interval = "0ms" })") ==
        R"(/etc/ds.toml:7:38: target[1].idle.interval: must be longer than zero, like "1s")");

  const Config config = parse(kMinimalTarget + R"(idle = { command = ["i"], quiet = "0s" })");
  CHECK(config.targets[0].idle->quiet == 0s);
}

// Found while writing fuzz_config's checks: "deadline = \"300000d\"" parsed, and the daemon's
// now() + deadline overflows the clocks' 64-bit nanoseconds (undefined behaviour).
TEST_CASE("a duration over 100 years is rejected, and one of exactly 100 years is not") {
  CHECK(error_in(kMinimalTarget + R"(idle = { command = ["i"], max_wait = "36500d1ms" })") ==
        R"(/etc/ds.toml:7:38: target[1].idle.max_wait: must be at most "36500d" (100 years), got "36500d1ms")");
  CHECK(error_in(kMinimalTarget + R"(monitor = { window = "9223372036854775807ms" })") ==
        R"(/etc/ds.toml:7:22: target[1].monitor.window: must be at most "36500d" (100 years), got "9223372036854775807ms")");

  const Config config = parse(kMinimalTarget + R"(idle = { command = ["i"], max_wait = "36500d" })");
  CHECK(config.targets[0].idle->max_wait == std::chrono::days(36500));
}

TEST_CASE("a command that is not an array of strings is reported with an example") {
  const std::string head = R"(
[[target]]
name = "prod"
marker_dir = "/m"
checkout = "/c"
health = { url = "http://localhost/" }
)";
  CHECK(
      error_in(head + R"(restart = { command = "systemctl restart app" })") ==
      R"(/etc/ds.toml:6:23: target[1].restart.command: expected an array of strings, like ["systemctl", "restart", "app"])");
  CHECK(
      error_in(head + R"(restart = { command = [] })") ==
      R"(/etc/ds.toml:6:23: target[1].restart.command: is empty; expected an array of strings, like ["systemctl", "restart", "app"])");
  CHECK(error_in(head + R"(restart = { command = ["kill", 9] })") ==
        R"(/etc/ds.toml:6:32: target[1].restart.command[2]: expected a string, got an integer)");
  CHECK(error_in(head + R"(restart = { command = ["", "x"] })") ==
        R"(/etc/ds.toml:6:24: target[1].restart.command[1]: must not be an empty string)");
}

TEST_CASE("a missing required key is reported at the table that should hold it") {
  CHECK(error_in(R"(
[[target]]
name = "prod"
marker_dir = "/m"
checkout = "/c"
health = { url = "http://localhost/" }
)") == "/etc/ds.toml:1:1: target[1].restart: required key missing");
  CHECK(error_in(R"(
[[target]]
marker_dir = "/m"
)") == "/etc/ds.toml:1:1: target[1].name: required key missing");
  CHECK(error_in(R"(
[[target]]
name = "prod"
checkout = "/c"
)") == "/etc/ds.toml:1:1: target[1].marker_dir: required key missing");
  CHECK(error_in(R"(
[[target]]
name = "prod"
marker_dir = "/m"
)") == "/etc/ds.toml:1:1: target[1].checkout: required key missing");
  CHECK(error_in(R"(
[[target]]
name = "prod"
marker_dir = "/m"
checkout = "/c"
restart = { command = ["r"] }
)") == "/etc/ds.toml:1:1: target[1].health: required key missing");
  CHECK(error_in(R"(
[[target]]
name = "prod"
marker_dir = "/m"
checkout = "/c"
health = { url = "http://localhost/" }

[target.restart]
timeout = "1s"
)") == "/etc/ds.toml:7:1: target[1].restart.command: required key missing");
  CHECK(error_in(kMinimalTarget + R"(idle = { quiet = "1s" })").starts_with(
      "/etc/ds.toml:7:8: target[1].idle: needs at least one idle source: command = "));
}

TEST_CASE("a file without targets is told to add one") {
  CHECK(error_in("") == "/etc/ds.toml:1:1: target: at least one [[target]] is required");
  CHECK(error_in(R"(
[sentinel]
log_level = "debug"
)") == "/etc/ds.toml:1:1: target: at least one [[target]] is required");
  CHECK(error_in(R"(
# no targets yet
target = []
)") == "/etc/ds.toml:2:10: target: at least one [[target]] is required");
}

TEST_CASE("a target written as a single table or a plain value is rejected") {
  CHECK(error_in(R"(target = "prod")") ==
        "/etc/ds.toml:1:10: target: expected [[target]] tables, got a string");
  CHECK(error_in(R"(
[target]
name = "prod"
)") == "/etc/ds.toml:1:1: target: expected [[target]] tables, got a table (write [[target]], not "
       "[target])");
  CHECK(error_in(R"(target = ["prod"])") ==
        "/etc/ds.toml:1:11: target[1]: expected a table, got a string");
}

TEST_CASE("two targets with the same name are rejected at the second name") {
  CHECK(
      error_in(kMinimalTarget + kMinimalTarget) ==
      R"(/etc/ds.toml:9:8: target[2].name: duplicate target name "prod" (target[1] has it too); names must be unique)");
}

TEST_CASE("health needs exactly one of url and command") {
  const std::string head = R"(
[[target]]
name = "prod"
marker_dir = "/m"
checkout = "/c"
restart = { command = ["r"] }
)";
  CHECK(error_in(head + R"(health = { url = "http://localhost/", command = ["true"] })") ==
        "/etc/ds.toml:6:10: target[1].health: give either url or command, not both");
  CHECK(
      error_in(head + R"(
[target.health]
interval = "1s"
)") ==
      R"(/etc/ds.toml:7:1: target[1].health: needs url = "http://127.0.0.1:8080/health" or command = ["systemctl", "restart", "app"])");
}

TEST_CASE("successes must be a whole number of at least one") {
  const std::string head = R"(
[[target]]
name = "prod"
marker_dir = "/m"
checkout = "/c"
restart = { command = ["r"] }
)";
  CHECK(error_in(head + R"(health = { url = "http://localhost/", successes = 0 })") ==
        "/etc/ds.toml:6:51: target[1].health.successes: must be at least 1, got 0");
  CHECK(error_in(head + R"(health = { url = "http://localhost/", successes = "3" })") ==
        "/etc/ds.toml:6:51: target[1].health.successes: expected an integer, got a string");
  CHECK(error_in(head + R"(health = { url = "http://localhost/", successes = 4294967296 })") ==
        "/etc/ds.toml:6:51: target[1].health.successes: must be at most 2147483647, got "
        "4294967296");
  CHECK(parse(head + R"(health = { url = "http://localhost/", successes = 1 })")
            .targets[0]
            .health.successes == 1);
}

TEST_CASE("a health url must be plain http with a host and a valid port") {
  const auto error_for_url = [](const std::string& url) {
    return error_in(R"(
[[target]]
name = "prod"
marker_dir = "/m"
checkout = "/c"
restart = { command = ["r"] }
health = { url = ")" +
                    url + "\" }\n");
  };
  const std::string where = "/etc/ds.toml:6:18: target[1].health.url: ";
  CHECK(
      error_for_url("https://localhost/") ==
      where +
          R"(HTTPS is not supported; probe the service's plain-HTTP port, like "http://127.0.0.1:8080/health")");
  CHECK(
      error_for_url("localhost:8080") ==
      where +
          R"(expected an http:// URL, like "http://127.0.0.1:8080/health", got "localhost:8080")");
  CHECK(error_for_url("http:///health") ==
        where + R"(the URL has no host; write it like "http://127.0.0.1:8080/health")");
  CHECK(error_for_url("http://:8080/") ==
        where + R"(the URL has no host; write it like "http://127.0.0.1:8080/health")");
  CHECK(error_for_url("http://user@host/") ==
        where + R"(the host "user@host" is not a host name or IP address)");
  CHECK(error_for_url("http://[::1/") ==
        where + R"(the host in "http://[::1/" is not an IPv6 address like [::1])");
  for (const char* port : {"0", "65536", "80a", "", "123456"}) {
    CAPTURE(port);
    CHECK(error_for_url("http://localhost:" + std::string(port) + "/") ==
          where + "the port must be a number from 1 to 65535, got \"" + port + "\"");
  }
}

TEST_CASE("a target name must be short and made of safe characters") {
  const auto error_for_name = [](const std::string& name) {
    return error_in("[[target]]\nname = \"" + name + "\"\n");
  };
  CHECK(
      error_for_name("my app") ==
      R"(/etc/ds.toml:2:8: target[1].name: expected a name made of letters, digits, ".", "_" and "-", like "prod", got "my app")");
  CHECK(
      error_for_name("") ==
      R"(/etc/ds.toml:2:8: target[1].name: expected a name made of letters, digits, ".", "_" and "-", like "prod", got "")");
  CHECK(
      error_for_name("..") ==
      R"(/etc/ds.toml:2:8: target[1].name: ".." cannot be a name (names are used in file names))");
  CHECK(error_for_name(std::string(65, 'a')) ==
        "/etc/ds.toml:2:8: target[1].name: is 65 characters long; the limit is 64");
  CHECK(error_in("[[target]]\nname = \"" + std::string(64, 'a') + "\"\n") ==
        "/etc/ds.toml:1:1: target[1].marker_dir: required key missing");
}

TEST_CASE("a log level that does not exist lists the ones that do") {
  CHECK(
      error_in(R"(
[sentinel]
log_level = "warning"
)") ==
      R"(/etc/ds.toml:2:13: sentinel.log_level: expected one of trace, debug, info, warn, error, critical, off, got "warning")");
}

TEST_CASE("paths must be non-empty strings and not start with ~") {
  CHECK(error_in(R"(
[sentinel]
state_dir = ""
)") == "/etc/ds.toml:2:13: sentinel.state_dir: must not be empty; give a directory");
  CHECK(error_in(R"(
[sentinel]
state_dir = 5
)") == "/etc/ds.toml:2:13: sentinel.state_dir: expected a string, got an integer");
  CHECK(
      error_in(R"(
[[target]]
name = "prod"
marker_dir = "~/markers"
)") ==
      R"(/etc/ds.toml:3:14: target[1].marker_dir: "~" is not expanded here; write the full path, like "/home/user/app")");
}

TEST_CASE("a table given as a plain value is rejected with its type") {
  CHECK(error_in(R"(sentinel = "prod")") ==
        "/etc/ds.toml:1:12: sentinel: expected a table ([section] or { ... }), got a string");
  CHECK(error_in(R"(
[[target]]
name = "prod"
marker_dir = "/m"
checkout = "/c"
restart = "systemctl restart app"
)") == "/etc/ds.toml:5:11: target[1].restart: expected a table ([section] or { ... }), got a "
       "string");
}

TEST_CASE("a TOML syntax error is reported with toml++'s description and position") {
  CHECK(
      error_in(R"(
[sentinel]
log_level = yes
)") ==
      "/etc/ds.toml:2:13: syntax error: Error while parsing value: could not determine value type");
  CHECK(
      error_in(R"(
[sentinel
log_level = "info"
)") ==
      R"(/etc/ds.toml:1:10: syntax error: Error while parsing table header: expected ']', saw '\n')");
  CHECK(error_in(R"(
[sentinel]
log_level = "info"
log_level = "debug"
)") == "/etc/ds.toml:3:13: syntax error: Error while parsing key-value pair: cannot redefine "
       "existing string 'log_level'");
}

// Found by fuzz_config's one-line check: toml++ quotes the text it saw as it was, so this error
// was two lines, and a reload that fails logs it as one.
TEST_CASE("a TOML syntax error that quotes a line break or a control character stays on one line") {
  CHECK(error_in("m =in\n") ==
        R"(/etc/ds.toml:1:6: syntax error: Error while parsing floating-point: expected 'inf', saw 'in\n')");
  CHECK(error_in("m =in\x01") ==
        R"(/etc/ds.toml:1:6: syntax error: Error while parsing floating-point: expected 'inf', saw 'in\u0001')");
}

/// `c` (not a surrogate) in UTF-8.
std::string utf8(char32_t c) {
  std::string out;
  if (c < 0x80) {
    out += static_cast<char>(c);
  } else if (c < 0x800) {
    out += static_cast<char>(0xC0 | (c >> 6));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else {
    out += static_cast<char>(0xE0 | (c >> 12));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  }
  return out;
}

// Found by fuzz_config: toml++ 3.3.0 (Debian 12) reaches __builtin_unreachable() when it asks
// whether a code point from U+00A1 to U+0499 or U+FB26 to U+FEFE is whitespace (upstream
// marzer/tomlplusplus#190 and #295). Debian's g++ build of the library, which the daemon links,
// answers "no"; these tests pin that down for every such code point, so a rebuilt library that
// does something else fails here rather than in production.
TEST_CASE("a non-ASCII character where TOML expects a key or a value is a syntax error with its position") {
  CHECK(error_in("caf\u00e9 = 1\n") ==
        "/etc/ds.toml:1:4: syntax error: Error while parsing key-value pair: expected '=', saw '\u00e9'");
  for (char32_t c = 0xA1; c <= 0xFEFE; c = c == 0x499 ? 0xFB26 : c + 1) {
    CAPTURE(static_cast<unsigned>(c));
    const std::string message = error_in("key" + utf8(c) + " = 1\n");
    REQUIRE(message.starts_with("/etc/ds.toml:1:4: syntax error: "));
  }
}

TEST_CASE("a line-ending backslash in a multi-line string before a non-ASCII character keeps it") {
  const Config config = parse(kMinimalTarget + "build = { command = [\"\"\"\\\n\u00a7 make\"\"\"] }\n");
  CHECK(config.targets.at(0).build->argv == std::vector<std::string>{"\u00a7 make"});
  for (char32_t c = 0xA1; c <= 0xFEFE; c = c == 0x499 ? 0xFB26 : c + 1) {
    CAPTURE(static_cast<unsigned>(c));
    const Config each = parse(kMinimalTarget + "build = { command = [\"\"\"\\\n" + utf8(c) + "x\"\"\"] }\n");
    REQUIRE(each.targets.at(0).build->argv == std::vector<std::string>{utf8(c) + "x"});
  }
}

TEST_CASE("a config file on disk is read, and relative paths are taken from its directory") {
  const TempDir dir;
  const fs::path file = dir.path() / "ds.toml";
  std::ofstream(file) << "[sentinel]\nstate_dir = \"state\"\n" << lines(kMinimalTarget);

  const Config config = load_config(file);
  CHECK(config.source == file);
  CHECK(config.state_dir == dir.path() / "state");
  REQUIRE(config.targets.size() == 1);
  CHECK(config.targets[0].name == "prod");
}

TEST_CASE("errors in a file on disk name the file as it was given") {
  const TempDir dir;
  const fs::path file = dir.path() / "ds.toml";
  std::ofstream(file) << "[sentinel]\nlog_levl = \"info\"\n";
  CHECK_THROWS_WITH_AS(
      load_config(file),
      (file.string() + R"(:2:1: sentinel.log_levl: unknown key (did you mean "log_level"?))")
          .c_str(),
      ConfigError);
}

TEST_CASE("a missing or unreadable config file is a config error naming the file") {
  const TempDir dir;
  const fs::path missing = dir.path() / "missing.toml";
  CHECK_THROWS_WITH_AS(load_config(missing),
                       (missing.string() + ": cannot read: No such file or directory").c_str(),
                       ConfigError);
  CHECK_THROWS_WITH_AS(load_config(dir.path()),
                       (dir.path().string() + ": cannot read: Is a directory").c_str(),
                       ConfigError);
}

}  // namespace
TEST_CASE("the idle gate can combine a command, an HTTP status page and a lease") {
  const Config config = parse(kMinimalTarget + R"(
[target.idle]
command = ["agent-idle"]
lease_file = "leases/prod.lease"
quiet = "2m"
max_wait = "3h"
on_max_wait = "deploy"

[target.idle.http]
url = "http://127.0.0.1:6001/status/data"
pointer = "/data/activeSessions"
match = { field = "agent", equals = "leopard" }
)");
  const IdleConfig& idle = *config.targets.at(0).idle;
  CHECK(idle.command == std::vector<std::string>{"agent-idle"});
  CHECK(idle.lease_file == "/etc/leases/prod.lease");
  CHECK(idle.quiet == 2min);
  REQUIRE(idle.max_wait);
  CHECK(*idle.max_wait == 3h);
  CHECK(idle.on_max_wait == OnMaxWait::deploy);
  REQUIRE(idle.http);
  CHECK(idle.http->url == "http://127.0.0.1:6001/status/data");
  CHECK(idle.http->pointer == "/data/activeSessions");
  CHECK(idle.http->match_field == "agent");
  CHECK(idle.http->match_equals == "leopard");
}

TEST_CASE("an idle gate of a lease alone needs no command, and waits as long as it takes by default") {
  const Config config = parse(kMinimalTarget + R"(idle = { lease_file = "/run/agent/prod.lease" })");
  const IdleConfig& idle = *config.targets.at(0).idle;
  CHECK(idle.command.empty());
  CHECK_FALSE(idle.http);
  CHECK_FALSE(idle.max_wait);
  CHECK(idle.on_max_wait == OnMaxWait::keep_waiting);
}

TEST_CASE("bad idle sources are named with the fix") {
  CHECK(error_in(kMinimalTarget + R"(idle = { http = { url = "https://x/status" } })") ==
        "/etc/ds.toml:7:25: target[1].idle.http.url: HTTPS is not supported; probe the service's plain-HTTP port, "
        R"(like "http://127.0.0.1:8080/health")");
  CHECK(error_in(kMinimalTarget + R"(idle = { http = { url = "http://x/s", pointer = "data" } })") ==
        "/etc/ds.toml:7:49: target[1].idle.http.pointer: expected a JSON pointer like \"/data/activeSessions\" "
        "(RFC 6901), got \"data\"");
  CHECK(error_in(kMinimalTarget + R"(idle = { http = { url = "http://x/s", match = { field = "agent" } } })") ==
        "/etc/ds.toml:7:47: target[1].idle.http.match.equals: required key missing");
  CHECK(error_in(kMinimalTarget + R"(idle = { lease_file = "/run/x/", quiet = "1s" })") ==
        "/etc/ds.toml:7:23: target[1].idle.lease_file: expected a file path, like \"/run/botical/cycle.lease\", got "
        "\"/run/x/\"");
  CHECK(error_in(kMinimalTarget + R"(idle = { command = ["x"], on_max_wait = "deploy" })") ==
        "/etc/ds.toml:7:41: target[1].idle.on_max_wait: only means something with max_wait, like max_wait = \"2h\"");
  CHECK(error_in(kMinimalTarget + R"(idle = { command = ["x"], max_wait = "1h", on_max_wait = "go" })") ==
        "/etc/ds.toml:7:58: target[1].idle.on_max_wait: expected \"keep-waiting\" or \"deploy\", got \"go\"");
}

TEST_CASE("a deploy window takes days, a start and an end that may pass midnight, and a time zone") {
  const Config config = parse(kMinimalTarget + R"(min_interval = "30m"
[target.window]
days = ["mon", "tue", "wed", "thu", "Friday"]
start = "22:00"
end = "05:00:30"
time_zone = "Europe/Berlin"
[target.idle.http]
url = "http://127.0.0.1:6001/status/data"
cap = 20
)");
  const TargetConfig& target = config.targets.at(0);
  const WindowConfig& window = *target.window;
  CHECK(window.days == 0b0111110);
  CHECK(window.start == 22h);
  CHECK(window.end == 5h + 30s);
  CHECK(window.time_zone == "Europe/Berlin");
  CHECK(target.min_interval == 30min);
  CHECK(target.idle->http->cap == 20u);
  // Every day and the system's zone by default; no window and no interval when not asked for.
  const Config all_days = parse(kMinimalTarget + "window = { start = \"01:00\", end = \"02:00\" }\n");
  CHECK(all_days.targets.at(0).window->days == 0x7f);
  CHECK(all_days.targets.at(0).window->time_zone.empty());
  CHECK_FALSE(parse(kMinimalTarget).targets.at(0).window);
  CHECK(parse(kMinimalTarget).targets.at(0).min_interval == 0s);
}

TEST_CASE("a deploy window with a bad day, time or zone is named with the fix") {
  CHECK(error_in(kMinimalTarget + R"(window = { days = ["mon", "funday"], start = "22:00", end = "05:00" })") ==
        R"(/etc/ds.toml:7:27: target[1].window.days[2]: expected a day like "mon" or "monday", got "funday")");
  CHECK(error_in(kMinimalTarget + R"(window = { days = [], start = "22:00", end = "05:00" })") ==
        R"(/etc/ds.toml:7:19: target[1].window.days: is empty, so the window would never open; expected an array )"
        R"(of days, like ["mon", "tue", "wed", "thu", "fri"])");
  CHECK(error_in(kMinimalTarget + R"(window = { start = "22h", end = "05:00" })") ==
        R"(/etc/ds.toml:7:20: target[1].window.start: expected a local time like "22:00" or "22:00:30", got "22h")");
  CHECK(error_in(kMinimalTarget + R"(window = { start = "22:00" })") ==
        R"(/etc/ds.toml:7:10: target[1].window.end: required key missing; when the window closes, like "05:00")");
  CHECK(error_in(kMinimalTarget + R"(window = { start = "22:00", end = "05:00", time_zone = "Europe/Berlinn" })") ==
        R"(/etc/ds.toml:7:56: target[1].window.time_zone: unknown time zone "Europe/Berlinn" (an IANA name like )"
        R"("Europe/Berlin" or "UTC", as in /usr/share/zoneinfo))");
  CHECK(error_in(kMinimalTarget + R"(idle = { http = { url = "http://x/s", cap = 0 } })") ==
        "/etc/ds.toml:7:45: target[1].idle.http.cap: must be at least 1, got 0");
  CHECK(error_in(kMinimalTarget + R"(min_interval = 30)") ==
        "/etc/ds.toml:7:16: target[1].min_interval: expected a duration like \"30s\" or \"500ms\", got 30 (a "
        "duration is a string with a unit)");
}

TEST_CASE("a cycle needs a command and an interval; jitter, timeout and after_recovery have defaults") {
  const Config config = parse(kMinimalTarget + R"(
[target.cycle]
command = ["curl", "-fsS", "-X", "POST", "-H", "@/etc/deploy-sentinel/agent.header", "http://127.0.0.1:6001/cycle"]
every = "2h"
)");
  const CycleConfig& cycle = *config.targets.at(0).cycle;
  CHECK(cycle.command.argv.size() == 7);
  CHECK(cycle.every == 2h);
  CHECK(cycle.jitter == 0s);
  CHECK(cycle.after_recovery);
  CHECK(cycle.command.timeout == 60s);
  CHECK(error_in(kMinimalTarget + R"(cycle = { command = ["x"] })") ==
        R"(/etc/ds.toml:7:9: target[1].cycle.every: required key missing; how often a cycle starts, like "2h")");
  CHECK(error_in(kMinimalTarget + R"(cycle = { command = ["x"], every = "1h", after_recovery = "yes" })") ==
        "/etc/ds.toml:7:59: target[1].cycle.after_recovery: expected true or false, got a string");
}

TEST_CASE("a monitor has defaults for everything, and refuses counts below one") {
  const Config config = parse(kMinimalTarget + "monitor = {}\n");
  const MonitorConfig& monitor = *config.targets.at(0).monitor;
  CHECK(monitor.interval == 30s);
  CHECK(monitor.failures == 3);
  CHECK(monitor.max_recoveries == 3);
  CHECK(monitor.window == 1h);
  CHECK(error_in(kMinimalTarget + "monitor = { failures = 0 }\n") ==
        "/etc/ds.toml:7:24: target[1].monitor.failures: must be at least 1, got 0");
}

}  // namespace sentinel

namespace sentinel {
namespace {

/// A target whose [target.health] table holds `health_lines` (written from line 7 on).
std::string target_with_health(std::string_view health_lines) {
  return R"(
[[target]]
name = "prod"
marker_dir = "/srv/markers"
checkout = "/srv/app"
restart = { command = ["systemctl", "restart", "app"] }
[target.health]
)" + std::string(health_lines);
}

ConfirmConfig::Kind confirm_of(std::string_view health_lines) {
  return parse(target_with_health(health_lines)).targets.at(0).health.confirm.kind;
}


TEST_CASE("without [fleet] a sentinel deploys on its own") { CHECK_FALSE(parse(kMinimalTarget).fleet); }

TEST_CASE("[fleet] reads its endpoints, group and limits, with documented defaults") {
  const Config config = parse(kMinimalTarget + R"(
[fleet]
etcd = ["http://etcd-1.example:2379", "https://10.0.0.7:12379/", "http://etcd-3"]
group = "botical-prod"
host = "web-1"
)");
  REQUIRE(config.fleet);
  const FleetConfig& fleet = *config.fleet;
  REQUIRE(fleet.etcd.size() == 3);
  CHECK(fleet.etcd[0].host == "etcd-1.example");
  CHECK(fleet.etcd[0].port == 2379);
  CHECK_FALSE(fleet.etcd[0].tls);
  CHECK(fleet.etcd[1].tls);
  CHECK(fleet.etcd[1].host == "10.0.0.7");
  CHECK(fleet.etcd[1].port == 12379);
  CHECK(fleet.etcd[2].port == 2379);
  CHECK(fleet.group == "botical-prod");
  CHECK(fleet.host == "web-1");
  CHECK(fleet.max_restarting == 1);
  CHECK(fleet.lease_ttl == 30s);
  CHECK(fleet.timeout == 5s);
}

TEST_CASE("[fleet] without host takes the machine's host name") {
  const Config config = parse(kMinimalTarget + "[fleet]\netcd = [\"http://127.0.0.1:2379\"]\ngroup = \"g\"\n");
  REQUIRE(config.fleet);
  CHECK_FALSE(config.fleet->host.empty());
}

TEST_CASE("[fleet] mistakes name the key and the fix") {
  const std::string fleet = kMinimalTarget + "[fleet]\n";  // line 7
  CHECK(error_in(fleet + "group = \"g\"\n") ==
        "/etc/ds.toml:7:1: fleet.etcd: required key missing; list etcd's endpoints, like etcd = [\"http://etcd-1.example:2379\"]");
  CHECK(error_in(fleet + "etcd = [\"etcd-1:2379\"]\ngroup = \"g\"\n") ==
        "/etc/ds.toml:8:9: fleet.etcd[1]: must start with http:// or https://, like \"http://etcd-1.example:2379\"");
  CHECK(error_in(fleet + "etcd = [\"http://etcd-1:2379/v3\"]\ngroup = \"g\"\n").find("without a path") != std::string::npos);
  CHECK(error_in(fleet + "etcd = [\"http://etcd-1:99999\"]\ngroup = \"g\"\n").find("bad port \"99999\"") != std::string::npos);
  CHECK(error_in(fleet + "etcd = []\ngroup = \"g\"\n").find("non-empty array") != std::string::npos);
  CHECK(error_in(fleet + "etcd = [\"http://e:1\"]\ngroup = \"a/b\"\n") ==
        "/etc/ds.toml:9:9: fleet.group: must be 1 to 64 letters, digits, '.', '-' or '_', like \"botical-prod\"");
  CHECK(error_in(fleet + "etcd = [\"http://e:1\"]\ngroup = \"g\"\nlease_ttl = \"1s\"\n").find("etcd's shortest lease") !=
        std::string::npos);
  CHECK(error_in(fleet + "etcd = [\"http://e:1\"]\ngroup = \"g\"\nmax_restarting = 0\n").find("at least 1") != std::string::npos);
  CHECK(error_in(fleet + "etcd = [\"http://e:1\"]\ngroup = \"g\"\nca_file = \"/etc/ca.pem\"\n") ==
        "/etc/ds.toml:10:11: fleet.ca_file: is used only with https:// endpoints; every endpoint here is http://");
  CHECK(error_in(fleet + "etcd = [\"https://e:1\"]\ngroup = \"g\"\ncert_file = \"/etc/c.pem\"\n").find("go together") !=
        std::string::npos);
  CHECK(error_in(fleet + "etcd = [\"http://e:1\"]\ngroup = \"g\"\nslots = 2\n").find("fleet.slots: unknown key") !=
        std::string::npos);
}

}  // namespace

TEST_CASE("confirm defaults to listener for a local health URL and to none otherwise") {
  CHECK(confirm_of("url = \"http://127.0.0.1:6001/health\"\n") == ConfirmConfig::Kind::listener);
  CHECK(confirm_of("url = \"http://[::1]:6001/health\"\n") == ConfirmConfig::Kind::listener);
  CHECK(confirm_of("url = \"http://app.internal:6001/health\"\n") == ConfirmConfig::Kind::none);
  CHECK(confirm_of("command = [\"check\"]\n") == ConfirmConfig::Kind::none);
}

TEST_CASE("confirm can be none, listener, or a JSON pointer that must equal the commit") {
  const std::string url = "url = \"http://127.0.0.1:6001/health\"\n";
  CHECK(confirm_of(url + "confirm = \"none\"\n") == ConfirmConfig::Kind::none);
  const auto pointer =
      parse(target_with_health(url + R"(confirm = { pointer = "/version", equals = "{commit}" })" + "\n"))
          .targets.at(0)
          .health.confirm;
  CHECK(pointer.kind == ConfirmConfig::Kind::pointer);
  CHECK(pointer.pointer == "/version");
  CHECK(pointer.equals == "{commit}");
  CHECK(error_in(target_with_health(url + "confirm = \"pid\"\n")) ==
        R"(/etc/ds.toml:8:11: target[1].health.confirm: expected "listener", "none" or { pointer = "/version", )"
        R"(equals = "{commit}" }, got "pid")");
}

TEST_CASE("confirm = listener needs a URL on this host") {
  CHECK(error_in(target_with_health("url = \"http://app.internal:6001/health\"\nconfirm = \"listener\"\n"))
            .find("\"listener\" can only see processes on this host") != std::string::npos);
}

TEST_CASE("env adds variables to every command's environment, in any order") {
  const Config config = parse(kMinimalTarget + R"(env = { NODE_ENV = "production", BOTICAL_PORT = "6001" }
)");
  REQUIRE(config.targets[0].env.size() == 2);
  std::vector<std::pair<std::string, std::string>> env = config.targets[0].env;
  std::sort(env.begin(), env.end());
  CHECK(env[0] == std::pair<std::string, std::string>{"BOTICAL_PORT", "6001"});
  CHECK(env[1] == std::pair<std::string, std::string>{"NODE_ENV", "production"});
  CHECK(parse(kMinimalTarget).targets[0].env.empty());
}

TEST_CASE("an env value that is not a string is reported at the value") {
  CHECK(error_in(kMinimalTarget + "env = { PORT = 6001 }\n") ==
        "/etc/ds.toml:7:16: target[1].env.PORT: expected a string, got an integer");
  CHECK(error_in(kMinimalTarget + "env = [\"PORT=6001\"]\n").find(
            "target[1].env: expected a table of strings, like { NODE_ENV = \"production\" }") != std::string::npos);
}

TEST_CASE("allowed_owners takes user names and uids, and an unknown user is reported at its line") {
  const Config config = parse(kMinimalTarget + "allowed_owners = [\"root\", 1000]\n");
  CHECK(config.targets[0].allowed_owners == std::vector<uid_t>{0, 1000});
  CHECK(parse(kMinimalTarget).targets[0].allowed_owners.empty());
  CHECK(error_in(kMinimalTarget + "allowed_owners = [\"root\", \"no-such-user-xyz\"]\n") ==
        "/etc/ds.toml:7:27: target[1].allowed_owners[2]: no user \"no-such-user-xyz\" on this system");
  CHECK(error_in(kMinimalTarget + "allowed_owners = []\n").find("is empty, so no marker would ever be accepted") !=
        std::string::npos);
  CHECK(error_in(kMinimalTarget + "allowed_owners = [-1]\n").find("is not a valid uid") != std::string::npos);
}

TEST_CASE("a world-writable config file is refused with the fix, since its commands run as the sentinel") {
  const TempDir dir;
  const fs::path file = dir.path() / "ds.toml";
  std::ofstream(file) << lines(kMinimalTarget);
  fs::permissions(file, fs::perms::others_write, fs::perm_options::add);
  CHECK_THROWS_WITH_AS(load_config(file),
                       (file.string() + ": is world-writable, so anyone could make the sentinel run their "
                                        "commands; fix it with: chmod o-w " + file.string()).c_str(),
                       ConfigError);
  fs::permissions(file, fs::perms::others_write, fs::perm_options::remove);
  CHECK(load_config(file).targets.size() == 1);
}


TEST_CASE("a preflight table reads every key, with placeholders kept for the run") {
  const Config config = parse(kMinimalTarget + R"(
[target.preflight]
command = ["bun", "run", "src/index.ts"]
env = { BOTICAL_PORT = "{port}", BOTICAL_DATA_DIR = "{data}" }
snapshot = ["/home/leopard/.botical-prod/data", "relative/db"]
health = "http://127.0.0.1:{port}/health/ready"
timeout = "3s"
grace = "2s"
interval = "250ms"
successes = 4
deadline = "90s"
isolate = false
)");
  REQUIRE(config.targets[0].preflight);
  const PreflightConfig& p = *config.targets[0].preflight;
  CHECK(p.command == std::vector<std::string>{"bun", "run", "src/index.ts"});
  CHECK(p.env == std::vector<std::pair<std::string, std::string>>{{"BOTICAL_DATA_DIR", "{data}"},
                                                                  {"BOTICAL_PORT", "{port}"}});
  CHECK(p.snapshot == std::vector<fs::path>{"/home/leopard/.botical-prod/data", "/etc/relative/db"});
  CHECK(p.health == "http://127.0.0.1:{port}/health/ready");
  CHECK(p.timeout == 3s);
  CHECK(p.grace == 2s);
  CHECK(p.interval == 250ms);
  CHECK(p.successes == 4);
  CHECK(p.deadline == 90s);
  CHECK(!p.isolate);
}

TEST_CASE("a preflight table with only command and health is isolated, with the documented defaults") {
  const Config config = parse(kMinimalTarget + R"(
[target.preflight]
command = ["app"]
health = "http://127.0.0.1:{port}/health"
)");
  const PreflightConfig& p = *config.targets[0].preflight;
  CHECK(p.isolate);
  CHECK(p.grace == 1s);
  CHECK(p.interval == 500ms);
  CHECK(p.successes == 2);
  CHECK(p.deadline == 60s);
  CHECK(p.snapshot.empty());
  CHECK(p.snapshot_command.empty());
  CHECK(!parse(kMinimalTarget).targets[0].preflight);
}

TEST_CASE("an unknown placeholder in a preflight value is reported at that value") {
  CHECK(error_in(kMinimalTarget + R"(
[target.preflight]
command = ["app"]
env = { PORT = "{port}", DIR = "{dta}" }
health = "http://127.0.0.1:{port}/health"
)") == "/etc/ds.toml:10:32: target[1].preflight.env.DIR: unknown placeholder \"{dta}\"; the placeholders are {port} and {data}");
  CHECK(error_in(kMinimalTarget + R"(
[target.preflight]
command = ["app"]
snapshot_command = ["sqlite3", "/srv/prod.db", ".backup {data}/prod.db {commit}"]
health = "http://127.0.0.1:{port}/health"
)") == "/etc/ds.toml:10:48: target[1].preflight.snapshot_command[3]: unknown placeholder \"{commit}\"; the placeholders are {port} and {data}");
  CHECK(error_in(kMinimalTarget + R"(
[target.preflight]
command = ["app"]
health = "http://127.0.0.1:{prt}/health"
)") == "/etc/ds.toml:10:10: target[1].preflight.health: unknown placeholder \"{prt}\"; the placeholders are {port} and {data}");
}

TEST_CASE("a preflight table refuses unknown keys, both snapshot kinds at once and a health URL that is not http") {
  CHECK(error_in(kMinimalTarget + R"(
[target.preflight]
command = ["app"]
health = "http://127.0.0.1:{port}/health"
isolated = false
)") == "/etc/ds.toml:11:1: target[1].preflight.isolated: unknown key (did you mean \"isolate\"?)");
  CHECK(error_in(kMinimalTarget + R"(
[target.preflight]
command = ["app"]
health = "http://127.0.0.1:{port}/health"
snapshot = ["/srv/data"]
snapshot_command = ["cp", "-a", "/srv/data", "{data}"]
)") == "/etc/ds.toml:12:20: target[1].preflight.snapshot_command: give either snapshot or snapshot_command, not both");
  CHECK(error_in(kMinimalTarget + R"(
[target.preflight]
command = ["app"]
health = "https://127.0.0.1:{port}/health"
)").find("target[1].preflight.health: HTTPS is not supported") != std::string::npos);
  CHECK(error_in(kMinimalTarget + R"(
[target.preflight]
health = "http://127.0.0.1:{port}/health"
)") == "/etc/ds.toml:8:1: target[1].preflight.command: required key missing");
}

TEST_CASE("hooks and the metrics file are read with their defaults") {
  const Config config = parse(R"(
[sentinel]
metrics_file = "/var/lib/node_exporter/textfile_collector/deploy-sentinel.prom"
)" + kMinimalTarget + R"(
[target.hooks]
on_deployed = ["/usr/local/bin/notify", "deployed"]
on_failed = ["page-someone"]
)");
  CHECK(config.metrics_file == "/var/lib/node_exporter/textfile_collector/deploy-sentinel.prom");
  REQUIRE(config.targets[0].hooks.has_value());
  const HooksConfig& hooks = *config.targets[0].hooks;
  CHECK(hooks.on_deployed == std::vector<std::string>{"/usr/local/bin/notify", "deployed"});
  CHECK(hooks.on_failed == std::vector<std::string>{"page-someone"});
  CHECK(hooks.on_reverted.empty());
  CHECK(hooks.on_recovered.empty());
  CHECK(hooks.timeout == 30s);
  CHECK(parse(kMinimalTarget).metrics_file.empty());
  CHECK_FALSE(parse(kMinimalTarget).targets[0].hooks.has_value());
}

TEST_CASE("a hook that is not an argv array, an unknown hook and a zero hook timeout are errors at their position") {
  CHECK(error_in(kMinimalTarget + "\n[target.hooks]\non_deployed = \"notify-send\"\n") ==
        "/etc/ds.toml:9:15: target[1].hooks.on_deployed: expected an array of strings, like "
        "[\"systemctl\", \"restart\", \"app\"]");
  CHECK(error_in(kMinimalTarget + "\n[target.hooks]\non_deploy = [\"x\"]\n") ==
        "/etc/ds.toml:9:1: target[1].hooks.on_deploy: unknown key (did you mean \"on_deployed\"?)");
  CHECK(error_in(kMinimalTarget + "\n[target.hooks]\ntimeout = \"0s\"\n") ==
        "/etc/ds.toml:9:11: target[1].hooks.timeout: must be longer than zero, like \"1s\"");
}

}  // namespace sentinel
