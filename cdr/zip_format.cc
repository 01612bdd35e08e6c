#include "cdr/zip_format.h"

#include <functional>
#include <limits>

#include <zlib.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "common/encoding.h"

namespace zoogate::cdr::zip {
namespace {

std::string quoted(std::string_view name) { return "'" + std::string(name) + "'"; }

Status refuse_name(std::string_view name, std::string_view why) {
  return fail(ErrorCode::kForbidden, "entry name " + quoted(name) + " " + std::string(why));
}

std::string ascii_lowercase(std::string_view text) {
  std::string out(text);
  for (char& c : out) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return out;
}

#if defined(__x86_64__)
// CRC-32 by carry-less multiplication, after Gopal et al., "Fast CRC Computation for Generic Polynomials
// Using PCLMULQDQ Instruction" (Intel, 2009). The message is folded into four 128-bit lanes 64 bytes at a
// time, the lanes are folded into one, and that one is reduced to 32 bits (Barrett reduction). The fold
// constants are powers of x modulo the bit-reflected ZIP polynomial P for a 512-bit and a 128-bit
// distance (and 64 bits for the last step), in the paper's reflected form. zlib 1.2's table-driven crc32 runs at about a third of SHA-NI's speed, which
// made the CRC the largest cost of copying stored entries; this runs several times faster.
//
// `state` is the raw CRC register (the complement of a zlib-style CRC value); `length` is a multiple of
// 16 and at least 64.
#define ZG_CLMUL __attribute__((target("pclmul,sse4.1")))

ZG_CLMUL inline __m128i load_block(const uint8_t* p) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)); }

// Moves `lane` forward by the distance `constants` stand for and adds the data found there.
ZG_CLMUL inline __m128i fold_lane(__m128i lane, __m128i constants, __m128i next) {
  __m128i low = _mm_clmulepi64_si128(lane, constants, 0x00);
  __m128i high = _mm_clmulepi64_si128(lane, constants, 0x11);
  return _mm_xor_si128(_mm_xor_si128(low, high), next);
}

ZG_CLMUL uint32_t fold_crc32(uint32_t state, const uint8_t* data, size_t length) {
  const __m128i fold_by_4 = _mm_set_epi64x(0x1c6e41596, 0x154442bd4);
  const __m128i fold_by_1 = _mm_set_epi64x(0x0ccaa009e, 0x1751997d0);
  const __m128i fold_64 = _mm_set_epi64x(0, 0x163cd6124);
  const __m128i barrett = _mm_set_epi64x(0x1f7011641, 0x1db710641);  // high: floor(x^64 / P), low: P
  const __m128i low_32_of_each_half = _mm_set_epi32(0, -1, 0, -1);

  __m128i lane0 = _mm_xor_si128(load_block(data), _mm_cvtsi32_si128(static_cast<int>(state)));
  __m128i lane1 = load_block(data + 16);
  __m128i lane2 = load_block(data + 32);
  __m128i lane3 = load_block(data + 48);
  data += 64;
  length -= 64;
  for (; length >= 64; data += 64, length -= 64) {
    lane0 = fold_lane(lane0, fold_by_4, load_block(data));
    lane1 = fold_lane(lane1, fold_by_4, load_block(data + 16));
    lane2 = fold_lane(lane2, fold_by_4, load_block(data + 32));
    lane3 = fold_lane(lane3, fold_by_4, load_block(data + 48));
  }
  __m128i x = fold_lane(fold_lane(fold_lane(lane0, fold_by_1, lane1), fold_by_1, lane2), fold_by_1, lane3);
  for (; length >= 16; data += 16, length -= 16) x = fold_lane(x, fold_by_1, load_block(data));

  // 128 bits -> 64 bits.
  x = _mm_xor_si128(_mm_clmulepi64_si128(x, fold_by_1, 0x10), _mm_srli_si128(x, 8));
  x = _mm_xor_si128(_mm_clmulepi64_si128(_mm_and_si128(x, low_32_of_each_half), fold_64, 0x00), _mm_srli_si128(x, 4));
  // 64 bits -> 32 bits: subtract the multiple of P that the Barrett quotient gives.
  __m128i quotient = _mm_clmulepi64_si128(_mm_and_si128(x, low_32_of_each_half), barrett, 0x10);
  __m128i multiple = _mm_clmulepi64_si128(_mm_and_si128(quotient, low_32_of_each_half), barrett, 0x00);
  return static_cast<uint32_t>(_mm_extract_epi32(_mm_xor_si128(x, multiple), 1));
}

#undef ZG_CLMUL

bool cpu_can_fold_crc32() {
  static const bool supported = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
  }();
  return supported;
}
#endif

uint32_t zlib_crc32(uint32_t crc, std::span<const uint8_t> bytes) {
  // zlib takes a uInt length; feed it in pieces that fit.
  constexpr size_t kMaxPiece = std::numeric_limits<uInt>::max() & ~size_t{0xFFFF};
  uLong value = crc;
  while (!bytes.empty()) {
    size_t piece = bytes.size() < kMaxPiece ? bytes.size() : kMaxPiece;
    value = ::crc32(value, bytes.data(), static_cast<uInt>(piece));
    bytes = bytes.subspan(piece);
  }
  return static_cast<uint32_t>(value);
}

}  // namespace

uint32_t crc32_update(uint32_t crc, std::span<const uint8_t> bytes) {
#if defined(__x86_64__)
  constexpr size_t kFoldMinimum = 64;
  if (bytes.size() >= kFoldMinimum && cpu_can_fold_crc32()) {
    const size_t folded = bytes.size() & ~size_t{15};
    crc = ~fold_crc32(~crc, bytes.data(), folded);
    bytes = bytes.subspan(folded);
  }
#endif

  return zlib_crc32(crc, bytes);
}

Status EntryNames::add(std::string_view name) {
  if (name.empty()) return fail(ErrorCode::kForbidden, "entry name is empty");
  if (name.size() > kMaxEntryNameLength) {
    return fail(ErrorCode::kLimitExceeded, "entry name of " + std::to_string(name.size()) + " bytes is longer than " +
                                               std::to_string(kMaxEntryNameLength));
  }
  if (!is_valid_utf8(name)) return refuse_name(name, "is not valid UTF-8");
  for (char c : name) {
    auto byte = static_cast<uint8_t>(c);
    if (byte < 0x20 || byte == 0x7F) return refuse_name(name, "contains a control character");
    if (c == '\\') return refuse_name(name, "contains a backslash");
    if (c == ':') return refuse_name(name, "contains ':' (a drive letter or stream name on Windows)");
  }
  if (name.front() == '/') return refuse_name(name, "is an absolute path");
  if (name.back() == '/') return refuse_name(name, "is a directory entry");

  std::string_view first_segment;
  size_t segments = 0;
  size_t start = 0;
  while (start <= name.size()) {
    size_t end = name.find('/', start);
    if (end == std::string_view::npos) end = name.size();
    std::string_view segment = name.substr(start, end - start);
    if (segment.empty()) return refuse_name(name, "has an empty path segment");
    if (segment == "." || segment == "..") return refuse_name(name, "has a '.' or '..' path segment");
    if (segments++ == 0) first_segment = segment;
    start = end + 1;
  }
  const NameLayout layout = segments == 1 ? NameLayout::kFlat : NameLayout::kOneTopFolder;
  if (!layout_) {
    layout_ = layout;
    if (layout == NameLayout::kOneTopFolder) top_folder_ = std::string(first_segment);
  } else if (layout != *layout_) {
    return refuse_name(name, layout == NameLayout::kFlat
                                 ? "is not inside a top-level folder, unlike the names before it (in " +
                                       quoted(top_folder_) + ")"
                                 : "is inside a folder, unlike the names at the top level before it");
  } else if (layout == NameLayout::kOneTopFolder && first_segment != top_folder_) {
    return refuse_name(name, "is in a second top-level folder (the first is " + quoted(top_folder_) + ")");
  }

  const size_t name_hash = std::hash<std::string_view>{}(name);
  auto [existing, inserted] = by_folded_name_.try_emplace(ascii_lowercase(name), name_hash);
  if (!inserted) {
    if (existing->second == name_hash) return refuse_name(name, "appears twice");
    return refuse_name(name, "differs from an earlier name only in letter case");
  }
  return {};
}

}  // namespace zoogate::cdr::zip
