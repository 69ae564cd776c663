// Fleet mode's way to etcd: https with client certificates (made here with the openssl
// command), and endpoints tried in turn. A real etcd on 127.0.0.1, the real daemon and CLI.
#include "etcd_server.h"
#include "harness.h"

#include <doctest/doctest.h>

#include <fstream>

using namespace sentinel::test;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

/// A CA, a certificate for etcd on 127.0.0.1 and one for the sentinel, all signed by the CA.
struct Certificates {
  TempDir dir;
  fs::path ca = dir.path() / "ca.pem", ca_key = dir.path() / "ca.key";
  fs::path server = dir.path() / "server.pem", server_key = dir.path() / "server.key";
  fs::path client = dir.path() / "client.pem", client_key = dir.path() / "client.key";

  Certificates() {
    openssl({"req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key.string(), "-out", ca.string(),
             "-days", "1", "-subj", "/CN=fleet-test-ca"});
    sign("server", server, server_key, "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n");
    sign("sentinel", client, client_key, "extendedKeyUsage=clientAuth\n");
  }

 private:
  void sign(const std::string& name, const fs::path& cert, const fs::path& key, const std::string& extensions) {
    const fs::path request = dir.path() / (name + ".csr");
    const fs::path ext = dir.path() / (name + ".ext");
    std::ofstream(ext) << extensions;
    openssl({"req", "-newkey", "rsa:2048", "-nodes", "-keyout", key.string(), "-out", request.string(), "-subj",
             "/CN=" + name});
    openssl({"x509", "-req", "-in", request.string(), "-CA", ca.string(), "-CAkey", ca_key.string(),
             "-CAcreateserial", "-out", cert.string(), "-days", "1", "-extfile", ext.string()});
  }
  static void openssl(std::vector<std::string> args) {
    args.insert(args.begin(), "openssl");
    const CommandOutput made = run_program(args);
    REQUIRE_MESSAGE(made.status == 0, made.err);
  }
};

/// A config with one target (never run) and `fleet` as its [fleet] table, for the CLI.
fs::path config_with(const TempDir& dir, const std::string& name, const std::string& fleet) {
  const fs::path file = dir.path() / name;
  std::ofstream(file) << "[[target]]\nname = \"prod\"\nmarker_dir = \"/nonexistent\"\ncheckout = \"/nonexistent\"\n"
                         "restart = { command = [\"true\"] }\nhealth = { command = [\"true\"] }\n\n[fleet]\n"
                      << fleet;
  return file;
}

CommandOutput fleet_status(const fs::path& config) {
  return run_program({SENTINEL_BIN, "fleet", "status", "--config", config.string()});
}

/// A port on 127.0.0.1 where nothing listens (free a moment ago).
std::string dead_endpoint() { return "http://127.0.0.1:" + std::to_string(free_port()); }

}  // namespace

TEST_CASE("fleet: over https with client certificates a deploy takes its slot, and etcd refuses a client "
          "without a certificate or with another CA") {
  Certificates certs;
  EtcdServer etcd(EtcdServer::Tls{certs.ca, certs.server, certs.server_key});
  const std::string tls_files = "ca_file = \"" + certs.ca.string() + "\"\n";
  const std::string client_files =
      "cert_file = \"" + certs.client.string() + "\"\nkey_file = \"" + certs.client_key.string() + "\"\n";
  Production::Options options;
  options.fleet = "[fleet]\netcd = [\"" + etcd.endpoint() + "\"]\ngroup = \"tls-test\"\nhost = \"host-1\"\n" +
                  tls_files + client_files;
  Production prod(options);
  auto& daemon = prod.start_watching();
  const std::string sha = prod.commit("healthy");
  prod.stage_by_rename();
  REQUIRE(daemon.wait_for_line("took fleet slot 0 of 1 in group tls-test", 10s) >= 0);
  REQUIRE(daemon.wait_for_line("deployed " + short_sha(sha), 10s) >= 0);
  REQUIRE(daemon.wait_for_line("released fleet slot 0", 5s) >= 0);

  const CommandOutput status = prod.cli({"fleet", "status"});
  REQUIRE_MESSAGE(status.status == 0, status.err);
  CHECK(status.out.find("host-1 (prod): runs " + short_sha(sha) + "; last deployed " + short_sha(sha)) !=
        std::string::npos);

  TempDir other;
  const std::string endpoint = "etcd = [\"" + etcd.endpoint() + "\"]\ngroup = \"tls-test\"\n";
  const CommandOutput anonymous = fleet_status(config_with(other, "anonymous.toml", endpoint + tls_files));
  CHECK(anonymous.status == 69);
  CHECK_MESSAGE(anonymous.err.find("cannot read group tls-test from etcd: " + etcd.endpoint()) != std::string::npos,
                anonymous.err);
  CHECK_MESSAGE(anonymous.err.find("certificate") != std::string::npos, anonymous.err);

  Certificates strangers;  // a CA etcd does not know, which etcd's certificate does not chain to
  const CommandOutput stranger = fleet_status(config_with(
      other, "stranger.toml",
      endpoint + "ca_file = \"" + strangers.ca.string() + "\"\ncert_file = \"" + strangers.client.string() +
          "\"\nkey_file = \"" + strangers.client_key.string() + "\"\n"));
  CHECK(stranger.status == 69);
  CHECK_MESSAGE(stranger.err.find("TLS handshake: certificate verify failed") != std::string::npos, stranger.err);
}

TEST_CASE("fleet: the etcd endpoints are tried in turn, and fleet status names each one that failed") {
  EtcdServer etcd;
  TempDir dir;
  const std::string dead = dead_endpoint();
  const CommandOutput second = fleet_status(
      config_with(dir, "second.toml", "etcd = [\"" + dead + "\", \"" + etcd.endpoint() + "\"]\ngroup = \"g\"\n"));
  CHECK_MESSAGE(second.status == 0, second.err);
  CHECK(second.out.find("group g: 0 of 1 restart slots held") != std::string::npos);

  etcd.stop();
  const CommandOutput none = fleet_status(
      config_with(dir, "none.toml", "etcd = [\"" + dead + "\", \"" + etcd.endpoint() + "\"]\ngroup = \"g\"\n"));
  CHECK(none.status == 69);
  CHECK_MESSAGE(none.err.find(dead + ": Connection refused; " + etcd.endpoint() + ": Connection refused") !=
                    std::string::npos,
                none.err);

  const CommandOutput lonely = fleet_status(config_with(dir, "lonely.toml", ""));
  CHECK(lonely.status == 78);  // [fleet] without etcd: the config's own error
  CHECK(lonely.err.find("fleet.etcd: required key missing") != std::string::npos);
}
