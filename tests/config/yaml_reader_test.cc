#include "config/yaml_reader.h"

#include <cstdint>
#include <filesystem>
#include <limits>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/common/temporary_folder.h"

namespace zoogate::config {
namespace {

using std::chrono::milliseconds;
using ::testing::HasSubstr;
using ::testing::StartsWith;
using zoogate::testing::TemporaryFolder;

constexpr uint64_t kMax = std::numeric_limits<uint64_t>::max();

// The node under the single key `v` of a one-line document.
YamlNode value_of(std::string_view yaml) {
  auto root = parse_yaml(yaml, "t.yaml");
  EXPECT_TRUE(root) << root.error().message;
  auto mapping = root.value().as_mapping({"v"});
  EXPECT_TRUE(mapping) << mapping.error().message;
  return mapping.value().require("v").value();
}

template <typename T>
std::string error_of(const Result<T>& result) {
  EXPECT_FALSE(result);
  if (result) return "";
  EXPECT_EQ(result.error().code, ErrorCode::kInvalidArgument);
  return result.error().message;
}

TEST(YamlParse, SyntaxErrorsBecomeErrorsWithTheirPosition) {
  EXPECT_THAT(error_of(parse_yaml("v: [1, 2\n", "t.yaml")), StartsWith("t.yaml:2:1: "));
  EXPECT_THAT(error_of(parse_yaml("a: 1\n b: 2\n", "t.yaml")), StartsWith("t.yaml:2:"));
  EXPECT_THAT(error_of(parse_yaml("v: *missing\n", "t.yaml")), StartsWith("t.yaml:1:"));
  EXPECT_THAT(error_of(parse_yaml("a: 1\nb: {c: 1]\n", "t.yaml")), StartsWith("t.yaml:2:"));
}

TEST(YamlParse, HostileNestingIsAnErrorNotACrash) {
  std::string deep(100000, '[');
  EXPECT_THAT(error_of(parse_yaml(deep, "t.yaml")), StartsWith("t.yaml:1:"));
}

TEST(YamlParse, RefusesASecondDocument) {
  EXPECT_EQ(error_of(parse_yaml("a: 1\n---\nb: 2\n", "t.yaml")),
            "t.yaml:2:1: a second YAML document starts here; a configuration file holds exactly one");
  EXPECT_EQ(error_of(parse_yaml("a: 1\n...\n,\n", "t.yaml")),
            "t.yaml:3:1: a second YAML document starts here; a configuration file holds exactly one");
}

// yaml-cpp 0.7's LoadAll() loops forever on these (jbeder/yaml-cpp#1040).
TEST(YamlParse, StrayCommasAreErrorsNotEndlessDocuments) {
  EXPECT_EQ(error_of(parse_yaml(",", "t.yaml")), "t.yaml:1:1: unexpected ','");
  EXPECT_EQ(error_of(parse_yaml(",)", "t.yaml")), "t.yaml:1:1: unexpected ','");
  EXPECT_EQ(error_of(parse_yaml("# comment\n, version: v1\n", "t.yaml")), "t.yaml:2:1: unexpected ','");
  EXPECT_THAT(error_of(parse_yaml("- a\n- b\n,\n", "t.yaml")), StartsWith("t.yaml:3:1: "));
}

TEST(YamlParse, EmptyOrCommentOnlyTextIsAnEmptyMapping) {
  for (std::string_view text : {"", "# nothing here\n", "---\n", "~\n"}) {
    auto root = parse_yaml(text, "t.yaml");
    ASSERT_TRUE(root) << text;
    auto mapping = root->as_mapping({"a"});
    ASSERT_TRUE(mapping) << text;
    EXPECT_TRUE(mapping->entries().empty());
    EXPECT_EQ(error_of(mapping->require("a")), "t.yaml: missing required key 'a' at the top level");
  }
}

TEST(YamlParse, RefusesOversizedText) {
  std::string text(kMaxConfigFileBytes + 1, '#');
  EXPECT_THAT(error_of(parse_yaml(text, "t.yaml")), StartsWith("t.yaml: larger than 4MiB"));
}

TEST(YamlMapping, RefusesUnknownKeysNamingThePathAndTheAllowedKeys) {
  auto root = parse_yaml("limits:\n  max_opcodes: 1\n  max_opcode: 2\n", "p.yaml").value();
  auto top = root.as_mapping({"limits"}).value();
  EXPECT_EQ(error_of(top.require("limits")->as_mapping({"max_opcodes", "max_stack_depth"})),
            "p.yaml:3:3: unknown key 'max_opcode' in 'limits' (allowed: max_opcodes, max_stack_depth)");
  EXPECT_EQ(error_of(root.as_mapping({"actions"})),
            "p.yaml:1:1: unknown key 'limits' at the top level (allowed: actions)");
}

TEST(YamlMapping, RefusesDuplicateKeysNamingTheFirst) {
  auto root = parse_yaml("a: 1\nb: 2\na: 3\n", "t.yaml").value();
  EXPECT_EQ(error_of(root.as_mapping({"a", "b"})),
            "t.yaml:3:1: duplicate key 'a' at the top level (first given at t.yaml:1:4)");
}

TEST(YamlMapping, RefusesNonStringKeysAndNonMappings) {
  EXPECT_EQ(error_of(value_of("v: {[a]: 1}").as_mapping({"a"})),
            "t.yaml:1:5: keys in 'v' must be plain strings");
  EXPECT_EQ(error_of(value_of("v: {!!int 1: 1}").as_mapping({"1"})),
            "t.yaml:1:5: keys in 'v' must be plain strings");
  EXPECT_EQ(error_of(value_of("v: [a]").as_mapping({"a"})), "t.yaml:1:4: 'v' must be a mapping, got a list");
  EXPECT_EQ(error_of(value_of("v:").as_mapping({"a"})), "t.yaml:1:1: 'v' must be a mapping, got nothing");
  EXPECT_EQ(error_of(parse_yaml("hello", "t.yaml")->as_mapping({"a"})),
            "t.yaml:1:1: the document must be a mapping, got 'hello'");
}

TEST(YamlMapping, NestedPathsAndRequiredKeys) {
  auto a = value_of("v: {a: {b: x}}").as_mapping({"a"}).value().require("a").value();
  EXPECT_EQ(a.path(), "v.a");
  auto b = a.as_mapping({"b"}).value();
  EXPECT_EQ(b.require("b")->path(), "v.a.b");
  EXPECT_EQ(b.require("b")->as_string().value(), "x");
  EXPECT_EQ(error_of(b.require("c")), "t.yaml:1:8: missing required key 'c' in 'v.a'");
  EXPECT_FALSE(b.find("c"));
}

TEST(YamlMapping, OpenMappingsTakeAnyPlainUniqueKey) {
  auto users = value_of("v: {alice: x, 'bob smith': y}").as_open_mapping().value();
  ASSERT_EQ(users.entries().size(), 2u);
  EXPECT_EQ(users.entries()[0].first, "alice");
  EXPECT_EQ(users.entries()[1].first, "bob smith");
  EXPECT_EQ(users.require("bob smith")->path(), "v.bob smith");
  EXPECT_TRUE(value_of("v: {}").as_open_mapping().value().entries().empty());
  EXPECT_EQ(error_of(value_of("v: {a: 1, a: 2}").as_open_mapping()),
            "t.yaml:1:11: duplicate key 'a' in 'v' (first given at t.yaml:1:8)");
  EXPECT_EQ(error_of(value_of("v: {[a]: 1}").as_open_mapping()), "t.yaml:1:5: keys in 'v' must be plain strings");
  EXPECT_EQ(error_of(value_of("v: [a]").as_open_mapping()), "t.yaml:1:4: 'v' must be a mapping, got a list");
}

TEST(YamlScalar, Strings) {
  EXPECT_EQ(value_of("v: hello").as_string().value(), "hello");
  EXPECT_EQ(value_of("v: 'true'").as_string().value(), "true");
  EXPECT_EQ(value_of("v: |\n  a\n  b\n").as_string().value(), "a\nb\n");
  EXPECT_EQ(error_of(value_of("v: ''").as_string()), "t.yaml:1:4: 'v' must be a non-empty string");
  EXPECT_EQ(error_of(value_of("v: ~").as_string()),
            "t.yaml:1:1: 'v' must be a non-empty string, got nothing");
  EXPECT_EQ(error_of(value_of("v: !!str x").as_string()),
            "t.yaml:1:4: 'v' has the explicit tag 'tag:yaml.org,2002:str'; tags are not supported");
  EXPECT_EQ(error_of(value_of("v: !custom x").as_string()),
            "t.yaml:1:4: 'v' has the explicit tag '!custom'; tags are not supported");
}

TEST(YamlScalar, StringsThatMayBeEmpty) {
  EXPECT_EQ(value_of("v: ''").as_string_or_empty().value(), "");
  EXPECT_EQ(value_of("v: \"\"").as_string_or_empty().value(), "");
  EXPECT_EQ(value_of("v: path/to/file").as_string_or_empty().value(), "path/to/file");
  EXPECT_EQ(error_of(value_of("v:").as_string_or_empty()), "t.yaml:1:1: 'v' must be a string, got nothing");
  EXPECT_EQ(error_of(value_of("v: [a]").as_string_or_empty()), "t.yaml:1:4: 'v' must be a string, got a list");
  EXPECT_EQ(error_of(value_of("v: !!str ''").as_string_or_empty()),
            "t.yaml:1:4: 'v' has the explicit tag 'tag:yaml.org,2002:str'; tags are not supported");
}

TEST(YamlScalar, BooleansAreExactlyTrueOrFalse) {
  EXPECT_EQ(value_of("v: true").as_bool().value(), true);
  EXPECT_EQ(value_of("v: false").as_bool().value(), false);
  EXPECT_EQ(value_of("v: \"false\"").as_bool().value(), false);
  for (std::string_view text : {"v: yes", "v: on", "v: True", "v: 1", "v: y"}) {
    EXPECT_THAT(error_of(value_of(text).as_bool()), HasSubstr("'v' must be true or false, got '")) << text;
  }
}

TEST(YamlScalar, UnsignedIntegersWithRangeChecks) {
  EXPECT_EQ(value_of("v: 12").as_unsigned(1, 100).value(), 12u);
  EXPECT_EQ(value_of("v: '12'").as_unsigned(1, 100).value(), 12u);
  EXPECT_EQ(value_of("v: 0").as_unsigned(0, 1).value(), 0u);
  EXPECT_EQ(value_of("v: 18446744073709551615").as_unsigned(0, kMax).value(), kMax);
  EXPECT_EQ(error_of(value_of("v: 101").as_unsigned(1, 100)),
            "t.yaml:1:4: 'v' must be an integer from 1 to 100, got '101'");
  EXPECT_EQ(error_of(value_of("v: 0").as_unsigned(1, 100)),
            "t.yaml:1:4: 'v' must be an integer from 1 to 100, got '0'");
  for (std::string_view text : {"v: 18446744073709551616", "v: 010", "v: +5", "v: -5", "v: 0x10", "v: 1.5",
                                "v: 1e3", "v: 1_000", "v: ' 5'", "v: '5 '", "v: 5MiB"}) {
    EXPECT_THAT(error_of(value_of(text).as_unsigned(0, kMax)), HasSubstr("'v' must be an integer from 0 to"))
        << text;
  }
  EXPECT_EQ(error_of(value_of("v: [1]").as_unsigned(1, 9)),
            "t.yaml:1:4: 'v' must be an integer from 1 to 9, got a list");
  EXPECT_EQ(error_of(value_of("v:\n").as_unsigned(1, 9)),
            "t.yaml:1:1: 'v' must be an integer from 1 to 9, got nothing");
}

TEST(YamlScalar, ByteSizesWithBinaryUnits) {
  EXPECT_EQ(value_of("v: 4096").as_byte_size(1, kMax).value(), 4096u);
  EXPECT_EQ(value_of("v: 7B").as_byte_size(1, kMax).value(), 7u);
  EXPECT_EQ(value_of("v: 3KiB").as_byte_size(1, kMax).value(), 3u << 10);
  EXPECT_EQ(value_of("v: 64MiB").as_byte_size(1, kMax).value(), 64u << 20);
  EXPECT_EQ(value_of("v: 1 GiB").as_byte_size(1, kMax).value(), 1ull << 30);
  EXPECT_EQ(value_of("v: \"2TiB\"").as_byte_size(1, kMax).value(), 2ull << 40);
  EXPECT_EQ(value_of("v: 16777215TiB").as_byte_size(1, kMax).value(), 16777215ull << 40);
  EXPECT_EQ(error_of(value_of("v: 2GB").as_byte_size(1, 1ull << 30)),
            "t.yaml:1:4: 'v' must be a byte size from 1B to 1GiB (digits with an optional unit B, KiB, MiB, "
            "GiB, TiB), got '2GB'");
  EXPECT_THAT(error_of(value_of("v: 2GiB").as_byte_size(1, 1ull << 30)), HasSubstr("got '2GiB'"));
  EXPECT_THAT(error_of(value_of("v: 1023").as_byte_size(1024, kMax)), HasSubstr("from 1KiB to"));
  for (std::string_view text : {"v: 16777216TiB", "v: 1.5GiB", "v: 1  GiB", "v: GiB", "v: 1gib", "v: '1 '",
                                "v: 1KB", "v: 1kB", "v: 1MB", "v: 1Gi", "v: -1MiB", "v: 01MiB"}) {
    EXPECT_THAT(error_of(value_of(text).as_byte_size(1, kMax)), HasSubstr("'v' must be a byte size")) << text;
  }
}

TEST(YamlScalar, DurationsNeedAUnit) {
  EXPECT_EQ(value_of("v: 500ms").as_duration(milliseconds(1), milliseconds(86400000)).value(),
            milliseconds(500));
  EXPECT_EQ(value_of("v: 30s").as_duration(milliseconds(1), milliseconds(86400000)).value(),
            milliseconds(30000));
  EXPECT_EQ(value_of("v: 5m").as_duration(milliseconds(1), milliseconds(86400000)).value(),
            milliseconds(300000));
  EXPECT_EQ(value_of("v: 2 h").as_duration(milliseconds(1), milliseconds(86400000)).value(),
            milliseconds(7200000));
  EXPECT_EQ(
      error_of(value_of("v: 30").as_duration(milliseconds(1000), milliseconds(60000))),
      "t.yaml:1:4: 'v' must be a duration from 1s to 1m (digits followed by one of ms, s, m, h), got '30'");
  for (std::string_view text : {"v: 1d", "v: 1.5s", "v: 2m", "v: 999ms", "v: s"}) {
    EXPECT_THAT(error_of(value_of(text).as_duration(milliseconds(1000), milliseconds(60000))),
                HasSubstr("'v' must be a duration"))
        << text;
  }
}

TEST(YamlScalar, FormattedSizesAndDurationsReadBack) {
  EXPECT_EQ(format_byte_size(0), "0B");
  EXPECT_EQ(format_byte_size(1025), "1025B");
  EXPECT_EQ(format_byte_size(8ull << 20), "8MiB");
  EXPECT_EQ(format_byte_size(50ull << 30), "50GiB");
  EXPECT_EQ(format_byte_size(1024ull << 40), "1024TiB");
  EXPECT_EQ(format_duration(milliseconds(0)), "0ms");
  EXPECT_EQ(format_duration(milliseconds(1500)), "1500ms");
  EXPECT_EQ(format_duration(milliseconds(90'000)), "90s");
  EXPECT_EQ(format_duration(milliseconds(86'400'000)), "24h");
  for (uint64_t bytes : {uint64_t{1}, uint64_t{4096}, uint64_t{3} << 30, kMax}) {
    EXPECT_EQ(value_of("v: " + format_byte_size(bytes)).as_byte_size(0, kMax).value(), bytes);
  }
  for (milliseconds duration : {milliseconds(1), milliseconds(61'000), milliseconds(7'200'000)}) {
    EXPECT_EQ(value_of("v: " + format_duration(duration)).as_duration(milliseconds(0), milliseconds(86'400'000)).value(),
              duration);
  }
}

TEST(ParseDecimal, PlainDigitsOnly) {
  EXPECT_EQ(parse_decimal("0"), 0u);
  EXPECT_EQ(parse_decimal("65535"), 65535u);
  EXPECT_EQ(parse_decimal("18446744073709551615"), kMax);
  for (std::string_view text : {"", "00", "080", "+1", "-1", " 1", "1 ", "0x10", "18446744073709551616"}) {
    EXPECT_FALSE(parse_decimal(text)) << text;
  }
}

TEST(YamlScalar, EnumsAreSpelledExactly) {
  enum class Mode { kFast, kSafe };
  const std::array<EnumChoice<Mode>, 2> choices = {{{"fast", Mode::kFast}, {"safe", Mode::kSafe}}};
  EXPECT_EQ(value_of("v: safe").as_enum<Mode>(choices).value(), Mode::kSafe);
  EXPECT_EQ(value_of("v: fast").as_enum<Mode>(choices).value(), Mode::kFast);
  EXPECT_EQ(error_of(value_of("v: Safe").as_enum<Mode>(choices)),
            "t.yaml:1:4: 'v' must be one of fast, safe; got 'Safe'");
  EXPECT_EQ(error_of(value_of("v: {}").as_enum<Mode>(choices)),
            "t.yaml:1:4: 'v' must be one of fast, safe, got a mapping");
}

TEST(YamlSequence, ItemsKnowTheirPathAndPosition) {
  auto items = value_of("v:\n  - a\n  - b\n").as_sequence().value();
  ASSERT_EQ(items.size(), 2u);
  EXPECT_EQ(items[1].path(), "v[1]");
  EXPECT_EQ(items[1].location(), "t.yaml:3:5");
  auto read_small = [](const YamlNode& item) { return item.as_unsigned(1, 9); };
  EXPECT_EQ(value_of("v: [1, 2, 3]").as_list<uint64_t>(read_small).value(), (std::vector<uint64_t>{1, 2, 3}));
  EXPECT_TRUE(value_of("v: []").as_list<uint64_t>(read_small).value().empty());
  EXPECT_EQ(error_of(value_of("v: [1, x]").as_list<uint64_t>(read_small)),
            "t.yaml:1:8: 'v[1]' must be an integer from 1 to 9, got 'x'");
  EXPECT_EQ(error_of(value_of("v: a").as_sequence()), "t.yaml:1:4: 'v' must be a list, got 'a'");
}

TEST(QuoteForMessage, EscapesControlBytesAndCutsLongText) {
  EXPECT_EQ(quote_for_message("a\nb\x1b"), "'a\\x0ab\\x1b'");
  EXPECT_EQ(quote_for_message(std::string(100, 'x')), "'" + std::string(64, 'x') + "...'");
}

TEST(ConfigFile, ReadsSmallFilesAndRefusesOthers) {
  const TemporaryFolder folder;
  EXPECT_EQ(read_config_file(folder.write("small.yaml", "a: 1\n")).value(), "a: 1\n");

  auto missing = read_config_file(folder.file("missing.yaml"));
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code, ErrorCode::kIo);
  EXPECT_THAT(missing.error().message, HasSubstr("missing.yaml"));

  auto directory = read_config_file(folder.path().string());
  ASSERT_FALSE(directory);
  EXPECT_EQ(directory.error().code, ErrorCode::kIo);

  const std::string big = folder.write("big.yaml", "");
  std::filesystem::resize_file(big, kMaxConfigFileBytes + 1);
  EXPECT_EQ(error_of(read_config_file(big)),
            big + ": larger than 4MiB; configuration files are small");
}

}  // namespace
}  // namespace zoogate::config
