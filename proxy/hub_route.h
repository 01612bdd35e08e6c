// The Hub's URL space as zoogate sees it: request targets parsed into typed routes, and routes built
// back into the targets zoogate sends upstream (DESIGN.md section 5).
//
// A target is split on '/', and each segment is percent-decoded on its own, so an encoded '/' stays
// inside its segment: that is how a revision such as "refs/pr/1" travels ("refs%2Fpr%2F1"). What the
// parser refuses, for every target (an InvalidTarget, answered 400): bytes that are not visible ASCII
// (raw bytes above 0x7F are accepted and must form UTF-8 with the decoded ones), '#', malformed
// percent-encoding, decoded NUL or other control characters, backslashes, invalid UTF-8, empty
// segments and "." or ".." segments, before or after decoding. So no route ever carries a traversal,
// and the target zoogate forwards means what zoogate understood.
//
// Routes:
//   /{repo}/resolve/{rev}/{path}                       ResolveRoute (also /datasets/..., /spaces/...)
//   /api/resolve-cache/{models|datasets|spaces}/{repo}/{rev}/{path}
//                                                      ResolveRoute in the resolve-cache form: the Hub
//                                                      redirects /resolve/ of files kept in git there, and
//                                                      it serves the same bytes, so it is a file route too
//   /api/{models|datasets|spaces}/{repo}               ApiRoute kModelInfo (revision "")
//   /api/{models|datasets|spaces}/{repo}/revision/{rev}                 kModelInfo
//   /api/{models|datasets|spaces}/{repo}/tree/{rev}[/{path}]            kTree
//   /api/{models|datasets|spaces}/{repo}/paths-info/{rev}               kPathsInfo
//   /api/{models|datasets|spaces}/{repo}/xet-read-token[/{rev}]         kXetReadToken (zoogate refuses it)
//   any other /api/...                                 ApiRoute kOther (only the query is filled in)
//   anything else                                      OtherTarget (/{repo}/raw/... included: zoogate
//                                                      answers 404, never the raw bytes of a file)
// A repository id is "name" (legacy models) or "owner/name". Where a target could be read either way,
// the two-segment reading wins: "/acme/resolve/resolve/main/f" is acme/resolve's file "f", as on the
// Hub. Resolve-cache targets have no keyword after the repository; their revision is the 40-hex
// commit the Hub put there, which tells a one-segment repository from a two-segment one.
//
// Everything here is a pure function of its arguments and safe to call from any thread.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <variant>

#include "common/error.h"

namespace zoogate::proxy {

enum class RepoType { kModel, kDataset, kSpace };

// "model", "dataset", "space": the names the Hub's clients use (repo_type=...).
std::string_view repo_type_name(RepoType type);
std::optional<RepoType> repo_type_from_name(std::string_view name);

// Which URL the Hub serves a file at; the route is sent upstream in the form it arrived in.
enum class ResolveForm { kResolve, kResolveCache };

struct ResolveRoute {
  RepoType type = RepoType::kModel;
  std::string repo;      // "owner/name" or "name", valid per validate_repo_id
  std::string revision;  // decoded: "main", "refs/pr/1", a commit id
  std::string path;      // decoded file path in the repository, valid per validate_repo_path
  ResolveForm form = ResolveForm::kResolve;
};

enum class ApiKind { kModelInfo, kTree, kPathsInfo, kXetReadToken, kOther };

struct ApiRoute {
  ApiKind kind = ApiKind::kOther;
  RepoType type = RepoType::kModel;  // kOther: unset
  std::string repo;                  // kOther: empty
  std::string revision;              // kModelInfo: empty for the default branch; kOther: empty
  std::string path;                  // kTree: the folder listed, empty for the root
  std::string query;                 // the raw query without '?', exactly as received
};

// A target zoogate refuses to interpret; `reason` is for the client (X-Error-Message).
struct InvalidTarget {
  std::string reason;
};

// A valid target that is no Hub route zoogate serves.
struct OtherTarget {};

using HubTarget = std::variant<OtherTarget, ResolveRoute, ApiRoute, InvalidTarget>;

// Parses an origin-form request target ("/path?query"). Anything else (absolute-form, "*") is an
// InvalidTarget.
HubTarget parse_hub_target(std::string_view target);

// The repository id the CDR policy's per-repository rules match (config/repository_pattern.h):
// "owner/name" for models, "datasets/owner/name", "spaces/owner/name".
std::string canonical_repo_id(RepoType type, std::string_view repo);
std::string canonical_repo_id(const ResolveRoute& route);
std::string canonical_repo_id(const ApiRoute& route);

// The origin-form target to request upstream for a route, every segment percent-encoded again
// (everything but unreserved characters; a revision's '/' too). parse_hub_target() of the result gives
// the route back. Precondition: the route's fields are valid (as parse_hub_target() makes them).
std::string upstream_target(const ResolveRoute& route);
// nullopt for kOther, which zoogate does not interpret: such requests go upstream as received.
std::optional<std::string> upstream_target(const ApiRoute& route);
// The first page of the recursive listing of every file of a repository at a revision.
std::string api_tree_target(RepoType type, std::string_view repo, std::string_view revision);

// The Hub's naming rules, for ids that come from elsewhere than a parsed target (an admin request).
// Repository: one or two segments of ASCII letters, digits, '-', '_', '.', 1 to 96 characters each,
// neither starting nor ending with '-' or '.', without "--" or "..".
Status validate_repo_id(std::string_view repo);
// Revision: a commit id or a git ref name ("main", "v1.0", "refs/pr/1"), by git's check-ref-format
// rules: no control characters, space, '~', '^', ':', '?', '*', '[' or '\', no "..", no "@{", no
// empty component, no component starting with '.' or ending with ".lock", not ending with '.'.
Status validate_revision(std::string_view revision);
// Path of a file in a repository: valid UTF-8 without control characters or backslashes, made of
// non-empty '/'-separated components none of which is "." or "..".
Status validate_repo_path(std::string_view path);

// The query of a target as application/x-www-form-urlencoded pairs ('+' is a space). Pairs that do
// not decode to valid UTF-8 are skipped; when a name repeats, the first value wins.
std::map<std::string, std::string> parse_query(std::string_view target);

}  // namespace zoogate::proxy
