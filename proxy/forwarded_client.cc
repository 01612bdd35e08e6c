#include "proxy/forwarded_client.h"

#include <optional>

#include <boost/asio/ip/address.hpp>
#include <boost/beast/core/string.hpp>

#include "common/http_syntax.h"

namespace zoogate::proxy {

namespace {

namespace ip = boost::asio::ip;

// `text` as an address, with IPv4-mapped IPv6 addresses made IPv4 (a dual-stack listener gives IPv4
// peers in that form, and a range is either IPv4 or IPv6); nullopt when it is none.
std::optional<ip::address> parse_address(std::string_view text) {
  boost::system::error_code error;
  ip::address address = ip::make_address(std::string(text), error);
  if (error) return std::nullopt;
  if (address.is_v6() && address.to_v6().is_v4_mapped()) {
    address = ip::make_address_v4(ip::v4_mapped, address.to_v6());
  }
  return address;
}

// An X-Forwarded-For entry without the optional port and brackets; nullopt when it is no address.
std::optional<ip::address> parse_entry(std::string_view entry) {
  if (entry.starts_with('[')) {
    const size_t close = entry.find(']');
    if (close == std::string_view::npos) return std::nullopt;
    const std::string_view after = entry.substr(close + 1);
    if (!after.empty() && !after.starts_with(':')) return std::nullopt;
    auto address = parse_address(entry.substr(1, close - 1));
    return address && address->is_v6() ? address : std::nullopt;
  }
  const size_t colon = entry.find(':');
  if (colon != std::string_view::npos && entry.find(':', colon + 1) == std::string_view::npos) {
    auto address = parse_address(entry.substr(0, colon));  // "IPv4:port"
    return address && address->is_v4() ? address : std::nullopt;
  }
  return parse_address(entry);
}

bool is_trusted(const ip::address& address, std::span<const config::AddressRange> trusted) {
  for (const config::AddressRange& range : trusted) {
    const bool contained = address.is_v4() ? range.contains(address.to_v4().to_bytes())
                                           : range.contains(address.to_v6().to_bytes());
    if (contained) return true;
  }
  return false;
}

}  // namespace

bool is_trusted_proxy(std::string_view peer, std::span<const config::AddressRange> trusted) {
  std::optional<ip::address> address = parse_address(peer);
  return address && is_trusted(*address, trusted);
}

std::string forwarded_client(std::string_view peer, std::string_view forwarded_for,
                             std::span<const config::AddressRange> trusted) {
  std::optional<ip::address> believed = parse_address(peer);
  if (!believed || !is_trusted(*believed, trusted)) return std::string(peer);
  // From the right: each entry was appended by the proxy believed last.
  std::string_view rest = forwarded_for;
  while (is_trusted(*believed, trusted)) {
    const size_t comma = rest.rfind(',');
    const std::string_view entry = trim_ows(comma == std::string_view::npos ? rest : rest.substr(comma + 1));
    std::optional<ip::address> address = parse_entry(entry);
    if (!address) break;
    believed = address;
    if (comma == std::string_view::npos) break;
    rest = rest.substr(0, comma);
  }
  return believed->to_string();
}

std::optional<std::string> forwarded_user(std::string_view header_value) {
  const std::string_view name = trim_ows(header_value);
  if (!config::is_user_name(name)) return std::nullopt;
  return std::string(name);
}

std::optional<std::string> forwarded_scheme(std::string_view header_value) {
  const std::string_view scheme = trim_ows(header_value);
  for (std::string_view known : {"http", "https"}) {
    if (boost::beast::iequals(scheme, known)) return std::string(known);
  }
  return std::nullopt;
}

std::string mtd_scope(const std::optional<std::string>& user, const std::string& address) {
  return user && !user->empty() ? "user:" + *user : address;
}

}  // namespace zoogate::proxy
