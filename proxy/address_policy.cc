#include "proxy/address_policy.h"

#include <algorithm>
#include <array>
#include <cstdint>

#include "config/server_config.h"

namespace zoogate::proxy {
namespace {

using boost::asio::ip::address;
using boost::asio::ip::address_v4;
using boost::asio::ip::address_v6;

struct Ipv4Range {
  uint32_t network;
  unsigned prefix_length;
  AddressClass kind;
  std::string_view text;
};

constexpr uint32_t ipv4(uint32_t a, uint32_t b, uint32_t c, uint32_t d) { return a << 24 | b << 16 | c << 8 | d; }

// IANA's IPv4 special-purpose registry (RFC 6890 and its updates) plus the metadata services of the
// large clouds. The first matching row wins, so single addresses come before the ranges holding them.
constexpr std::array kIpv4Ranges = {
    // AWS, GCP, Azure, OpenStack, Oracle, DigitalOcean, ... instance metadata.
    Ipv4Range{ipv4(169, 254, 169, 254), 32, AddressClass::kCloudMetadata, "169.254.169.254/32"},
    // AWS ECS task metadata and credentials.
    Ipv4Range{ipv4(169, 254, 170, 2), 32, AddressClass::kCloudMetadata, "169.254.170.2/32"},
    // AWS EKS Pod Identity agent.
    Ipv4Range{ipv4(169, 254, 170, 23), 32, AddressClass::kCloudMetadata, "169.254.170.23/32"},
    // Alibaba Cloud instance metadata.
    Ipv4Range{ipv4(100, 100, 100, 200), 32, AddressClass::kCloudMetadata, "100.100.100.200/32"},
    // Oracle Cloud legacy instance metadata.
    Ipv4Range{ipv4(192, 0, 0, 192), 32, AddressClass::kCloudMetadata, "192.0.0.192/32"},
    // Azure WireServer: a public-looking address that serves the VM's platform configuration.
    Ipv4Range{ipv4(168, 63, 129, 16), 32, AddressClass::kCloudMetadata, "168.63.129.16/32"},
    Ipv4Range{ipv4(255, 255, 255, 255), 32, AddressClass::kBroadcast, "255.255.255.255/32"},
    Ipv4Range{ipv4(0, 0, 0, 0), 8, AddressClass::kUnspecified, "0.0.0.0/8"},
    Ipv4Range{ipv4(10, 0, 0, 0), 8, AddressClass::kPrivate, "10.0.0.0/8"},
    Ipv4Range{ipv4(100, 64, 0, 0), 10, AddressClass::kPrivate, "100.64.0.0/10"},
    Ipv4Range{ipv4(127, 0, 0, 0), 8, AddressClass::kLoopback, "127.0.0.0/8"},
    Ipv4Range{ipv4(169, 254, 0, 0), 16, AddressClass::kLinkLocal, "169.254.0.0/16"},
    Ipv4Range{ipv4(172, 16, 0, 0), 12, AddressClass::kPrivate, "172.16.0.0/12"},
    Ipv4Range{ipv4(192, 0, 0, 0), 24, AddressClass::kReserved, "192.0.0.0/24"},
    Ipv4Range{ipv4(192, 0, 2, 0), 24, AddressClass::kDocumentation, "192.0.2.0/24"},
    Ipv4Range{ipv4(192, 88, 99, 0), 24, AddressClass::kReserved, "192.88.99.0/24"},
    Ipv4Range{ipv4(192, 168, 0, 0), 16, AddressClass::kPrivate, "192.168.0.0/16"},
    Ipv4Range{ipv4(198, 18, 0, 0), 15, AddressClass::kReserved, "198.18.0.0/15"},
    Ipv4Range{ipv4(198, 51, 100, 0), 24, AddressClass::kDocumentation, "198.51.100.0/24"},
    Ipv4Range{ipv4(203, 0, 113, 0), 24, AddressClass::kDocumentation, "203.0.113.0/24"},
    Ipv4Range{ipv4(224, 0, 0, 0), 4, AddressClass::kMulticast, "224.0.0.0/4"},
    Ipv4Range{ipv4(240, 0, 0, 0), 4, AddressClass::kReserved, "240.0.0.0/4"},
};

using Ipv6Groups = std::array<uint16_t, 8>;  // the eight 16-bit groups of the address text

struct Ipv6Range {
  Ipv6Groups network;
  unsigned prefix_length;
  AddressClass kind;
  std::string_view text;
};

// IANA's IPv6 special-purpose registry, for the parts of it that are not IPv4 carriers (those are
// in kIpv4Carriers). Only 2000::/3 is allocated for global unicast, so any address outside it that
// no row names is reserved.
constexpr std::array kIpv6Ranges = {
    Ipv6Range{{0, 0, 0, 0, 0, 0, 0, 0}, 128, AddressClass::kUnspecified, "::/128"},
    Ipv6Range{{0, 0, 0, 0, 0, 0, 0, 1}, 128, AddressClass::kLoopback, "::1/128"},
    // AWS instance metadata and EKS Pod Identity over IPv6; GCP metadata for IPv6-only instances.
    Ipv6Range{{0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x254}, 128, AddressClass::kCloudMetadata, "fd00:ec2::254/128"},
    Ipv6Range{{0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x23}, 128, AddressClass::kCloudMetadata, "fd00:ec2::23/128"},
    Ipv6Range{{0xfd20, 0x00ce, 0, 0, 0, 0, 0, 0x254}, 128, AddressClass::kCloudMetadata, "fd20:ce::254/128"},
    Ipv6Range{{0x2001, 0x0db8, 0, 0, 0, 0, 0, 0}, 32, AddressClass::kDocumentation, "2001:db8::/32"},
    Ipv6Range{{0x3fff, 0, 0, 0, 0, 0, 0, 0}, 20, AddressClass::kDocumentation, "3fff::/20"},
    // IETF protocol assignments, among them Teredo (2001::/32), whose obfuscated IPv4 client address
    // no legitimate model server uses.
    Ipv6Range{{0x2001, 0, 0, 0, 0, 0, 0, 0}, 23, AddressClass::kReserved, "2001::/23"},
    Ipv6Range{{0xfc00, 0, 0, 0, 0, 0, 0, 0}, 7, AddressClass::kPrivate, "fc00::/7"},
    Ipv6Range{{0xfe80, 0, 0, 0, 0, 0, 0, 0}, 10, AddressClass::kLinkLocal, "fe80::/10"},
    Ipv6Range{{0xfec0, 0, 0, 0, 0, 0, 0, 0}, 10, AddressClass::kPrivate, "fec0::/10"},  // deprecated site-local
    Ipv6Range{{0xff00, 0, 0, 0, 0, 0, 0, 0}, 8, AddressClass::kMulticast, "ff00::/8"},
};

// IPv6 forms that carry an IPv4 address: the 96-bit prefix forms keep it in the last four bytes,
// 6to4 in bytes 2 to 5.
struct Ipv4Carrier {
  Ipv6Groups network;
  unsigned prefix_length;
  size_t ipv4_offset;  // where the IPv4 address starts, in bytes
  std::string_view text;
};

constexpr std::array kIpv4Carriers = {
    Ipv4Carrier{{0, 0, 0, 0, 0, 0xffff, 0, 0}, 96, 12, "IPv4-mapped ::ffff:0:0/96"},
    Ipv4Carrier{{0, 0, 0, 0, 0xffff, 0, 0, 0}, 96, 12, "IPv4-translated ::ffff:0:0:0/96"},
    Ipv4Carrier{{0x64, 0xff9b, 0, 0, 0, 0, 0, 0}, 96, 12, "NAT64 64:ff9b::/96"},
    Ipv4Carrier{{0x2002, 0, 0, 0, 0, 0, 0, 0}, 16, 2, "6to4 2002::/16"},
    // Deprecated IPv4-compatible addresses; :: and ::1 are matched before (kIpv6Ranges comes first).
    Ipv4Carrier{{0, 0, 0, 0, 0, 0, 0, 0}, 96, 12, "IPv4-compatible ::/96"},
};

bool in_range(uint32_t value, const Ipv4Range& range) {
  if (range.prefix_length == 0) return true;
  const uint32_t mask = ~uint32_t{0} << (32 - range.prefix_length);
  return (value & mask) == (range.network & mask);
}

bool in_prefix(const address_v6::bytes_type& bytes, const Ipv6Groups& network, unsigned prefix_length) {
  for (unsigned bit = 0; bit < prefix_length; bit += 16) {
    const size_t group = bit / 16;
    const auto value = static_cast<uint16_t>(bytes[2 * group] << 8 | bytes[2 * group + 1]);
    const unsigned bits_in_group = std::min(16u, prefix_length - bit);
    const auto mask = static_cast<uint16_t>(0xffffu << (16 - bits_in_group));
    if ((value & mask) != (network[group] & mask)) return false;
  }
  return true;
}

AddressClassification classify_ipv4(const address_v4& ipv4_address) {
  const uint32_t value = ipv4_address.to_uint();
  for (const Ipv4Range& range : kIpv4Ranges) {
    if (in_range(value, range)) return {range.kind, range.text, {}, {}};
  }
  return {};
}

AddressClassification classify_ipv6(const address_v6& ipv6_address) {
  const address_v6::bytes_type bytes = ipv6_address.to_bytes();
  for (const Ipv6Range& range : kIpv6Ranges) {
    if (in_prefix(bytes, range.network, range.prefix_length)) return {range.kind, range.text, {}, {}};
  }
  for (const Ipv4Carrier& carrier : kIpv4Carriers) {
    if (!in_prefix(bytes, carrier.network, carrier.prefix_length)) continue;
    const size_t at = carrier.ipv4_offset;
    const address_v4 carried(address_v4::bytes_type{bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]});
    AddressClassification classification = classify_ipv4(carried);
    classification.embedding = carrier.text;
    classification.embedded_ipv4 = carried;
    return classification;
  }
  if ((bytes[0] & 0xe0) != 0x20) return {AddressClass::kReserved, "outside global unicast 2000::/3", {}, {}};
  return {};
}

// Lowercase, without the brackets of an IPv6 literal and without the trailing dot of a fully
// qualified name, so that "HF.co.", "hf.co" and "[::1]", "::1" compare equal.
std::string normalized_host(std::string_view host) {
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  if (!host.empty() && host.back() == '.') host.remove_suffix(1);
  std::string normalized(host);
  std::transform(normalized.begin(), normalized.end(), normalized.begin(),
                 [](char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; });
  return normalized;
}

}  // namespace

std::string_view to_string(AddressClass address_class) {
  switch (address_class) {
    case AddressClass::kPublic:
      return "public";
    case AddressClass::kUnspecified:
      return "unspecified";
    case AddressClass::kLoopback:
      return "loopback";
    case AddressClass::kPrivate:
      return "private";
    case AddressClass::kLinkLocal:
      return "link-local";
    case AddressClass::kCloudMetadata:
      return "cloud-metadata";
    case AddressClass::kMulticast:
      return "multicast";
    case AddressClass::kBroadcast:
      return "broadcast";
    case AddressClass::kDocumentation:
      return "documentation";
    case AddressClass::kReserved:
      return "reserved";
  }
  return "unknown";
}

AddressClassification classify_address(const address& destination) {
  return destination.is_v4() ? classify_ipv4(destination.to_v4()) : classify_ipv6(destination.to_v6());
}

bool is_public(const address& destination) { return classify_address(destination).kind == AddressClass::kPublic; }

std::string describe_address(const address& destination) {
  const AddressClassification classification = classify_address(destination);
  std::string text = destination.to_string() + " is ";
  text += classification.kind == AddressClass::kUnspecified ? "an " : "a ";
  text += to_string(classification.kind);
  text += " address";
  if (!classification.range.empty()) {
    text += " (";
    text += classification.range;
    if (classification.embedded_ipv4) {
      text += ", carried as " + classification.embedded_ipv4->to_string() + " in ";
      text += classification.embedding;
    }
    text += ")";
  }
  return text;
}

DestinationCheck::DestinationCheck(std::vector<std::string> non_public_host_patterns)
    : non_public_host_patterns_(std::move(non_public_host_patterns)) {
  for (std::string& pattern : non_public_host_patterns_) pattern = normalized_host(pattern);
}

bool DestinationCheck::host_may_be_non_public(std::string_view host) const {
  const std::string normalized = normalized_host(host);
  return std::any_of(non_public_host_patterns_.begin(), non_public_host_patterns_.end(),
                     [&](const std::string& pattern) { return config::host_matches(pattern, normalized); });
}

DestinationVerdict DestinationCheck::check(std::string_view host, const address& connected) const {
  const AddressClass kind = classify_address(connected).kind;
  switch (kind) {
    case AddressClass::kPublic:
      return {true, kind, ""};
    case AddressClass::kUnspecified:
    case AddressClass::kMulticast:
    case AddressClass::kBroadcast:
    case AddressClass::kCloudMetadata:
      return {false, kind, describe_address(connected) + "; zoogate never connects there"};
    case AddressClass::kLoopback:
    case AddressClass::kPrivate:
    case AddressClass::kLinkLocal:
    case AddressClass::kDocumentation:
    case AddressClass::kReserved:
      break;
  }
  if (host_may_be_non_public(host)) return {true, kind, ""};
  return {false, kind,
          std::string(host) + " resolved to " + describe_address(connected) +
              ", and the configuration does not allow non-public destinations for that host"};
}

}  // namespace zoogate::proxy
