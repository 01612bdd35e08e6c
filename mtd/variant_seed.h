// The variation key of moving-target defense: which variant of an artifact a client is served.
//
//   seed = HMAC-SHA256(secret, "zoogate-mtd-seed-v1" || scope || artifact digest || epoch)
//
// with every part length-prefixed (8-byte big-endian length, then the bytes), so that no two different
// (scope, digest, epoch) triples encode to the same message. The same inputs always give the same
// seed: within one epoch a client gets the same bytes every time, which HTTP range resume relies on.
//
// The seed is never published. Each use of it (folder name, record order, record names, pickle memo,
// weight permutations) draws from its own sub-seed, HMAC(seed, label), so that what one use reveals
// says nothing about the others. `id()` is the public name of a seed for manifests and traces: a
// truncated SHA-256 of a label and the seed, from which neither the seed nor the secret can be found.
//
// Thread safety: VariantSeed is an immutable value. The file functions touch only the path given.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.h"

namespace zoogate::mtd {

// A secret shorter than this is refused: it would be the weakest link of the whole construction.
inline constexpr size_t kMinSecretBytes = 32;
// A secret file larger than this is not a secret file.
inline constexpr size_t kMaxSecretBytes = 4096;

// The independent uses of one seed; each gets its own sub-seed.
enum class SeedPurpose {
  kFolderName,
  kRecordOrder,
  kRecordNames,
  kPickleMemo,
  kWeightPermutation,
};

class VariantSeed {
 public:
  using Bytes = std::array<uint8_t, 32>;

  // Fails (kInvalidArgument) when the secret is shorter than kMinSecretBytes.
  static Result<VariantSeed> derive(std::span<const uint8_t> secret, std::string_view scope,
                                    std::span<const uint8_t> artifact_digest, uint64_t epoch);

  // HMAC(seed, label of `purpose` || `detail`), both length-prefixed: the key material of one use.
  // `detail` tells apart the streams of one purpose (one per layer of a model, for example).
  Bytes sub_seed(SeedPurpose purpose, std::string_view detail = {}) const;

  // 16 lowercase hex digits: the first 8 bytes of SHA-256("zoogate-mtd-seed-id-v1" || seed).
  std::string id() const;

  const Bytes& bytes() const { return bytes_; }
  bool operator==(const VariantSeed&) const = default;

 private:
  explicit VariantSeed(const Bytes& bytes) : bytes_(bytes) {}
  Bytes bytes_;
};

// Reads a variation secret: the whole file is the secret. A file shorter than kMinSecretBytes is
// kInvalidArgument, one longer than kMaxSecretBytes kLimitExceeded, one that cannot be read kIo.
Result<std::vector<uint8_t>> load_secret(const std::string& path);

// Writes a new secret of kMinSecretBytes random bytes (OpenSSL's RAND_bytes) to `path`, created with
// mode 0600 and published atomically: a reader sees no file or the whole secret. Never replaces an
// existing file (kInvalidArgument): losing the old secret would make every variant served with it
// untraceable.
Status create_secret_file(const std::string& path);

}  // namespace zoogate::mtd
