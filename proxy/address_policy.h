// Which network destinations the egress proxy may talk to (DESIGN.md section 6).
//
// A forward proxy that connects wherever a client asks becomes a door into the network it runs in:
// a client names "metadata.internal" or a host whose DNS answer is 10.0.0.5, 127.0.0.1 or
// 169.254.169.254, and the proxy fetches the cloud credentials or the admin page for it. So every
// connection is checked against the address it actually reached (not the name, not an earlier DNS
// answer: DNS can change between two look-ups), and again on every redirect.
//
// IPv6 forms that carry an IPv4 address (IPv4-mapped ::ffff:a.b.c.d, IPv4-translated
// ::ffff:0:a.b.c.d, IPv4-compatible ::a.b.c.d, NAT64 64:ff9b::a.b.c.d, 6to4 2002:aabb:ccdd::) are
// classified by the IPv4 address they carry, since that is where the packets end up.
//
// Everything here is a pure function of its arguments (DestinationCheck is immutable after
// construction) and safe to call from any thread.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <boost/asio/ip/address.hpp>

namespace zoogate::proxy {

enum class AddressClass {
  kPublic,         // globally routable unicast
  kUnspecified,    // 0.0.0.0/8 ("this network"; connecting to it reaches the local host), ::
  kLoopback,       // 127.0.0.0/8, ::1
  kPrivate,        // RFC 1918, 100.64.0.0/10 (carrier-grade NAT), fc00::/7 (unique local), fec0::/10
  kLinkLocal,      // 169.254.0.0/16, fe80::/10
  kCloudMetadata,  // instance metadata services (169.254.169.254, fd00:ec2::254, 100.100.100.200, ...)
  kMulticast,      // 224.0.0.0/4, ff00::/8
  kBroadcast,      // 255.255.255.255
  kDocumentation,  // 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32, 3fff::/20
  kReserved,       // other special-purpose or unallocated space (240.0.0.0/4, 198.18.0.0/15,
                   // 2001::/23 including Teredo, anything outside 2000::/3, ...)
};

// "public", "unspecified", "loopback", "private", "link-local", "cloud-metadata", "multicast",
// "broadcast", "documentation", "reserved".
std::string_view to_string(AddressClass address_class);

struct AddressClassification {
  AddressClass kind = AddressClass::kPublic;
  // The special-purpose range the address (or its embedded IPv4 address) falls in, as
  // "10.0.0.0/8"; empty for a public address.
  std::string_view range;
  // For IPv6 forms that carry an IPv4 address: the form ("IPv4-mapped ::ffff:0:0/96", ...) and the
  // carried address, which `kind` and `range` describe.
  std::string_view embedding;
  std::optional<boost::asio::ip::address_v4> embedded_ipv4;
};

AddressClassification classify_address(const boost::asio::ip::address& address);

// True for globally routable unicast destinations only.
bool is_public(const boost::asio::ip::address& address);

// "10.1.2.3 is a private address (10.0.0.0/8)",
// "::ffff:127.0.0.1 is a loopback address (127.0.0.0/8, carried in IPv4-mapped ::ffff:0:0/96)".
std::string describe_address(const boost::asio::ip::address& address);

struct DestinationVerdict {
  bool allowed = false;
  AddressClass address_class = AddressClass::kPublic;
  std::string reason;  // why the destination is refused; empty when allowed
};

// Decides whether zoogate may keep a connection to `host` that reached `connected`.
//
// Public addresses are always allowed. Loopback, private, link-local, documentation and reserved
// addresses are allowed only for hosts that match one of the configured patterns (an internal
// mirror, a test's loopback hub). Unspecified, multicast, broadcast and cloud-metadata addresses
// are refused whatever the configuration says: no model server lives there, and a metadata service
// hands out the credentials of the machine zoogate runs on.
class DestinationCheck {
 public:
  // `non_public_host_patterns`: host patterns as in the server configuration ("mirror.corp" or
  // "*.corp"; see config::host_matches). An IP literal pattern ("127.0.0.1") matches a client that
  // names that literal.
  explicit DestinationCheck(std::vector<std::string> non_public_host_patterns);

  // `host` is the name the client asked for (CONNECT target, absolute URL or redirect Location),
  // without port; case, one trailing dot and the brackets of an IPv6 literal do not matter.
  DestinationVerdict check(std::string_view host, const boost::asio::ip::address& connected) const;

 private:
  bool host_may_be_non_public(std::string_view host) const;

  std::vector<std::string> non_public_host_patterns_;
};

}  // namespace zoogate::proxy
