#include "config/server_config.h"

#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/common/temporary_folder.h"

namespace zoogate::config {
namespace {

using std::chrono::milliseconds;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;
using zoogate::testing::TemporaryFolder;

// Well-formed scrypt hashes (a 16-byte salt and a 32-byte hash); nothing here verifies a password.
constexpr std::string_view kAliceHash =
    "scrypt$32768$8$1$AAECAwQFBgcICQoLDA0ODw==$ZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1+f4CBgoM=";
constexpr std::string_view kBobHash =
    "scrypt$16384$8$2$AAECAwQFBgcICQoLDA0ODw==$ZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1+f4CBgoM=";

ServerConfig parse_ok(std::string_view yaml) {
  auto config = parse_server_config(yaml, "zoogate.yaml");
  EXPECT_TRUE(config) << config.error().message;
  return config.value_or(ServerConfig{});
}

std::string refusal(std::string_view yaml) {
  auto config = parse_server_config(yaml, "zoogate.yaml");
  EXPECT_FALSE(config) << yaml;
  if (config) return "";
  EXPECT_EQ(config.error().code, ErrorCode::kInvalidArgument);
  return config.error().message;
}

TEST(DefaultServerConfig, MatchesTheDocumentedDefaults) {
  ServerConfig config = default_server_config();
  EXPECT_EQ(config.listen.to_string(), "127.0.0.1:8080");
  EXPECT_EQ(config.admin_listen.to_string(), "127.0.0.1:9090");
  EXPECT_EQ(config.public_url, "");
  EXPECT_TRUE(config.trusted_proxies.empty());
  EXPECT_EQ(config.trusted_user_header, "");
  EXPECT_EQ(config.io_threads, 2u);
  EXPECT_EQ(config.worker_threads, 0u);
  EXPECT_EQ(config.upstream.hub_url, "https://huggingface.co");
  EXPECT_EQ(config.upstream.redirect_hosts,
            (std::vector<std::string>{"huggingface.co", "*.huggingface.co", "hf.co", "*.hf.co"}));
  EXPECT_EQ(config.upstream.ca_bundle, "");
  EXPECT_EQ(config.upstream.connect_timeout, milliseconds(10'000));
  EXPECT_EQ(config.upstream.read_timeout, milliseconds(60'000));
  EXPECT_EQ(config.upstream.retries, 2u);
  EXPECT_EQ(config.upstream.max_idle_connections, 32u);
  EXPECT_EQ(config.upstream.max_redirects, 5u);
  EXPECT_EQ(config.upstream.resolution_ttl, milliseconds(10'000));
  EXPECT_EQ(config.upstream.max_resolutions, 10'000u);
  EXPECT_EQ(config.cache.dir, "zoogate-cache");
  EXPECT_EQ(config.cache.max_size, 50ull << 30);
  EXPECT_FALSE(config.cache.spool_direct_io);
  EXPECT_EQ(config.pipeline.client_wait, milliseconds(60'000));
  EXPECT_EQ(config.pipeline.retry_after, milliseconds(10'000));
  EXPECT_EQ(config.pipeline.max_artifact_size, 64ull << 30);
  EXPECT_EQ(config.pipeline.buffer_before_send, 8ull << 20);
  EXPECT_EQ(config.pipeline.stream_piece_size, 512ull << 10);
  EXPECT_TRUE(config.mtd.layout_variation);
  EXPECT_EQ(config.mtd.secret_file, "");
  EXPECT_EQ(config.mtd.epoch, 0u);
  EXPECT_FALSE(config.mtd.permute_weights);
  EXPECT_EQ(config.mtd.signing_key_file, "");
  EXPECT_EQ(config.policy_file, "");
  EXPECT_EQ(config.limits.max_request_header_bytes, 16u << 10);
  EXPECT_EQ(config.limits.max_api_json_bytes, 64u << 20);
  EXPECT_EQ(config.limits.max_connections, 4096u);
  EXPECT_EQ(config.limits.client_idle_timeout, milliseconds(60'000));
  EXPECT_EQ(config.logging.access_log, "-");

  EXPECT_FALSE(config.egress.listen);
  EXPECT_EQ(config.egress.ca_cert, "");
  EXPECT_EQ(config.egress.ca_key, "");
  EXPECT_EQ(config.egress.leaf_lifetime, milliseconds(24 * 3'600'000));
  EXPECT_EQ(config.egress.leaf_cache_size, 1000u);
  ASSERT_EQ(config.egress.rules.size(), 1u);
  EXPECT_EQ(config.egress.rules[0].hosts,
            (std::vector<std::string>{"huggingface.co", "hf.co", "*.huggingface.co", "*.hf.co"}));
  EXPECT_EQ(config.egress.rules[0].ports, (std::vector<uint16_t>{443}));
  EXPECT_EQ(config.egress.rules[0].action, EgressAction::kIntercept);
  EXPECT_TRUE(config.egress.allow_private_destinations.empty());
  EXPECT_FALSE(config.egress.auth);
}

TEST(ServerConfig, AnEmptyFileGivesTheDefaults) {
  EXPECT_EQ(parse_ok(""), default_server_config());
  EXPECT_EQ(parse_ok("# nothing configured\n"), default_server_config());
  EXPECT_EQ(parse_ok("upstream: {}\negress: {}\n"), default_server_config());
}

constexpr std::string_view kEveryKey = R"(# every key, each away from its default
listen: "0.0.0.0:8000"
admin_listen: "[::1]:0"
public_url: "https://models.example.com:8443"
trusted_proxies: [10.0.0.0/8, "::1", "fd00::/8", 192.0.2.7/32]
trusted_user_header: X-Forwarded-User
io_threads: 4
worker_threads: 16
upstream:
  hub_url: "https://127.0.0.1:5000/"
  redirect_hosts: [127.0.0.1, localhost, "*.cdn.example", "::1"]
  ca_bundle: /etc/zoogate/hub-ca.pem
  connect_timeout: 500ms
  read_timeout: 2m
  retries: 0
  max_idle_connections: 0
  max_redirects: 20
  resolution_ttl: 0ms
  max_resolutions: 1000000
cache:
  dir: /var/cache/zoogate
  max_size: 2TiB
  spool_direct_io: true
pipeline:
  client_wait: 0ms
  retry_after: 1s
  max_artifact_size: 1 GiB
  buffer_before_send: 0
  stream_piece_size: 64KiB
mtd:
  layout_variation: false
  secret_file: /etc/zoogate/mtd-secret
  epoch: 18446744073709551615
  permute_weights: true
  signing_key_file: /etc/zoogate/signing-key.pem
policy_file: policy.yaml
limits:
  max_request_header_bytes: 1MiB
  max_api_json_bytes: 1KiB
  max_connections: 1
  client_idle_timeout: 1h
logging:
  access_log: /var/log/zoogate/access.jsonl
egress:
  listen: "localhost:3128"
  ca_cert: ca/ca.pem
  ca_key: ca/ca.key
  leaf_lifetime: 720h
  leaf_cache_size: 100000
  rules:
    - hosts: [evil.example.com]
      action: deny
    - hosts: ["huggingface.co", "*.hf.co"]
      ports: [443, 8443]
      action: intercept
    - hosts: ["*"]
      ports: [443]
      action: tunnel
  allow_private_destinations: [mirror.corp, "*.corp", 10.1.2.3, "fd00::1"]
  auth:
    realm: "corp proxy"
    users:
      alice: "scrypt$32768$8$1$AAECAwQFBgcICQoLDA0ODw==$ZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1+f4CBgoM="
      bob: "scrypt$16384$8$2$AAECAwQFBgcICQoLDA0ODw==$ZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1+f4CBgoM="
)";

TEST(ServerConfig, ReadsEveryKey) {
  ServerConfig config = parse_ok(kEveryKey);
  EXPECT_EQ(config.listen, (ListenAddress{"0.0.0.0", 8000}));
  EXPECT_EQ(config.admin_listen, (ListenAddress{"::1", 0}));
  EXPECT_EQ(config.public_url, "https://models.example.com:8443");
  std::vector<std::string> trusted;
  for (const AddressRange& range : config.trusted_proxies) trusted.push_back(range.to_string());
  EXPECT_EQ(trusted, (std::vector<std::string>{"10.0.0.0/8", "::1/128", "fd00::/8", "192.0.2.7/32"}));
  EXPECT_EQ(config.trusted_user_header, "X-Forwarded-User");
  EXPECT_EQ(config.io_threads, 4u);
  EXPECT_EQ(config.worker_threads, 16u);

  EXPECT_EQ(config.upstream.hub_url, "https://127.0.0.1:5000/");
  EXPECT_EQ(config.upstream.redirect_hosts,
            (std::vector<std::string>{"127.0.0.1", "localhost", "*.cdn.example", "::1"}));
  EXPECT_EQ(config.upstream.ca_bundle, "/etc/zoogate/hub-ca.pem");
  EXPECT_EQ(config.upstream.connect_timeout, milliseconds(500));
  EXPECT_EQ(config.upstream.read_timeout, milliseconds(120'000));
  EXPECT_EQ(config.upstream.retries, 0u);
  EXPECT_EQ(config.upstream.max_idle_connections, 0u);
  EXPECT_EQ(config.upstream.max_redirects, 20u);
  EXPECT_EQ(config.upstream.resolution_ttl, milliseconds(0));
  EXPECT_EQ(config.upstream.max_resolutions, 1'000'000u);

  EXPECT_EQ(config.cache.dir, "/var/cache/zoogate");
  EXPECT_EQ(config.cache.max_size, 2ull << 40);
  EXPECT_TRUE(config.cache.spool_direct_io);
  EXPECT_EQ(config.pipeline.client_wait, milliseconds(0));
  EXPECT_EQ(config.pipeline.retry_after, milliseconds(1000));
  EXPECT_EQ(config.pipeline.max_artifact_size, 1ull << 30);
  EXPECT_EQ(config.pipeline.buffer_before_send, 0u);
  EXPECT_EQ(config.pipeline.stream_piece_size, 64u << 10);

  EXPECT_FALSE(config.mtd.layout_variation);
  EXPECT_EQ(config.mtd.secret_file, "/etc/zoogate/mtd-secret");
  EXPECT_EQ(config.mtd.epoch, 18446744073709551615u);
  EXPECT_TRUE(config.mtd.permute_weights);
  EXPECT_EQ(config.mtd.signing_key_file, "/etc/zoogate/signing-key.pem");
  EXPECT_EQ(config.policy_file, "policy.yaml");  // parsing alone keeps paths as written

  EXPECT_EQ(config.limits.max_request_header_bytes, 1u << 20);
  EXPECT_EQ(config.limits.max_api_json_bytes, 1024u);
  EXPECT_EQ(config.limits.max_connections, 1u);
  EXPECT_EQ(config.limits.client_idle_timeout, milliseconds(3'600'000));
  EXPECT_EQ(config.logging.access_log, "/var/log/zoogate/access.jsonl");

  const EgressConfig& egress = config.egress;
  EXPECT_EQ(egress.listen, (ListenAddress{"localhost", 3128}));
  EXPECT_EQ(egress.ca_cert, "ca/ca.pem");
  EXPECT_EQ(egress.ca_key, "ca/ca.key");
  EXPECT_EQ(egress.leaf_lifetime, milliseconds(720ll * 3'600'000));
  EXPECT_EQ(egress.leaf_cache_size, 100000u);
  EXPECT_EQ(egress.rules, (std::vector<EgressRule>{
                              {{"evil.example.com"}, {}, EgressAction::kDeny},
                              {{"huggingface.co", "*.hf.co"}, {443, 8443}, EgressAction::kIntercept},
                              {{"*"}, {443}, EgressAction::kTunnel},
                          }));
  EXPECT_EQ(egress.allow_private_destinations,
            (std::vector<std::string>{"mirror.corp", "*.corp", "10.1.2.3", "fd00::1"}));
  ASSERT_TRUE(egress.auth);
  EXPECT_EQ(egress.auth->realm, "corp proxy");
  EXPECT_EQ(egress.auth->users, (std::vector<std::pair<std::string, std::string>>{
                                    {"alice", std::string(kAliceHash)}, {"bob", std::string(kBobHash)}}));
}

TEST(ServerConfig, EmptyStringsMeanNotSet) {
  ServerConfig config = parse_ok(
      "public_url: ''\nupstream: {ca_bundle: ''}\nmtd: {secret_file: \"\", signing_key_file: ''}\n"
      "policy_file: ''\negress: {listen: '', ca_cert: '', ca_key: '', rules: []}\n");
  EXPECT_EQ(config.public_url, "");
  EXPECT_FALSE(config.egress.listen);
  EXPECT_TRUE(config.egress.rules.empty());  // an explicit empty list: every destination is denied
  EXPECT_EQ(parse_ok("egress: {auth: {users: {alice: " + std::string(kAliceHash) + "}}}").egress.auth->realm,
            "zoogate");
}

TEST(ServerConfig, AcceptsEveryListenAddressForm) {
  EXPECT_EQ(parse_ok("listen: 127.0.0.1:1").listen, (ListenAddress{"127.0.0.1", 1}));
  EXPECT_EQ(parse_ok("listen: '[::]:65535'").listen, (ListenAddress{"::", 65535}));
  EXPECT_EQ(parse_ok("listen: '[fe80::1:2]:80'").listen, (ListenAddress{"fe80::1:2", 80}));
  EXPECT_EQ(parse_ok("listen: localhost:0").listen, (ListenAddress{"localhost", 0}));
  // Port 0 twice is fine: the operating system gives each listener its own port.
  EXPECT_EQ(parse_ok("listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\negress: {listen: '127.0.0.1:0'}")
                .admin_listen.port,
            0);
}

TEST(ServerConfig, UnknownKeysDuplicatesAndSyntaxErrorsNameTheirPosition) {
  EXPECT_EQ(refusal("listen: 127.0.0.1:1\nlisten_admin: 127.0.0.1:2\n"),
            "zoogate.yaml:2:1: unknown key 'listen_admin' at the top level (allowed: listen, admin_listen, "
            "public_url, trusted_proxies, trusted_user_header, io_threads, worker_threads, upstream, cache, "
            "pipeline, mtd, policy_file, limits, logging, egress)");
  EXPECT_EQ(refusal("upstream:\n  hub_url: https://hf.co\n  timeout: 5s\n"),
            "zoogate.yaml:3:3: unknown key 'timeout' in 'upstream' (allowed: hub_url, redirect_hosts, ca_bundle, "
            "connect_timeout, read_timeout, retries, max_idle_connections, max_redirects, resolution_ttl, "
            "max_resolutions)");
  EXPECT_THAT(refusal("cache: {dir: a, size: 1GiB}"), StartsWith("zoogate.yaml:1:17: unknown key 'size' in 'cache'"));
  EXPECT_THAT(refusal("pipeline:\n  wait: 1s\n"), StartsWith("zoogate.yaml:2:3: unknown key 'wait' in 'pipeline'"));
  EXPECT_THAT(refusal("mtd:\n  secret: x\n"), StartsWith("zoogate.yaml:2:3: unknown key 'secret' in 'mtd'"));
  EXPECT_THAT(refusal("limits:\n  max_header: 1KiB\n"), StartsWith("zoogate.yaml:2:3: unknown key 'max_header'"));
  EXPECT_THAT(refusal("logging:\n  audit_log: x\n"), StartsWith("zoogate.yaml:2:3: unknown key 'audit_log'"));
  EXPECT_THAT(refusal("egress:\n  ca: x\n"), StartsWith("zoogate.yaml:2:3: unknown key 'ca' in 'egress'"));
  EXPECT_THAT(refusal("egress:\n  rules:\n    - hosts: [a.com]\n      action: deny\n      port: [1]\n"),
              StartsWith("zoogate.yaml:5:7: unknown key 'port' in 'egress.rules[0]'"));
  EXPECT_THAT(refusal("egress:\n  auth:\n    users: {a: b}\n    method: basic\n"),
              StartsWith("zoogate.yaml:4:5: unknown key 'method' in 'egress.auth'"));
  EXPECT_EQ(refusal("io_threads: 1\nio_threads: 2\n"),
            "zoogate.yaml:2:1: duplicate key 'io_threads' at the top level (first given at zoogate.yaml:1:13)");
  EXPECT_THAT(refusal("listen: [127.0.0.1:1\n"), StartsWith("zoogate.yaml:2:1: "));
  EXPECT_EQ(refusal("- listen\n"), "zoogate.yaml:1:1: the document must be a mapping, got a list");
  EXPECT_EQ(refusal("upstream: https://hf.co\n"), "zoogate.yaml:1:11: 'upstream' must be a mapping, got "
                                                  "'https://hf.co'");
}

TEST(ServerConfig, RefusesValuesOfTheWrongTypeOrOutOfRange) {
  EXPECT_EQ(refusal("io_threads: 0"), "zoogate.yaml:1:13: 'io_threads' must be an integer from 1 to 64, got '0'");
  EXPECT_EQ(refusal("\nworker_threads: 257"),
            "zoogate.yaml:2:17: 'worker_threads' must be an integer from 0 to 256, got '257'");
  EXPECT_THAT(refusal("upstream: {retries: 11}"), StartsWith("zoogate.yaml:1:21: 'upstream.retries' must be an "
                                                             "integer from 0 to 10, got '11'"));
  EXPECT_THAT(refusal("upstream: {max_idle_connections: 1025}"), HasSubstr("from 0 to 1024"));
  EXPECT_THAT(refusal("upstream: {max_redirects: 21}"), HasSubstr("from 0 to 20"));
  EXPECT_THAT(refusal("upstream: {resolution_ttl: 2h}"), HasSubstr("from 0ms to 1h"));
  EXPECT_THAT(refusal("upstream: {max_resolutions: 0}"), HasSubstr("from 1 to 1000000"));
  EXPECT_EQ(refusal("upstream:\n  connect_timeout: 10\n"),
            "zoogate.yaml:2:20: 'upstream.connect_timeout' must be a duration from 100ms to 5m (digits followed "
            "by one of ms, s, m, h), got '10'");
  EXPECT_THAT(refusal("upstream: {connect_timeout: 99ms}"), HasSubstr("got '99ms'"));
  EXPECT_THAT(refusal("upstream: {read_timeout: 2h}"), HasSubstr("'upstream.read_timeout' must be a duration from "
                                                                 "1s to 1h"));
  EXPECT_EQ(refusal("cache:\n  max_size: 50GB\n"),
            "zoogate.yaml:2:13: 'cache.max_size' must be a byte size from 1MiB to 1024TiB (digits with an "
            "optional unit B, KiB, MiB, GiB, TiB), got '50GB'");
  EXPECT_EQ(refusal("cache: {dir: ''}"), "zoogate.yaml:1:14: 'cache.dir' must be a non-empty string");
  EXPECT_THAT(refusal("pipeline: {client_wait: 61m}"), HasSubstr("'pipeline.client_wait' must be a duration "
                                                                 "from 0ms to 1h"));
  EXPECT_THAT(refusal("pipeline: {retry_after: 500ms}"), HasSubstr("'pipeline.retry_after' must be a duration "
                                                                   "from 1s to 1h"));
  EXPECT_THAT(refusal("pipeline: {max_artifact_size: 1023}"), HasSubstr("from 1KiB to 1024TiB"));
  EXPECT_THAT(refusal("pipeline: {buffer_before_send: 2GiB}"), HasSubstr("from 0B to 1GiB"));
  EXPECT_THAT(refusal("pipeline: {stream_piece_size: 1KiB}"), HasSubstr("from 16KiB to 16MiB"));
  EXPECT_EQ(refusal("cache: {spool_direct_io: on}"),
            "zoogate.yaml:1:26: 'cache.spool_direct_io' must be true or false, got 'on'");
  EXPECT_EQ(refusal("mtd: {layout_variation: yes}"),
            "zoogate.yaml:1:25: 'mtd.layout_variation' must be true or false, got 'yes'");
  EXPECT_THAT(refusal("mtd: {epoch: -1}"), HasSubstr("'mtd.epoch' must be an integer from 0 to "));
  EXPECT_THAT(refusal("mtd: {permute_weights: 1}"), HasSubstr("'mtd.permute_weights' must be true or false"));
  EXPECT_EQ(refusal("mtd: {secret_file: [a]}"), "zoogate.yaml:1:20: 'mtd.secret_file' must be a string, got a list");
  EXPECT_EQ(refusal("policy_file:"), "zoogate.yaml:1:1: 'policy_file' must be a string, got nothing");
  EXPECT_THAT(refusal("limits: {max_request_header_bytes: 2MiB}"), HasSubstr("from 1KiB to 1MiB"));
  EXPECT_THAT(refusal("limits: {max_api_json_bytes: 2GiB}"), HasSubstr("from 1KiB to 1GiB"));
  EXPECT_THAT(refusal("limits: {max_connections: 0}"), HasSubstr("from 1 to 1000000"));
  EXPECT_THAT(refusal("limits: {client_idle_timeout: 0s}"), HasSubstr("from 1s to 1h"));
  EXPECT_EQ(refusal("logging: {access_log: ''}"),
            "zoogate.yaml:1:23: 'logging.access_log' must be a non-empty string");
  EXPECT_THAT(refusal("egress: {leaf_lifetime: 59s}"), HasSubstr("'egress.leaf_lifetime' must be a duration from "
                                                                 "1m to 720h"));
  EXPECT_THAT(refusal("egress: {leaf_lifetime: 721h}"), HasSubstr("got '721h'"));
  EXPECT_THAT(refusal("egress: {leaf_lifetime: 1d}"), HasSubstr("got '1d'"));
  EXPECT_THAT(refusal("egress: {leaf_cache_size: 0}"), HasSubstr("from 1 to 100000"));
  EXPECT_THAT(refusal("egress: {leaf_cache_size: 100001}"), HasSubstr("from 1 to 100000"));
}

TEST(ServerConfig, RefusesBadListenAddresses) {
  constexpr std::string_view kExpected =
      "'listen' must be HOST:PORT with HOST an IP address or localhost (IPv6 in brackets, as in [::1]:8080) and "
      "PORT from 0 to 65535; ";
  EXPECT_EQ(refusal("listen: 127.0.0.1"),
            "zoogate.yaml:1:9: " + std::string(kExpected) + "the port is missing, got '127.0.0.1'");
  EXPECT_EQ(refusal("listen: 127.0.0.1:65536"),
            "zoogate.yaml:1:9: " + std::string(kExpected) + "the port is not a number from 0 to 65535, got "
                                                            "'127.0.0.1:65536'");
  EXPECT_EQ(refusal("listen: zoogate.corp:80"),
            "zoogate.yaml:1:9: " + std::string(kExpected) + "the host is not an IP address or localhost, got "
                                                            "'zoogate.corp:80'");
  for (std::string_view text : {"listen: '::1:8080'", "listen: '[::1]8080'", "listen: '[::1:8080'",
                                "listen: ':8080'", "listen: '127.0.0.1:'", "listen: '127.0.0.1:080'",
                                "listen: '127.0.0.1:+80'", "listen: '[127.0.0.1]:80'", "listen: '1.2.3:80'",
                                "listen: '127.0.0.01:80'", "listen: '[fe80::1%eth0]:80'", "listen: ' 127.0.0.1:80'"}) {
    EXPECT_THAT(refusal(text), StartsWith("zoogate.yaml:1:9: 'listen' must be HOST:PORT")) << text;
  }
  EXPECT_THAT(refusal("listen: \"127.0.0.1\\0:80\""), StartsWith("zoogate.yaml:1:9: 'listen' must be HOST:PORT"));
  EXPECT_THAT(refusal("listen: \"127.0.0.1:80\\0\""), StartsWith("zoogate.yaml:1:9: 'listen' must be HOST:PORT"));
  EXPECT_THAT(refusal("upstream: {redirect_hosts: [\"10.0.0.1\\0x\"]}"), HasSubstr("bad host pattern"));
  EXPECT_THAT(refusal("admin_listen: 8080"), StartsWith("zoogate.yaml:1:15: 'admin_listen' must be HOST:PORT"));
  EXPECT_THAT(refusal("egress:\n  listen: 3128\n"), StartsWith("zoogate.yaml:2:11: 'egress.listen' must be HOST:PORT"));
}

TEST(ServerConfig, RefusesListenersThatWouldShareAPort) {
  EXPECT_EQ(refusal("listen: 127.0.0.1:7000\nadmin_listen: 127.0.0.1:7000\n"),
            "zoogate.yaml:2:15: 'admin_listen' (127.0.0.1:7000) and 'listen' (127.0.0.1:7000, given at "
            "zoogate.yaml:1:9) would listen on the same port");
  // Only one of the two is in the file: the error points at it and names the other's default.
  EXPECT_EQ(refusal("listen: 127.0.0.1:9090\n"),
            "zoogate.yaml:1:9: 'listen' (127.0.0.1:9090) and 'admin_listen' (127.0.0.1:9090, its default) would "
            "listen on the same port");
  EXPECT_THAT(refusal("egress: {listen: 'localhost:8080'}"),
              StartsWith("zoogate.yaml:1:18: 'egress.listen' (localhost:8080) and 'listen' (127.0.0.1:8080, its "
                         "default)"));
  EXPECT_THAT(refusal("listen: '[::]:9090'\nadmin_listen: 10.0.0.1:9090\n"),
              StartsWith("zoogate.yaml:2:15: 'admin_listen' (10.0.0.1:9090) and 'listen' ([::]:9090"));
  // Different addresses on one port are fine.
  EXPECT_EQ(parse_ok("listen: 127.0.0.2:9090").listen.port, 9090);
}

TEST(ServerConfig, RefusesBadHubUrls) {
  EXPECT_EQ(parse_ok("upstream: {hub_url: 'https://[::1]:8443'}").upstream.hub_url, "https://[::1]:8443");
  EXPECT_EQ(parse_ok("upstream: {hub_url: 'https://hub.corp.example/'}").upstream.hub_url,
            "https://hub.corp.example/");
  EXPECT_EQ(refusal("upstream:\n  hub_url: ftp://huggingface.co\n"),
            "zoogate.yaml:2:12: 'upstream.hub_url' must be an https://HOST[:PORT] URL: the scheme must be "
            "https:// (in lower case): zoogate verifies its upstream, got 'ftp://huggingface.co'");
  EXPECT_THAT(refusal("upstream:\n  hub_url: http://127.0.0.1:5000\n"),
              HasSubstr("must be an https://HOST[:PORT] URL: the scheme must be https://"));
  EXPECT_THAT(refusal("upstream: {hub_url: 'https://huggingface.co/api'}"),
              HasSubstr("nothing may follow the host and port but '/', got 'https://huggingface.co/api'"));
  EXPECT_THAT(refusal("upstream: {hub_url: 'https://huggingface.co?x=1'}"), HasSubstr("nothing may follow"));
  EXPECT_THAT(refusal("upstream: {hub_url: 'https://huggingface.co#top'}"), HasSubstr("nothing may follow"));
  EXPECT_THAT(refusal("upstream: {hub_url: 'https://user:pw@huggingface.co'}"),
              HasSubstr("user names and passwords do not belong in the URL"));
  EXPECT_THAT(refusal("upstream: {hub_url: 'https://huggingface.co:0'}"),
              HasSubstr("the port must be a number from 1 to 65535"));
  EXPECT_THAT(refusal("upstream: {hub_url: 'https://huggingface.co:'}"),
              HasSubstr("the port must be a number from 1 to 65535"));
  for (std::string_view url : {"https://", "https://:443", "https://::1", "https://[::1", "https://hug_ging.co",
                               "https://-hf.co", "https://hf..co", "https://1.2.3", "HTTPS://hf.co", "hf.co"}) {
    EXPECT_THAT(refusal("upstream: {hub_url: '" + std::string(url) + "'}"),
                StartsWith("zoogate.yaml:1:21: 'upstream.hub_url' must be an https://HOST[:PORT] URL"))
        << url;
  }
  EXPECT_EQ(refusal("upstream: {hub_url: ''}"), "zoogate.yaml:1:21: 'upstream.hub_url' must be a non-empty string");
}

TEST(ServerConfig, PublicUrlIsEmptyOrAnOriginWithoutPath) {
  EXPECT_EQ(parse_ok("public_url: http://zoogate.corp").public_url, "http://zoogate.corp");
  EXPECT_EQ(parse_ok("public_url: 'http://10.0.0.5:8080'").public_url, "http://10.0.0.5:8080");
  EXPECT_EQ(refusal("public_url: https://zoogate.corp/"),
            "zoogate.yaml:1:13: 'public_url' must be \"\" or an http(s)://HOST[:PORT] URL: nothing may follow the "
            "host and port (not even '/'), got 'https://zoogate.corp/'");
  EXPECT_THAT(refusal("public_url: https://zoogate.corp/hub"), HasSubstr("nothing may follow"));
  EXPECT_THAT(refusal("public_url: zoogate.corp"), HasSubstr("the scheme must be"));
}

TEST(ServerConfig, RefusesBadTrustedProxies) {
  EXPECT_EQ(refusal("trusted_proxies: [10.0.0.5/8]"),
            "zoogate.yaml:1:19: bad address range '10.0.0.5/8': bits past the prefix length are set; the range is "
            "written 10.0.0.0/8, a single address without a prefix length");
  EXPECT_THAT(refusal("trusted_proxies: [10.0.0.0/33]"), HasSubstr("a number from 0 to 32"));
  EXPECT_THAT(refusal("trusted_proxies: ['fd00::/129']"), HasSubstr("a number from 0 to 128"));
  EXPECT_THAT(refusal("trusted_proxies: [10.0.0.0/]"), HasSubstr("a number from 0 to 32"));
  EXPECT_THAT(refusal("trusted_proxies: [10.0.0.0/-1]"), HasSubstr("a number from 0 to 32"));
  EXPECT_THAT(refusal("trusted_proxies: ['']"), HasSubstr("must be a non-empty string"));
  for (std::string_view bad : {"lb.corp", "'[::1]'", "10.0.0", "'10.0.0.1 '"}) {
    EXPECT_THAT(refusal("trusted_proxies: [" + std::string(bad) + "]"),
                HasSubstr("write an IPv4 or IPv6 address (without brackets)"))
        << bad;
  }
  EXPECT_EQ(refusal("trusted_proxies:\n  - 10.0.0.0/8\n  - 10.0.0.0/8\n"),
            "zoogate.yaml:3:5: '10.0.0.0/8' is listed twice (first at zoogate.yaml:2:5)");
  EXPECT_THAT(refusal("trusted_proxies: 10.0.0.0/8"), HasSubstr("must be a list"));
}

TEST(ServerConfig, TrustedUserHeaderIsEmptyOrAHeaderName) {
  EXPECT_EQ(parse_ok("trusted_user_header: ''").trusted_user_header, "");
  EXPECT_EQ(parse_ok("trusted_user_header: X-Auth-Request-User").trusted_user_header, "X-Auth-Request-User");
  EXPECT_EQ(refusal("trusted_user_header: 'X-User: alice'"),
            "zoogate.yaml:1:22: 'trusted_user_header' must be \"\" or a header name (letters, digits and "
            "!#$%&'*+-.^_`|~, at most 64), got 'X-User: alice'");
  EXPECT_THAT(refusal("trusted_user_header: " + std::string(65, 'X')), HasSubstr("at most 64"));
  EXPECT_THAT(refusal("trusted_user_header: [X-User]"), HasSubstr("trusted_user_header"));
}

TEST(AddressRange, ContainsTheAddressesOfItsPrefix) {
  auto contains = [](std::string_view range_text, std::string_view address_text) {
    auto range = AddressRange::parse(range_text);
    auto address = AddressRange::parse(address_text);  // a single address, as bytes
    EXPECT_TRUE(range && address) << range_text << " " << address_text;
    if (!range || !address) return false;
    return range->contains(std::span(address->network).first(address->ipv6 ? 16 : 4));
  };
  EXPECT_TRUE(contains("10.0.0.0/8", "10.255.1.2"));
  EXPECT_FALSE(contains("10.0.0.0/8", "11.0.0.0"));
  EXPECT_TRUE(contains("172.16.0.0/12", "172.31.255.255"));
  EXPECT_FALSE(contains("172.16.0.0/12", "172.32.0.0"));
  EXPECT_TRUE(contains("192.0.2.7", "192.0.2.7"));
  EXPECT_FALSE(contains("192.0.2.7", "192.0.2.6"));
  EXPECT_TRUE(contains("0.0.0.0/0", "203.0.113.9"));
  EXPECT_TRUE(contains("fd00::/8", "fdff::1"));
  EXPECT_FALSE(contains("fd00::/8", "fe00::1"));
  EXPECT_TRUE(contains("2001:db8::/127", "2001:db8::1"));
  EXPECT_FALSE(contains("2001:db8::/127", "2001:db8::2"));
  // The families never mix: an IPv4 range holds no IPv6 address, and the other way round.
  EXPECT_FALSE(contains("0.0.0.0/0", "::1"));
  EXPECT_FALSE(contains("::/0", "10.0.0.1"));
}

TEST(ServerConfig, RefusesBadHostPatterns) {
  EXPECT_EQ(refusal("upstream:\n  redirect_hosts: [hf.co, 'hf.*']\n"),
            "zoogate.yaml:2:27: bad host pattern 'hf.*': write a host name (hf.co), '*.' and a host name "
            "(*.hf.co), or an IP address without brackets (10.0.0.1, ::1)");
  EXPECT_EQ(refusal("upstream: {redirect_hosts: ['*']}"),
            "zoogate.yaml:1:29: bad host pattern '*': '*' (every host) is allowed only in egress rules");
  EXPECT_EQ(refusal("upstream: {redirect_hosts: ['*.']}"),
            "zoogate.yaml:1:29: bad host pattern '*.': '*.' must be followed by a host name, as in *.hf.co");
  EXPECT_EQ(refusal("upstream: {redirect_hosts: [hf.co, HF.co]}"),
            "zoogate.yaml:1:36: 'HF.co' is listed twice (first at zoogate.yaml:1:29)");
  for (std::string_view pattern : {"*.0.0.1", "**.hf.co", "a.*.hf.co", "[::1]", "hf.co.", "hf.co:443",
                                   "https://hf.co", "*hf.co", "h f.co"}) {
    EXPECT_THAT(refusal("egress: {allow_private_destinations: ['" + std::string(pattern) + "']}"),
                StartsWith("zoogate.yaml:1:39: bad host pattern"))
        << pattern;
  }
  EXPECT_THAT(refusal("egress: {allow_private_destinations: ['*']}"), HasSubstr("allowed only in egress rules"));
  EXPECT_EQ(refusal("upstream: {redirect_hosts: hf.co}"),
            "zoogate.yaml:1:28: 'upstream.redirect_hosts' must be a list, got 'hf.co'");
  EXPECT_TRUE(parse_ok("upstream: {redirect_hosts: []}").upstream.redirect_hosts.empty());
}

TEST(ServerConfig, RefusesBadEgressRules) {
  EXPECT_EQ(refusal("egress:\n  rules:\n    - action: tunnel\n"),
            "zoogate.yaml:3:7: missing required key 'hosts' in 'egress.rules[0]'");
  EXPECT_EQ(refusal("egress:\n  rules:\n    - hosts: [a.com]\n"),
            "zoogate.yaml:3:7: missing required key 'action' in 'egress.rules[0]'");
  EXPECT_EQ(refusal("egress:\n  rules:\n    - {hosts: [], action: deny}\n"),
            "zoogate.yaml:3:15: 'egress.rules[0].hosts' must list at least one host pattern");
  EXPECT_EQ(refusal("egress:\n  rules:\n    - {hosts: [a.com], ports: [], action: deny}\n"),
            "zoogate.yaml:3:31: 'egress.rules[0].ports' must list at least one port; leave it out to match any "
            "port");
  EXPECT_EQ(refusal("egress:\n  rules:\n    - {hosts: [a.com], ports: [443, 443], action: deny}\n"),
            "zoogate.yaml:3:37: port 443 is listed twice in 'egress.rules[0].ports'");
  EXPECT_EQ(refusal("egress:\n  rules:\n    - {hosts: [a.com], ports: [0], action: deny}\n"),
            "zoogate.yaml:3:32: 'egress.rules[0].ports[0]' must be an integer from 1 to 65535, got '0'");
  EXPECT_THAT(refusal("egress: {rules: [{hosts: [a.com], ports: [65536], action: deny}]}"),
              HasSubstr("from 1 to 65535, got '65536'"));
  EXPECT_EQ(refusal("egress:\n  rules:\n    - {hosts: [a.com], action: allow}\n"),
            "zoogate.yaml:3:32: 'egress.rules[0].action' must be one of intercept, tunnel, deny; got 'allow'");
  EXPECT_EQ(refusal("egress:\n  rules:\n    - {hosts: [a.com], action: deny}\n    - {hosts: ['*.', b], action: deny}\n"),
            "zoogate.yaml:4:16: bad host pattern '*.': '*.' must be followed by a host name, as in *.hf.co");
  EXPECT_EQ(refusal("egress: {rules: {hosts: [a.com]}}"),
            "zoogate.yaml:1:17: 'egress.rules' must be a list, got a mapping");
}

TEST(ServerConfig, InterceptionCaFilesComeTogether) {
  EXPECT_EQ(refusal("egress:\n  ca_cert: ca.pem\n"),
            "zoogate.yaml:2:12: 'egress.ca_cert' and 'egress.ca_key' are given together or not at all");
  EXPECT_EQ(refusal("egress:\n  ca_cert: ''\n  ca_key: ca.key\n"),
            "zoogate.yaml:3:11: 'egress.ca_cert' and 'egress.ca_key' are given together or not at all");
}

TEST(ServerConfig, RefusesBadProxyAuthentication) {
  EXPECT_EQ(refusal("egress:\n  auth:\n    realm: x\n"), "zoogate.yaml:3:5: missing required key 'users' in "
                                                         "'egress.auth'");
  EXPECT_EQ(refusal("egress:\n  auth:\n    users: {}\n"),
            "zoogate.yaml:3:12: 'egress.auth.users' must name at least one user; leave 'auth' out to run the "
            "proxy without authentication");
  EXPECT_EQ(refusal("egress:\n  auth:\n    users: [alice]\n"),
            "zoogate.yaml:3:12: 'egress.auth.users' must be a mapping, got a list");
  EXPECT_EQ(refusal("egress:\n  auth:\n    users:\n      'a:b': " + std::string(kAliceHash) + "\n"),
            "zoogate.yaml:4:14: bad user name 'a:b': 1 to 64 printable ASCII characters, no spaces and no ':'");
  EXPECT_THAT(refusal("egress: {auth: {users: {'a b': x}}}"), HasSubstr("bad user name 'a b'"));
  EXPECT_THAT(refusal("egress: {auth: {users: {'': x}}}"), HasSubstr("bad user name ''"));
  EXPECT_THAT(refusal("egress: {auth: {users: {" + std::string(65, 'u') + ": x}}}"), HasSubstr("bad user name"));
  EXPECT_EQ(refusal("egress: {auth: {users: {alice: ''}}}"),
            "zoogate.yaml:1:32: 'egress.auth.users.alice' must be a non-empty string");
  EXPECT_THAT(refusal("egress: {auth: {users: {alice: a, alice: b}}}"), HasSubstr("duplicate key 'alice'"));

  // A bad hash is named by its field, never echoed: configuration errors end up in logs.
  for (std::string_view hash :
       {"hunter2", "scrypt$32768$8$1$AAECAwQFBgcICQoLDA0ODw==", "bcrypt$32768$8$1$AAECAwQFBgcICQoLDA0ODw==$AAAA",
        "scrypt$1000$8$1$AAECAwQFBgcICQoLDA0ODw==$ZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1+f4CBgoM=",
        "scrypt$32768$8$1$not-base64$ZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1+f4CBgoM=",
        "scrypt$32768$8$1$AAECAwQFBgcICQoLDA0ODw==$AAAA"}) {
    std::string message = refusal("egress: {auth: {users: {alice: '" + std::string(hash) + "'}}}");
    EXPECT_THAT(message, StartsWith("zoogate.yaml:1:32: user 'alice': password hash: ")) << hash;
    EXPECT_THAT(message, HasSubstr("(make one with `zoogate passwd-hash`)"));
    EXPECT_THAT(message, Not(HasSubstr(std::string(hash)))) << hash;
  }
  EXPECT_EQ(refusal("egress: {auth: {realm: 'say \"hi\"', users: {alice: x}}}"),
            "zoogate.yaml:1:24: 'egress.auth.realm' must be at most 64 printable ASCII characters other than '\"' "
            "and '\\', got 'say \"hi\"'");
  EXPECT_THAT(refusal("egress: {auth: {realm: \"a\\tb\", users: {alice: x}}}"), HasSubstr("'egress.auth.realm' must"));
}

TEST(HostMatches, ExactAndWildcardPatterns) {
  EXPECT_TRUE(host_matches("hf.co", "hf.co"));
  EXPECT_TRUE(host_matches("hf.co", "HF.Co"));
  EXPECT_TRUE(host_matches("hf.co", "hf.co."));  // the same host written fully qualified
  EXPECT_FALSE(host_matches("hf.co", "hf.co.."));
  EXPECT_FALSE(host_matches("hf.co", "a.hf.co"));
  EXPECT_FALSE(host_matches("hf.co", "evilhf.co"));
  EXPECT_FALSE(host_matches("hf.co", "hf.com"));
  EXPECT_FALSE(host_matches("hf.co", ""));

  EXPECT_TRUE(host_matches("*.hf.co", "a.hf.co"));
  EXPECT_TRUE(host_matches("*.hf.co", "x.y.hf.co"));
  EXPECT_TRUE(host_matches("*.hf.co", "CDN.HF.CO."));
  EXPECT_FALSE(host_matches("*.hf.co", "hf.co"));
  EXPECT_FALSE(host_matches("*.hf.co", ".hf.co"));
  EXPECT_FALSE(host_matches("*.hf.co", "a..hf.co"));
  EXPECT_FALSE(host_matches("*.hf.co", "evilhf.co"));
  EXPECT_FALSE(host_matches("*.hf.co", "a.hf.co.evil.com"));
  EXPECT_FALSE(host_matches("*.hf.co", "hf.co.evil.com"));

  EXPECT_TRUE(host_matches("*", "anything.example"));
  EXPECT_TRUE(host_matches("*", "10.0.0.1"));
  EXPECT_FALSE(host_matches("*", ""));
  EXPECT_FALSE(host_matches("*", "."));

  EXPECT_TRUE(host_matches("10.0.0.1", "10.0.0.1"));
  EXPECT_FALSE(host_matches("10.0.0.1", "10.0.0.10"));
  EXPECT_TRUE(host_matches("::1", "::1"));
  EXPECT_TRUE(host_matches("fd00::a", "FD00::A"));
}

TEST(ListenAddress, PrintsIpv6InBrackets) {
  EXPECT_EQ((ListenAddress{"127.0.0.1", 8080}).to_string(), "127.0.0.1:8080");
  EXPECT_EQ((ListenAddress{"localhost", 0}).to_string(), "localhost:0");
  EXPECT_EQ((ListenAddress{"::1", 9090}).to_string(), "[::1]:9090");
}

TEST(ServerConfigToYaml, TheDefaultsReadBackToTheDefaults) {
  std::string yaml = server_config_to_yaml(default_server_config());
  EXPECT_EQ(parse_ok(yaml), default_server_config()) << yaml;
  // Every key is written out, so that the output documents the whole file.
  for (std::string_view key : {"listen:", "admin_listen:", "public_url:", "trusted_proxies:",
                               "trusted_user_header:", "io_threads:", "worker_threads:",
                               "hub_url:", "redirect_hosts:", "ca_bundle:", "connect_timeout:", "read_timeout:",
                               "retries:", "max_idle_connections:", "max_redirects:", "resolution_ttl:",
                               "max_resolutions:", "dir:", "max_size:", "spool_direct_io:",
                               "client_wait:", "retry_after:", "max_artifact_size:", "buffer_before_send:", "stream_piece_size:",
                               "layout_variation:", "secret_file:", "epoch:", "permute_weights:",
                               "signing_key_file:", "policy_file:", "max_request_header_bytes:",
                               "max_api_json_bytes:", "max_connections:", "client_idle_timeout:", "access_log:",
                               "egress:", "ca_cert:", "ca_key:", "leaf_lifetime:", "leaf_cache_size:", "rules:",
                               "- hosts:", "ports:", "action:", "allow_private_destinations:", "# auth:"}) {
    EXPECT_THAT(yaml, HasSubstr(key));
  }
}

TEST(ServerConfigToYaml, AnyConfigReadsBackToItself) {
  ServerConfig every_key = parse_ok(kEveryKey);
  EXPECT_EQ(parse_ok(server_config_to_yaml(every_key)), every_key) << server_config_to_yaml(every_key);

  ServerConfig odd = default_server_config();
  odd.cache.dir = "dir with \"quotes\", a # and a\\backslash";
  odd.logging.access_log = "caf\xc3\xa9.log";
  odd.egress.rules.clear();
  odd.upstream.read_timeout = milliseconds(1500);
  odd.pipeline.max_artifact_size = 1025;
  EXPECT_EQ(parse_ok(server_config_to_yaml(odd)), odd) << server_config_to_yaml(odd);
}

class LoadServerConfig : public ::testing::Test {
 protected:
  const TemporaryFolder folder_;
};

TEST_F(LoadServerConfig, ResolvesARelativePolicyFileAgainstTheConfigFolder) {
  auto relative = load_server_config(folder_.write("etc/zoogate.yaml", "policy_file: policies/policy.yaml\n"));
  ASSERT_TRUE(relative) << relative.error().message;
  EXPECT_EQ(relative->policy_file, folder_.file("etc/policies/policy.yaml"));

  auto absolute = load_server_config(folder_.write("etc/absolute.yaml", "policy_file: /srv/policy.yaml\n"));
  ASSERT_TRUE(absolute) << absolute.error().message;
  EXPECT_EQ(absolute->policy_file, "/srv/policy.yaml");

  // Only policy_file travels with the configuration file; other paths follow the working directory.
  auto others = load_server_config(folder_.write("etc/others.yaml", "cache: {dir: cache}\nupstream: {ca_bundle: ca.pem}\n"));
  ASSERT_TRUE(others) << others.error().message;
  EXPECT_EQ(others->policy_file, "");
  EXPECT_EQ(others->cache.dir, "cache");
  EXPECT_EQ(others->upstream.ca_bundle, "ca.pem");
}

TEST_F(LoadServerConfig, ErrorsNameTheFile) {
  std::string path = folder_.write("etc/bad.yaml", "io_threads: 1\nio_thread: 2\n");
  auto config = load_server_config(path);
  ASSERT_FALSE(config);
  EXPECT_THAT(config.error().message, StartsWith(path + ":2:1: unknown key 'io_thread'"));

  auto missing = load_server_config(folder_.file("missing.yaml"));
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code, ErrorCode::kIo);
  EXPECT_THAT(missing.error().message, HasSubstr("missing.yaml"));
}

}  // namespace
}  // namespace zoogate::config
