#include "common/password_hash.h"

#include <chrono>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/encoding.h"

namespace zoogate {
namespace {

using ::testing::HasSubstr;
using ::testing::MatchesRegex;

std::vector<uint8_t> bytes_of(std::string_view text) { return {text.begin(), text.end()}; }

// RFC 7914 section 12, second vector: scrypt("password", "NaCl", N=1024, r=8, p=16, dkLen=64). Its
// 4-byte salt is below what parse_password_hash() accepts, so the vector is checked as a PasswordHash.
const PasswordHash kRfc7914Hash{
    {1024, 8, 16}, bytes_of("NaCl"),
    *from_hex("fdbabe1c9d3472007856e7190d01e9fe7c6ad7cbc8237830e77376634b373162"
              "2eaf30d92e22a3886ff109279d9830dac727afb94a83ee6d8360cbdfa2cc0640")};

// A cheap hash of "secret" for the shape tests: N=1024 r=1 p=1, salt "saltsalt", 16-byte hash.
std::string cheap_hash(std::string_view n = "1024", std::string_view r = "1", std::string_view p = "1") {
  return "scrypt$" + std::string(n) + "$" + std::string(r) + "$" + std::string(p) + "$c2FsdHNhbHQ=$" +
         to_base64(std::vector<uint8_t>(16, 0x5a));
}

TEST(PasswordHash, NewHashesHaveTheDocumentedShapeAndVerify) {
  auto encoded = hash_password("correct horse battery staple");
  ASSERT_TRUE(encoded) << encoded.error().describe();
  EXPECT_THAT(*encoded, MatchesRegex(R"(scrypt\$32768\$8\$1\$[A-Za-z0-9+/]{22}==\$[A-Za-z0-9+/]{43}=)"));
  auto parsed = parse_password_hash(*encoded);
  ASSERT_TRUE(parsed) << parsed.error().describe();
  EXPECT_EQ(parsed->parameters.n, 32768u);
  EXPECT_EQ(parsed->parameters.r, 8u);
  EXPECT_EQ(parsed->parameters.p, 1u);
  EXPECT_EQ(parsed->salt.size(), 16u);
  EXPECT_EQ(parsed->hash.size(), 32u);

  EXPECT_TRUE(verify_password("correct horse battery staple", *encoded));
  EXPECT_FALSE(verify_password("correct horse battery stapl", *encoded));
  EXPECT_FALSE(verify_password("", *encoded));
}

TEST(PasswordHash, SaltsAreRandom) {
  auto first = hash_password("same");
  auto second = hash_password("same");
  ASSERT_TRUE(first && second);
  EXPECT_NE(*first, *second);
}

TEST(PasswordHash, MatchesTheRfc7914TestVector) {
  EXPECT_TRUE(verify_password("password", kRfc7914Hash));
  EXPECT_FALSE(verify_password("Password", kRfc7914Hash));
  const std::string encoded = "scrypt$1024$8$16$" + to_base64(kRfc7914Hash.salt) + "$" + to_base64(kRfc7914Hash.hash);
  EXPECT_FALSE(parse_password_hash(encoded));
}

TEST(PasswordHash, EncodedHashesOfKnownParametersVerify) {
  // scrypt("secret", "saltsalt", N=1024, r=1, p=1, dkLen=16), computed with Python's hashlib.scrypt.
  const std::string encoded = "scrypt$1024$1$1$c2FsdHNhbHQ=$" + to_base64(*from_hex("c6636182f94db0b245cc036b756b2e01"));
  EXPECT_TRUE(verify_password("secret", encoded));
  EXPECT_FALSE(verify_password("secreT", encoded));
}

TEST(PasswordHash, VerifiesPasswordsWithAnyBytes) {
  const std::string password("p\xc3\xa4ss:w\0rd$", 11);
  auto encoded = hash_password(password);
  ASSERT_TRUE(encoded);
  EXPECT_TRUE(verify_password(password, *encoded));
  EXPECT_FALSE(verify_password(password.substr(0, 8), *encoded));
}

TEST(PasswordHash, RefusesMalformedShapes) {
  ASSERT_TRUE(parse_password_hash(cheap_hash()));
  for (const std::string& bad : {
           std::string(""),
           std::string("scrypt"),
           std::string("scrypt$1024$1$1$c2FsdHNhbHQ="),                     // no hash
           cheap_hash() + "$extra",                                        // a seventh field
           "bcrypt" + cheap_hash().substr(6),                              // another scheme
           "SCRYPT" + cheap_hash().substr(6),
           cheap_hash("01024"), cheap_hash("+1024"), cheap_hash("-1024"),  // not plain decimal
           cheap_hash("1024 "), cheap_hash(""), cheap_hash("1e3"),
           cheap_hash("1000"), cheap_hash("1536"),                         // N not a power of two
           cheap_hash("512"),                                              // N below the minimum
           cheap_hash("1024", "0"), cheap_hash("1024", "1", "0"),          // zero r or p
           "scrypt$1024$1$1$c2FsdA==$" + to_base64(std::vector<uint8_t>(16, 1)),     // 4-byte salt
           "scrypt$1024$1$1$c2FsdHNhbHQ=$" + to_base64(std::vector<uint8_t>(8, 1)),  // 8-byte hash
           "scrypt$1024$1$1$c2FsdHNhbHQ$" + to_base64(std::vector<uint8_t>(16, 1)),  // unpadded
           "scrypt$1024$1$1$ c2FsdHNhbHQ=$" + to_base64(std::vector<uint8_t>(16, 1)),
           "scrypt$1024$1$1$c2FsdHNhbHR=$" + to_base64(std::vector<uint8_t>(16, 1)),  // non-zero pad bits
           "scrypt$1024$1$1$c2Fsd!NhbHQ=$" + to_base64(std::vector<uint8_t>(16, 1)),
       }) {
    auto parsed = parse_password_hash(bad);
    EXPECT_FALSE(parsed) << bad;
    if (!parsed) {
      EXPECT_THAT(parsed.error().message, HasSubstr("password hash")) << bad;
    }
    EXPECT_FALSE(verify_password("secret", bad)) << bad;
  }
}

TEST(PasswordHash, BoundsTheCostAHostileConfigurationCanAsk) {
  for (const std::string& expensive : {
           cheap_hash("1048576", "8", "1"),          // 32x the default work and memory
           cheap_hash("4194304", "1", "1"),          // 512 MiB
           cheap_hash("1099511627776", "1", "1"),    // 2^40
           cheap_hash("18446744073709551616"),       // does not fit 64 bits
           cheap_hash("32768", "8", "16"),           // 16x the default work is fine, 2^22 ...
           cheap_hash("65536", "8", "16"),           // ... 32x is not
           cheap_hash("1024", "33"), cheap_hash("1024", "1", "17"),
           cheap_hash("1024", "4294967297"),         // r that would wrap in 32 bits
       }) {
    auto parsed = parse_password_hash(expensive);
    if (expensive == cheap_hash("32768", "8", "16")) {
      EXPECT_TRUE(parsed) << expensive;
      continue;
    }
    ASSERT_FALSE(parsed) << expensive;
    EXPECT_THAT(parsed.error().code, ::testing::AnyOf(ErrorCode::kLimitExceeded, ErrorCode::kParse)) << expensive;
  }
  // The same bounds hold for a hash assembled in code rather than parsed.
  PasswordHash hand_made{{uint64_t{1} << 30, 8, 1}, bytes_of("saltsalt"), std::vector<uint8_t>(16, 1)};
  const auto started = std::chrono::steady_clock::now();
  EXPECT_FALSE(verify_password("secret", hand_made));
  EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::seconds(1));
}

TEST(PasswordHash, TheErrorNeverQuotesTheHash) {
  const std::string secret_looking = "scrypt$1024$1$1$c2FsdHNhbHQ=$SECRETSECRETSECRET";
  auto parsed = parse_password_hash(secret_looking);
  ASSERT_FALSE(parsed);
  EXPECT_THAT(parsed.error().message, ::testing::Not(HasSubstr("SECRET")));
}

}  // namespace
}  // namespace zoogate
