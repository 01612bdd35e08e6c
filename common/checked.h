// Overflow-checked arithmetic for sizes and offsets taken from untrusted input.
#pragma once

#include <cstdint>
#include <optional>

namespace zoogate {

inline std::optional<uint64_t> checked_add(uint64_t a, uint64_t b) {
  uint64_t out = 0;
  if (__builtin_add_overflow(a, b, &out)) return std::nullopt;
  return out;
}

inline std::optional<uint64_t> checked_mul(uint64_t a, uint64_t b) {
  uint64_t out = 0;
  if (__builtin_mul_overflow(a, b, &out)) return std::nullopt;
  return out;
}

// True when [offset, offset + length) lies inside [0, total).
inline bool range_fits(uint64_t offset, uint64_t length, uint64_t total) {
  auto end = checked_add(offset, length);
  return end && *end <= total;
}

}  // namespace zoogate
