#include "config/yaml_reader.h"

#include <algorithm>
#include <array>
#include <charconv>
#include <exception>
#include <sstream>

#include <yaml-cpp/eventhandler.h>

#include "common/byte_source.h"
#include "common/checked.h"

namespace zoogate::config {
namespace {

struct Unit {
  std::string_view name;
  uint64_t factor;
};

// Ordered by factor; the first entry has factor 1.
constexpr std::array<Unit, 5> kByteUnits = {{
    {"B", 1},
    {"KiB", 1ull << 10},
    {"MiB", 1ull << 20},
    {"GiB", 1ull << 30},
    {"TiB", 1ull << 40},
}};
constexpr std::array<Unit, 4> kDurationUnits = {{
    {"ms", 1},
    {"s", 1000},
    {"m", 60 * 1000},
    {"h", 60 * 60 * 1000},
}};

std::string join(std::span<const std::string_view> names, std::string_view separator) {
  std::string text;
  for (size_t i = 0; i < names.size(); ++i) {
    if (i > 0) text += separator;
    text += names[i];
  }
  return text;
}

std::string unit_names(std::span<const Unit> units) {
  std::vector<std::string_view> names;
  for (const Unit& unit : units) names.push_back(unit.name);
  return join(names, ", ");
}

// "<digits>[ ]<unit>", or bare digits when `unit_required` is false (meaning units[0]).
std::optional<uint64_t> parse_with_unit(std::string_view text, std::span<const Unit> units,
                                        bool unit_required) {
  size_t digits_end = std::min(text.find_first_not_of("0123456789"), text.size());
  auto number = parse_decimal(text.substr(0, digits_end));
  if (!number) return std::nullopt;
  std::string_view unit = text.substr(digits_end);
  if (unit.empty()) {
    if (unit_required) return std::nullopt;
    return number;
  }
  if (unit.front() == ' ') unit.remove_prefix(1);
  for (const Unit& candidate : units) {
    if (candidate.name == unit) return checked_mul(*number, candidate.factor);
  }
  return std::nullopt;
}

// The value in the largest unit that divides it exactly: 1073741824 -> "1GiB".
std::string format_with_unit(uint64_t value, std::span<const Unit> units) {
  if (value == 0) return "0" + std::string(units.front().name);
  for (auto unit = units.rbegin(); unit != units.rend(); ++unit) {
    if (value % unit->factor == 0) return std::to_string(value / unit->factor) + std::string(unit->name);
  }
  return std::to_string(value);
}

std::string describe_value(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Map: return "a mapping";
    case YAML::NodeType::Sequence: return "a list";
    case YAML::NodeType::Scalar: return quote_for_message(node.Scalar());
    case YAML::NodeType::Null:
    case YAML::NodeType::Undefined: break;
  }
  return "nothing";
}

// Explicit tags are refused; "?" marks a plain scalar and "!" a quoted one.
bool has_explicit_tag(const YAML::Node& node) {
  const std::string& tag = node.Tag();
  return !tag.empty() && tag != "?" && tag != "!";
}

std::string container_phrase(const std::string& path) {
  return path.empty() ? "at the top level" : "in '" + path + "'";
}

Error too_large(std::string_view file_name) {
  return Error{ErrorCode::kInvalidArgument,
               std::string(file_name) + ": larger than " + format_with_unit(kMaxConfigFileBytes, kByteUnits) +
                   "; configuration files are small",
               std::nullopt};
}

// Records where each document starts and ignores everything else.
class DocumentStarts final : public YAML::EventHandler {
 public:
  std::vector<YAML::Mark> marks;

  void OnDocumentStart(const YAML::Mark& mark) override { marks.push_back(mark); }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t, const std::string&) override {}
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                       YAML::EmitterStyle::value) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                  YAML::EmitterStyle::value) override {}
  void OnMapEnd() override {}
};

}  // namespace

std::optional<uint64_t> parse_decimal(std::string_view text) {
  if (text.empty() || (text.size() > 1 && text[0] == '0')) return std::nullopt;
  if (!std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return std::nullopt;
  }
  uint64_t value = 0;
  auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return value;
}

YamlNode::YamlNode(YAML::Node node, std::shared_ptr<const std::string> file_name, std::string path,
                   YAML::Mark mark)
    : node_(std::move(node)), file_name_(std::move(file_name)), path_(std::move(path)), mark_(mark) {}

std::string YamlNode::location() const {
  if (mark_.is_null()) return *file_name_;
  return *file_name_ + ":" + std::to_string(mark_.line + 1) + ":" + std::to_string(mark_.column + 1);
}

Error YamlNode::error(std::string_view message) const {
  return Error{ErrorCode::kInvalidArgument, location() + ": " + std::string(message), std::nullopt};
}

std::string YamlNode::subject() const { return path_.empty() ? "the document" : "'" + path_ + "'"; }

YamlNode YamlNode::child(YAML::Node node, std::string path, YAML::Mark mark) const {
  return YamlNode(std::move(node), file_name_, std::move(path), mark);
}

Result<std::string_view> YamlNode::scalar(std::string_view expected) const {
  if (!node_.IsScalar()) {
    return fail(error(subject() + " must be " + std::string(expected) + ", got " + describe_value(node_)));
  }
  if (has_explicit_tag(node_)) {
    return fail(error(subject() + " has the explicit tag " + quote_for_message(node_.Tag()) +
                      "; tags are not supported"));
  }
  return std::string_view(node_.Scalar());
}

Result<std::string> YamlNode::as_string() const {
  auto text = scalar("a non-empty string");
  if (!text) return fail(std::move(text.error()));
  if (text->empty()) return fail(error(subject() + " must be a non-empty string"));
  return std::string(*text);
}

Result<std::string> YamlNode::as_string_or_empty() const {
  auto text = scalar("a string");
  if (!text) return fail(std::move(text.error()));
  return std::string(*text);
}

Result<bool> YamlNode::as_bool() const {
  auto text = scalar("true or false");
  if (!text) return fail(std::move(text.error()));
  if (*text == "true") return true;
  if (*text == "false") return false;
  return fail(error(subject() + " must be true or false, got " + quote_for_message(*text)));
}

Result<uint64_t> YamlNode::as_unsigned(uint64_t min, uint64_t max) const {
  std::string expected = "an integer from " + std::to_string(min) + " to " + std::to_string(max);
  auto text = scalar(expected);
  if (!text) return fail(std::move(text.error()));
  auto value = parse_decimal(*text);
  if (!value || *value < min || *value > max) {
    return fail(error(subject() + " must be " + expected + ", got " + quote_for_message(*text)));
  }
  return *value;
}

Result<uint64_t> YamlNode::as_byte_size(uint64_t min, uint64_t max) const {
  std::string expected = "a byte size from " + format_with_unit(min, kByteUnits) + " to " +
                         format_with_unit(max, kByteUnits) + " (digits with an optional unit " +
                         unit_names(kByteUnits) + ")";
  auto text = scalar(expected);
  if (!text) return fail(std::move(text.error()));
  auto value = parse_with_unit(*text, kByteUnits, /*unit_required=*/false);
  if (!value || *value < min || *value > max) {
    return fail(error(subject() + " must be " + expected + ", got " + quote_for_message(*text)));
  }
  return *value;
}

Result<std::chrono::milliseconds> YamlNode::as_duration(std::chrono::milliseconds min,
                                                        std::chrono::milliseconds max) const {
  auto min_ms = static_cast<uint64_t>(std::max<int64_t>(min.count(), 0));
  auto max_ms = static_cast<uint64_t>(std::max<int64_t>(max.count(), 0));
  std::string expected = "a duration from " + format_with_unit(min_ms, kDurationUnits) + " to " +
                         format_with_unit(max_ms, kDurationUnits) + " (digits followed by one of " +
                         unit_names(kDurationUnits) + ")";
  auto text = scalar(expected);
  if (!text) return fail(std::move(text.error()));
  auto value = parse_with_unit(*text, kDurationUnits, /*unit_required=*/true);
  if (!value || *value < min_ms || *value > max_ms) {
    return fail(error(subject() + " must be " + expected + ", got " + quote_for_message(*text)));
  }
  return std::chrono::milliseconds(static_cast<int64_t>(*value));
}

Result<size_t> YamlNode::as_choice(std::span<const std::string_view> names) const {
  std::string expected = "one of " + join(names, ", ");
  auto text = scalar(expected);
  if (!text) return fail(std::move(text.error()));
  auto found = std::find(names.begin(), names.end(), *text);
  if (found == names.end()) {
    return fail(error(subject() + " must be " + expected + "; got " + quote_for_message(*text)));
  }
  return static_cast<size_t>(found - names.begin());
}

Result<std::vector<YamlNode>> YamlNode::as_sequence() const {
  if (!node_.IsSequence()) return fail(error(subject() + " must be a list, got " + describe_value(node_)));
  std::vector<YamlNode> items;
  size_t index = 0;
  for (const YAML::Node& item : node_) {
    YAML::Mark mark = item.Mark().is_null() ? mark_ : item.Mark();
    items.push_back(child(item, path_ + "[" + std::to_string(index) + "]", mark));
    ++index;
  }
  return items;
}

Result<YamlMapping> YamlNode::as_mapping(std::span<const std::string_view> allowed_keys) const {
  return mapping(allowed_keys);
}

Result<YamlMapping> YamlNode::as_open_mapping() const { return mapping(std::nullopt); }

Result<YamlMapping> YamlNode::mapping(std::optional<std::span<const std::string_view>> allowed_keys) const {
  if (!node_.IsMap()) return fail(error(subject() + " must be a mapping, got " + describe_value(node_)));
  std::vector<std::pair<std::string, YamlNode>> entries;
  for (const auto& entry : node_) {
    const YAML::Node& key = entry.first;
    YamlNode key_node = child(key, path_, key.Mark());
    if (!key.IsScalar() || has_explicit_tag(key)) {
      return fail(key_node.error("keys " + container_phrase(path_) + " must be plain strings"));
    }
    const std::string& name = key.Scalar();
    if (allowed_keys && std::find(allowed_keys->begin(), allowed_keys->end(), name) == allowed_keys->end()) {
      return fail(key_node.error("unknown key " + quote_for_message(name) + " " + container_phrase(path_) +
                                 " (allowed: " + join(*allowed_keys, ", ") + ")"));
    }
    auto previous =
        std::find_if(entries.begin(), entries.end(), [&](const auto& seen) { return seen.first == name; });
    if (previous != entries.end()) {
      return fail(key_node.error("duplicate key " + quote_for_message(name) + " " + container_phrase(path_) +
                                 " (first given at " + previous->second.location() + ")"));
    }
    // An empty value has no position of its own (yaml-cpp puts it at the next token): use the key's.
    const YAML::Node& value = entry.second;
    YAML::Mark value_mark = value.IsNull() || value.Mark().is_null() ? key.Mark() : value.Mark();
    entries.emplace_back(name, child(value, path_.empty() ? name : path_ + "." + name, value_mark));
  }
  return YamlMapping(*this, std::move(entries));
}

std::optional<YamlNode> YamlMapping::find(std::string_view key) const {
  for (const auto& [name, value] : entries_) {
    if (name == key) return value;
  }
  return std::nullopt;
}

Result<YamlNode> YamlMapping::require(std::string_view key) const {
  if (auto value = find(key)) return *value;
  return fail(
      self_.error("missing required key " + quote_for_message(key) + " " + container_phrase(self_.path())));
}

Result<YamlNode> parse_yaml(std::string_view text, std::string_view file_name) {
  auto name = std::make_shared<const std::string>(file_name);
  if (text.size() > kMaxConfigFileBytes) return fail(too_large(*name));
  std::string owned_text(text);
  try {
    // yaml-cpp 0.7 reports a token it cannot place at document level (a stray ',') as an endless run
    // of empty documents at that token (jbeder/yaml-cpp#1040), so YAML::LoadAll() never returns. Look
    // at no more than two document starts here, then build the one document with YAML::Load().
    std::istringstream stream(owned_text);
    YAML::Parser parser(stream);
    DocumentStarts starts;
    while (starts.marks.size() < 2 && parser.HandleNextDocument(starts)) {
    }
    if (starts.marks.size() == 2) {
      YAML::Mark second = starts.marks[1];
      YamlNode at(YAML::Node(), name, "", second);
      if (second.pos == starts.marks[0].pos) {
        auto stuck_at = static_cast<size_t>(std::max(second.pos, 0));
        return fail(at.error("unexpected " + quote_for_message(text.substr(std::min(stuck_at, text.size()), 1))));
      }
      return fail(at.error("a second YAML document starts here; a configuration file holds exactly one"));
    }
    YAML::Node root = starts.marks.empty() ? YAML::Node() : YAML::Load(owned_text);
    if (root.IsNull()) return YamlNode(YAML::Node(YAML::NodeType::Map), name, "", YAML::Mark::null_mark());
    YAML::Mark root_mark = root.Mark();
    return YamlNode(std::move(root), name, "", root_mark);
  } catch (const YAML::Exception& exception) {
    YamlNode at(YAML::Node(), name, "", exception.mark);
    return fail(at.error(exception.msg));
  } catch (const std::exception& exception) {
    return fail(ErrorCode::kInvalidArgument, *name + ": " + exception.what());
  }
}

std::string quote_for_message(std::string_view text) {
  constexpr size_t kMaxEcho = 64;
  std::string out = "'";
  for (size_t i = 0; i < text.size() && i < kMaxEcho; ++i) {
    auto byte = static_cast<unsigned char>(text[i]);
    if (byte < 0x20 || byte == 0x7f) {
      constexpr std::string_view kHex = "0123456789abcdef";
      out += "\\x";
      out += kHex[byte >> 4];
      out += kHex[byte & 0xf];
    } else {
      out += static_cast<char>(byte);
    }
  }
  if (text.size() > kMaxEcho) out += "...";
  out += "'";
  return out;
}

std::string format_byte_size(uint64_t bytes) { return format_with_unit(bytes, kByteUnits); }

std::string format_duration(std::chrono::milliseconds duration) {
  return format_with_unit(static_cast<uint64_t>(std::max<int64_t>(duration.count(), 0)), kDurationUnits);
}

Result<std::string> read_config_file(const std::string& path) {
  auto file = FileSource::open(path);
  if (!file) return fail(std::move(file.error()));
  if ((*file)->size() > kMaxConfigFileBytes) {
    return fail(too_large(path));
  }
  auto bytes = (*file)->read_vector(0, static_cast<size_t>((*file)->size()));
  if (!bytes) return fail(std::move(bytes.error()));
  return std::string(bytes->begin(), bytes->end());
}

}  // namespace zoogate::config
