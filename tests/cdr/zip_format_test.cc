#include "cdr/zip_format.h"

#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <zlib.h>

namespace zoogate::cdr::zip {
namespace {

uint32_t zlib_reference(uint32_t crc, std::span<const uint8_t> bytes) {
  return static_cast<uint32_t>(::crc32(crc, bytes.data(), static_cast<uInt>(bytes.size())));
}

std::vector<uint8_t> noise(size_t size) {
  std::vector<uint8_t> out(size);
  uint32_t state = 7;
  for (uint8_t& b : out) {
    state = state * 1664525u + 1013904223u;
    b = static_cast<uint8_t>(state >> 24);
  }
  return out;
}

TEST(ZipCrc32, MatchesZlibForEveryLengthAndAlignment) {
  const std::vector<uint8_t> data = noise(4096 + 64);
  for (size_t offset = 0; offset < 16; ++offset) {
    for (size_t length = 0; length <= 600; ++length) {
      auto bytes = std::span<const uint8_t>(data).subspan(offset, length);
      ASSERT_EQ(crc32_update(0, bytes), zlib_reference(0, bytes)) << offset << "+" << length;
      ASSERT_EQ(crc32_update(0xDEADBEEF, bytes), zlib_reference(0xDEADBEEF, bytes)) << offset << "+" << length;
    }
  }
}

TEST(ZipCrc32, ContinuesAcrossPiecesOfAnySize) {
  const std::vector<uint8_t> data = noise(3 << 20);
  const uint32_t whole = zlib_reference(0, data);
  EXPECT_EQ(crc32_update(0, data), whole);
  for (size_t piece : {size_t{1}, size_t{15}, size_t{64}, size_t{100}, size_t{65536} + 3}) {
    uint32_t crc = 0;
    for (size_t done = 0; done < data.size(); done += piece) {
      crc = crc32_update(crc, std::span<const uint8_t>(data).subspan(done, std::min(piece, data.size() - done)));
    }
    EXPECT_EQ(crc, whole) << piece;
  }
  const std::vector<uint8_t> zeros(1 << 20, 0), ones(1 << 20, 0xFF);
  EXPECT_EQ(crc32_update(0, zeros), zlib_reference(0, zeros));
  EXPECT_EQ(crc32_update(0, ones), zlib_reference(0, ones));
}

}  // namespace
}  // namespace zoogate::cdr::zip
