// Strict, typed reading of YAML configuration files.
//
// Every configuration section of zoogate is read through these helpers so that all of them behave
// alike: a mapping rejects keys it does not know and keys given twice, every value is checked for its
// type and range, and every error is a kInvalidArgument Error whose message starts with
// "FILE:LINE:COLUMN: " (1-based) and names the key path, for example
//   policy.yaml:7:5: unknown key 'max_opcode' in 'limits' (allowed: max_opcodes, max_stack_depth, ...)
//   policy.yaml:9:18: 'limits.max_pickle_size' must be a byte size from 1B to ..., got '2GB'
//
// yaml-cpp reports syntax errors by throwing. parse_yaml() is the only place that runs its parser and
// turns those exceptions into Errors; the accessors below only use yaml-cpp calls that do not throw on
// the valid nodes a YamlNode holds (they never look keys up with operator[], which can create invalid
// nodes). So nothing thrown by yaml-cpp leaves config/.
//
// Scalars may be plain or quoted ("64MiB" and 64MiB read the same); explicit tags (!!str, !custom) are
// rejected, and so are YAML 1.1 spellings that invite surprises: booleans are exactly true/false,
// integers are plain decimal digits without a sign or leading zeros (so 010 is never octal).
//
// A YamlNode is cheap to copy and keeps its document alive. Nodes of one document share yaml-cpp's
// internals: use a document from one thread at a time.
#pragma once

#include <chrono>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <yaml-cpp/yaml.h>

#include "common/error.h"

namespace zoogate::config {

// Configuration files are small; anything bigger is a mistake or hostile, and is refused unread.
inline constexpr uint64_t kMaxConfigFileBytes = 4ull << 20;

class YamlMapping;

// One name an enum value is spelled with in YAML.
template <typename Enum>
struct EnumChoice {
  std::string_view name;
  Enum value;
};

class YamlNode {
 public:
  YamlNode(YAML::Node node, std::shared_ptr<const std::string> file_name, std::string path, YAML::Mark mark);

  // Key path from the document root: "" for the root, "limits.max_opcodes", "repositories[2].match".
  const std::string& path() const { return path_; }
  // "FILE:LINE:COLUMN", 1-based; just "FILE" for a node that has no position in the text.
  std::string location() const;
  // A kInvalidArgument Error reading "<location>: <message>".
  Error error(std::string_view message) const;

  // A non-empty scalar, verbatim.
  Result<std::string> as_string() const;
  // A scalar, verbatim, possibly empty (written ""): for settings where empty means "not set".
  Result<std::string> as_string_or_empty() const;
  // Exactly `true` or `false`.
  Result<bool> as_bool() const;
  // Decimal digits, in [min, max].
  Result<uint64_t> as_unsigned(uint64_t min, uint64_t max) const;
  // Bytes: digits with an optional unit B, KiB, MiB, GiB or TiB (powers of 1024), optionally separated
  // by one space ("4096", "64MiB", "1 GiB"), in [min, max]. Decimal units (kB, MB, GB) are refused
  // rather than guessed.
  Result<uint64_t> as_byte_size(uint64_t min, uint64_t max) const;
  // Digits followed by a unit ms, s, m or h ("500ms", "30s", "5m"), in [min, max]. A unit is required.
  Result<std::chrono::milliseconds> as_duration(std::chrono::milliseconds min,
                                                std::chrono::milliseconds max) const;
  // One of `names`, spelled exactly; returns its index.
  Result<size_t> as_choice(std::span<const std::string_view> names) const;
  template <typename Enum>
  Result<Enum> as_enum(std::span<const EnumChoice<Enum>> choices) const;

  // The items of a sequence, in order.
  Result<std::vector<YamlNode>> as_sequence() const;
  // A sequence whose items are each read by `read_item` (YamlNode -> Result<T>); stops at the first
  // error, which carries that item's own position.
  template <typename T, typename ReadItem>
  Result<std::vector<T>> as_list(ReadItem&& read_item) const;

  // A mapping whose keys are all in `allowed_keys`, each at most once.
  Result<YamlMapping> as_mapping(std::span<const std::string_view> allowed_keys) const;
  Result<YamlMapping> as_mapping(std::initializer_list<std::string_view> allowed_keys) const;
  // A mapping whose keys are names the file chooses (user names, say), each a plain string given at
  // most once; the caller checks the names themselves.
  Result<YamlMapping> as_open_mapping() const;

 private:
  // The entries of a mapping with plain, unique keys, all in `allowed_keys` unless that is nullopt.
  Result<YamlMapping> mapping(std::optional<std::span<const std::string_view>> allowed_keys) const;
  // The scalar text, or an error saying that `expected` was wanted.
  Result<std::string_view> scalar(std::string_view expected) const;
  // "'limits.max_opcodes'", or "the document" for the root.
  std::string subject() const;
  YamlNode child(YAML::Node node, std::string path, YAML::Mark mark) const;

  YAML::Node node_;
  std::shared_ptr<const std::string> file_name_;
  std::string path_;
  YAML::Mark mark_;
};

// A validated mapping: the entries in document order, keys known and unique.
class YamlMapping {
 public:
  YamlMapping(YamlNode self, std::vector<std::pair<std::string, YamlNode>> entries)
      : self_(std::move(self)), entries_(std::move(entries)) {}

  const std::vector<std::pair<std::string, YamlNode>>& entries() const { return entries_; }
  std::optional<YamlNode> find(std::string_view key) const;
  // The value of `key`, or an error at the mapping's position saying the key is missing.
  Result<YamlNode> require(std::string_view key) const;

 private:
  YamlNode self_;
  std::vector<std::pair<std::string, YamlNode>> entries_;
};

// Parses `text`, which must hold at most one YAML document, and returns its root. An empty document
// (or one with only comments) gives an empty mapping. `file_name` is used only in error messages.
Result<YamlNode> parse_yaml(std::string_view text, std::string_view file_name);

// The integers of configuration files: plain decimal digits, no sign, no leading zeros ("0" itself is
// fine); nullopt when `text` is anything else or above uint64. For integers embedded in a string
// value, such as the port of "127.0.0.1:8080".
std::optional<uint64_t> parse_decimal(std::string_view text);

// Text from a configuration file echoed in a message: quoted, cut to a readable length, control bytes
// escaped, so that a hostile file cannot forge log lines.
std::string quote_for_message(std::string_view text);

// The text as_byte_size() and as_duration() read back to the same value, in the largest unit that
// divides it exactly: 1073741824 -> "1GiB", 90000ms -> "90s". For writing configuration files.
std::string format_byte_size(uint64_t bytes);
std::string format_duration(std::chrono::milliseconds duration);

// Reads a whole configuration file of at most kMaxConfigFileBytes. Errors are kIo and name the path.
Result<std::string> read_config_file(const std::string& path);

inline Result<YamlMapping> YamlNode::as_mapping(std::initializer_list<std::string_view> allowed_keys) const {
  return as_mapping(std::span<const std::string_view>(allowed_keys.begin(), allowed_keys.size()));
}

template <typename Enum>
Result<Enum> YamlNode::as_enum(std::span<const EnumChoice<Enum>> choices) const {
  std::vector<std::string_view> names;
  names.reserve(choices.size());
  for (const auto& choice : choices) names.push_back(choice.name);
  auto index = as_choice(names);
  if (!index) return fail(std::move(index.error()));
  return choices[*index].value;
}

template <typename T, typename ReadItem>
Result<std::vector<T>> YamlNode::as_list(ReadItem&& read_item) const {
  auto items = as_sequence();
  if (!items) return fail(std::move(items.error()));
  std::vector<T> values;
  values.reserve(items->size());
  for (const YamlNode& item : *items) {
    Result<T> value = read_item(item);
    if (!value) return fail(std::move(value.error()));
    values.push_back(std::move(*value));
  }
  return values;
}

}  // namespace zoogate::config
