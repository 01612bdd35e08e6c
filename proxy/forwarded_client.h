// Who a request on the Hub endpoint comes from when it passes through load balancers
// (`trusted_proxies`, docs/configuration.md).
//
// Why: behind a balancer every connection comes from the balancer, so the access log and the MTD
// scope (which variant a client gets, and whom `zoogate trace` names for a leaked copy) would name the
// balancer for every client. A balancer says whom it forwards for in X-Forwarded-For: each proxy on
// the way appends the address its request came from. Read from the right, the entries are true as
// long as a trusted proxy wrote them; the first address that is not a trusted proxy's is the client.
// Whatever stands left of it the client wrote itself and may have made up, so it is never read.
//
// A proxy that terminates TLS says in X-Forwarded-Proto which scheme the client used, so that the links
// zoogate writes (when `public_url` is not set) send the client back the way it came.
//
// An authenticating proxy may also name the user it let through, in the header that
// `trusted_user_header` names; that user, rather than an address, is then the MTD scope. The proxy
// must set that header on every request (replacing any a client sent): one that passed a client's
// header on would let clients pick their scope.
//
// Pure functions of their arguments; safe from any thread.
#pragma once

#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "config/server_config.h"

namespace zoogate::proxy {

// Whether `peer` (an address as the socket gives it) lies in `trusted`.
bool is_trusted_proxy(std::string_view peer, std::span<const config::AddressRange> trusted);

// The client's address for a request that arrived from `peer` (an address as the socket gives it) with
// the X-Forwarded-For values `forwarded_for` (every such header line, in order, joined by ","):
// - `peer` itself unless it lies in `trusted`;
// - else the rightmost entry of `forwarded_for` that does not lie in `trusted`;
// - else (every entry trusted) the leftmost entry.
// An entry that is not an IP address (an obfuscated name, "unknown", junk) ends the walk: the client is
// then the trusted proxy that wrote it, the last address that was believed. Entries may be "1.2.3.4",
// "1.2.3.4:5678", "2001:db8::1", "[2001:db8::1]" or "[2001:db8::1]:5678"; the result is the bare
// address, IPv4-mapped IPv6 addresses written as IPv4.
std::string forwarded_client(std::string_view peer, std::string_view forwarded_for,
                             std::span<const config::AddressRange> trusted);

// The user a trusted proxy names in `header_value` (surrounding blanks ignored), when it is a user name
// (config::is_user_name); nullopt for an absent, empty or malformed one, which leaves the client's
// address as its scope.
std::optional<std::string> forwarded_user(std::string_view header_value);

// The scheme a trusted proxy names in an X-Forwarded-Proto `header_value`: "http" or "https" (any case,
// surrounding blanks ignored); nullopt for anything else, which leaves the scheme of the connection.
std::optional<std::string> forwarded_scheme(std::string_view header_value);

// The MTD scope of a client: its user where one is known, else its address. The same user gets the
// same variants through the Hub endpoint and through the egress proxy.
std::string mtd_scope(const std::optional<std::string>& user, const std::string& address);

}  // namespace zoogate::proxy
