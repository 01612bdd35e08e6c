#include "common/password_hash.h"

#include <array>
#include <charconv>
#include <optional>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "common/encoding.h"

namespace zoogate {
namespace {

constexpr std::string_view kScheme = "scrypt";
constexpr size_t kNewSaltBytes = 16;
constexpr size_t kNewHashBytes = 32;
constexpr size_t kFieldCount = 6;  // scheme, N, r, p, salt, hash

// What OpenSSL allocates for scrypt: the 128*r*(N+2)-byte V array and p blocks of 128*r bytes.
uint64_t scrypt_memory_bytes(const ScryptParameters& parameters) {
  return 128 * uint64_t{parameters.r} * (parameters.n + 2 + parameters.p);
}

Result<std::vector<uint8_t>> derive(std::string_view password, std::span<const uint8_t> salt,
                                    const ScryptParameters& parameters, size_t length) {
  std::vector<uint8_t> derived(length);
  if (EVP_PBE_scrypt(password.data(), password.size(), salt.data(), salt.size(), parameters.n, parameters.r,
                     parameters.p, kMaxScryptMemoryBytes, derived.data(), derived.size()) != 1) {
    return fail(ErrorCode::kInternal, "scrypt failed (out of memory?)");
  }
  return derived;
}

// A decimal number without sign or leading zeros.
std::optional<uint64_t> parse_decimal(std::string_view text) {
  uint64_t value = 0;
  if (text.empty() || (text.size() > 1 && text.front() == '0')) return std::nullopt;
  auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return value;
}

// Base64 in exactly the form to_base64() writes: anything OpenSSL's decoder tolerates beyond that
// (whitespace, missing padding bits) would let two spellings of one hash exist.
std::optional<std::vector<uint8_t>> parse_canonical_base64(std::string_view text) {
  auto bytes = from_base64(text);
  if (!bytes || to_base64(*bytes) != text) return std::nullopt;
  return bytes;
}

Status check_parameters(const ScryptParameters& parameters) {
  if (parameters.n < kMinScryptN || (parameters.n & (parameters.n - 1)) != 0) {
    return fail(ErrorCode::kParse, "password hash: N must be a power of two of at least " +
                                       std::to_string(kMinScryptN));
  }
  if (parameters.r == 0 || parameters.r > kMaxScryptR) {
    return fail(ErrorCode::kLimitExceeded, "password hash: r must be 1 to " + std::to_string(kMaxScryptR));
  }
  if (parameters.p == 0 || parameters.p > kMaxScryptP) {
    return fail(ErrorCode::kLimitExceeded, "password hash: p must be 1 to " + std::to_string(kMaxScryptP));
  }
  // N is checked first so that the product cannot overflow: at most 2^22 * 32 * 16.
  if (parameters.n > kMaxScryptWork || parameters.n * parameters.r * parameters.p > kMaxScryptWork) {
    return fail(ErrorCode::kLimitExceeded,
                "password hash: N*r*p must not exceed " + std::to_string(kMaxScryptWork));
  }
  if (scrypt_memory_bytes(parameters) > kMaxScryptMemoryBytes) {
    return fail(ErrorCode::kLimitExceeded, "password hash: 128*r*N must not exceed " +
                                               std::to_string(kMaxScryptMemoryBytes >> 20) + " MiB");
  }
  return {};
}

}  // namespace

Result<std::string> hash_password(std::string_view password) {
  const ScryptParameters parameters;
  std::array<uint8_t, kNewSaltBytes> salt{};
  if (RAND_bytes(salt.data(), static_cast<int>(salt.size())) != 1) {
    return fail(ErrorCode::kInternal, "no random bytes for a password salt");
  }
  auto derived = derive(password, salt, parameters, kNewHashBytes);
  if (!derived) return tl::unexpected(derived.error());
  return std::string(kScheme) + "$" + std::to_string(parameters.n) + "$" + std::to_string(parameters.r) + "$" +
         std::to_string(parameters.p) + "$" + to_base64(salt) + "$" + to_base64(*derived);
}

Result<PasswordHash> parse_password_hash(std::string_view encoded) {
  // One field more than expected is enough to refuse; splitting stops there.
  std::vector<std::string_view> fields;
  for (size_t start = 0; fields.size() <= kFieldCount;) {
    const size_t dollar = encoded.find('$', start);
    fields.push_back(encoded.substr(start, dollar == std::string_view::npos ? dollar : dollar - start));
    if (dollar == std::string_view::npos) break;
    start = dollar + 1;
  }
  if (fields.size() != kFieldCount) {
    return fail(ErrorCode::kParse, "password hash: expected scrypt$N$r$p$salt$hash");
  }
  if (fields[0] != kScheme) return fail(ErrorCode::kParse, "password hash: the scheme must be 'scrypt'");

  const auto n = parse_decimal(fields[1]);
  const auto r = parse_decimal(fields[2]);
  const auto p = parse_decimal(fields[3]);
  if (!n || !r || !p) return fail(ErrorCode::kParse, "password hash: N, r and p must be decimal numbers");
  if (*r > kMaxScryptR || *p > kMaxScryptP) {
    return fail(ErrorCode::kLimitExceeded, "password hash: r must be 1 to " + std::to_string(kMaxScryptR) +
                                               " and p 1 to " + std::to_string(kMaxScryptP));
  }
  PasswordHash parsed;
  parsed.parameters = {*n, static_cast<uint32_t>(*r), static_cast<uint32_t>(*p)};
  ZG_TRY(check_parameters(parsed.parameters));

  auto salt = parse_canonical_base64(fields[4]);
  if (!salt) return fail(ErrorCode::kParse, "password hash: the salt is not base64");
  if (salt->size() < kMinSaltBytes || salt->size() > kMaxSaltBytes) {
    return fail(ErrorCode::kParse, "password hash: the salt must be " + std::to_string(kMinSaltBytes) + " to " +
                                       std::to_string(kMaxSaltBytes) + " bytes");
  }
  auto hash = parse_canonical_base64(fields[5]);
  if (!hash) return fail(ErrorCode::kParse, "password hash: the hash is not base64");
  if (hash->size() < kMinHashBytes || hash->size() > kMaxHashBytes) {
    return fail(ErrorCode::kParse, "password hash: the hash must be " + std::to_string(kMinHashBytes) + " to " +
                                       std::to_string(kMaxHashBytes) + " bytes");
  }
  parsed.salt = std::move(*salt);
  parsed.hash = std::move(*hash);
  return parsed;
}

bool verify_password(std::string_view password, const PasswordHash& expected) {
  // A PasswordHash built by hand rather than parsed gets the same bounds.
  if (!check_parameters(expected.parameters) || expected.hash.empty()) return false;
  auto derived = derive(password, expected.salt, expected.parameters, expected.hash.size());
  return derived && CRYPTO_memcmp(derived->data(), expected.hash.data(), expected.hash.size()) == 0;
}

bool verify_password(std::string_view password, std::string_view encoded) {
  auto parsed = parse_password_hash(encoded);
  return parsed && verify_password(password, *parsed);
}

}  // namespace zoogate
