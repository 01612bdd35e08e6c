#include "proxy/hub_route.h"

#include <algorithm>
#include <array>
#include <vector>

#include "cdr/message_text.h"
#include "common/encoding.h"

namespace zoogate::proxy {
namespace {

using cdr::quote_for_message;

constexpr size_t kMaxRepoSegmentLength = 96;
// Longer than any branch or tag name in practice; keeps hostile revisions out of logs and keys.
constexpr size_t kMaxRevisionLength = 255;
constexpr size_t kCommitIdLength = 40;

// The keywords that follow the repository id in /api/{models|datasets|spaces}/{repo}/...
constexpr std::string_view kRevisionKeyword = "revision";
constexpr std::string_view kTreeKeyword = "tree";
constexpr std::string_view kPathsInfoKeyword = "paths-info";
constexpr std::string_view kXetReadTokenKeyword = "xet-read-token";
constexpr std::string_view kResolveKeyword = "resolve";

struct TypeSpelling {
  RepoType type;
  std::string_view name;        // repo_type=...
  std::string_view api_plural;  // /api/{models|datasets|spaces}/
  std::string_view url_prefix;  // /{datasets|spaces}/ before the repository id, "" for models
};
constexpr std::array<TypeSpelling, 3> kTypes = {{
    {RepoType::kModel, "model", "models", ""},
    {RepoType::kDataset, "dataset", "datasets", "datasets"},
    {RepoType::kSpace, "space", "spaces", "spaces"},
}};

// kTypes is indexed by RepoType.
static_assert(kTypes[static_cast<size_t>(RepoType::kModel)].type == RepoType::kModel &&
              kTypes[static_cast<size_t>(RepoType::kDataset)].type == RepoType::kDataset &&
              kTypes[static_cast<size_t>(RepoType::kSpace)].type == RepoType::kSpace);
const TypeSpelling& spelling_of(RepoType type) { return kTypes[static_cast<size_t>(type)]; }

std::optional<RepoType> type_from_api_plural(std::string_view plural) {
  for (const TypeSpelling& spelling : kTypes) {
    if (spelling.api_plural == plural) return spelling.type;
  }
  return std::nullopt;
}

bool is_ascii_alnum(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'); }

// RFC 3986 unreserved characters: the only ones upstream targets carry unencoded.
bool is_unreserved(char c) { return is_ascii_alnum(c) || c == '-' || c == '.' || c == '_' || c == '~'; }

bool is_control(unsigned char byte) { return byte < 0x20 || byte == 0x7f; }

bool is_commit_id(std::string_view text) {
  return text.size() == kCommitIdLength &&
         std::all_of(text.begin(), text.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// nullopt when a '%' is not followed by two hex digits.
std::optional<std::string> percent_decode(std::string_view raw, bool plus_is_space) {
  std::string out;
  out.reserve(raw.size());
  for (size_t i = 0; i < raw.size(); ++i) {
    if (raw[i] == '%') {
      if (i + 2 >= raw.size()) return std::nullopt;
      const int high = hex_value(raw[i + 1]);
      const int low = hex_value(raw[i + 2]);
      if (high < 0 || low < 0) return std::nullopt;
      out.push_back(static_cast<char>(high << 4 | low));
      i += 2;
    } else if (plus_is_space && raw[i] == '+') {
      out.push_back(' ');
    } else {
      out.push_back(raw[i]);
    }
  }
  return out;
}

std::string percent_encode(std::string_view text, bool keep_slash) {
  constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    if (is_unreserved(c) || (keep_slash && c == '/')) {
      out.push_back(c);
    } else {
      const auto byte = static_cast<unsigned char>(c);
      out.push_back('%');
      out.push_back(kHex[byte >> 4]);
      out.push_back(kHex[byte & 0xf]);
    }
  }
  return out;
}

std::vector<std::string_view> split(std::string_view text, char separator) {
  std::vector<std::string_view> parts;
  size_t start = 0;
  for (;;) {
    const size_t end = text.find(separator, start);
    parts.push_back(text.substr(start, end == std::string_view::npos ? std::string_view::npos : end - start));
    if (end == std::string_view::npos) return parts;
    start = end + 1;
  }
}

std::string join(const std::vector<std::string>& parts, size_t first, size_t last) {
  std::string out;
  for (size_t i = first; i < last; ++i) {
    if (i != first) out.push_back('/');
    out += parts[i];
  }
  return out;
}

Status refuse(std::string message) { return fail(ErrorCode::kInvalidArgument, std::move(message)); }

// Characters a raw (not yet decoded) target may hold: visible ASCII but '#' and '\', and raw bytes
// above 0x7F, whose UTF-8 validity is checked after decoding.
bool is_allowed_raw(char c) {
  const auto byte = static_cast<unsigned char>(c);
  return byte >= 0x80 || (byte > 0x20 && byte < 0x7f && c != '#' && c != '\\');
}

Status check_segment_name(std::string_view segment) {
  if (segment.empty() || segment.size() > kMaxRepoSegmentLength) {
    return refuse("repository name parts have 1 to 96 characters: " + quote_for_message(segment));
  }
  for (char c : segment) {
    if (!is_ascii_alnum(c) && c != '-' && c != '_' && c != '.') {
      return refuse("repository names use ASCII letters, digits, '-', '_' and '.': " + quote_for_message(segment));
    }
  }
  const char first = segment.front();
  const char last = segment.back();
  if (first == '-' || first == '.' || last == '-' || last == '.') {
    return refuse("repository names neither start nor end with '-' or '.': " + quote_for_message(segment));
  }
  if (segment.find("--") != std::string_view::npos || segment.find("..") != std::string_view::npos) {
    return refuse("repository names do not contain \"--\" or \"..\": " + quote_for_message(segment));
  }
  return {};
}

// The checks every decoded piece of a target passes, whatever it names.
Status check_decoded_text(std::string_view text) {
  for (char c : text) {
    if (is_control(static_cast<unsigned char>(c))) return refuse("the target holds a control character");
    if (c == '\\') return refuse("the target holds a backslash");
  }
  if (!is_valid_utf8(text)) return refuse("the target is not UTF-8");
  return {};
}

InvalidTarget invalid(const Error& error) { return InvalidTarget{error.message}; }

// Builds a resolve route after validating what the segments say.
HubTarget make_resolve(RepoType type, std::string repo, std::string revision, std::string path, ResolveForm form) {
  if (auto valid = validate_repo_id(repo); !valid) return invalid(valid.error());
  if (auto valid = validate_revision(revision); !valid) return invalid(valid.error());
  if (auto valid = validate_repo_path(path); !valid) return invalid(valid.error());
  return ResolveRoute{type, std::move(repo), std::move(revision), std::move(path), form};
}

// /{repo}/resolve/{rev}/{path...} after the optional /datasets or /spaces prefix.
HubTarget parse_resolve(RepoType type, const std::vector<std::string>& rest) {
  for (size_t repo_segments : {size_t{2}, size_t{1}}) {
    // The repository, "resolve", the revision and at least one path segment.
    if (rest.size() >= repo_segments + 3 && rest[repo_segments] == kResolveKeyword) {
      return make_resolve(type, join(rest, 0, repo_segments), rest[repo_segments + 1],
                          join(rest, repo_segments + 2, rest.size()), ResolveForm::kResolve);
    }
  }
  return OtherTarget{};
}

// /api/resolve-cache/{models|datasets|spaces}/{repo}/{commit}/{path...}. Every target under it
// serves file bytes, so whatever does not parse as a file route is invalid, never passed on.
HubTarget parse_resolve_cache(const std::vector<std::string>& segments) {
  std::optional<RepoType> type = segments.size() > 2 ? type_from_api_plural(segments[2]) : std::nullopt;
  if (!type) return InvalidTarget{"resolve-cache targets name models, datasets or spaces"};
  const std::vector<std::string> rest(segments.begin() + 3, segments.end());
  const size_t repo_segments = rest.size() >= 3 && is_commit_id(rest[1]) && !is_commit_id(rest[2]) ? 1 : 2;
  if (rest.size() < repo_segments + 2) {
    return InvalidTarget{"a resolve-cache target names a repository, a revision and a file"};
  }
  return make_resolve(*type, join(rest, 0, repo_segments), rest[repo_segments],
                      join(rest, repo_segments + 1, rest.size()), ResolveForm::kResolveCache);
}

std::optional<ApiKind> api_kind_of_keyword(std::string_view keyword) {
  if (keyword == kRevisionKeyword) return ApiKind::kModelInfo;
  if (keyword == kTreeKeyword) return ApiKind::kTree;
  if (keyword == kPathsInfoKeyword) return ApiKind::kPathsInfo;
  if (keyword == kXetReadTokenKeyword) return ApiKind::kXetReadToken;
  return std::nullopt;
}

// /api/{models|datasets|spaces}/{rest...}
HubTarget parse_repo_api(RepoType type, const std::vector<std::string>& rest, std::string query) {
  ApiRoute route;
  route.type = type;
  route.query = std::move(query);
  bool matched = false;
  if (rest.size() <= 2) {
    route.kind = ApiKind::kModelInfo;
    route.repo = join(rest, 0, rest.size());
    matched = true;
  }
  // Two-segment repository ids first; a reading is taken only when the keyword has what it needs.
  for (size_t repo_segments : {size_t{2}, size_t{1}}) {
    if (matched || rest.size() <= repo_segments) continue;
    const std::optional<ApiKind> kind = api_kind_of_keyword(rest[repo_segments]);
    const size_t arguments = rest.size() - repo_segments - 1;
    if (!kind || (arguments == 0 && *kind != ApiKind::kXetReadToken)) continue;
    route.kind = *kind;
    route.repo = join(rest, 0, repo_segments);
    const size_t first_argument = repo_segments + 1;
    if (*kind == ApiKind::kTree) {
      route.revision = rest[first_argument];
      route.path = join(rest, first_argument + 1, rest.size());
    } else {
      // Nothing follows the revision, so an unencoded "refs/pr/1" is read whole.
      route.revision = join(rest, first_argument, rest.size());
    }
    matched = true;
  }
  if (!matched) return ApiRoute{ApiKind::kOther, RepoType::kModel, {}, {}, {}, route.query};
  if (auto valid = validate_repo_id(route.repo); !valid) return invalid(valid.error());
  if (!route.revision.empty()) {
    if (auto valid = validate_revision(route.revision); !valid) return invalid(valid.error());
  }
  if (!route.path.empty()) {
    if (auto valid = validate_repo_path(route.path); !valid) return invalid(valid.error());
  }
  return route;
}

std::string repo_prefix(RepoType type) {
  const std::string_view prefix = spelling_of(type).url_prefix;
  return prefix.empty() ? std::string("/") : "/" + std::string(prefix) + "/";
}

}  // namespace

std::string_view repo_type_name(RepoType type) { return spelling_of(type).name; }

std::optional<RepoType> repo_type_from_name(std::string_view name) {
  for (const TypeSpelling& spelling : kTypes) {
    if (spelling.name == name) return spelling.type;
  }
  return std::nullopt;
}

Status validate_repo_id(std::string_view repo) {
  const std::vector<std::string_view> segments = split(repo, '/');
  if (segments.size() > 2) return refuse("a repository id is \"name\" or \"owner/name\": " + quote_for_message(repo));
  for (std::string_view segment : segments) ZG_TRY(check_segment_name(segment));
  return {};
}

Status validate_revision(std::string_view revision) {
  if (revision.empty()) return refuse("the revision is empty");
  if (revision.size() > kMaxRevisionLength) return refuse("the revision is longer than 255 bytes");
  for (char c : revision) {
    const auto byte = static_cast<unsigned char>(c);
    if (is_control(byte) || std::string_view(" ~^:?*[\\").find(c) != std::string_view::npos) {
      return refuse("a revision is a commit id or a git ref name: " + quote_for_message(revision));
    }
  }
  if (!is_valid_utf8(revision)) return refuse("the revision is not UTF-8");
  if (revision.find("..") != std::string_view::npos || revision.find("@{") != std::string_view::npos ||
      revision == "@" || revision.back() == '.') {
    return refuse("a revision is a commit id or a git ref name: " + quote_for_message(revision));
  }
  for (std::string_view component : split(revision, '/')) {
    if (component.empty() || component.front() == '.' || component.ends_with(".lock")) {
      return refuse("a revision is a commit id or a git ref name: " + quote_for_message(revision));
    }
  }
  return {};
}

Status validate_repo_path(std::string_view path) {
  if (path.empty()) return refuse("the file path is empty");
  for (char c : path) {
    if (is_control(static_cast<unsigned char>(c))) return refuse("the file path holds a control character");
    if (c == '\\') return refuse("the file path holds a backslash: " + quote_for_message(path));
  }
  if (!is_valid_utf8(path)) return refuse("the file path is not UTF-8");
  for (std::string_view component : split(path, '/')) {
    if (component.empty() || component == "." || component == "..") {
      return refuse("the file path has an empty, \".\" or \"..\" component: " + quote_for_message(path));
    }
  }
  return {};
}

HubTarget parse_hub_target(std::string_view target) {
  if (target.empty() || target.front() != '/') return InvalidTarget{"the request target is not a path"};
  if (!std::all_of(target.begin(), target.end(), is_allowed_raw)) {
    return InvalidTarget{"the request target holds a character that is not allowed there"};
  }
  const size_t query_start = target.find('?');
  const std::string_view raw_path = target.substr(0, query_start);
  std::string query =
      query_start == std::string_view::npos ? std::string() : std::string(target.substr(query_start + 1));
  if (raw_path == "/") return OtherTarget{};

  std::vector<std::string> segments;
  for (std::string_view raw : split(raw_path.substr(1), '/')) {
    if (raw.empty()) return InvalidTarget{"the request path has an empty segment"};
    std::optional<std::string> decoded = percent_decode(raw, /*plus_is_space=*/false);
    if (!decoded) return InvalidTarget{"the request path has a malformed percent-encoding"};
    if (raw == "." || raw == ".." || *decoded == "." || *decoded == "..") {
      return InvalidTarget{"the request path has a \".\" or \"..\" segment"};
    }
    if (auto valid = check_decoded_text(*decoded); !valid) return invalid(valid.error());
    segments.push_back(std::move(*decoded));
  }

  if (segments[0] == "api") {
    if (segments.size() > 1 && segments[1] == "resolve-cache") return parse_resolve_cache(segments);
    const std::optional<RepoType> type = segments.size() > 2 ? type_from_api_plural(segments[1]) : std::nullopt;
    if (!type) return ApiRoute{ApiKind::kOther, RepoType::kModel, {}, {}, {}, std::move(query)};
    return parse_repo_api(*type, std::vector<std::string>(segments.begin() + 2, segments.end()), std::move(query));
  }
  for (const TypeSpelling& spelling : kTypes) {
    if (!spelling.url_prefix.empty() && segments[0] == spelling.url_prefix) {
      return parse_resolve(spelling.type, std::vector<std::string>(segments.begin() + 1, segments.end()));
    }
  }
  return parse_resolve(RepoType::kModel, segments);
}

std::string canonical_repo_id(RepoType type, std::string_view repo) {
  const std::string_view prefix = spelling_of(type).url_prefix;
  return prefix.empty() ? std::string(repo) : std::string(prefix) + "/" + std::string(repo);
}

std::string canonical_repo_id(const ResolveRoute& route) { return canonical_repo_id(route.type, route.repo); }

std::string canonical_repo_id(const ApiRoute& route) { return canonical_repo_id(route.type, route.repo); }

std::string upstream_target(const ResolveRoute& route) {
  const std::string tail =
      percent_encode(route.revision, /*keep_slash=*/false) + "/" + percent_encode(route.path, /*keep_slash=*/true);
  if (route.form == ResolveForm::kResolveCache) {
    return "/api/resolve-cache/" + std::string(spelling_of(route.type).api_plural) + "/" +
           percent_encode(route.repo, /*keep_slash=*/true) + "/" + tail;
  }
  return repo_prefix(route.type) + percent_encode(route.repo, /*keep_slash=*/true) + "/resolve/" + tail;
}

std::optional<std::string> upstream_target(const ApiRoute& route) {
  std::string target =
      "/api/" + std::string(spelling_of(route.type).api_plural) + "/" + percent_encode(route.repo, /*keep_slash=*/true);
  const std::string revision = percent_encode(route.revision, /*keep_slash=*/false);
  switch (route.kind) {
    case ApiKind::kModelInfo:
      if (!route.revision.empty()) target += "/" + std::string(kRevisionKeyword) + "/" + revision;
      break;
    case ApiKind::kTree:
      target += "/" + std::string(kTreeKeyword) + "/" + revision;
      if (!route.path.empty()) target += "/" + percent_encode(route.path, /*keep_slash=*/true);
      break;
    case ApiKind::kPathsInfo:
      target += "/" + std::string(kPathsInfoKeyword) + "/" + revision;
      break;
    case ApiKind::kXetReadToken:
      target += "/" + std::string(kXetReadTokenKeyword);
      if (!route.revision.empty()) target += "/" + revision;
      break;
    case ApiKind::kOther:
      return std::nullopt;
  }
  if (!route.query.empty()) target += "?" + route.query;
  return target;
}

std::string api_tree_target(RepoType type, std::string_view repo, std::string_view revision) {
  ApiRoute route{ApiKind::kTree, type, std::string(repo), std::string(revision), {}, "recursive=true"};
  return *upstream_target(route);
}

std::map<std::string, std::string> parse_query(std::string_view target) {
  std::map<std::string, std::string> pairs;
  const size_t query_start = target.find('?');
  if (query_start == std::string_view::npos) return pairs;
  for (std::string_view pair : split(target.substr(query_start + 1), '&')) {
    if (pair.empty()) continue;
    const size_t equals = pair.find('=');
    std::optional<std::string> name = percent_decode(pair.substr(0, equals), /*plus_is_space=*/true);
    std::optional<std::string> value = percent_decode(
        equals == std::string_view::npos ? std::string_view() : pair.substr(equals + 1), /*plus_is_space=*/true);
    if (!name || !value || !is_valid_utf8(*name) || !is_valid_utf8(*value)) continue;
    pairs.emplace(std::move(*name), std::move(*value));
  }
  return pairs;
}

}  // namespace zoogate::proxy
