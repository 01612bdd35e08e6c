// zoogate's signing keys: ECDSA on NIST P-256 with SHA-256, through OpenSSL 3's EVP_PKEY interface.
//
// Signatures are DER-encoded ECDSA-Sig-Value structures (what DSSE and Sigstore carry, and what
// `openssl dgst -sha256 -sign/-verify` reads and writes). A key's id is the lowercase hex SHA-256 of
// its DER SubjectPublicKeyInfo, so the same key has the same id whatever file or encoding it came from.
//
// Key files are PEM: the private key as unencrypted PKCS#8 ("BEGIN PRIVATE KEY"), written with mode
// 0600 through a temporary file and a rename so that no reader ever sees a partial or world-readable
// key; the public key as SubjectPublicKeyInfo ("BEGIN PUBLIC KEY"). Loading accepts only P-256 keys.
//
// Keys are immutable values that share one OpenSSL key object; copying is cheap, and signing or
// verifying from several threads at once is safe.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.h"

struct evp_pkey_st;  // OpenSSL's EVP_PKEY

namespace zoogate::mtd {

// Key files are a few hundred bytes; anything much larger is not a key.
inline constexpr uint64_t kMaxKeyFileSize = 64 * 1024;

class PublicKey {
 public:
  static Result<PublicKey> from_pem(std::string_view pem);
  static Result<PublicKey> load(const std::string& path);

  // kIntegrity when `signature` is not a valid signature of `message` by this key (including when it
  // is not even DER); other codes only for OpenSSL failures.
  Status verify(std::span<const uint8_t> message, std::span<const uint8_t> signature) const;

  const std::string& key_id() const { return key_id_; }
  // The SubjectPublicKeyInfo PEM text, as OpenSSL (and Python's cryptography) write it.
  const std::string& pem() const { return pem_; }

 private:
  friend class PrivateKey;
  static Result<PublicKey> from_key(std::shared_ptr<evp_pkey_st> key);
  std::shared_ptr<evp_pkey_st> key_;
  std::string key_id_;
  std::string pem_;
};

class PrivateKey {
 public:
  static Result<PrivateKey> generate();
  static Result<PrivateKey> from_pem(std::string_view pem);
  static Result<PrivateKey> load(const std::string& path);

  // ECDSA over SHA-256 of `message`, DER-encoded. ECDSA is randomized: two signatures of one message
  // differ, and both verify.
  Result<std::vector<uint8_t>> sign(std::span<const uint8_t> message) const;

  const PublicKey& public_key() const { return public_key_; }

  // Writes the private key (PKCS#8 PEM, mode 0600) and the public key (PEM, mode 0644), each
  // atomically. The private key is written first, so a failure never leaves a public key whose
  // private half is lost.
  Status write_key_pair(const std::string& private_path, const std::string& public_path) const;

 private:
  static Result<PrivateKey> from_key(std::shared_ptr<evp_pkey_st> key);
  std::shared_ptr<evp_pkey_st> key_;
  PublicKey public_key_;
};

}  // namespace zoogate::mtd
