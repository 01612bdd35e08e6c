#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "common/byte_sink.h"
#include "common/byte_source.h"
#include "common/checked.h"
#include "common/encoding.h"
#include "common/sha256.h"
#include "tests/common/temporary_folder.h"

namespace zoogate {
namespace {

namespace fs = std::filesystem;
using testing::TemporaryFolder;

TEST(MemorySource, ReadsInsideAndRejectsPastEndWithOffset) {
  std::vector<uint8_t> bytes = {1, 2, 3, 4};
  MemorySource source(bytes);
  std::vector<uint8_t> out(2);
  ASSERT_TRUE(source.read_at(2, out));
  EXPECT_EQ(out, (std::vector<uint8_t>{3, 4}));
  auto past = source.read_at(3, out);
  ASSERT_FALSE(past);
  EXPECT_EQ(past.error().code, ErrorCode::kParse);
  EXPECT_EQ(past.error().offset, 3u);
  EXPECT_FALSE(source.read_at(UINT64_MAX, out)) << "offset overflow must be caught";
}

TEST(SubSource, WindowIsBoundedByItsLength) {
  std::vector<uint8_t> bytes = {0, 1, 2, 3, 4, 5};
  MemorySource parent(bytes);
  SubSource window(parent, 2, 3);
  EXPECT_EQ(window.size(), 3u);
  auto all = window.read_vector(0, 3);
  ASSERT_TRUE(all);
  EXPECT_EQ(*all, (std::vector<uint8_t>{2, 3, 4}));
  EXPECT_FALSE(window.read_vector(1, 3)) << "must not read the parent's byte 5";
}

TEST(AtomicFileSink, CommitPublishesAndAbandonLeavesNothing) {
  const TemporaryFolder dir;
  std::string target = (dir.path() / "out.bin").string();
  {
    auto sink = AtomicFileSink::create(target);
    ASSERT_TRUE(sink);
    ASSERT_TRUE((*sink)->write(std::string_view("partial")));
    EXPECT_FALSE(fs::exists(target));
  }
  EXPECT_TRUE(fs::is_empty(dir.path())) << "an abandoned sink must remove its temporary file";

  auto sink = AtomicFileSink::create(target);
  ASSERT_TRUE(sink);
  std::string big(3 << 20, 'x');  // larger than the write-behind buffer
  ASSERT_TRUE((*sink)->write(std::string_view(big)));
  EXPECT_EQ((*sink)->position(), big.size());
  ASSERT_TRUE((*sink)->commit());
  EXPECT_EQ(fs::file_size(target), big.size());

  auto source = FileSource::open(target);
  ASSERT_TRUE(source);
  auto digest = Sha256::of_range(**source, 0, (*source)->size());
  ASSERT_TRUE(digest);
  EXPECT_EQ(*digest, Sha256::of(big));
}

// Both random-access sinks keep one contract: pieces land where they are written, in any order,
// mixed with appends, and read back as written; holes read as zeros until filled.
void exercise_random_access(RandomAccessSink& sink) {
  ASSERT_TRUE(sink.write(std::string_view("head")));
  const std::vector<uint8_t> far = {7, 8, 9};
  ASSERT_TRUE(sink.write_at(10, far));
  EXPECT_EQ(sink.position(), 13u);
  ASSERT_TRUE(sink.write(std::string_view("!")));  // appends at the furthest end
  ASSERT_TRUE(sink.write_at(4, std::vector<uint8_t>{1, 2}));
  std::vector<uint8_t> all(14);
  ASSERT_TRUE(sink.read_back(0, all));
  EXPECT_EQ(all, (std::vector<uint8_t>{'h', 'e', 'a', 'd', 1, 2, 0, 0, 0, 0, 7, 8, 9, '!'}));
  std::vector<uint8_t> past(2);
  EXPECT_FALSE(sink.read_back(13, past)) << "reading past what was written must fail";
}

TEST(RandomAccessSink, MemorySinkPlacesPiecesAnywhere) {
  MemorySink memory;
  exercise_random_access(memory);
  EXPECT_EQ(memory.bytes().size(), 14u);
}

TEST(RandomAccessSink, AtomicFileSinkPlacesPiecesAnywhereAndCommitsThem) {
  const TemporaryFolder dir;
  std::string target = (dir.path() / "assembled.bin").string();
  auto sink = AtomicFileSink::create(target);
  ASSERT_TRUE(sink);
  exercise_random_access(**sink);
  ASSERT_TRUE((*sink)->commit());
  auto source = FileSource::open(target);
  ASSERT_TRUE(source);
  auto bytes = (*source)->read_vector(0, 14);
  ASSERT_TRUE(bytes);
  EXPECT_EQ(*bytes, (std::vector<uint8_t>{'h', 'e', 'a', 'd', 1, 2, 0, 0, 0, 0, 7, 8, 9, '!'}));
}

TEST(FileSource, MissingFileIsAnIoError) {
  auto source = FileSource::open("/nonexistent/zoogate");
  ASSERT_FALSE(source);
  EXPECT_EQ(source.error().code, ErrorCode::kIo);
}

TEST(HashingSink, HashesWhatPassesThrough) {
  MemorySink memory;
  HashingSink hashing(memory);
  ASSERT_TRUE(hashing.write(std::string_view("abc")));
  EXPECT_EQ(to_hex(hashing.finish()), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(memory.bytes().size(), 3u);
}

TEST(HashingSink, HashesLongStreamsWrittenInPiecesOfAnySize) {
  // Longer than both staging buffers together, written in pieces that straddle their boundaries.
  std::vector<uint8_t> data((7u << 20) / 2);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>((i * 131) ^ (i >> 12));
  MemorySink memory;
  HashingSink hashing(memory);
  std::span<const uint8_t> rest(data);
  for (size_t piece : {size_t{1}, size_t{4095}, (size_t{1} << 20) + 7, size_t{3} << 19}) {
    ASSERT_TRUE(hashing.write(rest.first(piece)));
    rest = rest.subspan(piece);
  }
  ASSERT_TRUE(hashing.write(rest));
  EXPECT_EQ(hashing.finish(), Sha256::of(data));
  EXPECT_EQ(memory.bytes(), data);
  // finish() starts a new stream.
  ASSERT_TRUE(hashing.write(std::string_view("abc")));
  EXPECT_EQ(to_hex(hashing.finish()), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(Checked, DetectsOverflow) {
  EXPECT_FALSE(checked_add(UINT64_MAX, 1));
  EXPECT_FALSE(checked_mul(1ull << 33, 1ull << 33));
  EXPECT_EQ(checked_mul(3, 4), 12u);
  EXPECT_TRUE(range_fits(2, 2, 4));
  EXPECT_FALSE(range_fits(3, 2, 4));
  EXPECT_FALSE(range_fits(UINT64_MAX, 2, UINT64_MAX));
}

TEST(ErrorValue, DescribeNamesCodeOffsetAndContext) {
  Error error{ErrorCode::kParse, "truncated operand", 42};
  EXPECT_EQ(error.with_context("archive/data.pkl").describe(),
            "parse error at offset 42: archive/data.pkl: truncated operand");
}

}  // namespace
}  // namespace zoogate
