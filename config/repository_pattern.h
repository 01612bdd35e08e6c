// Glob patterns over Hub repository ids.
//
// A repository id is "owner/name" for a model ("gpt2" for the few legacy models without an owner),
// "datasets/owner/name" for a dataset and "spaces/owner/name" for a space. A pattern is a list of
// '/'-separated segments matched against the id's segments:
//   - '*' inside a segment matches any run of characters, possibly none, within that one segment;
//   - a segment that is exactly "**" matches any number of whole segments, possibly none;
//   - every other character matches itself, ignoring ASCII case: the Hub resolves repository ids
//     case-insensitively, so "ACME/model" names the same repository as "acme/model" and must meet the
//     same rule.
// So "acme/*" matches "acme/model" but not "acme-evil/model", "acme/model/extra" or
// "datasets/acme/model"; "**/acme/*" matches "acme/model" and "datasets/acme/model" but still not
// "acme/model/extra".
//
// A RepositoryPattern is an immutable value, safe to share between threads. Matching is linear in the
// id's length times the pattern's, with no backtracking blow-up, so a client-chosen id costs little.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "common/error.h"

namespace zoogate::config {

class RepositoryPattern {
 public:
  // Accepts segments made of the characters repository ids use (ASCII letters, digits, '-', '_', '.')
  // and '*'. Refuses, with a kInvalidArgument Error whose message is the reason alone (the caller
  // names the pattern and where it was written): an empty pattern, empty segments (leading, trailing
  // or doubled '/'), "." and ".." segments, '*' runs other than a whole "**" segment, and any other
  // character.
  static Result<RepositoryPattern> parse(std::string_view pattern);

  // `repository` is a canonical id as described above; an id the pattern cannot describe simply does
  // not match.
  bool matches(std::string_view repository) const;

  const std::string& text() const { return text_; }

 private:
  RepositoryPattern(std::string text, std::vector<std::string> segments)
      : text_(std::move(text)), segments_(std::move(segments)) {}

  std::string text_;
  std::vector<std::string> segments_;
};

}  // namespace zoogate::config
