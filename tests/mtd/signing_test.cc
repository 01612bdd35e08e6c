// Signing keys: generation, files, loading, signatures and key ids.
#include "mtd/signing.h"

#include <sys/stat.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <gtest/gtest.h>

#include "common/byte_sink.h"
#include "common/encoding.h"
#include "common/sha256.h"
#include "tests/mtd/integrity_support.h"

namespace zoogate::mtd {
namespace {

using testing::new_key;
using testing::TemporaryFolder;

std::span<const uint8_t> bytes_of(std::string_view text) {
  return {reinterpret_cast<const uint8_t*>(text.data()), text.size()};
}

// PEM text of a key of a kind zoogate does not accept (takes ownership of `key`).
std::string foreign_private_pem(EVP_PKEY* key) {
  BIO* bio = BIO_new(BIO_s_mem());
  PEM_write_bio_PrivateKey(bio, key, nullptr, nullptr, 0, nullptr, nullptr);
  char* data = nullptr;
  long length = BIO_get_mem_data(bio, &data);
  std::string pem(data, static_cast<size_t>(length));
  BIO_free(bio);
  EVP_PKEY_free(key);
  return pem;
}

TEST(Signing, KeyPairFilesRoundTripWithPrivateModeOwnerOnly) {
  TemporaryFolder folder;
  PrivateKey key = new_key();
  ASSERT_TRUE(key.write_key_pair(folder.file("key.pem"), folder.file("key.pub")));

  struct stat private_stat {};
  ASSERT_EQ(stat(folder.file("key.pem").c_str(), &private_stat), 0);
  EXPECT_EQ(private_stat.st_mode & 0777, 0600u);
  auto private_pem = read_small_file(folder.file("key.pem"), kMaxKeyFileSize);
  ASSERT_TRUE(private_pem);
  EXPECT_TRUE(private_pem->starts_with("-----BEGIN PRIVATE KEY-----\n")) << "PKCS#8 expected";
  for (const auto& entry : std::filesystem::directory_iterator(folder.path())) {
    EXPECT_EQ(entry.path().filename().string().find(".tmp-"), std::string::npos) << "temporary file left behind";
  }

  auto loaded = PrivateKey::load(folder.file("key.pem"));
  ASSERT_TRUE(loaded) << loaded.error().describe();
  auto public_key = PublicKey::load(folder.file("key.pub"));
  ASSERT_TRUE(public_key) << public_key.error().describe();
  EXPECT_EQ(loaded->public_key().key_id(), key.public_key().key_id());
  EXPECT_EQ(public_key->key_id(), key.public_key().key_id());
  EXPECT_TRUE(public_key->pem().starts_with("-----BEGIN PUBLIC KEY-----\n"));

  auto signature = loaded->sign(bytes_of("manifest bytes"));
  ASSERT_TRUE(signature);
  EXPECT_TRUE(public_key->verify(bytes_of("manifest bytes"), *signature));
}

TEST(Signing, KeyIdIsTheSha256OfTheDerSubjectPublicKeyInfo) {
  PrivateKey key = new_key();
  BIO* bio = BIO_new_mem_buf(key.public_key().pem().data(), static_cast<int>(key.public_key().pem().size()));
  EVP_PKEY* parsed = PEM_read_bio_PUBKEY(bio, nullptr, nullptr, nullptr);
  ASSERT_NE(parsed, nullptr);
  unsigned char* der = nullptr;
  int length = i2d_PUBKEY(parsed, &der);
  ASSERT_GT(length, 0);
  EXPECT_EQ(key.public_key().key_id(), to_hex(Sha256::of(std::span<const uint8_t>(der, static_cast<size_t>(length)))));
  OPENSSL_free(der);
  EVP_PKEY_free(parsed);
  BIO_free(bio);
  EXPECT_NE(key.public_key().key_id(), new_key().public_key().key_id());
}

TEST(Signing, SignaturesFailForOtherMessagesOtherKeysAndGarbage) {
  PrivateKey key = new_key();
  auto signature = key.sign(bytes_of("payload"));
  ASSERT_TRUE(signature);
  EXPECT_EQ(signature->front(), 0x30) << "DER SEQUENCE";

  auto other_message = key.public_key().verify(bytes_of("payload!"), *signature);
  ASSERT_FALSE(other_message);
  EXPECT_EQ(other_message.error().code, ErrorCode::kIntegrity);
  EXPECT_FALSE(new_key().public_key().verify(bytes_of("payload"), *signature));

  std::vector<uint8_t> flipped = *signature;
  flipped[flipped.size() / 2] ^= 1;
  EXPECT_FALSE(key.public_key().verify(bytes_of("payload"), flipped));
  const std::vector<uint8_t> garbage = {1, 2, 3};
  auto malformed = key.public_key().verify(bytes_of("payload"), garbage);
  ASSERT_FALSE(malformed);
  EXPECT_EQ(malformed.error().code, ErrorCode::kIntegrity);
  EXPECT_FALSE(key.public_key().verify(bytes_of("payload"), {}));
}

TEST(Signing, OnlyP256KeysAreAccepted) {
  auto p384 = PrivateKey::from_pem(foreign_private_pem(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-384")));
  ASSERT_FALSE(p384);
  EXPECT_EQ(p384.error().code, ErrorCode::kUnsupported);
  auto rsa = PrivateKey::from_pem(foreign_private_pem(EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", size_t{2048})));
  ASSERT_FALSE(rsa);
  EXPECT_EQ(rsa.error().code, ErrorCode::kUnsupported);
  auto ed25519 = PrivateKey::from_pem(foreign_private_pem(EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519")));
  ASSERT_FALSE(ed25519);
  EXPECT_EQ(ed25519.error().code, ErrorCode::kUnsupported);
}

TEST(Signing, MalformedAndEncryptedKeysAreParseErrorsWithoutPrompting) {
  auto garbage = PublicKey::from_pem("-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n");
  ASSERT_FALSE(garbage);
  EXPECT_EQ(garbage.error().code, ErrorCode::kParse);
  EXPECT_FALSE(PrivateKey::from_pem(""));
  // A private key where a public key is expected, and the reverse.
  PrivateKey key = new_key();
  EXPECT_FALSE(PrivateKey::from_pem(key.public_key().pem()));

  EVP_PKEY* raw = EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256");
  BIO* bio = BIO_new(BIO_s_mem());
  const char password[] = "secret";
  ASSERT_EQ(PEM_write_bio_PKCS8PrivateKey(bio, raw, EVP_aes_256_cbc(), password, sizeof password - 1, nullptr, nullptr),
            1);
  char* data = nullptr;
  long length = BIO_get_mem_data(bio, &data);
  auto encrypted = PrivateKey::from_pem(std::string(data, static_cast<size_t>(length)));
  BIO_free(bio);
  EVP_PKEY_free(raw);
  ASSERT_FALSE(encrypted);
  EXPECT_EQ(encrypted.error().code, ErrorCode::kParse);
}

TEST(Signing, MissingKeyFilesAreIoErrorsNamingThePath) {
  auto missing = PublicKey::load("/nonexistent/zoogate.pub");
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code, ErrorCode::kIo);
  EXPECT_NE(missing.error().message.find("/nonexistent/zoogate.pub"), std::string::npos);
}

}  // namespace
}  // namespace zoogate::mtd
