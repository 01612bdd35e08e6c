// The CDR policy file: YAML -> validated cdr::Policy per repository. docs/policy.md documents every key.
//
//   version: "2026-11-26.1"
//   actions: {forbidden_global: disarm, forbidden_call: disarm, ...}     # disarm | block
//   limits: {max_opcodes: 100000000, max_pickle_size: 1GiB, ...}          # every cdr::Limits field
//   repositories:                                                        # optional, in order
//     - match: "acme-corp/*"                                              # see repository_pattern.h
//       allow_globals: ["sklearn.linear_model._base.LinearRegression"]
//       actions: {forbidden_global: block}
//       limits: {max_pickle_size: 2GiB}
//
// Every key is optional except `version` (in a file) and `match` (in a rule). The top level applies
// to every repository; for a given repository, each setting comes from the first matching rule that
// sets it, else from the top level, else from the built-in default.
//
// A PolicyConfig is an immutable value after loading and may be shared between threads.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "cdr/policy.h"
#include "common/error.h"
#include "config/repository_pattern.h"

namespace zoogate::config {

// The settings one section of the file gives, and only those.
struct PolicyOverrides {
  std::vector<std::pair<cdr::FindingKind, cdr::Action>> actions;
  std::vector<std::pair<uint64_t cdr::Limits::*, uint64_t>> limits;
  // Replaces (not extends) the allowlist additions of sections applied before.
  std::optional<std::vector<cdr::GlobalName>> allow_globals;

  void apply_to(cdr::Policy& policy) const;
};

struct RepositoryRule {
  RepositoryPattern match;
  PolicyOverrides overrides;
};

struct PolicyConfig {
  std::string version = "builtin-1";  // as written in the file
  PolicyOverrides top_level;
  std::vector<RepositoryRule> repositories;  // in file order

  // The effective policy for a canonical repository id ("owner/name", "datasets/owner/name"); "" means
  // no repository, and only the top level applies.
  //
  // Policy::version is "<version>+<fingerprint>", the fingerprint being 16 hex digits of a SHA-256 over
  // the effective actions, limits and allowed globals. The version names the policy in manifests and
  // keys the cache; with the fingerprint, two repositories that get different settings never share a
  // cached result, and neither do two edits of the file that forgot to change `version`.
  cdr::Policy policy_for(std::string_view repository) const;
};

// The built-in policy that applies when no policy file is configured: cdr::Policy's defaults, no rules.
PolicyConfig default_policy_config();

// Parses a policy file's text. Every error is kInvalidArgument with a message that starts with
// "<file_name_for_errors>:LINE:COLUMN: "; nothing throws.
Result<PolicyConfig> parse_policy_config(std::string_view yaml_text, std::string_view file_name_for_errors);

// Reads and parses the policy file at `path` (kIo when it cannot be read).
Result<PolicyConfig> load_policy_config(const std::string& path);

}  // namespace zoogate::config
