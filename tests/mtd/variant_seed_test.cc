// The variation key: determinism, sensitivity to every input, the public seed id, the secret file,
// and the seeded random stream every variation draws from.
#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "common/encoding.h"
#include "mtd/seeded_random.h"
#include "mtd/variant_seed.h"
#include "tests/common/temporary_folder.h"

namespace zoogate::mtd {
namespace {

using Bytes = std::vector<uint8_t>;
using zoogate::testing::TemporaryFolder;

const Bytes kSecret = [] {
  Bytes secret(32);
  for (size_t i = 0; i < secret.size(); ++i) secret[i] = static_cast<uint8_t>(i);
  return secret;
}();
const Bytes kDigest(32, 0xab);

VariantSeed seed_of(const Bytes& secret, std::string_view scope, const Bytes& digest, uint64_t epoch) {
  auto seed = VariantSeed::derive(secret, scope, digest, epoch);
  EXPECT_TRUE(seed) << seed.error().describe();
  return *seed;
}

TEST(VariantSeed, MatchesTheDocumentedConstruction) {
  // Computed independently with Python's hmac module from the construction in variant_seed.h; a
  // change here would make `zoogate trace` unable to recognize variants served before it.
  VariantSeed seed = seed_of(kSecret, "alice", kDigest, 7);
  EXPECT_EQ(to_hex(seed.bytes()), "645368a4aefbbb2bac4aa3d68eeae98dda5fde01aba2a2075f65729c3ed2c9a0");
  EXPECT_EQ(seed.id(), "8780689378760e7b");
  EXPECT_EQ(to_hex(seed.sub_seed(SeedPurpose::kRecordOrder)),
            "f405e6a29eef0ba3e86671aafe09b5b3ecf8e917d97c882fdbcd02402bca9e71");
}

TEST(VariantSeed, SameInputsGiveTheSameSeed) {
  EXPECT_EQ(seed_of(kSecret, "alice", kDigest, 7), seed_of(kSecret, "alice", kDigest, 7));
}

TEST(VariantSeed, EveryInputChangesTheSeed) {
  Bytes other_secret = kSecret;
  other_secret[31] ^= 1;
  Bytes other_digest = kDigest;
  other_digest[0] ^= 1;
  std::set<std::string> seeds = {
      to_hex(seed_of(kSecret, "alice", kDigest, 7).bytes()),
      to_hex(seed_of(other_secret, "alice", kDigest, 7).bytes()),
      to_hex(seed_of(kSecret, "bob", kDigest, 7).bytes()),
      to_hex(seed_of(kSecret, "alice", other_digest, 7).bytes()),
      to_hex(seed_of(kSecret, "alice", kDigest, 8).bytes()),
  };
  EXPECT_EQ(seeds.size(), 5u);
}

TEST(VariantSeed, PartsAreLengthPrefixedSoBoundariesCannotShift) {
  // Without length prefixes, scope "ab" + digest "c..." and scope "a" + digest "bc..." would be the
  // same message.
  Bytes digest_c = {'c', 'd'};
  Bytes digest_bc = {'b', 'c', 'd'};
  EXPECT_NE(seed_of(kSecret, "ab", digest_c, 1), seed_of(kSecret, "a", digest_bc, 1));
}

TEST(VariantSeed, RefusesShortSecrets) {
  auto seed = VariantSeed::derive(Bytes(kMinSecretBytes - 1, 7), "alice", kDigest, 7);
  ASSERT_FALSE(seed);
  EXPECT_EQ(seed.error().code, ErrorCode::kInvalidArgument);
}

TEST(VariantSeed, SeedIdRevealsNeitherSeedNorSecret) {
  VariantSeed seed = seed_of(kSecret, "alice", kDigest, 7);
  const std::string id = seed.id();
  ASSERT_EQ(id.size(), 16u);
  EXPECT_TRUE(std::all_of(id.begin(), id.end(), [](char c) { return std::isxdigit(c) && !std::isupper(c); }));
  // The id is a one-way function of the seed: no piece of the seed or the secret shows in it.
  EXPECT_EQ(to_hex(seed.bytes()).find(id.substr(0, 8)), std::string::npos);
  EXPECT_EQ(to_hex(kSecret).find(id.substr(0, 8)), std::string::npos);
  for (SeedPurpose purpose : {SeedPurpose::kFolderName, SeedPurpose::kRecordOrder, SeedPurpose::kRecordNames,
                              SeedPurpose::kPickleMemo, SeedPurpose::kWeightPermutation}) {
    EXPECT_EQ(to_hex(seed.sub_seed(purpose)).find(id.substr(0, 8)), std::string::npos);
  }
  // Stable for one seed, different for another.
  EXPECT_EQ(seed_of(kSecret, "alice", kDigest, 7).id(), id);
  EXPECT_NE(seed_of(kSecret, "alice", kDigest, 8).id(), id);
}

TEST(VariantSeed, SubSeedsAreIndependentPerPurposeAndDetail) {
  VariantSeed seed = seed_of(kSecret, "alice", kDigest, 7);
  std::set<std::string> sub_seeds;
  for (SeedPurpose purpose : {SeedPurpose::kFolderName, SeedPurpose::kRecordOrder, SeedPurpose::kRecordNames,
                              SeedPurpose::kPickleMemo, SeedPurpose::kWeightPermutation}) {
    sub_seeds.insert(to_hex(seed.sub_seed(purpose)));
  }
  sub_seeds.insert(to_hex(seed.sub_seed(SeedPurpose::kWeightPermutation, "model.layers.0.ffn")));
  sub_seeds.insert(to_hex(seed.sub_seed(SeedPurpose::kWeightPermutation, "model.layers.1.ffn")));
  sub_seeds.insert(to_hex(seed.bytes()));
  EXPECT_EQ(sub_seeds.size(), 8u);
}

class SecretFile : public ::testing::Test {
 protected:
  std::string path(const std::string& name) const { return folder_.file(name); }
  const TemporaryFolder folder_;
};

TEST_F(SecretFile, CreatesAPrivateRandomSecretThatLoads) {
  ASSERT_TRUE(create_secret_file(path("secret")));
  struct stat info {};
  ASSERT_EQ(::stat(path("secret").c_str(), &info), 0);
  EXPECT_EQ(info.st_mode & 0777, 0600u);
  auto secret = load_secret(path("secret"));
  ASSERT_TRUE(secret) << secret.error().describe();
  EXPECT_EQ(secret->size(), kMinSecretBytes);
  EXPECT_NE(*secret, Bytes(kMinSecretBytes, 0));

  ASSERT_TRUE(create_secret_file(path("other")));
  EXPECT_NE(*load_secret(path("other")), *secret);
  // Only the two secrets are left: no temporary files.
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(folder_.path()), {}), 2);
}

TEST_F(SecretFile, NeverReplacesAnExistingSecret) {
  ASSERT_TRUE(create_secret_file(path("secret")));
  const Bytes before = *load_secret(path("secret"));
  auto again = create_secret_file(path("secret"));
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error().code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(*load_secret(path("secret")), before);
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(folder_.path()), {}), 1);
}

TEST_F(SecretFile, RefusesShortAndMissingSecrets) {
  std::ofstream(path("short"), std::ios::binary) << std::string(kMinSecretBytes - 1, 'x');
  auto short_secret = load_secret(path("short"));
  ASSERT_FALSE(short_secret);
  EXPECT_EQ(short_secret.error().code, ErrorCode::kInvalidArgument);

  std::ofstream(path("long"), std::ios::binary) << std::string(kMaxSecretBytes + 1, 'x');
  auto long_secret = load_secret(path("long"));
  ASSERT_FALSE(long_secret);
  EXPECT_EQ(long_secret.error().code, ErrorCode::kLimitExceeded);

  auto missing = load_secret(path("missing"));
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code, ErrorCode::kIo);

  std::ofstream(path("text"), std::ios::binary) << std::string(kMinSecretBytes, 'x');
  auto text = load_secret(path("text"));
  ASSERT_TRUE(text);
  EXPECT_EQ(*text, Bytes(kMinSecretBytes, 'x'));
}

TEST(SeededRandom, IsChaCha20sKeystream) {
  // RFC 8439 section 2.3.2's keystream for an all-zero key, nonce and counter starts 76 b8 e0 ad
  // a0 f1 3d 90 40 5d 6a e5 53 86 bd 28, read here as little-endian words.
  SeededRandom random(std::array<uint8_t, 32>{});
  EXPECT_EQ(random.next(), 0x903df1a0ade0b876u);
  EXPECT_EQ(random.next(), 0x28bd8653e56a5d40u);
}

TEST(SeededRandom, SameKeySameSequenceAcrossRefills) {
  std::array<uint8_t, 32> key{};
  key[0] = 1;
  SeededRandom a(key);
  SeededRandom b(key);
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(a.next(), b.next());
}

TEST(SeededRandom, BelowStaysInRangeAndPermutationsAreUniformEnough) {
  SeededRandom random(std::array<uint8_t, 32>{});
  for (uint64_t bound : {1ull, 2ull, 3ull, 1000ull, (1ull << 63) + 1}) {
    for (int i = 0; i < 100; ++i) ASSERT_LT(random.below(bound), bound);
  }
  std::map<std::vector<uint32_t>, int> seen;
  for (int i = 0; i < 600; ++i) ++seen[random.permutation(3)];
  ASSERT_EQ(seen.size(), 6u);  // every order of three items
  for (const auto& [order, count] : seen) EXPECT_GT(count, 60) << "order drawn " << count << " times";
  auto large = random.permutation(1000);
  std::sort(large.begin(), large.end());
  for (uint32_t i = 0; i < large.size(); ++i) ASSERT_EQ(large[i], i);
  EXPECT_TRUE(random.permutation(0).empty());
}

}  // namespace
}  // namespace zoogate::mtd
