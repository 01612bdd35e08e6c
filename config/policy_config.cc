#include "config/policy_config.h"

#include <algorithm>
#include <array>
#include <limits>
#include <span>

#include "common/encoding.h"
#include "common/sha256.h"
#include "config/yaml_reader.h"

namespace zoogate::config {
namespace {

enum class LimitUnit { kCount, kBytes };

struct LimitField {
  std::string_view name;  // the key under `limits:`, identical to the cdr::Limits field name
  uint64_t cdr::Limits::*member;
  LimitUnit unit;
};

constexpr std::array<LimitField, 14> kLimitFields = {{
    {"max_opcodes", &cdr::Limits::max_opcodes, LimitUnit::kCount},
    {"max_stack_depth", &cdr::Limits::max_stack_depth, LimitUnit::kCount},
    {"max_nesting_depth", &cdr::Limits::max_nesting_depth, LimitUnit::kCount},
    {"max_memo_entries", &cdr::Limits::max_memo_entries, LimitUnit::kCount},
    {"max_memo_index", &cdr::Limits::max_memo_index, LimitUnit::kCount},
    {"max_string_length", &cdr::Limits::max_string_length, LimitUnit::kBytes},
    {"max_int_bytes", &cdr::Limits::max_int_bytes, LimitUnit::kBytes},
    {"max_pickle_size", &cdr::Limits::max_pickle_size, LimitUnit::kBytes},
    {"max_zip_entries", &cdr::Limits::max_zip_entries, LimitUnit::kCount},
    {"max_entry_size", &cdr::Limits::max_entry_size, LimitUnit::kBytes},
    {"max_compression_ratio", &cdr::Limits::max_compression_ratio, LimitUnit::kCount},
    {"max_tensor_count", &cdr::Limits::max_tensor_count, LimitUnit::kCount},
    {"max_safetensors_header_size", &cdr::Limits::max_safetensors_header_size, LimitUnit::kBytes},
    {"max_npy_header_size", &cdr::Limits::max_npy_header_size, LimitUnit::kBytes},
}};
// A limit added to cdr::Limits must also become readable here (and documented in docs/policy.md).
static_assert(sizeof(cdr::Limits) == kLimitFields.size() * sizeof(uint64_t),
              "cdr::Limits changed: update kLimitFields and docs/policy.md");

struct ActionField {
  cdr::FindingKind kind;  // the key under `actions:` is cdr::to_string(kind)
  cdr::Action cdr::Policy::*member;
};

constexpr std::array<ActionField, 4> kActionFields = {{
    {cdr::FindingKind::kForbiddenGlobal, &cdr::Policy::forbidden_global},
    {cdr::FindingKind::kForbiddenCall, &cdr::Policy::forbidden_call},
    {cdr::FindingKind::kForbiddenBuild, &cdr::Policy::forbidden_build},
    {cdr::FindingKind::kForbiddenPersistentId, &cdr::Policy::forbidden_persistent_id},
}};

constexpr std::array<std::string_view, 4> kTopLevelKeys = {"version", "actions", "limits", "repositories"};
constexpr std::array<std::string_view, 4> kRuleKeys = {"match", "allow_globals", "actions", "limits"};

// Modules in which allowing any callable gives code execution, file, process or network access, or a
// way to reach such a callable. Refused in allow_globals together with all their submodules. A safety
// net against the worst mistakes, not a guarantee: docs/policy.md explains the risk of every addition.
constexpr std::array<std::string_view, 31> kNeverAllowedModules = {
    "builtins", "os",       "posix",     "nt",        "subprocess", "sys",     "importlib",  "runpy",
    "pickle",   "_pickle",  "marshal",   "ctypes",    "shutil",     "socket",  "pty",        "code",
    "codeop",   "operator", "_operator", "functools", "types",      "pdb",     "webbrowser", "io",
    "_io",      "signal",   "threading", "_thread",   "inspect",    "asyncio", "multiprocessing",
};

const std::vector<std::string_view>& action_keys() {
  static const std::vector<std::string_view> keys = [] {
    std::vector<std::string_view> names;
    for (const ActionField& field : kActionFields) names.push_back(cdr::to_string(field.kind));
    return names;
  }();
  return keys;
}

const std::vector<std::string_view>& limit_keys() {
  static const std::vector<std::string_view> keys = [] {
    std::vector<std::string_view> names;
    for (const LimitField& field : kLimitFields) names.push_back(field.name);
    return names;
  }();
  return keys;
}

Result<std::vector<std::pair<cdr::FindingKind, cdr::Action>>> read_actions(const YamlNode& node) {
  auto section = node.as_mapping(action_keys());
  if (!section) return fail(std::move(section.error()));
  const std::array<EnumChoice<cdr::Action>, 2> choices = {{
      {cdr::to_string(cdr::Action::kDisarm), cdr::Action::kDisarm},
      {cdr::to_string(cdr::Action::kBlock), cdr::Action::kBlock},
  }};
  std::vector<std::pair<cdr::FindingKind, cdr::Action>> actions;
  for (const auto& [key, value] : section->entries()) {
    auto field = std::find_if(
        kActionFields.begin(), kActionFields.end(),
        [&key = key](const ActionField& candidate) { return cdr::to_string(candidate.kind) == key; });
    auto action = value.as_enum<cdr::Action>(choices);
    if (!action) return fail(std::move(action.error()));
    actions.emplace_back(field->kind, *action);
  }
  return actions;
}

Result<std::vector<std::pair<uint64_t cdr::Limits::*, uint64_t>>> read_limits(const YamlNode& node) {
  auto section = node.as_mapping(limit_keys());
  if (!section) return fail(std::move(section.error()));
  constexpr uint64_t kMax = std::numeric_limits<uint64_t>::max();
  std::vector<std::pair<uint64_t cdr::Limits::*, uint64_t>> limits;
  for (const auto& [key, value] : section->entries()) {
    auto field = std::find_if(kLimitFields.begin(), kLimitFields.end(),
                              [&key = key](const LimitField& candidate) { return candidate.name == key; });
    // Zero would refuse every file (or, for some limits, mean nothing): never what an operator wants.
    auto limit = field->unit == LimitUnit::kBytes ? value.as_byte_size(1, kMax) : value.as_unsigned(1, kMax);
    if (!limit) return fail(std::move(limit.error()));
    limits.emplace_back(field->member, *limit);
  }
  return limits;
}

bool is_ascii_alnum(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

bool is_identifier(std::string_view text) {
  if (text.empty() || (text[0] >= '0' && text[0] <= '9')) return false;
  return std::all_of(text.begin(), text.end(), [](char c) { return is_ascii_alnum(c) || c == '_'; });
}

// "module.sub.name" -> {"module.sub", "name"}, split at the last dot as pickle's GLOBAL names them.
// Returns the reason alone on refusal.
Result<cdr::GlobalName> parse_global_name(std::string_view text) {
  auto refuse = [](std::string why) { return fail(ErrorCode::kInvalidArgument, std::move(why)); };
  if (text.find_first_of("*?[") != std::string_view::npos) {
    return refuse("wildcards are not supported; list each global by its exact name");
  }
  size_t last_dot = text.rfind('.');
  if (last_dot == std::string_view::npos) {
    return refuse("write the global as module.name, e.g. collections.OrderedDict");
  }
  cdr::GlobalName global{std::string(text.substr(0, last_dot)), std::string(text.substr(last_dot + 1))};
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = std::min(text.find('.', start), text.size());
    std::string_view component = text.substr(start, end - start);
    if (!is_identifier(component)) {
      return refuse("every dot-separated part must be a Python identifier (ASCII letters, digits, '_')");
    }
    if (component.starts_with("__")) {
      return refuse("names starting with '__' (__builtin__, __main__, __reduce__, ...) are never allowed");
    }
    start = end + 1;
  }
  std::string_view top_module = text.substr(0, text.find('.'));
  if (std::find(kNeverAllowedModules.begin(), kNeverAllowedModules.end(), top_module) !=
      kNeverAllowedModules.end()) {
    return refuse("module '" + std::string(top_module) +
                  "' gives code execution or system access and is never allowed");
  }
  return global;
}

Result<std::vector<cdr::GlobalName>> read_allow_globals(const YamlNode& node) {
  std::vector<std::pair<cdr::GlobalName, std::string>> seen;  // name -> where it was first listed
  auto globals = node.as_list<cdr::GlobalName>([&](const YamlNode& item) -> Result<cdr::GlobalName> {
    auto text = item.as_string();
    if (!text) return fail(std::move(text.error()));
    auto global = parse_global_name(*text);
    if (!global) {
      return fail(item.error("bad global " + quote_for_message(*text) + ": " + global.error().message));
    }
    auto previous =
        std::find_if(seen.begin(), seen.end(), [&](const auto& entry) { return entry.first == *global; });
    if (previous != seen.end()) {
      return fail(
          item.error(quote_for_message(*text) + " is listed twice (first at " + previous->second + ")"));
    }
    seen.emplace_back(*global, item.location());
    return global;
  });
  return globals;
}

// Reads the keys that the top level and rules share; the mapping has already refused any other key.
Result<PolicyOverrides> read_overrides(const YamlMapping& section) {
  PolicyOverrides overrides;
  if (auto node = section.find("actions")) {
    auto actions = read_actions(*node);
    if (!actions) return fail(std::move(actions.error()));
    overrides.actions = std::move(*actions);
  }
  if (auto node = section.find("limits")) {
    auto limits = read_limits(*node);
    if (!limits) return fail(std::move(limits.error()));
    overrides.limits = std::move(*limits);
  }
  if (auto node = section.find("allow_globals")) {
    auto globals = read_allow_globals(*node);
    if (!globals) return fail(std::move(globals.error()));
    overrides.allow_globals = std::move(*globals);
  }
  return overrides;
}

Result<RepositoryRule> read_rule(const YamlNode& node) {
  auto rule = node.as_mapping(kRuleKeys);
  if (!rule) return fail(std::move(rule.error()));
  auto match_node = rule->require("match");
  if (!match_node) return fail(std::move(match_node.error()));
  auto match_text = match_node->as_string();
  if (!match_text) return fail(std::move(match_text.error()));
  auto pattern = RepositoryPattern::parse(*match_text);
  if (!pattern) {
    return fail(match_node->error("bad repository pattern " + quote_for_message(*match_text) + ": " +
                                  pattern.error().message));
  }
  if (rule->entries().size() == 1) {
    return fail(node.error("the rule for " + quote_for_message(*match_text) +
                           " changes nothing (give allow_globals, actions or limits)"));
  }
  auto overrides = read_overrides(*rule);
  if (!overrides) return fail(std::move(overrides.error()));
  return RepositoryRule{std::move(*pattern), std::move(*overrides)};
}

// Versions end up in manifests, logs and cache keys: keep them short and free of separators.
Result<std::string> read_version(const YamlNode& node) {
  constexpr size_t kMaxVersionLength = 64;
  auto version = node.as_string();
  if (!version) return fail(std::move(version.error()));
  bool well_formed =
      version->size() <= kMaxVersionLength && std::all_of(version->begin(), version->end(), [](char c) {
        return is_ascii_alnum(c) || c == '.' || c == '_' || c == '-';
      });
  if (!well_formed) {
    return fail(node.error("'version' must be at most " + std::to_string(kMaxVersionLength) +
                           " letters, digits, '.', '_' or '-', got " + quote_for_message(*version)));
  }
  return version;
}

// 16 hex digits of SHA-256 over a canonical text of everything in `policy` that decides a verdict.
std::string settings_fingerprint(const cdr::Policy& policy) {
  std::string canonical;
  for (const ActionField& field : kActionFields) {
    canonical += std::string(cdr::to_string(field.kind)) + "=" +
                 std::string(cdr::to_string(policy.*field.member)) + "\n";
  }
  for (const LimitField& field : kLimitFields) {
    canonical += std::string(field.name) + "=" + std::to_string(policy.limits.*field.member) + "\n";
  }
  std::vector<cdr::GlobalName> globals = policy.operator_allowed_globals;
  std::sort(globals.begin(), globals.end());
  for (const cdr::GlobalName& global : globals) {
    canonical += "allow=" + global.module + " " + global.name + "\n";
  }
  Sha256::Digest digest = Sha256::of(std::string_view(canonical));
  return to_hex(std::span<const uint8_t>(digest.data(), 8));
}

}  // namespace

void PolicyOverrides::apply_to(cdr::Policy& policy) const {
  for (const auto& [kind, action] : actions) {
    for (const ActionField& field : kActionFields) {
      if (field.kind == kind) policy.*field.member = action;
    }
  }
  for (const auto& [member, value] : limits) policy.limits.*member = value;
  if (allow_globals) policy.operator_allowed_globals = *allow_globals;
}

cdr::Policy PolicyConfig::policy_for(std::string_view repository) const {
  cdr::Policy policy;
  top_level.apply_to(policy);
  // Applying the matching rules last to first lets the first rule that sets a key have the last word.
  if (!repository.empty()) {
    for (auto rule = repositories.rbegin(); rule != repositories.rend(); ++rule) {
      if (rule->match.matches(repository)) rule->overrides.apply_to(policy);
    }
  }
  policy.version = version + "+" + settings_fingerprint(policy);
  return policy;
}

PolicyConfig default_policy_config() { return PolicyConfig{}; }

Result<PolicyConfig> parse_policy_config(std::string_view yaml_text, std::string_view file_name_for_errors) {
  auto root = parse_yaml(yaml_text, file_name_for_errors);
  if (!root) return fail(std::move(root.error()));
  auto top = root->as_mapping(kTopLevelKeys);
  if (!top) return fail(std::move(top.error()));

  PolicyConfig config;
  auto version_node = top->require("version");
  if (!version_node) return fail(std::move(version_node.error()));
  auto version = read_version(*version_node);
  if (!version) return fail(std::move(version.error()));
  config.version = std::move(*version);

  auto top_level = read_overrides(*top);
  if (!top_level) return fail(std::move(top_level.error()));
  config.top_level = std::move(*top_level);

  if (auto node = top->find("repositories")) {
    auto rules = node->as_list<RepositoryRule>(read_rule);
    if (!rules) return fail(std::move(rules.error()));
    config.repositories = std::move(*rules);
  }
  return config;
}

Result<PolicyConfig> load_policy_config(const std::string& path) {
  auto text = read_config_file(path);
  if (!text) return fail(std::move(text.error()));
  return parse_policy_config(*text, path);
}

}  // namespace zoogate::config
