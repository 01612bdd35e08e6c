#include "config/repository_pattern.h"

#include <chrono>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace zoogate::config {
namespace {

bool matches(std::string_view pattern, std::string_view repository) {
  auto parsed = RepositoryPattern::parse(pattern);
  EXPECT_TRUE(parsed) << pattern << ": " << parsed.error().message;
  return parsed && parsed->matches(repository);
}

std::string refusal(std::string_view pattern) {
  auto parsed = RepositoryPattern::parse(pattern);
  EXPECT_FALSE(parsed) << pattern;
  if (parsed) return "";
  EXPECT_EQ(parsed.error().code, ErrorCode::kInvalidArgument);
  return parsed.error().message;
}

TEST(RepositoryPattern, ExactPatternsMatchOnlyThemselves) {
  EXPECT_TRUE(matches("acme/model", "acme/model"));
  EXPECT_FALSE(matches("acme/model", "acme/model2"));
  EXPECT_FALSE(matches("acme/model", "acme/mode"));
  EXPECT_FALSE(matches("acme/model", "xacme/model"));
  EXPECT_FALSE(matches("acme/model", "datasets/acme/model"));
  EXPECT_TRUE(matches("gpt2", "gpt2"));
  EXPECT_FALSE(matches("gpt2", "gpt2/extra"));
}

TEST(RepositoryPattern, StarStaysInsideOneSegment) {
  EXPECT_TRUE(matches("acme/*", "acme/x"));
  EXPECT_FALSE(matches("acme/*", "acme-evil/x"));
  EXPECT_FALSE(matches("acme/*", "acme/x/y"));
  EXPECT_FALSE(matches("acme/*", "acme"));
  EXPECT_FALSE(matches("acme/*", "datasets/acme/x"));
  EXPECT_FALSE(matches("acme*/x", "acme/evil/x"));
  EXPECT_TRUE(matches("acme*/x", "acme-corp/x"));
  EXPECT_TRUE(matches("acme/llama-*", "acme/llama-7b"));
  EXPECT_TRUE(matches("acme/llama-*", "acme/llama-"));
  EXPECT_FALSE(matches("acme/llama-*", "acme/llamas"));
  EXPECT_TRUE(matches("*/*", "anyone/anything"));
  EXPECT_FALSE(matches("*/*", "datasets/anyone/anything"));
}

TEST(RepositoryPattern, SeveralStarsInASegmentBacktrack) {
  EXPECT_TRUE(matches("acme/*-v*-*", "acme/model-v2-final"));
  EXPECT_TRUE(matches("acme/*a*b", "acme/xaxxab"));
  EXPECT_FALSE(matches("acme/*a*b", "acme/xaxxa"));
  EXPECT_TRUE(matches("acme/**", "acme/x"));
}

TEST(RepositoryPattern, DoubleStarSpansWholeSegments) {
  EXPECT_TRUE(matches("acme/**", "acme/x/y"));
  EXPECT_TRUE(matches("acme/**", "acme"));
  EXPECT_FALSE(matches("acme/**", "acme-evil/x"));
  EXPECT_FALSE(matches("acme/**", "datasets/acme/x"));
  EXPECT_TRUE(matches("**/acme/*", "datasets/acme/x"));
  EXPECT_TRUE(matches("**/acme/*", "acme/x"));
  EXPECT_FALSE(matches("**/acme/*", "acme/x/y"));
  EXPECT_TRUE(matches("**", "anything/at/all"));
  EXPECT_TRUE(matches("datasets/**", "datasets/acme/x"));
  EXPECT_FALSE(matches("datasets/**", "spaces/acme/x"));
  EXPECT_TRUE(matches("**/x/**", "a/b/x/c"));
}

TEST(RepositoryPattern, IgnoresAsciiCaseLikeTheHub) {
  EXPECT_TRUE(matches("acme/*", "ACME/Model"));
  EXPECT_TRUE(matches("Meta-Llama/Llama-2-*", "meta-llama/llama-2-7b-hf"));
  EXPECT_TRUE(matches("datasets/acme/x", "Datasets/Acme/X"));
}

TEST(RepositoryPattern, RefusesMalformedPatterns) {
  EXPECT_EQ(refusal(""), "the pattern is empty");
  EXPECT_EQ(refusal("acme//x"), "a segment is empty (a leading, trailing or doubled '/')");
  EXPECT_EQ(refusal("/acme/x"), "a segment is empty (a leading, trailing or doubled '/')");
  EXPECT_EQ(refusal("acme/"), "a segment is empty (a leading, trailing or doubled '/')");
  EXPECT_EQ(refusal("acme/../x"), "'.' and '..' are not repository names");
  EXPECT_EQ(refusal("./x"), "'.' and '..' are not repository names");
  EXPECT_EQ(refusal("acme/x**"), "'**' must be a whole segment between slashes");
  EXPECT_EQ(refusal("acme/***"), "'**' must be a whole segment between slashes");
  for (std::string_view bad : {"acme/x?", "acme/[ab]", "acme/x y", "acme\\x", "acme/x\n", "acme/é"}) {
    EXPECT_EQ(refusal(bad), "only letters, digits, '-', '_', '.', '/' and '*' may appear") << bad;
  }
}

TEST(RepositoryPattern, KeepsItsText) { EXPECT_EQ(RepositoryPattern::parse("acme/*")->text(), "acme/*"); }

TEST(RepositoryPattern, HostileIdsStayCheap) {
  auto pattern = RepositoryPattern::parse("**/**/**/*a*a*a*a*b/**/**").value();
  std::string segment(2000, 'a');
  std::string repository;
  for (int i = 0; i < 50; ++i) repository += segment + "/";
  repository += segment;
  auto start = std::chrono::steady_clock::now();
  EXPECT_FALSE(pattern.matches(repository));
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(2));
}

}  // namespace
}  // namespace zoogate::config
