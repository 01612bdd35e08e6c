// HTTP header rules of the Hub protocol (DESIGN.md section 5): which upstream response headers reach
// a client, the tree pagination link, entity tags and sizes, byte ranges, and Repr-Digest.
//
// Everything here is a pure function of its arguments and safe to call from any thread.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <boost/beast/http/fields.hpp>

namespace zoogate::proxy {

struct HeaderField {
  std::string name;
  std::string value;

  friend bool operator==(const HeaderField&, const HeaderField&) = default;
};

// The upstream response headers a client gets, in their order, with values unchanged except Link.
// Names compare case-insensitively. Dropped:
//   - hop-by-hop headers: Connection, Keep-Alive, Proxy-*, TE, Trailer, Transfer-Encoding, Upgrade,
//     and every name the Connection header lists;
//   - Content-Length, Content-Encoding, Content-Range: zoogate decodes bodies and frames its own
//     answers, so these describe bytes the client does not get;
//   - X-Xet-* (Xet hashes, CAS URLs and tokens would send Xet clients around zoogate);
//   - Set-Cookie, Set-Cookie2: upstream cookies are scoped to the upstream's domain; the client would
//     file them under zoogate's, send them to zoogate (which never forwards cookies), and a browser
//     would share one user's upstream session cookies with everyone behind the same zoogate origin;
//   - Alt-Svc, Strict-Transport-Security: they describe the upstream's origin; applied to zoogate's
//     they would point clients at protocols and ports zoogate does not serve;
//   - Location, unless it is a relative path ("/..." but not "//..."): a relative redirect (a renamed
//     repository, a file moved to /api/resolve-cache/) brings the client back to zoogate, which
//     follows absolute ones (CDN hosts) itself, so a client is never sent around it;
//   - Link values whose rel is xet-auth or xet-reconstruction-info, and rel="next" values (an absolute
//     upstream URL: the caller rewrites it with rewrite_next_link()); a Link header left without
//     values is dropped, and so is one that does not parse (it could hide a Xet link).
// Content-Type, ETag, X-Linked-Etag, X-Linked-Size, X-Repo-Commit, X-Error-* and the rest pass as
// the upstream sent them.
std::vector<HeaderField> passable_headers(std::span<const HeaderField> upstream);

// passable_headers() from one Beast header set into another (appended to `to`).
void copy_passable_headers(const boost::beast::http::fields& from, boost::beast::http::fields& to);

// The value of a Link header (RFC 8288) to pass on with a /tree page: Xet values dropped, the
// rel="next" value's URL rebased from the upstream Hub to zoogate's public base when its origin
// (scheme, host, port; default ports implied) is `upstream_origin`, dropped when it points anywhere
// else, kept when it is a relative reference (the client resolves it against zoogate's URL); other
// values kept verbatim. `public_base` is "http[s]://host[:port][/prefix]", a trailing '/' ignored.
// nullopt when no value is left or the header does not parse.
std::optional<std::string> rewrite_next_link(std::string_view link_value, std::string_view upstream_origin,
                                             std::string_view public_base);

// The origin-form target ("/api/...?cursor=...") of the rel="next" page of a Link header, when it is
// at `upstream_origin` or a path-absolute reference; "" when there is no such page.
std::string next_page_target(std::string_view link_value, std::string_view upstream_origin);

// The opaque part of an ETag or X-Linked-Etag value: W/ and the quotes removed ("\"abc\"" -> "abc").
// "" when the value is empty or malformed (a quote inside, unbalanced quotes, control characters).
std::string parse_entity_tag(std::string_view value);

// A header value that is a decimal count of bytes (Content-Length, X-Linked-Size): digits only, no
// sign, at most 2^64 - 1; surrounding spaces and tabs ignored. nullopt otherwise.
std::optional<uint64_t> parse_decimal(std::string_view value);

// One byte range as a client asked for it (RFC 9110 section 14.1.1).
struct RangeSpec {
  enum class Form { kFromTo, kFrom, kSuffix };  // "a-b", "a-", "-n"
  Form form = Form::kFromTo;
  uint64_t first = 0;          // kFromTo, kFrom
  uint64_t last = 0;           // kFromTo; first <= last
  uint64_t suffix_length = 0;  // kSuffix
};

// Parses a Range header value holding one byte range ("bytes" in any case, optional spaces around
// the range). nullopt for anything else: other units, a > b, garbage, numbers beyond 64 bits, and
// several ranges. RFC 9110 lets a server ignore Range, and zoogate does for all of these: it serves
// the whole representation with 200 rather than a multipart/byteranges answer no Hub client asks for.
std::optional<RangeSpec> parse_range(std::string_view value);

// Inclusive byte positions within a representation.
struct ByteRange {
  uint64_t first = 0;
  uint64_t last = 0;
};

struct RangeResolution {
  std::optional<ByteRange> range;  // set: answer 206 with these bytes; unset: the whole representation
  bool unsatisfiable = false;      // answer 416 with unsatisfied_content_range(size)
};

// Resolves a Range header value ("" when the request has none) against a representation of `size`
// bytes, as RFC 9110 section 14.1.2 says: a range that starts at or beyond the end, or a suffix of
// length 0, is unsatisfiable, and so is every range of an empty representation ("bytes=0-0" on a
// 0-byte file answers 416); a last position or suffix beyond the end is cut to the end.
RangeResolution resolve_range(std::string_view value, uint64_t size);

// "bytes first-last/size" for a 206 answer.
std::string content_range(const ByteRange& range, uint64_t size);
// "bytes */size" for a 416 answer.
std::string unsatisfied_content_range(uint64_t size);

// RFC 9530 Repr-Digest of a representation with this SHA-256: "sha-256=:<base64>:".
std::string repr_digest(std::span<const uint8_t, 32> sha256);

}  // namespace zoogate::proxy
