#include "config/policy_config.h"

#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/common/temporary_folder.h"

namespace zoogate::config {
namespace {

using cdr::Action;
using cdr::GlobalName;
using ::testing::HasSubstr;
using ::testing::MatchesRegex;
using ::testing::StartsWith;
using zoogate::testing::TemporaryFolder;

PolicyConfig parse_ok(std::string_view yaml) {
  auto config = parse_policy_config(yaml, "policy.yaml");
  EXPECT_TRUE(config) << config.error().message;
  return config.value();
}

std::string refusal(std::string_view yaml) {
  auto config = parse_policy_config(yaml, "policy.yaml");
  EXPECT_FALSE(config) << yaml;
  if (config) return "";
  EXPECT_EQ(config.error().code, ErrorCode::kInvalidArgument);
  return config.error().message;
}

void expect_default_settings(const cdr::Policy& policy) {
  cdr::Policy defaults;
  EXPECT_EQ(policy.forbidden_global, defaults.forbidden_global);
  EXPECT_EQ(policy.forbidden_call, defaults.forbidden_call);
  EXPECT_EQ(policy.forbidden_build, defaults.forbidden_build);
  EXPECT_EQ(policy.forbidden_persistent_id, defaults.forbidden_persistent_id);
  EXPECT_TRUE(policy.operator_allowed_globals.empty());
  EXPECT_EQ(policy.limits.max_opcodes, defaults.limits.max_opcodes);
  EXPECT_EQ(policy.limits.max_stack_depth, defaults.limits.max_stack_depth);
  EXPECT_EQ(policy.limits.max_nesting_depth, defaults.limits.max_nesting_depth);
  EXPECT_EQ(policy.limits.max_memo_entries, defaults.limits.max_memo_entries);
  EXPECT_EQ(policy.limits.max_memo_index, defaults.limits.max_memo_index);
  EXPECT_EQ(policy.limits.max_string_length, defaults.limits.max_string_length);
  EXPECT_EQ(policy.limits.max_int_bytes, defaults.limits.max_int_bytes);
  EXPECT_EQ(policy.limits.max_pickle_size, defaults.limits.max_pickle_size);
  EXPECT_EQ(policy.limits.max_zip_entries, defaults.limits.max_zip_entries);
  EXPECT_EQ(policy.limits.max_entry_size, defaults.limits.max_entry_size);
  EXPECT_EQ(policy.limits.max_compression_ratio, defaults.limits.max_compression_ratio);
  EXPECT_EQ(policy.limits.max_tensor_count, defaults.limits.max_tensor_count);
}

constexpr std::string_view kFullPolicy = R"(# every key, each set away from its default
version: "2026-11-26.1"
actions:
  forbidden_global: block
  forbidden_call: block
  forbidden_build: block
  forbidden_persistent_id: disarm
limits:
  max_opcodes: 11
  max_stack_depth: 12
  max_nesting_depth: 13
  max_memo_entries: 14
  max_memo_index: 15
  max_string_length: 16MiB
  max_int_bytes: 2KiB
  max_pickle_size: 2GiB
  max_zip_entries: 19
  max_entry_size: 3TiB
  max_compression_ratio: 21
  max_tensor_count: 22
repositories:
  - match: "acme-corp/*"
    allow_globals: ["sklearn.linear_model._base.LinearRegression", collections.Counter]
    actions: {forbidden_global: disarm}
    limits: {max_pickle_size: 4GiB}
)";

TEST(DefaultPolicyConfig, GivesTheBuiltInPolicyEverywhere) {
  PolicyConfig config = default_policy_config();
  EXPECT_TRUE(config.repositories.empty());
  for (std::string_view repository : {"", "acme/model", "datasets/acme/data"}) {
    cdr::Policy policy = config.policy_for(repository);
    expect_default_settings(policy);
    EXPECT_THAT(policy.version, MatchesRegex("builtin-1\\+[0-9a-f]{16}"));
  }
}

TEST(PolicyConfig, ReadsEveryKey) {
  PolicyConfig config = parse_ok(kFullPolicy);
  EXPECT_EQ(config.version, "2026-11-26.1");
  cdr::Policy policy = config.policy_for("");
  EXPECT_THAT(policy.version, MatchesRegex("2026-11-26\\.1\\+[0-9a-f]{16}"));
  EXPECT_EQ(policy.forbidden_global, Action::kBlock);
  EXPECT_EQ(policy.forbidden_call, Action::kBlock);
  EXPECT_EQ(policy.forbidden_build, Action::kBlock);
  EXPECT_EQ(policy.forbidden_persistent_id, Action::kDisarm);
  EXPECT_TRUE(policy.operator_allowed_globals.empty());
  EXPECT_EQ(policy.limits.max_opcodes, 11u);
  EXPECT_EQ(policy.limits.max_stack_depth, 12u);
  EXPECT_EQ(policy.limits.max_nesting_depth, 13u);
  EXPECT_EQ(policy.limits.max_memo_entries, 14u);
  EXPECT_EQ(policy.limits.max_memo_index, 15u);
  EXPECT_EQ(policy.limits.max_string_length, 16u << 20);
  EXPECT_EQ(policy.limits.max_int_bytes, 2048u);
  EXPECT_EQ(policy.limits.max_pickle_size, 2ull << 30);
  EXPECT_EQ(policy.limits.max_zip_entries, 19u);
  EXPECT_EQ(policy.limits.max_entry_size, 3ull << 40);
  EXPECT_EQ(policy.limits.max_compression_ratio, 21u);
  EXPECT_EQ(policy.limits.max_tensor_count, 22u);

  cdr::Policy acme = config.policy_for("acme-corp/model");
  EXPECT_EQ(acme.forbidden_global, Action::kDisarm);
  EXPECT_EQ(acme.forbidden_call, Action::kBlock);
  EXPECT_EQ(acme.limits.max_pickle_size, 4ull << 30);
  EXPECT_EQ(acme.limits.max_opcodes, 11u);
  EXPECT_EQ(acme.operator_allowed_globals,
            (std::vector<GlobalName>{{"sklearn.linear_model._base", "LinearRegression"},
                                     {"collections", "Counter"}}));
}

TEST(PolicyConfig, KeysLeftOutKeepTheirDefaults) {
  PolicyConfig config = parse_ok("version: v1\n");
  EXPECT_TRUE(config.repositories.empty());
  expect_default_settings(config.policy_for(""));
  expect_default_settings(config.policy_for("acme/model"));

  cdr::Policy partial =
      parse_ok("version: v1\nactions: {forbidden_call: block}\nlimits: {max_opcodes: 5}\n").policy_for("");
  EXPECT_EQ(partial.forbidden_call, Action::kBlock);
  EXPECT_EQ(partial.forbidden_global, cdr::Policy().forbidden_global);
  EXPECT_EQ(partial.limits.max_opcodes, 5u);
  EXPECT_EQ(partial.limits.max_pickle_size, cdr::Limits().max_pickle_size);
}

TEST(PolicyConfig, ByteLimitsTakeUnitsAndCountsDoNot) {
  for (std::string_view key : {"max_string_length", "max_int_bytes", "max_pickle_size", "max_entry_size"}) {
    std::string yaml = "version: v1\nlimits:\n  " + std::string(key) + ": 1 KiB\n";
    EXPECT_TRUE(parse_policy_config(yaml, "policy.yaml")) << key;
  }
  for (std::string_view key :
       {"max_opcodes", "max_stack_depth", "max_nesting_depth", "max_memo_entries", "max_memo_index",
        "max_zip_entries", "max_compression_ratio", "max_tensor_count"}) {
    std::string yaml = "version: v1\nlimits:\n  " + std::string(key) + ": 1KiB\n";
    EXPECT_EQ(refusal(yaml), "policy.yaml:3:" + std::to_string(key.size() + 5) + ": 'limits." +
                                 std::string(key) +
                                 "' must be an integer from 1 to 18446744073709551615, got '1KiB'");
  }
}

TEST(PolicyConfig, RefusesZeroAndOverflowingLimits) {
  EXPECT_EQ(
      refusal("version: v1\nlimits:\n  max_opcodes: 0\n"),
      "policy.yaml:3:16: 'limits.max_opcodes' must be an integer from 1 to 18446744073709551615, got '0'");
  EXPECT_THAT(refusal("version: v1\nlimits:\n  max_pickle_size: 0GiB\n"),
              StartsWith("policy.yaml:3:20: 'limits.max_pickle_size' must be a byte size from 1B to"));
  EXPECT_THAT(refusal("version: v1\nlimits:\n  max_entry_size: 16777216TiB\n"),
              StartsWith("policy.yaml:3:19: 'limits.max_entry_size' must be a byte size"));
  EXPECT_THAT(refusal("version: v1\nlimits:\n  max_opcodes: 18446744073709551616\n"),
              StartsWith("policy.yaml:3:16: 'limits.max_opcodes' must be an integer"));
  EXPECT_THAT(refusal("version: v1\nlimits:\n  max_opcodes: -1\n"), StartsWith("policy.yaml:3:16: "));
}

TEST(PolicyConfig, RefusesUnknownKeysEverywhere) {
  EXPECT_EQ(refusal("version: v1\nlimit: {}\n"),
            "policy.yaml:2:1: unknown key 'limit' at the top level (allowed: version, actions, limits, "
            "repositories)");
  EXPECT_EQ(refusal("version: v1\nactions:\n  forbidden_globals: block\n"),
            "policy.yaml:3:3: unknown key 'forbidden_globals' in 'actions' (allowed: forbidden_global, "
            "forbidden_call, forbidden_build, forbidden_persistent_id)");
  EXPECT_THAT(refusal("version: v1\nlimits:\n  max_opcodes: 5\n  max_opcode: 5\n"),
              StartsWith("policy.yaml:4:3: unknown key 'max_opcode' in 'limits' (allowed: max_opcodes, "
                         "max_stack_depth, "));
  EXPECT_EQ(
      refusal("version: v1\nrepositories:\n  - match: a/b\n    allow_global: [x.y]\n"),
      "policy.yaml:4:5: unknown key 'allow_global' in 'repositories[0]' (allowed: match, allow_globals, "
      "actions, limits)");
  EXPECT_THAT(refusal("version: v1\nrepositories:\n  - match: a/b\n    limits: {max_opcodes: 1, bogus: 2}\n"),
              StartsWith("policy.yaml:4:30: unknown key 'bogus' in 'repositories[0].limits'"));
  EXPECT_THAT(refusal("version: v1\nallow_globals: [collections.Counter]\n"),
              StartsWith("policy.yaml:2:1: unknown key 'allow_globals' at the top level"));
}

TEST(PolicyConfig, RefusesDuplicateKeys) {
  EXPECT_EQ(refusal("version: v1\nlimits:\n  max_opcodes: 5\n  max_opcodes: 6\n"),
            "policy.yaml:4:3: duplicate key 'max_opcodes' in 'limits' (first given at policy.yaml:3:16)");
}

TEST(PolicyConfig, RefusesWrongTypes) {
  EXPECT_EQ(refusal("version: v1\nactions: [block]\n"),
            "policy.yaml:2:10: 'actions' must be a mapping, got a list");
  EXPECT_EQ(refusal("version: v1\nlimits:\n"), "policy.yaml:2:1: 'limits' must be a mapping, got nothing");
  EXPECT_EQ(
      refusal("version: v1\nlimits:\n  max_opcodes: [1]\n"),
      "policy.yaml:3:16: 'limits.max_opcodes' must be an integer from 1 to 18446744073709551615, got a list");
  EXPECT_EQ(refusal("version: {a: 1}\n"),
            "policy.yaml:1:10: 'version' must be a non-empty string, got a mapping");
  EXPECT_EQ(refusal("version: v1\nrepositories: {match: a/b}\n"),
            "policy.yaml:2:15: 'repositories' must be a list, got a mapping");
  EXPECT_EQ(refusal("version: v1\nrepositories: [a/b]\n"),
            "policy.yaml:2:16: 'repositories[0]' must be a mapping, got 'a/b'");
  EXPECT_EQ(refusal("version: v1\nrepositories:\n  - match: a/b\n    allow_globals: collections.Counter\n"),
            "policy.yaml:4:20: 'repositories[0].allow_globals' must be a list, got 'collections.Counter'");
  EXPECT_EQ(refusal("- a\n- b\n"), "policy.yaml:1:1: the document must be a mapping, got a list");
}

TEST(PolicyConfig, RefusesUnknownActions) {
  EXPECT_EQ(refusal("version: v1\nactions:\n  forbidden_call: warn\n"),
            "policy.yaml:3:19: 'actions.forbidden_call' must be one of disarm, block; got 'warn'");
  EXPECT_EQ(refusal("version: v1\nactions:\n  forbidden_call: Block\n"),
            "policy.yaml:3:19: 'actions.forbidden_call' must be one of disarm, block; got 'Block'");
}

TEST(PolicyConfig, VersionIsRequiredAndPlain) {
  EXPECT_EQ(refusal(""), "policy.yaml: missing required key 'version' at the top level");
  EXPECT_EQ(refusal("actions: {}\n"), "policy.yaml:1:1: missing required key 'version' at the top level");
  EXPECT_EQ(refusal("version: \"\"\n"), "policy.yaml:1:10: 'version' must be a non-empty string");
  EXPECT_EQ(refusal("version: a/b\n"),
            "policy.yaml:1:10: 'version' must be at most 64 letters, digits, '.', '_' or '-', got 'a/b'");
  EXPECT_THAT(refusal("version: " + std::string(65, 'v') + "\n"),
              StartsWith("policy.yaml:1:10: 'version' must be"));
  EXPECT_EQ(parse_ok("version: 2026.1\n").version, "2026.1");
  EXPECT_EQ(parse_ok("version: " + std::string(64, 'v') + "\n").version, std::string(64, 'v'));
}

TEST(PolicyConfig, SyntaxErrorsCarryTheirLine) {
  EXPECT_THAT(refusal("version: v1\nlimits: {max_opcodes: 5\n"), StartsWith("policy.yaml:3:"));
  EXPECT_THAT(refusal("version: v1\n\tlimits: {}\n"), StartsWith("policy.yaml:2:"));
}

TEST(PolicyRules, MatchIsRequiredAndMustBeAValidPattern) {
  EXPECT_EQ(refusal("version: v1\nrepositories:\n  - limits: {max_opcodes: 1}\n"),
            "policy.yaml:3:5: missing required key 'match' in 'repositories[0]'");
  EXPECT_EQ(refusal("version: v1\nrepositories:\n  - match: acme//x\n    limits: {max_opcodes: 1}\n"),
            "policy.yaml:3:12: bad repository pattern 'acme//x': a segment is empty (a leading, trailing or "
            "doubled '/')");
  EXPECT_EQ(
      refusal("version: v1\nrepositories:\n  - match: acme/x**\n    limits: {max_opcodes: 1}\n"),
      "policy.yaml:3:12: bad repository pattern 'acme/x**': '**' must be a whole segment between slashes");
  EXPECT_EQ(refusal("version: v1\nrepositories:\n  - {match: acme/*}\n"),
            "policy.yaml:3:5: the rule for 'acme/*' changes nothing (give allow_globals, actions or limits)");
}

TEST(PolicyRules, OnlyMatchingRepositoriesGetARule) {
  PolicyConfig config = parse_ok(kFullPolicy);
  cdr::Policy top = config.policy_for("");
  for (std::string_view other :
       {"acme-corp", "acme-corp-evil/model", "acme-corp/model/x", "datasets/acme-corp/x", "evil/acme-corp"}) {
    cdr::Policy policy = config.policy_for(other);
    EXPECT_TRUE(policy.operator_allowed_globals.empty()) << other;
    EXPECT_EQ(policy.limits.max_pickle_size, 2ull << 30) << other;
    EXPECT_EQ(policy.version, top.version) << other;
  }
  EXPECT_FALSE(config.policy_for("ACME-Corp/Model").operator_allowed_globals.empty());
}

TEST(PolicyRules, FirstMatchingRuleWinsPerKey) {
  PolicyConfig config = parse_ok(R"(version: v1
limits: {max_opcodes: 100}
repositories:
  - match: acme/special
    limits: {max_pickle_size: 4GiB}
    actions: {forbidden_call: block}
  - match: acme/*
    allow_globals: [collections.Counter]
    limits: {max_pickle_size: 2GiB, max_opcodes: 200}
  - match: "**"
    allow_globals: [collections.ChainMap]
    actions: {forbidden_call: disarm, forbidden_build: block}
)");
  cdr::Policy special = config.policy_for("acme/special");
  EXPECT_EQ(special.limits.max_pickle_size, 4ull << 30);
  EXPECT_EQ(special.limits.max_opcodes, 200u);
  EXPECT_EQ(special.forbidden_call, Action::kBlock);
  EXPECT_EQ(special.forbidden_build, Action::kBlock);
  EXPECT_EQ(special.operator_allowed_globals, (std::vector<GlobalName>{{"collections", "Counter"}}));

  cdr::Policy other = config.policy_for("acme/other");
  EXPECT_EQ(other.limits.max_pickle_size, 2ull << 30);
  EXPECT_EQ(other.forbidden_call, Action::kDisarm);

  cdr::Policy elsewhere = config.policy_for("someone/else");
  EXPECT_EQ(elsewhere.limits.max_opcodes, 100u);
  EXPECT_EQ(elsewhere.limits.max_pickle_size, cdr::Limits().max_pickle_size);
  EXPECT_EQ(elsewhere.operator_allowed_globals, (std::vector<GlobalName>{{"collections", "ChainMap"}}));

  cdr::Policy no_repository = config.policy_for("");
  EXPECT_TRUE(no_repository.operator_allowed_globals.empty());
  EXPECT_EQ(no_repository.forbidden_build, cdr::Policy().forbidden_build);
}

TEST(PolicyRules, AnEmptyAllowListHidesLaterRules) {
  PolicyConfig config = parse_ok(R"(version: v1
repositories:
  - match: acme/untrusted
    allow_globals: []
  - match: acme/*
    allow_globals: [collections.Counter]
)");
  EXPECT_TRUE(config.policy_for("acme/untrusted").operator_allowed_globals.empty());
  EXPECT_EQ(config.policy_for("acme/x").operator_allowed_globals.size(), 1u);
}

TEST(PolicyRules, GlobalsSplitAtTheLastDot) {
  PolicyConfig config = parse_ok(R"(version: v1
repositories:
  - match: a/b
    allow_globals:
      - collections.Counter
      - "sklearn.linear_model._base.LinearRegression"
      - numpy.core.multiarray._reconstruct2
      - m1._private_
)");
  EXPECT_EQ(config.policy_for("a/b").operator_allowed_globals,
            (std::vector<GlobalName>{{"collections", "Counter"},
                                     {"sklearn.linear_model._base", "LinearRegression"},
                                     {"numpy.core.multiarray", "_reconstruct2"},
                                     {"m1", "_private_"}}));
}

TEST(PolicyRules, RefusesBadGlobalsWithTheirLine) {
  auto rule_with = [](std::string_view global) {
    return refusal(
        "version: v1\nrepositories:\n  - match: a/b\n    allow_globals:\n      - ok.Name\n      - " +
        std::string(global) + "\n");
  };
  EXPECT_EQ(
      rule_with("Counter"),
      "policy.yaml:6:9: bad global 'Counter': write the global as module.name, e.g. collections.OrderedDict");
  EXPECT_EQ(rule_with("sklearn.*"),
            "policy.yaml:6:9: bad global 'sklearn.*': wildcards are not supported; list each global by its "
            "exact name");
  EXPECT_THAT(rule_with("\"torch.nn.*.Linear\""), HasSubstr("wildcards are not supported"));
  const std::string dunder =
      "names starting with '__' (__builtin__, __main__, __reduce__, ...) are never allowed";
  EXPECT_EQ(rule_with("__builtin__.eval"), "policy.yaml:6:9: bad global '__builtin__.eval': " + dunder);
  EXPECT_EQ(rule_with("__main__.Model"), "policy.yaml:6:9: bad global '__main__.Model': " + dunder);
  EXPECT_EQ(rule_with("torch.Tensor.__reduce_ex__"),
            "policy.yaml:6:9: bad global 'torch.Tensor.__reduce_ex__': " + dunder);
  EXPECT_EQ(rule_with("pkg.__init__.Thing"), "policy.yaml:6:9: bad global 'pkg.__init__.Thing': " + dunder);
  const std::string not_identifier =
      "every dot-separated part must be a Python identifier (ASCII letters, digits, '_')";
  for (std::string_view bad : {"collections..Counter", ".Counter", "collections.", "1abc.Name", "a-b.Name",
                               "\"a b.Name\"", "\"a.Na me\""}) {
    EXPECT_THAT(rule_with(bad), HasSubstr(not_identifier)) << bad;
  }
  EXPECT_EQ(rule_with("os.system"),
            "policy.yaml:6:9: bad global 'os.system': module 'os' gives code execution or system access and "
            "is never "
            "allowed");
  for (std::string_view never :
       {"builtins.getattr", "os.path.join", "subprocess.Popen", "posix.system", "importlib.import_module",
        "runpy._run_code", "pickle.loads", "functools.partial", "operator.attrgetter", "sys.modules",
        "ctypes.CDLL", "shutil.rmtree"}) {
    EXPECT_THAT(rule_with(never), HasSubstr("is never allowed")) << never;
  }
  EXPECT_EQ(rule_with("ok.Name"), "policy.yaml:6:9: 'ok.Name' is listed twice (first at policy.yaml:5:9)");
  EXPECT_EQ(rule_with("[x]"),
            "policy.yaml:6:9: 'repositories[0].allow_globals[1]' must be a non-empty string, "
            "got a list");
}

TEST(PolicyRules, NeverAllowedModulesAreMatchedByWholeComponent) {
  PolicyConfig config = parse_ok(
      "version: v1\nrepositories:\n  - match: a/b\n"
      "    allow_globals: [osmosis.Model, mypkg.os.Thing, system_tools.Tool]\n");
  EXPECT_EQ(config.policy_for("a/b").operator_allowed_globals.size(), 3u);
}

TEST(PolicyVersion, FingerprintFollowsTheEffectiveSettings) {
  PolicyConfig config = parse_ok(R"(version: v1
repositories:
  - match: acme/*
    allow_globals: [collections.Counter]
  - match: big/*
    limits: {max_pickle_size: 4GiB}
  - match: same/*
    limits: {max_pickle_size: 1GiB}
)");
  std::string top = config.policy_for("").version;
  EXPECT_EQ(config.policy_for("someone/else").version, top);
  EXPECT_EQ(config.policy_for("same/x").version, top);  // overrides equal to the defaults change nothing
  EXPECT_NE(config.policy_for("acme/x").version, top);
  EXPECT_NE(config.policy_for("big/x").version, top);
  EXPECT_NE(config.policy_for("acme/x").version, config.policy_for("big/x").version);
  // Same settings under another name keep the fingerprint; other settings under the same name do not.
  EXPECT_EQ(parse_ok("version: v2\n").policy_for("").version.substr(2), top.substr(2));
  EXPECT_NE(parse_ok("version: v1\nactions: {forbidden_call: block}\n").policy_for("").version, top);
  EXPECT_EQ(default_policy_config().policy_for("").version.substr(9), top.substr(2));
}

TEST(PolicyVersion, GlobalOrderDoesNotMatter) {
  auto version_with = [](std::string_view globals) {
    return parse_ok("version: v1\nrepositories:\n  - match: a/b\n    allow_globals: " + std::string(globals) +
                    "\n")
        .policy_for("a/b")
        .version;
  };
  EXPECT_EQ(version_with("[collections.Counter, collections.ChainMap]"),
            version_with("[collections.ChainMap, collections.Counter]"));
  EXPECT_NE(version_with("[collections.Counter]"), version_with("[collections.ChainMap]"));
}

TEST(PolicyFile, LoadsFilesAndNamesThemInErrors) {
  const TemporaryFolder folder;
  auto config = load_policy_config(folder.write("good.yaml", kFullPolicy));
  ASSERT_TRUE(config) << config.error().message;
  EXPECT_EQ(config->policy_for("acme-corp/x").limits.max_pickle_size, 4ull << 30);

  const std::string bad = folder.write("bad.yaml", "version: v1\nlimits:\n  max_opcodes: lots\n");
  auto refused = load_policy_config(bad);
  ASSERT_FALSE(refused);
  EXPECT_THAT(refused.error().message, StartsWith(bad + ":3:16: 'limits.max_opcodes' must be"));

  auto missing = load_policy_config(folder.file("missing.yaml"));
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code, ErrorCode::kIo);
}

}  // namespace
}  // namespace zoogate::config
