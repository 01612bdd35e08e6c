#include "config/server_config.h"

#include <arpa/inet.h>

#include <algorithm>
#include <array>
#include <filesystem>
#include <functional>
#include <limits>
#include <span>

#include <yaml-cpp/yaml.h>

#include "common/http_syntax.h"
#include "common/password_hash.h"
#include "config/yaml_reader.h"

namespace zoogate::config {
namespace {

using std::chrono::milliseconds;
using namespace std::chrono_literals;

constexpr uint64_t kKiB = 1ull << 10;
constexpr uint64_t kMiB = 1ull << 20;
constexpr uint64_t kGiB = 1ull << 30;
constexpr uint64_t kTiB = 1ull << 40;
// Larger than any disk or file zoogate will meet; bounds sizes only against typos.
constexpr uint64_t kMaxStorageBytes = 1024 * kTiB;

constexpr std::array<std::string_view, 15> kTopLevelKeys = {
    "listen", "admin_listen", "public_url", "trusted_proxies", "trusted_user_header", "io_threads",
    "worker_threads", "upstream", "cache", "pipeline", "mtd", "policy_file", "limits", "logging", "egress"};
constexpr std::array<std::string_view, 10> kUpstreamKeys = {
    "hub_url", "redirect_hosts", "ca_bundle", "connect_timeout", "read_timeout", "retries",
    "max_idle_connections", "max_redirects", "resolution_ttl", "max_resolutions"};
constexpr std::array<std::string_view, 3> kCacheKeys = {"dir", "max_size", "spool_direct_io"};
constexpr std::array<std::string_view, 5> kPipelineKeys = {"client_wait", "retry_after", "max_artifact_size",
                                                           "buffer_before_send", "stream_piece_size"};
constexpr std::array<std::string_view, 5> kMtdKeys = {"layout_variation", "secret_file", "epoch",
                                                      "permute_weights", "signing_key_file"};
constexpr std::array<std::string_view, 4> kLimitsKeys = {"max_request_header_bytes", "max_api_json_bytes",
                                                         "max_connections", "client_idle_timeout"};
constexpr std::array<std::string_view, 1> kLoggingKeys = {"access_log"};
constexpr std::array<std::string_view, 8> kEgressKeys = {
    "listen", "ca_cert", "ca_key", "leaf_lifetime", "leaf_cache_size", "rules", "allow_private_destinations",
    "auth"};
constexpr std::array<std::string_view, 3> kEgressRuleKeys = {"hosts", "ports", "action"};
constexpr std::array<std::string_view, 2> kAuthKeys = {"realm", "users"};

// In enumerator order: to_string(EgressAction) indexes it.
constexpr std::array<EnumChoice<EgressAction>, 3> kEgressActions = {{
    {"intercept", EgressAction::kIntercept},
    {"tunnel", EgressAction::kTunnel},
    {"deny", EgressAction::kDeny},
}};
static_assert([] {
  for (size_t i = 0; i < kEgressActions.size(); ++i) {
    if (static_cast<size_t>(kEgressActions[i].value) != i) return false;
  }
  return true;
}());

std::string quoted_path(const YamlNode& node) { return "'" + node.path() + "'"; }

char lower_ascii(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

bool equal_ignoring_case(std::string_view a, std::string_view b) {
  return a.size() == b.size() &&
         std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) { return lower_ascii(x) == lower_ascii(y); });
}

// ---- Hosts, addresses and URLs ----

// inet_pton() reads a C string: a NUL inside `text` would hide what follows it.
bool is_ipv4_literal(std::string_view text) {
  in_addr address{};
  return text.find('\0') == std::string_view::npos && inet_pton(AF_INET, std::string(text).c_str(), &address) == 1;
}

bool is_ipv6_literal(std::string_view text) {
  in6_addr address{};
  return text.find('\0') == std::string_view::npos && inet_pton(AF_INET6, std::string(text).c_str(), &address) == 1;
}

// A DNS name: dot-separated labels of 1 to 63 ASCII letters, digits and '-' (not first or last), at most
// 253 characters, and a last label that is not all digits, so that no name can pass for an IPv4
// address ("*.0.0.1" would otherwise match 127.0.0.1).
bool is_host_name(std::string_view text) {
  if (text.empty() || text.size() > 253) return false;
  std::string_view last_label;
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = std::min(text.find('.', start), text.size());
    std::string_view label = text.substr(start, end - start);
    bool well_formed = !label.empty() && label.size() <= 63 && label.front() != '-' && label.back() != '-' &&
                       std::all_of(label.begin(), label.end(), [](char c) {
                         return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                                c == '-';
                       });
    if (!well_formed) return false;
    last_label = label;
    start = end + 1;
  }
  return !std::all_of(last_label.begin(), last_label.end(), [](char c) { return c >= '0' && c <= '9'; });
}

std::optional<uint16_t> parse_port(std::string_view text) {
  auto port = parse_decimal(text);
  if (!port || *port > std::numeric_limits<uint16_t>::max()) return std::nullopt;
  return static_cast<uint16_t>(*port);
}

struct HostAndPort {
  std::string host;                 // IPv6 literals without their brackets
  bool bracketed = false;           // the host was written "[...]"
  std::optional<std::string> port;  // the text after ':', unchecked
};

// Splits "host", "host:port", "[v6]" or "[v6]:port". A bare host ends at its first ':', so an IPv6
// literal without brackets (whose last group could not be told from a port) never reads as a host.
std::optional<HostAndPort> split_host_port(std::string_view authority) {
  HostAndPort parts;
  std::string_view after_host;
  if (authority.starts_with('[')) {
    size_t close = authority.find(']');
    if (close == std::string_view::npos) return std::nullopt;
    parts.host = std::string(authority.substr(1, close - 1));
    parts.bracketed = true;
    after_host = authority.substr(close + 1);
  } else {
    size_t colon = authority.find(':');
    parts.host = std::string(authority.substr(0, colon));
    if (colon != std::string_view::npos) after_host = authority.substr(colon);
  }
  if (!after_host.empty()) {
    if (after_host.front() != ':') return std::nullopt;
    parts.port = std::string(after_host.substr(1));
  }
  return parts;
}

// Whether a bracketed or bare host of an authority is an IPv6 literal in brackets, an IPv4 literal or
// a host name.
bool is_url_host(const HostAndPort& parts) {
  return parts.bracketed ? is_ipv6_literal(parts.host) : is_ipv4_literal(parts.host) || is_host_name(parts.host);
}

Result<ListenAddress> parse_listen_address(const YamlNode& node, std::string_view text) {
  auto refuse = [&](std::string_view why) {
    return fail(node.error(quoted_path(node) +
                           " must be HOST:PORT with HOST an IP address or localhost (IPv6 in brackets, as in "
                           "[::1]:8080) and PORT from 0 to 65535; " +
                           std::string(why) + ", got " + quote_for_message(text)));
  };
  auto parts = split_host_port(text);
  if (!parts) return refuse("the address is malformed");
  if (!parts->port) return refuse("the port is missing");
  auto port = parse_port(*parts->port);
  if (!port) return refuse("the port is not a number from 0 to 65535");
  bool host_ok = parts->bracketed ? is_ipv6_literal(parts->host)
                                  : is_ipv4_literal(parts->host) || parts->host == "localhost";
  // Listeners bind to addresses, and a name other than localhost could resolve to anything.
  if (!host_ok) return refuse("the host is not an IP address or localhost");
  return ListenAddress{std::move(parts->host), *port};
}

Result<ListenAddress> read_listen_address(const YamlNode& node) {
  auto text = node.as_string();
  if (!text) return fail(std::move(text.error()));
  return parse_listen_address(node, *text);
}

// "" (off) or a listen address.
Result<std::optional<ListenAddress>> read_optional_listen_address(const YamlNode& node) {
  auto text = node.as_string_or_empty();
  if (!text) return fail(std::move(text.error()));
  if (text->empty()) return std::optional<ListenAddress>();
  auto address = parse_listen_address(node, *text);
  if (!address) return fail(std::move(address.error()));
  return std::optional<ListenAddress>(std::move(*address));
}

enum class UrlSchemes { kHttpsOnly, kHttpOrHttps };

// Why `url` is not "SCHEME://HOST[:PORT]" followed by nothing (or by "/" when `root_path_allowed`),
// or nullopt when it is.
std::optional<std::string> url_problem(std::string_view url, bool root_path_allowed, UrlSchemes schemes) {
  std::optional<std::string_view> after_scheme;
  for (std::string_view scheme : {"https://", "http://"}) {
    if (url.starts_with(scheme)) after_scheme = url.substr(scheme.size());
  }
  if (schemes == UrlSchemes::kHttpsOnly) {
    if (!url.starts_with("https://")) return "the scheme must be https:// (in lower case): zoogate verifies its upstream";
  } else if (!after_scheme) {
    return "the scheme must be https:// or http:// (in lower case)";
  }
  std::string_view rest = *after_scheme;
  size_t authority_end = std::min(rest.find_first_of("/?#"), rest.size());
  std::string_view authority = rest.substr(0, authority_end);
  std::string_view tail = rest.substr(authority_end);
  if (authority.find('@') != std::string_view::npos) return "user names and passwords do not belong in the URL";
  auto parts = split_host_port(authority);
  if (!parts || !is_url_host(*parts)) {
    return "the host must be a host name, an IPv4 address or an IPv6 address in brackets";
  }
  if (parts->port) {
    auto port = parse_port(*parts->port);
    if (!port || *port == 0) return "the port must be a number from 1 to 65535";
  }
  if (tail.empty() || (root_path_allowed && tail == "/")) return std::nullopt;
  return root_path_allowed ? "nothing may follow the host and port but '/'"
                           : "nothing may follow the host and port (not even '/')";
}

Result<std::string> read_hub_url(const YamlNode& node) {
  auto url = node.as_string();
  if (!url) return fail(std::move(url.error()));
  if (auto problem = url_problem(*url, /*root_path_allowed=*/true, UrlSchemes::kHttpsOnly)) {
    return fail(node.error(quoted_path(node) + " must be an https://HOST[:PORT] URL: " + *problem + ", got " +
                           quote_for_message(*url)));
  }
  return url;
}

Result<std::string> read_public_url(const YamlNode& node) {
  auto url = node.as_string_or_empty();
  if (!url) return fail(std::move(url.error()));
  if (url->empty()) return url;
  if (auto problem = url_problem(*url, /*root_path_allowed=*/false, UrlSchemes::kHttpOrHttps)) {
    return fail(node.error(quoted_path(node) + " must be \"\" or an http(s)://HOST[:PORT] URL: " + *problem +
                           ", got " + quote_for_message(*url)));
  }
  return url;
}

enum class MatchAll { kRefused, kAllowed };

// Why `pattern` is not a host pattern host_matches() understands, or nullopt when it is.
std::optional<std::string> host_pattern_problem(std::string_view pattern, MatchAll match_all) {
  if (pattern == "*") {
    if (match_all == MatchAll::kAllowed) return std::nullopt;
    return "'*' (every host) is allowed only in egress rules";
  }
  if (pattern.starts_with("*.")) {
    if (is_host_name(pattern.substr(2))) return std::nullopt;
    return "'*.' must be followed by a host name, as in *.hf.co";
  }
  if (is_host_name(pattern) || is_ipv4_literal(pattern) || is_ipv6_literal(pattern)) return std::nullopt;
  return "write a host name (hf.co), '*.' and a host name (*.hf.co), or an IP address without brackets "
         "(10.0.0.1, ::1)";
}

// A list of host patterns, none given twice (ignoring case); an empty list only when `empty_allowed`.
Result<std::vector<std::string>> read_host_patterns(const YamlNode& node, MatchAll match_all, bool empty_allowed) {
  std::vector<std::pair<std::string, std::string>> seen;  // pattern -> where it was first listed
  auto patterns = node.as_list<std::string>([&](const YamlNode& item) -> Result<std::string> {
    auto pattern = item.as_string();
    if (!pattern) return fail(std::move(pattern.error()));
    if (auto problem = host_pattern_problem(*pattern, match_all)) {
      return fail(item.error("bad host pattern " + quote_for_message(*pattern) + ": " + *problem));
    }
    auto previous = std::find_if(seen.begin(), seen.end(),
                                 [&](const auto& entry) { return equal_ignoring_case(entry.first, *pattern); });
    if (previous != seen.end()) {
      return fail(item.error(quote_for_message(*pattern) + " is listed twice (first at " + previous->second + ")"));
    }
    seen.emplace_back(*pattern, item.location());
    return pattern;
  });
  if (!patterns) return fail(std::move(patterns.error()));
  if (patterns->empty() && !empty_allowed) {
    return fail(node.error(quoted_path(node) + " must list at least one host pattern"));
  }
  return patterns;
}

// "" or an HTTP header field name (RFC 9110 token characters), at most 64 of them.
Result<std::string> read_header_name(const YamlNode& node) {
  constexpr size_t kMaxHeaderNameLength = 64;
  auto name = node.as_string_or_empty();
  if (!name) return fail(std::move(name.error()));
  if (name->size() > kMaxHeaderNameLength || !std::all_of(name->begin(), name->end(), is_token_char)) {
    return fail(node.error(quoted_path(node) + " must be \"\" or a header name (letters, digits and " +
                           "!#$%&'*+-.^_`|~, at most " + std::to_string(kMaxHeaderNameLength) + "), got " +
                           quote_for_message(*name)));
  }
  return name;
}

// A list of address ranges, none given twice.
Result<std::vector<AddressRange>> read_address_ranges(const YamlNode& node) {
  std::vector<std::pair<AddressRange, std::string>> seen;  // range -> where it was first listed
  return node.as_list<AddressRange>([&](const YamlNode& item) -> Result<AddressRange> {
    auto text = item.as_string();
    if (!text) return fail(std::move(text.error()));
    auto range = AddressRange::parse(*text);
    if (!range) return fail(item.error("bad address range " + quote_for_message(*text) + ": " + range.error().message));
    auto previous = std::find_if(seen.begin(), seen.end(), [&](const auto& entry) { return entry.first == *range; });
    if (previous != seen.end()) {
      return fail(item.error(quote_for_message(*text) + " is listed twice (first at " + previous->second + ")"));
    }
    seen.emplace_back(*range, item.location());
    return range;
  });
}

// ---- Generic readers ----

// Reads the value of `key` with `read` (a YamlNode -> Result<V> callable or member function) into
// `target` when the section gives the key, and leaves the default in `target` otherwise. Every reader
// range-checks its value, so the conversion to T keeps it intact.
template <typename T, typename Read>
Status read_key(const YamlMapping& section, std::string_view key, T& target, Read&& read) {
  auto node = section.find(key);
  if (!node) return {};
  auto value = std::invoke(read, *node);
  if (!value) return fail(std::move(value.error()));
  target = static_cast<T>(std::move(*value));
  return {};
}

// The allowed values of a key, in one place for the reader (a YamlNode -> Result callable) and for the
// comments of server_config_to_yaml().
struct CountRange {
  uint64_t min;
  uint64_t max;
  Result<uint64_t> operator()(const YamlNode& node) const { return node.as_unsigned(min, max); }
  std::string text() const { return std::to_string(min) + ".." + std::to_string(max); }
};

struct ByteRange {
  uint64_t min;
  uint64_t max;
  Result<uint64_t> operator()(const YamlNode& node) const { return node.as_byte_size(min, max); }
  std::string text() const { return format_byte_size(min) + ".." + format_byte_size(max); }
};

struct DurationRange {
  milliseconds min;
  milliseconds max;
  Result<milliseconds> operator()(const YamlNode& node) const { return node.as_duration(min, max); }
  std::string text() const { return format_duration(min) + ".." + format_duration(max); }
};

constexpr CountRange kIoThreads{1, 64};
constexpr CountRange kWorkerThreads{0, 256};
constexpr DurationRange kConnectTimeout{100ms, 5min};
constexpr DurationRange kReadTimeout{1s, 1h};
constexpr CountRange kRetries{0, 10};
constexpr CountRange kMaxIdleConnections{0, 1024};
constexpr CountRange kMaxRedirects{0, 20};
constexpr DurationRange kResolutionTtl{0ms, 1h};
constexpr CountRange kMaxResolutions{1, 1'000'000};
constexpr ByteRange kCacheMaxSize{kMiB, kMaxStorageBytes};
constexpr DurationRange kClientWait{0ms, 1h};
constexpr DurationRange kRetryAfter{1s, 1h};  // Retry-After is sent in whole seconds
constexpr ByteRange kMaxArtifactSize{kKiB, kMaxStorageBytes};
constexpr ByteRange kBufferBeforeSend{0, kGiB};
constexpr ByteRange kStreamPieceSize{16 * kKiB, 16 * kMiB};
constexpr CountRange kEpoch{0, std::numeric_limits<uint64_t>::max()};
constexpr ByteRange kMaxRequestHeaderBytes{kKiB, kMiB};
constexpr ByteRange kMaxApiJsonBytes{kKiB, kGiB};
constexpr CountRange kMaxConnections{1, 1'000'000};
constexpr DurationRange kClientIdleTimeout{1s, 1h};
constexpr DurationRange kLeafLifetime{1min, 720h};  // 30 days
constexpr CountRange kLeafCacheSize{1, 100'000};

// Reads the mapping under `key` of `parent`, if given, with `read_section(mapping, target)`.
template <typename Section, typename ReadSection>
Status read_section(const YamlMapping& parent, std::string_view key, std::span<const std::string_view> keys,
                    Section& target, ReadSection&& read_section_keys) {
  auto node = parent.find(key);
  if (!node) return {};
  auto section = node->as_mapping(keys);
  if (!section) return fail(std::move(section.error()));
  return read_section_keys(*section, target);
}

// ---- Sections ----

Status read_upstream(const YamlMapping& section, UpstreamConfig& upstream) {
  ZG_TRY(read_key(section, "hub_url", upstream.hub_url, read_hub_url));
  ZG_TRY(read_key(section, "redirect_hosts", upstream.redirect_hosts, [](const YamlNode& node) {
    return read_host_patterns(node, MatchAll::kRefused, /*empty_allowed=*/true);
  }));
  ZG_TRY(read_key(section, "ca_bundle", upstream.ca_bundle, &YamlNode::as_string_or_empty));
  ZG_TRY(read_key(section, "connect_timeout", upstream.connect_timeout, kConnectTimeout));
  ZG_TRY(read_key(section, "read_timeout", upstream.read_timeout, kReadTimeout));
  ZG_TRY(read_key(section, "retries", upstream.retries, kRetries));
  ZG_TRY(read_key(section, "max_idle_connections", upstream.max_idle_connections, kMaxIdleConnections));
  ZG_TRY(read_key(section, "max_redirects", upstream.max_redirects, kMaxRedirects));
  ZG_TRY(read_key(section, "resolution_ttl", upstream.resolution_ttl, kResolutionTtl));
  ZG_TRY(read_key(section, "max_resolutions", upstream.max_resolutions, kMaxResolutions));
  return {};
}

Status read_cache(const YamlMapping& section, CacheConfig& cache) {
  ZG_TRY(read_key(section, "dir", cache.dir, &YamlNode::as_string));
  ZG_TRY(read_key(section, "max_size", cache.max_size, kCacheMaxSize));
  ZG_TRY(read_key(section, "spool_direct_io", cache.spool_direct_io, &YamlNode::as_bool));
  return {};
}

Status read_pipeline(const YamlMapping& section, PipelineConfig& pipeline) {
  ZG_TRY(read_key(section, "client_wait", pipeline.client_wait, kClientWait));
  ZG_TRY(read_key(section, "retry_after", pipeline.retry_after, kRetryAfter));
  ZG_TRY(read_key(section, "max_artifact_size", pipeline.max_artifact_size, kMaxArtifactSize));
  ZG_TRY(read_key(section, "buffer_before_send", pipeline.buffer_before_send, kBufferBeforeSend));
  ZG_TRY(read_key(section, "stream_piece_size", pipeline.stream_piece_size, kStreamPieceSize));
  return {};
}

Status read_mtd(const YamlMapping& section, MtdConfig& mtd) {
  ZG_TRY(read_key(section, "layout_variation", mtd.layout_variation, &YamlNode::as_bool));
  ZG_TRY(read_key(section, "secret_file", mtd.secret_file, &YamlNode::as_string_or_empty));
  ZG_TRY(read_key(section, "epoch", mtd.epoch, kEpoch));
  ZG_TRY(read_key(section, "permute_weights", mtd.permute_weights, &YamlNode::as_bool));
  ZG_TRY(read_key(section, "signing_key_file", mtd.signing_key_file, &YamlNode::as_string_or_empty));
  return {};
}

Status read_limits(const YamlMapping& section, ServerLimits& limits) {
  ZG_TRY(read_key(section, "max_request_header_bytes", limits.max_request_header_bytes, kMaxRequestHeaderBytes));
  ZG_TRY(read_key(section, "max_api_json_bytes", limits.max_api_json_bytes, kMaxApiJsonBytes));
  ZG_TRY(read_key(section, "max_connections", limits.max_connections, kMaxConnections));
  ZG_TRY(read_key(section, "client_idle_timeout", limits.client_idle_timeout, kClientIdleTimeout));
  return {};
}

Status read_logging(const YamlMapping& section, LoggingConfig& logging) {
  return read_key(section, "access_log", logging.access_log, &YamlNode::as_string);
}

Result<std::vector<uint16_t>> read_ports(const YamlNode& node) {
  std::vector<uint16_t> ports;
  auto items = node.as_sequence();
  if (!items) return fail(std::move(items.error()));
  for (const YamlNode& item : *items) {
    auto port = item.as_unsigned(1, std::numeric_limits<uint16_t>::max());
    if (!port) return fail(std::move(port.error()));
    if (std::find(ports.begin(), ports.end(), *port) != ports.end()) {
      return fail(item.error("port " + std::to_string(*port) + " is listed twice in " + quoted_path(node)));
    }
    ports.push_back(static_cast<uint16_t>(*port));
  }
  if (ports.empty()) {
    return fail(node.error(quoted_path(node) + " must list at least one port; leave it out to match any port"));
  }
  return ports;
}

Result<EgressRule> read_egress_rule(const YamlNode& node) {
  auto section = node.as_mapping(kEgressRuleKeys);
  if (!section) return fail(std::move(section.error()));
  EgressRule rule;
  auto hosts = section->require("hosts");
  if (!hosts) return fail(std::move(hosts.error()));
  auto patterns = read_host_patterns(*hosts, MatchAll::kAllowed, /*empty_allowed=*/false);
  if (!patterns) return fail(std::move(patterns.error()));
  rule.hosts = std::move(*patterns);
  ZG_TRY(read_key(*section, "ports", rule.ports, read_ports));
  auto action = section->require("action");
  if (!action) return fail(std::move(action.error()));
  auto chosen = action->as_enum<EgressAction>(kEgressActions);
  if (!chosen) return fail(std::move(chosen.error()));
  rule.action = *chosen;
  return rule;
}

bool is_visible_ascii(char c) { return c > 0x20 && c < 0x7f; }

// Goes into `Proxy-Authenticate: Basic realm="..."`, so it must not end the quoted string.
Result<std::string> read_realm(const YamlNode& node) {
  constexpr size_t kMaxRealmLength = 64;
  auto realm = node.as_string();
  if (!realm) return fail(std::move(realm.error()));
  bool well_formed = realm->size() <= kMaxRealmLength && std::all_of(realm->begin(), realm->end(), [](char c) {
                       return (is_visible_ascii(c) || c == ' ') && c != '"' && c != '\\';
                     });
  if (!well_formed) {
    return fail(node.error(quoted_path(node) + " must be at most " + std::to_string(kMaxRealmLength) +
                           " printable ASCII characters other than '\"' and '\\', got " + quote_for_message(*realm)));
  }
  return realm;
}

Result<std::vector<std::pair<std::string, std::string>>> read_users(const YamlNode& node) {
  auto users = node.as_open_mapping();
  if (!users) return fail(std::move(users.error()));
  std::vector<std::pair<std::string, std::string>> entries;
  for (const auto& [name, hash_node] : users->entries()) {
    if (!is_user_name(name)) {
      return fail(hash_node.error("bad user name " + quote_for_message(name) +
                                  ": 1 to 64 printable ASCII characters, no spaces and no ':'"));
    }
    auto hash = hash_node.as_string();
    if (!hash) return fail(std::move(hash.error()));
    // Its message names the faulty field, never the hash: configuration errors end up in logs.
    if (auto parsed = parse_password_hash(*hash); !parsed) {
      return fail(hash_node.error("user " + quote_for_message(name) + ": " + parsed.error().message +
                                  " (make one with `zoogate passwd-hash`)"));
    }
    entries.emplace_back(name, std::move(*hash));
  }
  if (entries.empty()) {
    return fail(node.error(quoted_path(node) +
                           " must name at least one user; leave 'auth' out to run the proxy without authentication"));
  }
  return entries;
}

Result<ProxyAuthConfig> read_auth(const YamlNode& node) {
  auto section = node.as_mapping(kAuthKeys);
  if (!section) return fail(std::move(section.error()));
  ProxyAuthConfig auth;
  ZG_TRY(read_key(*section, "realm", auth.realm, read_realm));
  auto users = section->require("users");
  if (!users) return fail(std::move(users.error()));
  auto entries = read_users(*users);
  if (!entries) return fail(std::move(entries.error()));
  auth.users = std::move(*entries);
  return auth;
}

Status read_egress(const YamlMapping& section, EgressConfig& egress) {
  ZG_TRY(read_key(section, "listen", egress.listen, read_optional_listen_address));
  ZG_TRY(read_key(section, "ca_cert", egress.ca_cert, &YamlNode::as_string_or_empty));
  ZG_TRY(read_key(section, "ca_key", egress.ca_key, &YamlNode::as_string_or_empty));
  // A certificate with some other key (or the reverse) cannot sign anything.
  if (egress.ca_cert.empty() != egress.ca_key.empty()) {
    auto given = section.find(egress.ca_cert.empty() ? "ca_key" : "ca_cert");
    return fail(given->error("'egress.ca_cert' and 'egress.ca_key' are given together or not at all"));
  }
  ZG_TRY(read_key(section, "leaf_lifetime", egress.leaf_lifetime, kLeafLifetime));
  ZG_TRY(read_key(section, "leaf_cache_size", egress.leaf_cache_size, kLeafCacheSize));
  ZG_TRY(read_key(section, "rules", egress.rules,
                  [](const YamlNode& node) { return node.as_list<EgressRule>(read_egress_rule); }));
  ZG_TRY(read_key(section, "allow_private_destinations", egress.allow_private_destinations,
                  [](const YamlNode& node) {
                    return read_host_patterns(node, MatchAll::kRefused, /*empty_allowed=*/true);
                  }));
  ZG_TRY(read_key(section, "auth", egress.auth, read_auth));
  return {};
}

// ---- Checks across keys ----

struct Listener {
  std::string_view key;
  std::optional<ListenAddress> address;
  std::optional<YamlNode> node;  // where the file gives it; nullopt for a default
};

// Two listeners on one port collide when they bind the same address, or when either binds every
// address (0.0.0.0 and :: overlap each other too: Linux sockets are dual-stack).
bool listeners_collide(const ListenAddress& a, const ListenAddress& b) {
  if (a.port == 0 || a.port != b.port) return false;
  auto canonical = [](const std::string& host) { return host == "localhost" ? std::string("127.0.0.1") : host; };
  auto is_any = [](const std::string& host) { return host == "0.0.0.0" || host == "::"; };
  return canonical(a.host) == canonical(b.host) || is_any(a.host) || is_any(b.host);
}

Status check_listeners_apart(const std::array<Listener, 3>& listeners) {
  for (size_t later = 1; later < listeners.size(); ++later) {
    for (size_t earlier = 0; earlier < later; ++earlier) {
      const Listener& a = listeners[earlier];
      const Listener& b = listeners[later];
      if (!a.address || !b.address || !listeners_collide(*a.address, *b.address)) continue;
      // Defaults never collide with each other, so at least one of the two is in the file.
      const Listener& reported = b.node ? b : a;
      const Listener& other = b.node ? a : b;
      std::string other_origin = other.node ? "given at " + other.node->location() : "its default";
      return fail(reported.node->error("'" + std::string(reported.key) + "' (" + reported.address->to_string() +
                                       ") and '" + std::string(other.key) + "' (" + other.address->to_string() +
                                       ", " + other_origin + ") would listen on the same port"));
    }
  }
  return {};
}

// ---- Writing YAML ----

std::string yaml_quoted(std::string_view text) {
  YAML::Emitter out;
  out << YAML::DoubleQuoted << std::string(text);
  return out.c_str();
}

std::string yaml_flow_list(const std::vector<std::string>& items) {
  std::string text = "[";
  for (size_t i = 0; i < items.size(); ++i) {
    if (i > 0) text += ", ";
    text += yaml_quoted(items[i]);
  }
  return text + "]";
}

// Writes "key: value", with the comment aligned after it.
class YamlWriter {
 public:
  void line(int indent, std::string_view key, std::string_view value, std::string_view comment = {}) {
    std::string entry(static_cast<size_t>(indent), ' ');
    entry += key;
    entry += ":";
    if (!value.empty()) entry += " " + std::string(value);
    if (!comment.empty()) {
      constexpr size_t kCommentColumn = 36;
      entry.resize(std::max(entry.size() + 2, kCommentColumn), ' ');
      entry += "# " + std::string(comment);
    }
    text_ += entry + "\n";
  }
  void comment(int indent, std::string_view comment) {
    text_ += std::string(static_cast<size_t>(indent), ' ') + "# " + std::string(comment) + "\n";
  }
  void raw(std::string_view text) { text_ += text; }
  std::string take() { return std::move(text_); }

 private:
  std::string text_;
};

}  // namespace

std::string ListenAddress::to_string() const {
  bool is_ipv6 = host.find(':') != std::string::npos;
  return (is_ipv6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

std::string_view to_string(EgressAction action) { return kEgressActions[static_cast<size_t>(action)].name; }

bool host_matches(std::string_view pattern, std::string_view host) {
  if (host.ends_with('.')) host.remove_suffix(1);
  if (host.empty()) return false;
  if (pattern == "*") return true;
  if (pattern.starts_with("*.")) {
    std::string_view suffix = pattern.substr(1);  // ".hf.co"
    if (host.size() <= suffix.size()) return false;
    size_t prefix_size = host.size() - suffix.size();
    // "a..hf.co" has an empty label where the wildcard stands: no host name.
    return equal_ignoring_case(host.substr(prefix_size), suffix) && host[prefix_size - 1] != '.';
  }
  return equal_ignoring_case(pattern, host);
}

Result<AddressRange> AddressRange::parse(std::string_view text) {
  const size_t slash = text.find('/');
  const std::string address_text(text.substr(0, slash));
  AddressRange range;
  if (is_ipv4_literal(address_text)) {
    inet_pton(AF_INET, address_text.c_str(), range.network.data());
  } else if (is_ipv6_literal(address_text)) {
    range.ipv6 = true;
    inet_pton(AF_INET6, address_text.c_str(), range.network.data());
  } else {
    return fail(ErrorCode::kInvalidArgument,
                "write an IPv4 or IPv6 address (without brackets), alone or with a prefix length, as in "
                "10.0.0.0/8 or fd00::/8");
  }
  const unsigned bits = range.ipv6 ? 128 : 32;
  range.prefix_length = bits;
  if (slash != std::string_view::npos) {
    auto prefix = parse_decimal(text.substr(slash + 1));
    if (!prefix || *prefix > bits) {
      return fail(ErrorCode::kInvalidArgument, "the prefix length must be a number from 0 to " + std::to_string(bits));
    }
    range.prefix_length = static_cast<unsigned>(*prefix);
  }
  AddressRange masked = range;
  for (unsigned bit = range.prefix_length; bit < bits; ++bit) masked.network[bit / 8] &= ~(0x80u >> (bit % 8)) & 0xffu;
  if (masked.network != range.network) {
    return fail(ErrorCode::kInvalidArgument, "bits past the prefix length are set; the range is written " +
                                                 masked.to_string() + ", a single address without a prefix length");
  }
  return range;
}

bool AddressRange::contains(std::span<const uint8_t> address) const {
  if (address.size() != (ipv6 ? 16u : 4u)) return false;
  for (unsigned bit = 0; bit < prefix_length; ++bit) {
    const unsigned mask = 0x80u >> (bit % 8);
    if ((address[bit / 8] & mask) != (network[bit / 8] & mask)) return false;
  }
  return true;
}

std::string AddressRange::to_string() const {
  char text[INET6_ADDRSTRLEN] = {};
  inet_ntop(ipv6 ? AF_INET6 : AF_INET, network.data(), text, sizeof text);
  return std::string(text) + "/" + std::to_string(prefix_length);
}

bool is_user_name(std::string_view name) {
  constexpr size_t kMaxUserNameLength = 64;
  return !name.empty() && name.size() <= kMaxUserNameLength &&
         std::all_of(name.begin(), name.end(), [](char c) { return is_visible_ascii(c) && c != ':'; });
}

ServerConfig default_server_config() { return ServerConfig{}; }

Result<ServerConfig> parse_server_config(std::string_view yaml_text, std::string_view file_name_for_errors) {
  auto root = parse_yaml(yaml_text, file_name_for_errors);
  if (!root) return fail(std::move(root.error()));
  auto top = root->as_mapping(kTopLevelKeys);
  if (!top) return fail(std::move(top.error()));

  ServerConfig config;
  ZG_TRY(read_key(*top, "listen", config.listen, read_listen_address));
  ZG_TRY(read_key(*top, "admin_listen", config.admin_listen, read_listen_address));
  ZG_TRY(read_key(*top, "public_url", config.public_url, read_public_url));
  ZG_TRY(read_key(*top, "trusted_proxies", config.trusted_proxies, read_address_ranges));
  ZG_TRY(read_key(*top, "trusted_user_header", config.trusted_user_header, read_header_name));
  ZG_TRY(read_key(*top, "io_threads", config.io_threads, kIoThreads));
  ZG_TRY(read_key(*top, "worker_threads", config.worker_threads, kWorkerThreads));
  ZG_TRY(read_section(*top, "upstream", kUpstreamKeys, config.upstream, read_upstream));
  ZG_TRY(read_section(*top, "cache", kCacheKeys, config.cache, read_cache));
  ZG_TRY(read_section(*top, "pipeline", kPipelineKeys, config.pipeline, read_pipeline));
  ZG_TRY(read_section(*top, "mtd", kMtdKeys, config.mtd, read_mtd));
  ZG_TRY(read_key(*top, "policy_file", config.policy_file, &YamlNode::as_string_or_empty));
  ZG_TRY(read_section(*top, "limits", kLimitsKeys, config.limits, read_limits));
  ZG_TRY(read_section(*top, "logging", kLoggingKeys, config.logging, read_logging));
  std::optional<YamlNode> egress_listen;  // kept for the check below
  if (auto egress_node = top->find("egress")) {
    auto egress = egress_node->as_mapping(kEgressKeys);
    if (!egress) return fail(std::move(egress.error()));
    ZG_TRY(read_egress(*egress, config.egress));
    egress_listen = egress->find("listen");
  }
  ZG_TRY(check_listeners_apart({{
      {"listen", config.listen, top->find("listen")},
      {"admin_listen", config.admin_listen, top->find("admin_listen")},
      {"egress.listen", config.egress.listen, egress_listen},
  }}));
  return config;
}

Result<ServerConfig> load_server_config(const std::string& path) {
  auto text = read_config_file(path);
  if (!text) return fail(std::move(text.error()));
  auto config = parse_server_config(*text, path);
  if (!config) return fail(std::move(config.error()));
  std::filesystem::path policy_file(config->policy_file);
  if (!config->policy_file.empty() && policy_file.is_relative()) {
    config->policy_file = (std::filesystem::path(path).parent_path() / policy_file).string();
  }
  return config;
}

std::string server_config_to_yaml(const ServerConfig& config) {
  auto duration = [](milliseconds value) { return format_duration(value); };
  auto bytes = [](uint64_t value) { return format_byte_size(value); };
  auto boolean = [](bool value) { return std::string(value ? "true" : "false"); };
  auto number = [](uint64_t value) { return std::to_string(value); };

  YamlWriter out;
  out.comment(0, "zoogate server configuration (docs/configuration.md). Every key is optional.");
  out.line(0, "listen", yaml_quoted(config.listen.to_string()), "Hub endpoint (HF_ENDPOINT); port 0 = any free port");
  out.line(0, "admin_listen", yaml_quoted(config.admin_listen.to_string()), "/metrics /healthz /readyz /admin/prefetch");
  out.line(0, "public_url", yaml_quoted(config.public_url), "\"\" = http://<Host header>");
  std::vector<std::string> trusted_proxies;
  for (const AddressRange& range : config.trusted_proxies) trusted_proxies.push_back(range.to_string());
  out.line(0, "trusted_proxies", yaml_flow_list(trusted_proxies), "load balancers whose X-Forwarded-For counts");
  out.line(0, "trusted_user_header", yaml_quoted(config.trusted_user_header), "\"\" = none; their authenticated user");
  out.line(0, "io_threads", number(config.io_threads), kIoThreads.text());
  out.line(0, "worker_threads", number(config.worker_threads), kWorkerThreads.text() + "; 0 = hardware concurrency");

  const UpstreamConfig& upstream = config.upstream;
  out.line(0, "upstream", "");
  out.line(2, "hub_url", yaml_quoted(upstream.hub_url));
  out.line(2, "redirect_hosts", yaml_flow_list(upstream.redirect_hosts), "hosts whose redirects are followed");
  out.line(2, "ca_bundle", yaml_quoted(upstream.ca_bundle), "extra PEM CAs; \"\" = system trust only");
  out.line(2, "connect_timeout", duration(upstream.connect_timeout), kConnectTimeout.text());
  out.line(2, "read_timeout", duration(upstream.read_timeout), kReadTimeout.text() + ", per read");
  out.line(2, "retries", number(upstream.retries), kRetries.text());
  out.line(2, "max_idle_connections", number(upstream.max_idle_connections), kMaxIdleConnections.text() + " per host and I/O thread");
  out.line(2, "max_redirects", number(upstream.max_redirects), kMaxRedirects.text());
  out.line(2, "resolution_ttl", duration(upstream.resolution_ttl), kResolutionTtl.text() + "; 0ms = ask every time");
  out.line(2, "max_resolutions", number(upstream.max_resolutions), kMaxResolutions.text());

  out.line(0, "cache", "");
  out.line(2, "dir", yaml_quoted(config.cache.dir), "relative to the working directory");
  out.line(2, "max_size", bytes(config.cache.max_size), kCacheMaxSize.text());
  out.line(2, "spool_direct_io", boolean(config.cache.spool_direct_io));

  const PipelineConfig& pipeline = config.pipeline;
  out.line(0, "pipeline", "");
  out.line(2, "client_wait", duration(pipeline.client_wait), kClientWait.text() + ", then 503 + Retry-After");
  out.line(2, "retry_after", duration(pipeline.retry_after), kRetryAfter.text());
  out.line(2, "max_artifact_size", bytes(pipeline.max_artifact_size), kMaxArtifactSize.text());
  out.line(2, "buffer_before_send", bytes(pipeline.buffer_before_send), kBufferBeforeSend.text());
  out.line(2, "stream_piece_size", bytes(pipeline.stream_piece_size), kStreamPieceSize.text());

  const MtdConfig& mtd = config.mtd;
  out.line(0, "mtd", "");
  out.line(2, "layout_variation", boolean(mtd.layout_variation));
  out.line(2, "secret_file", yaml_quoted(mtd.secret_file), "\"\" = <cache.dir>/mtd-secret");
  out.line(2, "epoch", number(mtd.epoch));
  out.line(2, "permute_weights", boolean(mtd.permute_weights));
  out.line(2, "signing_key_file", yaml_quoted(mtd.signing_key_file), "\"\" = <cache.dir>/signing-key.pem");

  out.line(0, "policy_file", yaml_quoted(config.policy_file), "\"\" = built-in; relative to this file");

  const ServerLimits& limits = config.limits;
  out.line(0, "limits", "");
  out.line(2, "max_request_header_bytes", bytes(limits.max_request_header_bytes), kMaxRequestHeaderBytes.text());
  out.line(2, "max_api_json_bytes", bytes(limits.max_api_json_bytes), kMaxApiJsonBytes.text());
  out.line(2, "max_connections", number(limits.max_connections), kMaxConnections.text());
  out.line(2, "client_idle_timeout", duration(limits.client_idle_timeout), kClientIdleTimeout.text());

  out.line(0, "logging", "");
  out.line(2, "access_log", yaml_quoted(config.logging.access_log), "\"-\" = stderr, else a file");

  const EgressConfig& egress = config.egress;
  out.line(0, "egress", "", "the forward proxy");
  out.line(2, "listen", yaml_quoted(egress.listen ? egress.listen->to_string() : ""), "\"\" = off");
  out.line(2, "ca_cert", yaml_quoted(egress.ca_cert), "\"\" = <cache.dir>/ca/ca.pem");
  out.line(2, "ca_key", yaml_quoted(egress.ca_key), "\"\" = <cache.dir>/ca/ca.key");
  out.line(2, "leaf_lifetime", duration(egress.leaf_lifetime), kLeafLifetime.text());
  out.line(2, "leaf_cache_size", number(egress.leaf_cache_size), kLeafCacheSize.text());
  if (egress.rules.empty()) {
    out.line(2, "rules", "[]", "no rules: every destination is denied");
  } else {
    out.line(2, "rules", "", "first match wins; no match = deny");
    for (const EgressRule& rule : egress.rules) {
      out.raw("    - hosts: " + yaml_flow_list(rule.hosts) + "\n");
      if (!rule.ports.empty()) {
        std::string ports;
        for (uint16_t port : rule.ports) ports += (ports.empty() ? "" : ", ") + std::to_string(port);
        out.line(6, "ports", "[" + ports + "]", "no ports key = any port");
      }
      out.line(6, "action", std::string(to_string(rule.action)), "intercept | tunnel | deny");
    }
  }
  out.line(2, "allow_private_destinations", yaml_flow_list(egress.allow_private_destinations));
  if (egress.auth) {
    out.line(2, "auth", "");
    out.line(4, "realm", yaml_quoted(egress.auth->realm));
    out.line(4, "users", "");
    for (const auto& [name, hash] : egress.auth->users) out.line(6, yaml_quoted(name), yaml_quoted(hash));
  } else {
    out.comment(2, "auth: {realm: \"zoogate\", users: {NAME: \"scrypt$N$r$p$SALT$HASH\"}}   (absent = no proxy "
                   "authentication)");
  }
  return out.take();
}

}  // namespace zoogate::config
