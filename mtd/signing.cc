#include "mtd/signing.h"

#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "common/byte_sink.h"
#include "common/encoding.h"
#include "common/openssl_error.h"
#include "common/openssl_ptr.h"
#include "common/sha256.h"

namespace zoogate::mtd {
namespace {

constexpr std::string_view kCurveName = "prime256v1";  // OpenSSL's name for NIST P-256

using Bio = OpenSslPtr<BIO, BIO_free>;
using DigestContext = OpenSslPtr<EVP_MD_CTX, EVP_MD_CTX_free>;

std::shared_ptr<evp_pkey_st> own(EVP_PKEY* key) { return {key, EVP_PKEY_free}; }

Bio memory_bio() { return Bio(BIO_new(BIO_s_mem())); }
// Memory from OpenSSL's secure heap where one is configured, cleared when freed.
Bio secret_bio() { return Bio(BIO_new(BIO_s_secmem())); }

std::string bio_text(BIO* bio) {
  char* data = nullptr;
  long length = BIO_get_mem_data(bio, &data);
  return length > 0 ? std::string(data, static_cast<size_t>(length)) : std::string();
}

// Refuses to decrypt: an encrypted key file must not make OpenSSL prompt on the terminal.
int no_password(char*, int, int, void*) { return 0; }

// A read-only memory BIO over PEM text; null for text no key file could hold.
Bio pem_bio(std::string_view pem) {
  if (pem.size() > kMaxKeyFileSize) return Bio();
  return Bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
}

Status require_p256(EVP_PKEY* key, std::string_view what) {
  char group[64] = {};
  size_t length = 0;
  if (!EVP_PKEY_is_a(key, "EC") ||
      EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof group, &length) != 1 ||
      std::string_view(group, length) != kCurveName) {
    ERR_clear_error();
    return fail(ErrorCode::kUnsupported, std::string(what) + " is not an ECDSA P-256 key");
  }
  return {};
}

Status write_file_atomically(const std::string& path, std::string_view content, unsigned mode) {
  auto sink = AtomicFileSink::create(path, mode);
  if (!sink) return tl::unexpected(sink.error());
  ZG_TRY((*sink)->write(content));
  return (*sink)->commit();
}

}  // namespace

Result<PublicKey> PublicKey::from_key(std::shared_ptr<evp_pkey_st> key) {
  PublicKey public_key;
  unsigned char* der = nullptr;
  int der_length = i2d_PUBKEY(key.get(), &der);
  if (der_length <= 0) return fail(ErrorCode::kInternal, "cannot encode a public key: " + openssl_reason());
  public_key.key_id_ = to_hex(Sha256::of(std::span<const uint8_t>(der, static_cast<size_t>(der_length))));
  OPENSSL_free(der);
  Bio bio = memory_bio();
  if (!bio || PEM_write_bio_PUBKEY(bio.get(), key.get()) != 1) {
    return fail(ErrorCode::kInternal, "cannot write a public key: " + openssl_reason());
  }
  public_key.pem_ = bio_text(bio.get());
  public_key.key_ = std::move(key);
  return public_key;
}

Result<PublicKey> PublicKey::from_pem(std::string_view pem) {
  Bio bio = pem_bio(pem);
  EVP_PKEY* key = bio ? PEM_read_bio_PUBKEY(bio.get(), nullptr, no_password, nullptr) : nullptr;
  if (!key) return fail(ErrorCode::kParse, "not a PEM public key: " + openssl_reason());
  auto owned = own(key);
  ZG_TRY(require_p256(key, "the public key"));
  return from_key(std::move(owned));
}

Result<PublicKey> PublicKey::load(const std::string& path) {
  auto pem = read_small_file(path, kMaxKeyFileSize);
  if (!pem) return tl::unexpected(pem.error());
  auto key = from_pem(*pem);
  if (!key) return tl::unexpected(key.error().with_context(path));
  return key;
}

Status PublicKey::verify(std::span<const uint8_t> message, std::span<const uint8_t> signature) const {
  DigestContext context(EVP_MD_CTX_new());
  if (!context || EVP_DigestVerifyInit(context.get(), nullptr, EVP_sha256(), nullptr, key_.get()) != 1) {
    return fail(ErrorCode::kInternal, "cannot start a signature check: " + openssl_reason());
  }
  // 1 is a valid signature; 0 a wrong one; negative values mostly a malformed DER encoding, which is
  // just as much a signature that does not verify.
  int verdict = EVP_DigestVerify(context.get(), signature.data(), signature.size(), message.data(), message.size());
  if (verdict != 1) {
    ERR_clear_error();
    return fail(ErrorCode::kIntegrity, "the signature does not verify with key " + key_id_);
  }
  return {};
}

Result<PrivateKey> PrivateKey::from_key(std::shared_ptr<evp_pkey_st> key) {
  auto public_key = PublicKey::from_key(key);
  if (!public_key) return tl::unexpected(public_key.error());
  PrivateKey private_key;
  private_key.key_ = std::move(key);
  private_key.public_key_ = std::move(*public_key);
  return private_key;
}

Result<PrivateKey> PrivateKey::generate() {
  EVP_PKEY* key = EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", std::string(kCurveName).c_str());
  if (!key) return fail(ErrorCode::kInternal, "cannot generate a P-256 key: " + openssl_reason());
  return from_key(own(key));
}

Result<PrivateKey> PrivateKey::from_pem(std::string_view pem) {
  Bio bio = pem_bio(pem);
  EVP_PKEY* key = bio ? PEM_read_bio_PrivateKey(bio.get(), nullptr, no_password, nullptr) : nullptr;
  if (!key) return fail(ErrorCode::kParse, "not an unencrypted PEM private key: " + openssl_reason());
  auto owned = own(key);
  ZG_TRY(require_p256(key, "the private key"));
  return from_key(std::move(owned));
}

Result<PrivateKey> PrivateKey::load(const std::string& path) {
  auto pem = read_small_file(path, kMaxKeyFileSize);
  if (!pem) return tl::unexpected(pem.error());
  auto key = from_pem(*pem);
  OPENSSL_cleanse(pem->data(), pem->size());
  if (!key) return tl::unexpected(key.error().with_context(path));
  return key;
}

Result<std::vector<uint8_t>> PrivateKey::sign(std::span<const uint8_t> message) const {
  DigestContext context(EVP_MD_CTX_new());
  size_t length = 0;
  if (!context || EVP_DigestSignInit(context.get(), nullptr, EVP_sha256(), nullptr, key_.get()) != 1 ||
      EVP_DigestSign(context.get(), nullptr, &length, message.data(), message.size()) != 1) {
    return fail(ErrorCode::kInternal, "cannot start signing: " + openssl_reason());
  }
  std::vector<uint8_t> signature(length);
  if (EVP_DigestSign(context.get(), signature.data(), &length, message.data(), message.size()) != 1) {
    return fail(ErrorCode::kInternal, "signing failed: " + openssl_reason());
  }
  signature.resize(length);  // DER length varies with the leading bytes of r and s
  return signature;
}

Status PrivateKey::write_key_pair(const std::string& private_path, const std::string& public_path) const {
  Bio bio = secret_bio();
  // PEM_write_bio_PrivateKey writes PKCS#8 ("BEGIN PRIVATE KEY") in OpenSSL 3.
  if (!bio || PEM_write_bio_PrivateKey(bio.get(), key_.get(), nullptr, nullptr, 0, nullptr, nullptr) != 1) {
    return fail(ErrorCode::kInternal, "cannot encode the private key: " + openssl_reason());
  }
  std::string private_pem = bio_text(bio.get());
  Status written = write_file_atomically(private_path, private_pem, 0600);
  OPENSSL_cleanse(private_pem.data(), private_pem.size());
  ZG_TRY(written);
  return write_file_atomically(public_path, public_key_.pem(), 0644);
}

}  // namespace zoogate::mtd
