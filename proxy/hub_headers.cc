#include "proxy/hub_headers.h"

#include <algorithm>
#include <array>
#include <set>

#include "common/encoding.h"
#include "common/http_syntax.h"

namespace zoogate::proxy {
namespace {

// Upstream response headers that never reach a client, beyond the Proxy-* and X-Xet-* families and
// the names Connection lists (hub_headers.h says why for each).
constexpr std::array<std::string_view, 13> kDroppedHeaders = {
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "content-encoding",
    "content-range",
    "set-cookie",
    "set-cookie2",
    "alt-svc",
    "strict-transport-security",
};

// Link relation types of Xet's protocol (answers to HEAD /resolve for files stored in Xet).
constexpr std::array<std::string_view, 2> kXetRelations = {"xet-auth", "xet-reconstruction-info"};

std::string to_lower(std::string_view text) {
  std::string out(text);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; });
  return out;
}

bool iequals(std::string_view a, std::string_view b) { return a.size() == b.size() && to_lower(a) == to_lower(b); }

std::optional<uint64_t> parse_digits(std::string_view text) {
  if (text.empty()) return std::nullopt;
  uint64_t value = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return std::nullopt;
    const auto digit = static_cast<uint64_t>(c - '0');
    if (value > (UINT64_MAX - digit) / 10) return std::nullopt;
    value = value * 10 + digit;
  }
  return value;
}

// ---- Link (RFC 8288) ---------------------------------------------------------------------------

struct LinkValue {
  std::string_view text;          // the whole link-value, from '<' to the end of its parameters
  std::string_view target;        // the URI-Reference between '<' and '>'
  std::string_view after_target;  // the parameters as written, from just after '>'
  // The space-separated types of every rel, lowercased: relation types compare case-insensitively.
  std::vector<std::string> relations;

  bool has_relation(std::string_view relation) const {
    return std::find(relations.begin(), relations.end(), relation) != relations.end();
  }
  bool is_xet() const {
    return std::any_of(kXetRelations.begin(), kXetRelations.end(), [&](std::string_view r) { return has_relation(r); });
  }
};

// Parses `#link-value`; nullopt when the header does not follow the grammar. Quoted strings may hold
// commas, semicolons and escaped quotes; empty list elements are allowed (RFC 9110 section 5.6.1).
std::optional<std::vector<LinkValue>> parse_link_header(std::string_view header) {
  std::vector<LinkValue> values;
  size_t pos = 0;
  auto skip_ows = [&] {
    while (pos < header.size() && is_ows(header[pos])) ++pos;
  };
  for (;;) {
    while (pos < header.size() && (is_ows(header[pos]) || header[pos] == ',')) ++pos;
    if (pos == header.size()) return values;
    if (header[pos] != '<') return std::nullopt;
    const size_t start = pos;
    const size_t close = header.find('>', pos);
    if (close == std::string_view::npos) return std::nullopt;
    LinkValue value;
    value.target = header.substr(start + 1, close - start - 1);
    pos = close + 1;
    for (;;) {
      skip_ows();
      if (pos == header.size() || header[pos] == ',') break;
      if (header[pos] != ';') return std::nullopt;
      ++pos;
      skip_ows();
      const size_t name_start = pos;
      while (pos < header.size() && is_token_char(header[pos])) ++pos;
      if (pos == name_start) return std::nullopt;
      const std::string name = to_lower(header.substr(name_start, pos - name_start));
      skip_ows();
      std::string parameter;
      if (pos < header.size() && header[pos] == '=') {
        ++pos;
        skip_ows();
        if (pos < header.size() && header[pos] == '"') {
          ++pos;
          for (;;) {
            if (pos == header.size()) return std::nullopt;
            const char c = header[pos++];
            if (c == '"') break;
            if (c == '\\') {
              if (pos == header.size()) return std::nullopt;
              parameter.push_back(header[pos++]);
            } else {
              parameter.push_back(c);
            }
          }
        } else {
          const size_t token_start = pos;
          while (pos < header.size() && is_token_char(header[pos])) ++pos;
          if (pos == token_start) return std::nullopt;
          parameter = header.substr(token_start, pos - token_start);
        }
      }
      // RFC 8288 says to ignore a rel after the first, but common parsers (Python requests, which
      // huggingface_hub uses) let the last one win: every rel counts here.
      if (name == "rel") {
        size_t at = 0;
        while (at < parameter.size()) {
          while (at < parameter.size() && is_ows(parameter[at])) ++at;
          size_t end = at;
          while (end < parameter.size() && !is_ows(parameter[end])) ++end;
          if (end > at) value.relations.push_back(to_lower(std::string_view(parameter).substr(at, end - at)));
          at = end;
        }
      }
    }
    value.text = trim_ows(header.substr(start, pos - start));
    value.after_target = header.substr(close + 1, start + value.text.size() - close - 1);
    values.push_back(std::move(value));
  }
}

std::optional<std::string> join_link_values(const std::vector<std::string>& kept) {
  if (kept.empty()) return std::nullopt;
  std::string out;
  for (const std::string& value : kept) {
    if (!out.empty()) out += ", ";
    out += value;
  }
  return out;
}

// An absolute http(s) URL split into its normalized origin and its origin-form target.
struct AbsoluteUrl {
  std::string origin;  // "scheme://host[:port]", scheme and host lowercased, default port left out
  std::string target;  // "/path?query"
};

std::optional<AbsoluteUrl> parse_absolute_url(std::string_view url) {
  const size_t scheme_end = url.find("://");
  if (scheme_end == std::string_view::npos) return std::nullopt;
  const std::string scheme = to_lower(url.substr(0, scheme_end));
  if (scheme != "https" && scheme != "http") return std::nullopt;
  const std::string_view rest = url.substr(scheme_end + 3);
  const size_t authority_end = rest.find_first_of("/?#");
  const std::string_view authority = rest.substr(0, authority_end);
  if (authority.empty() || authority.find('@') != std::string_view::npos) return std::nullopt;
  const std::string_view tail =
      authority_end == std::string_view::npos ? std::string_view() : rest.substr(authority_end);
  if (tail.find('#') != std::string_view::npos) return std::nullopt;
  if (std::any_of(url.begin(), url.end(), [](char c) { return static_cast<unsigned char>(c) <= 0x20 || c == 0x7f; })) {
    return std::nullopt;
  }
  // The port follows the last ':' that is not inside an IPv6 literal's brackets.
  std::string_view host = authority;
  std::string_view port;
  const size_t colon = authority.rfind(':');
  const size_t bracket = authority.rfind(']');
  if (colon != std::string_view::npos && (bracket == std::string_view::npos || colon > bracket)) {
    host = authority.substr(0, colon);
    port = authority.substr(colon + 1);
    if (!port.empty() && !parse_digits(port)) return std::nullopt;
  }
  if (host.empty()) return std::nullopt;
  const std::string_view default_port = scheme == "https" ? "443" : "80";
  AbsoluteUrl parsed;
  parsed.origin = scheme + "://" + to_lower(host);
  if (!port.empty() && port != default_port) parsed.origin += ":" + std::string(port);
  parsed.target = tail.empty() || tail.front() == '?' ? "/" + std::string(tail) : std::string(tail);
  return parsed;
}

bool is_path_absolute(std::string_view reference) { return reference.starts_with('/') && !reference.starts_with("//"); }

// RFC 3986: scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ), then ':'.
bool has_scheme(std::string_view reference) {
  const size_t colon = reference.find(':');
  if (colon == std::string_view::npos || colon == 0) return false;
  auto is_alpha = [](char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); };
  if (!is_alpha(reference[0])) return false;
  return std::all_of(reference.begin() + 1, reference.begin() + static_cast<ptrdiff_t>(colon),
                     [&](char c) { return is_alpha(c) || (c >= '0' && c <= '9') || c == '+' || c == '-' || c == '.'; });
}

// The Link header's values without Xet's; a rel="next" value is passed to `next`, which returns its
// replacement text or nullopt to drop it.
template <typename NextRewrite>
std::optional<std::string> filter_link_values(std::string_view header, NextRewrite next) {
  auto values = parse_link_header(header);
  if (!values) return std::nullopt;
  std::vector<std::string> kept;
  for (const LinkValue& value : *values) {
    if (value.is_xet()) continue;
    if (value.has_relation("next")) {
      if (std::optional<std::string> replaced = next(value)) kept.push_back(std::move(*replaced));
      continue;
    }
    kept.emplace_back(value.text);
  }
  return join_link_values(kept);
}

}  // namespace

std::vector<HeaderField> passable_headers(std::span<const HeaderField> upstream) {
  std::set<std::string> connection_listed;
  for (const HeaderField& field : upstream) {
    if (!iequals(field.name, "connection")) continue;
    std::string_view list = field.value;
    while (!list.empty()) {
      const size_t comma = list.find(',');
      const std::string_view token = trim_ows(list.substr(0, comma));
      if (!token.empty()) connection_listed.insert(to_lower(token));
      list = comma == std::string_view::npos ? std::string_view() : list.substr(comma + 1);
    }
  }
  std::vector<HeaderField> passed;
  for (const HeaderField& field : upstream) {
    const std::string name = to_lower(field.name);
    if (std::find(kDroppedHeaders.begin(), kDroppedHeaders.end(), name) != kDroppedHeaders.end() ||
        name.starts_with("proxy-") || name.starts_with("x-xet-") || connection_listed.contains(name)) {
      continue;
    }
    if (name == "location" && !is_path_absolute(trim_ows(field.value))) continue;
    if (name == "link") {
      auto kept = filter_link_values(field.value, [](const LinkValue&) { return std::optional<std::string>(); });
      if (kept) passed.push_back({field.name, std::move(*kept)});
      continue;
    }
    passed.push_back(field);
  }
  return passed;
}

void copy_passable_headers(const boost::beast::http::fields& from, boost::beast::http::fields& to) {
  std::vector<HeaderField> upstream;
  for (const auto& field : from) {
    const auto name = field.name_string();
    const auto value = field.value();
    upstream.push_back({std::string(name.data(), name.size()), std::string(value.data(), value.size())});
  }
  for (const HeaderField& field : passable_headers(upstream)) to.insert(field.name, field.value);
}

std::optional<std::string> rewrite_next_link(std::string_view link_value, std::string_view upstream_origin,
                                             std::string_view public_base) {
  std::string_view base = public_base;
  while (base.ends_with('/')) base.remove_suffix(1);
  const std::optional<AbsoluteUrl> upstream = parse_absolute_url(upstream_origin);
  return filter_link_values(link_value, [&](const LinkValue& value) -> std::optional<std::string> {
    if (!has_scheme(value.target) && !value.target.starts_with("//")) return std::string(value.text);
    const std::optional<AbsoluteUrl> url = parse_absolute_url(value.target);
    if (!url || !upstream || url->origin != upstream->origin) return std::nullopt;
    return "<" + std::string(base) + url->target + ">" + std::string(value.after_target);
  });
}

std::string next_page_target(std::string_view link_value, std::string_view upstream_origin) {
  const auto values = parse_link_header(link_value);
  const std::optional<AbsoluteUrl> upstream = parse_absolute_url(upstream_origin);
  if (!values) return "";
  for (const LinkValue& value : *values) {
    if (!value.has_relation("next") || value.is_xet()) continue;
    if (is_path_absolute(value.target)) return std::string(value.target);
    const std::optional<AbsoluteUrl> url = parse_absolute_url(value.target);
    if (url && upstream && url->origin == upstream->origin) return url->target;
  }
  return "";
}

std::string parse_entity_tag(std::string_view value) {
  value = trim_ows(value);
  if (value.starts_with("W/")) value.remove_prefix(2);
  if (value.size() >= 2 && value.front() == '"' && value.back() == '"') value = value.substr(1, value.size() - 2);
  const bool malformed = std::any_of(value.begin(), value.end(), [](char c) {
    const auto byte = static_cast<unsigned char>(c);
    return c == '"' || byte <= 0x20 || byte == 0x7f;
  });
  return malformed ? std::string() : std::string(value);
}

std::optional<uint64_t> parse_decimal(std::string_view value) { return parse_digits(trim_ows(value)); }

std::optional<RangeSpec> parse_range(std::string_view value) {
  value = trim_ows(value);
  const size_t equals = value.find('=');
  if (equals == std::string_view::npos || !iequals(value.substr(0, equals), "bytes")) return std::nullopt;
  std::string_view only;
  size_t ranges = 0;
  std::string_view set = value.substr(equals + 1);
  while (true) {
    const size_t comma = set.find(',');
    const std::string_view element = trim_ows(set.substr(0, comma));
    if (!element.empty()) {
      only = element;
      ++ranges;
    }
    if (comma == std::string_view::npos) break;
    set.remove_prefix(comma + 1);
  }
  if (ranges != 1) return std::nullopt;
  const size_t dash = only.find('-');
  if (dash == std::string_view::npos) return std::nullopt;
  const std::string_view left = only.substr(0, dash);
  const std::string_view right = only.substr(dash + 1);
  RangeSpec spec;
  if (left.empty()) {
    const auto length = parse_digits(right);
    if (!length) return std::nullopt;
    spec.form = RangeSpec::Form::kSuffix;
    spec.suffix_length = *length;
    return spec;
  }
  const auto first = parse_digits(left);
  if (!first) return std::nullopt;
  spec.first = *first;
  if (right.empty()) {
    spec.form = RangeSpec::Form::kFrom;
    return spec;
  }
  const auto last = parse_digits(right);
  if (!last || *last < *first) return std::nullopt;
  spec.form = RangeSpec::Form::kFromTo;
  spec.last = *last;
  return spec;
}

RangeResolution resolve_range(std::string_view value, uint64_t size) {
  const std::optional<RangeSpec> spec = parse_range(value);
  if (!spec) return {};
  RangeResolution resolution;
  switch (spec->form) {
    case RangeSpec::Form::kFromTo:
    case RangeSpec::Form::kFrom:
      if (spec->first >= size) {
        resolution.unsatisfiable = true;
        return resolution;
      }
      resolution.range =
          ByteRange{spec->first, spec->form == RangeSpec::Form::kFrom ? size - 1 : std::min(spec->last, size - 1)};
      return resolution;
    case RangeSpec::Form::kSuffix:
      if (spec->suffix_length == 0 || size == 0) {
        resolution.unsatisfiable = true;
        return resolution;
      }
      resolution.range = ByteRange{spec->suffix_length >= size ? 0 : size - spec->suffix_length, size - 1};
      return resolution;
  }
  return resolution;
}

std::string content_range(const ByteRange& range, uint64_t size) {
  return "bytes " + std::to_string(range.first) + "-" + std::to_string(range.last) + "/" + std::to_string(size);
}

std::string unsatisfied_content_range(uint64_t size) { return "bytes */" + std::to_string(size); }

std::string repr_digest(std::span<const uint8_t, 32> sha256) { return "sha-256=:" + to_base64(sha256) + ":"; }

}  // namespace zoogate::proxy
