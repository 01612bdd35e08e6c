// Deterministic random numbers for MTD: the same key gives the same sequence on every platform.
//
// The stream is ChaCha20's keystream (through OpenSSL) under a 32-byte key, read as little-endian
// 64-bit words. std:: distributions are not used anywhere in mtd/: their output differs between
// standard libraries, and a variant must be reproducible by any build of zoogate (for `trace`).
// Keys come from VariantSeed::sub_seed, one per use, so streams never overlap.
//
// Thread safety: a SeededRandom is one stream with state; use one per thread.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <vector>

namespace zoogate::mtd {

class SeededRandom {
 public:
  explicit SeededRandom(const std::array<uint8_t, 32>& key);
  ~SeededRandom();
  SeededRandom(SeededRandom&&) noexcept;
  SeededRandom& operator=(SeededRandom&&) noexcept;

  uint64_t next();
  // Uniform in [0, bound) without modulo bias; `bound` must be at least 1.
  uint64_t below(uint64_t bound);
  // A uniformly drawn permutation of 0..size-1 (Fisher-Yates).
  std::vector<uint32_t> permutation(uint32_t size);

 private:
  void refill();

  struct Cipher;
  std::unique_ptr<Cipher> cipher_;
  std::array<uint8_t, 512> block_{};
  size_t used_ = 0;
};

}  // namespace zoogate::mtd
