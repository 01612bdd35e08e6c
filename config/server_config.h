// The server configuration of `zoogate serve`: one YAML file, every key optional, so that zoogate runs
// with no file at all. docs/configuration.md documents every key, its default and its range;
// `zoogate config defaults` prints the defaults as a file to start from.
//
//   listen: "127.0.0.1:8080"
//   upstream: {hub_url: "https://huggingface.co", connect_timeout: 10s}
//   cache: {dir: /var/cache/zoogate, max_size: 500GiB}
//   egress:
//     listen: "127.0.0.1:3128"
//     rules: [{hosts: ["huggingface.co", "*.huggingface.co"], ports: [443], action: intercept}]
//
// Files are read through config/yaml_reader.h: unknown keys, keys given twice and values of the wrong
// type or out of range are errors whose message starts with "FILE:LINE:COLUMN: ".
//
// Paths are kept as written, with one exception: a relative `policy_file` names a file next to the
// configuration file (the two are written, checked and deployed together), so load_server_config()
// resolves it against the configuration file's folder. Every other relative path (cache.dir, the
// files in mtd and egress, upstream.ca_bundle, logging.access_log) is relative to the working
// directory of the process. Empty paths that stand for a file in the cache folder stay empty; the
// server resolves them.
//
// A ServerConfig is a plain value; it may be copied and shared between threads once loaded.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/error.h"

namespace zoogate::config {

// Where a listener binds: an IP address literal (IPv6 without its brackets) or "localhost", which
// stands for 127.0.0.1. Port 0 lets the operating system pick a free port.
struct ListenAddress {
  std::string host;
  uint16_t port = 0;

  // "127.0.0.1:8080", "[::1]:8080": the form the configuration file uses.
  std::string to_string() const;
  bool operator==(const ListenAddress&) const = default;
};

struct UpstreamConfig {
  std::string hub_url = "https://huggingface.co";  // scheme and authority, no path beyond "/"
  // Host patterns (see host_matches) that zoogate follows redirects of the Hub to.
  std::vector<std::string> redirect_hosts = {"huggingface.co", "*.huggingface.co", "hf.co", "*.hf.co"};
  std::string ca_bundle;  // extra PEM bundle trusted on top of the system's store; "" for none
  std::chrono::milliseconds connect_timeout{10'000};
  std::chrono::milliseconds read_timeout{60'000};  // the longest wait for any single read
  unsigned retries = 2;                              // idempotent requests, after a connection failure
  unsigned max_idle_connections = 32;                // keep-alive pool size per host and I/O thread
  unsigned max_redirects = 5;
  // How long the Hub's answer naming a file (commit, digest, size, where its bytes are) is reused for
  // the same file, revision and credentials; zero asks the Hub every time.
  std::chrono::milliseconds resolution_ttl{10'000};
  unsigned max_resolutions = 10'000;  // answers kept at once
  bool operator==(const UpstreamConfig&) const = default;
};

struct CacheConfig {
  std::string dir = "zoogate-cache";
  uint64_t max_size = 50ull << 30;
  // Downloads into the spool bypass the page cache (O_DIRECT); see proxy/spool_file.h.
  bool spool_direct_io = false;
  bool operator==(const CacheConfig&) const = default;
};

struct PipelineConfig {
  // A client waiting longer than client_wait for a cold artifact gets 503 with Retry-After: retry_after.
  std::chrono::milliseconds client_wait{60'000};
  std::chrono::milliseconds retry_after{10'000};
  uint64_t max_artifact_size = 64ull << 30;
  // Pass-through files up to this size are verified before the first byte is sent.
  uint64_t buffer_before_send = 8ull << 20;
  // Larger ones stream in pieces of this size; three are in memory per download.
  uint64_t stream_piece_size = 512ull << 10;
  bool operator==(const PipelineConfig&) const = default;
};

struct MtdConfig {
  bool layout_variation = true;
  std::string secret_file;  // "" = <cache.dir>/mtd-secret, created on first start
  uint64_t epoch = 0;
  bool permute_weights = false;
  std::string signing_key_file;  // "" = <cache.dir>/signing-key.pem, created on first start
  bool operator==(const MtdConfig&) const = default;
};

struct ServerLimits {
  uint64_t max_request_header_bytes = 16ull << 10;
  uint64_t max_api_json_bytes = 64ull << 20;
  unsigned max_connections = 4096;
  std::chrono::milliseconds client_idle_timeout{60'000};
  bool operator==(const ServerLimits&) const = default;
};

struct LoggingConfig {
  std::string access_log = "-";  // "-" = stderr, else a file (JSON lines)
  bool operator==(const LoggingConfig&) const = default;
};

// What the forward proxy does with a connection to a destination (DESIGN.md section 6).
enum class EgressAction {
  kIntercept,  // terminate TLS with a leaf certificate for the name and serve through the Hub router
  kTunnel,     // relay the bytes blindly
  kDeny,
};

std::string_view to_string(EgressAction action);  // "intercept", "tunnel", "deny"

struct EgressRule {
  std::vector<std::string> hosts;  // host patterns (see host_matches); "*" matches every host
  std::vector<uint16_t> ports;     // empty: any port
  EgressAction action = EgressAction::kDeny;
  bool operator==(const EgressRule&) const = default;
};

struct ProxyAuthConfig {
  std::string realm = "zoogate";
  // User name -> password hash "scrypt$N$r$p$<base64 salt>$<base64 hash>", in file order. Loading
  // checks each hash with parse_password_hash() (common/password_hash.h): shape and parameter bounds.
  std::vector<std::pair<std::string, std::string>> users;
  bool operator==(const ProxyAuthConfig&) const = default;
};

struct EgressConfig {
  std::optional<ListenAddress> listen;  // nullopt: the forward proxy is off
  std::string ca_cert;  // PEM of the interception CA; "" = <cache.dir>/ca/ca.pem (`zoogate ca init`)
  std::string ca_key;   // its private key; "" = <cache.dir>/ca/ca.key. Given together with ca_cert.
  std::chrono::milliseconds leaf_lifetime{24 * 3'600'000};
  uint64_t leaf_cache_size = 1000;
  // In order; the first rule whose hosts and ports match decides. No match: denied.
  std::vector<EgressRule> rules = {
      {{"huggingface.co", "hf.co", "*.huggingface.co", "*.hf.co"}, {443}, EgressAction::kIntercept}};
  // Host patterns whose connections may reach loopback, private or link-local addresses.
  std::vector<std::string> allow_private_destinations;
  std::optional<ProxyAuthConfig> auth;  // nullopt: no proxy authentication
  bool operator==(const EgressConfig&) const = default;
};

// A range of IP addresses: "10.0.0.0/8", "fd00::/8", or one address ("10.0.0.5", a /32 or /128).
struct AddressRange {
  bool ipv6 = false;
  std::array<uint8_t, 16> network{};  // network byte order; an IPv4 network in the first 4 bytes
  unsigned prefix_length = 0;         // 0..32 for IPv4, 0..128 for IPv6

  // Parses "ADDRESS" or "ADDRESS/PREFIX" (IPv6 without brackets). Bits past the prefix must be zero,
  // so that "10.0.0.5/8" (meant as 10.0.0.5 or as 10.0.0.0/8?) is refused rather than guessed at.
  // kInvalidArgument says why.
  static Result<AddressRange> parse(std::string_view text);
  // `address` is 4 bytes (IPv4) or 16 (IPv6), network byte order; an address of the other family is
  // never contained (callers give IPv4-mapped IPv6 addresses as IPv4).
  bool contains(std::span<const uint8_t> address) const;
  std::string to_string() const;  // as parse() reads it: "10.0.0.0/8", "::1/128"
  bool operator==(const AddressRange&) const = default;
};

struct ServerConfig {
  ListenAddress listen{"127.0.0.1", 8080};        // the Hub endpoint (HF_ENDPOINT)
  ListenAddress admin_listen{"127.0.0.1", 9090};  // /metrics /healthz /readyz /admin/prefetch
  std::string public_url;  // "http(s)://host[:port]" clients reach zoogate at; "" = from the Host header
  // Reverse proxies (load balancers) in front of the Hub endpoint whose X-Forwarded-For zoogate
  // believes: for their requests the client is the address they forwarded for. Empty: none.
  std::vector<AddressRange> trusted_proxies;
  // A request header in which trusted proxies name the user they authenticated (an authenticating
  // proxy's X-Forwarded-User); that user is then the request's MTD scope. "": none.
  std::string trusted_user_header;
  unsigned io_threads = 2;
  unsigned worker_threads = 0;  // 0 = hardware concurrency
  UpstreamConfig upstream;
  CacheConfig cache;
  PipelineConfig pipeline;
  MtdConfig mtd;
  std::string policy_file;  // the CDR policy (docs/policy.md); "" = the built-in policy
  ServerLimits limits;
  LoggingConfig logging;
  EgressConfig egress;
  bool operator==(const ServerConfig&) const = default;
};

ServerConfig default_server_config();

// Parses a configuration file's text; keys left out keep their defaults. Paths stay as written.
// Every error is kInvalidArgument with a message that starts with "<file_name_for_errors>:LINE:COLUMN: ".
Result<ServerConfig> parse_server_config(std::string_view yaml_text, std::string_view file_name_for_errors);

// Reads and parses the file at `path` (kIo when it cannot be read) and resolves a relative
// policy_file against the folder of `path`.
Result<ServerConfig> load_server_config(const std::string& path);

// `config` as a configuration file, with a comment on every key; parse_server_config() reads it back
// to an equal ServerConfig.
std::string server_config_to_yaml(const ServerConfig& config);

// Whether `host` (a name or IP literal without brackets, as a client or a redirect gave it) matches a
// pattern of the configuration, ignoring ASCII case and one trailing dot of `host`:
//   "hf.co" matches exactly "hf.co";
//   "*.hf.co" matches "a.hf.co" and "x.y.hf.co", not "hf.co";
//   "*" matches every non-empty host (allowed only in egress rules).
bool host_matches(std::string_view pattern, std::string_view host);

// Whether `name` can name a user (egress proxy users, users a trusted proxy forwards): 1 to 64
// printable ASCII characters, no spaces and no ':' (Basic credentials split at the first ':').
bool is_user_name(std::string_view name);

}  // namespace zoogate::config
