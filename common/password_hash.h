// Password hashes for configuration files (proxy authentication), with scrypt (RFC 7914) through
// OpenSSL.
//
// Encoded form, one line, safe in YAML without quoting:
//
//   scrypt$N$r$p$<salt>$<hash>
//
// N, r and p are the scrypt cost parameters in decimal (N a power of two), salt and hash standard
// base64 with padding. hash_password() writes N=32768 r=8 p=1 (32 MiB and some tens of milliseconds
// per hash), a 16-byte random salt and a 32-byte hash.
//
// The parameters are read from the configuration, so they are bounded: a hostile or mistyped entry
// must not make one verification take minutes or gigabytes (see kMaxScryptWork and
// kMaxScryptMemoryBytes). Even within bounds a verification is deliberately slow; callers that check
// the same credentials on every request remember the ones that verified.
//
// All functions are safe to call from any thread.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.h"

namespace zoogate {

struct ScryptParameters {
  uint64_t n = 32768;  // CPU and memory cost, a power of two
  uint32_t r = 8;      // block size
  uint32_t p = 1;      // parallelization
};

// Bounds on what parse_password_hash() accepts. The defaults do N*r*p = 2^18 units of work in
// 128*r*N = 32 MiB; a configuration may ask for up to 16 times the work (about a second) and 4 times
// the memory. N and r are bounded by the memory limit, N also by the work limit.
inline constexpr uint64_t kMinScryptN = 1024;
inline constexpr uint32_t kMaxScryptR = 32;
inline constexpr uint32_t kMaxScryptP = 16;
inline constexpr uint64_t kMaxScryptWork = uint64_t{1} << 22;          // N * r * p
inline constexpr uint64_t kMaxScryptMemoryBytes = uint64_t{128} << 20;  // what OpenSSL allocates
inline constexpr size_t kMinSaltBytes = 8;
inline constexpr size_t kMaxSaltBytes = 64;
inline constexpr size_t kMinHashBytes = 16;
inline constexpr size_t kMaxHashBytes = 64;

struct PasswordHash {
  ScryptParameters parameters;
  std::vector<uint8_t> salt;
  std::vector<uint8_t> hash;
};

// A new encoded hash of `password` with the default parameters and a fresh random salt. Fails only
// when OpenSSL cannot get random bytes or memory.
Result<std::string> hash_password(std::string_view password);

// Checks the shape of an encoded hash and the bounds on its parameters; kParse or kLimitExceeded
// with a message that names the field (never the hash itself).
Result<PasswordHash> parse_password_hash(std::string_view encoded);

// True when `password` hashes to `expected` with its salt and parameters; the comparison takes the
// same time wherever the first differing byte is.
bool verify_password(std::string_view password, const PasswordHash& expected);
// The same from the encoded form; false for an encoded hash that does not parse.
bool verify_password(std::string_view password, std::string_view encoded);

}  // namespace zoogate
