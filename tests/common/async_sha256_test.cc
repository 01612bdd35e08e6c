#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "common/async_sha256.h"
#include "common/encoding.h"

namespace zoogate {
namespace {

TEST(AsyncSha256, EqualsTheSynchronousHashOverManyChunksAndStreams) {
  std::vector<uint8_t> data(5'000'003);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 131 + (i >> 9));
  AsyncSha256 hash;
  for (int stream = 0; stream < 3; ++stream) {
    size_t chunk = 4096u << stream;  // each stream cuts the bytes differently
    uint64_t ticket = 0;
    for (size_t offset = 0; offset < data.size(); offset += chunk) {
      ticket = hash.update(std::span(data).subspan(offset, std::min(chunk, data.size() - offset)));
    }
    hash.wait_for(ticket);
    EXPECT_EQ(hash.finish(), Sha256::of(data)) << "stream " << stream;
  }
}

TEST(AsyncSha256, EmptyStreamHasTheEmptyDigest) {
  AsyncSha256 hash;
  EXPECT_EQ(to_hex(hash.finish()), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

}  // namespace
}  // namespace zoogate
