// The pipeline's building blocks that need no network: the check of downloaded bytes against what
// the upstream announced, the spool the disarm reads while the download writes, and the one-time
// value concurrent requests wait on.
#include <chrono>
#include <string>
#include <thread>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <gtest/gtest.h>

#include "common/encoding.h"
#include "proxy/artifact_pipeline.h"
#include "proxy/completion.h"
#include "proxy/spool_file.h"
#include "tests/proxy/temporary_folder.h"

namespace zoogate::proxy {
namespace {

using namespace std::chrono_literals;

std::span<const uint8_t> bytes_of(std::string_view text) {
  return {reinterpret_cast<const uint8_t*>(text.data()), text.size()};
}

// "hello\n": `git hash-object` gives ce0136..., `sha256sum` gives 5891b5...
constexpr std::string_view kHello = "hello\n";
constexpr std::string_view kHelloBlobId = "ce013625030ba8dba906f756967f9e9ca394464a";
constexpr std::string_view kHelloSha256 = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";

UpstreamFile lfs_file(std::string_view sha256_hex, uint64_t size) {
  UpstreamFile file;
  auto digest = from_hex(sha256_hex);
  file.lfs_sha256.emplace();
  std::copy(digest->begin(), digest->end(), file.lfs_sha256->begin());
  file.size = size;
  return file;
}

UpstreamFile git_file(std::string_view blob_id, uint64_t size) {
  UpstreamFile file;
  file.git_blob_id = std::string(blob_id);
  file.size = size;
  return file;
}

TEST(ContentVerifier, AcceptsTheAnnouncedLfsBytesInPieces) {
  ContentVerifier verifier(lfs_file(kHelloSha256, kHello.size()));
  verifier.update(bytes_of(kHello.substr(0, 2)));
  verifier.update(bytes_of(kHello.substr(2)));
  EXPECT_TRUE(verifier.complete());
  auto digest = verifier.finish();
  ASSERT_TRUE(digest) << digest.error().describe();
  EXPECT_EQ(to_hex(*digest), kHelloSha256);
}

TEST(ContentVerifier, RefusesOtherLfsBytesOfTheSameSize) {
  ContentVerifier verifier(lfs_file(kHelloSha256, kHello.size()));
  verifier.update(bytes_of("hellO\n"));
  EXPECT_TRUE(verifier.complete());
  auto digest = verifier.finish();
  ASSERT_FALSE(digest);
  EXPECT_EQ(digest.error().code, ErrorCode::kIntegrity);
  EXPECT_NE(digest.error().message.find("X-Linked-Etag"), std::string::npos);
}

TEST(ContentVerifier, RefusesShortAndLongBodies) {
  for (std::string_view body : {std::string_view("hello"), std::string_view("hello\n!")}) {
    ContentVerifier verifier(lfs_file(kHelloSha256, kHello.size()));
    verifier.update(bytes_of(body));
    EXPECT_FALSE(verifier.complete());
    auto digest = verifier.finish();
    ASSERT_FALSE(digest);
    EXPECT_EQ(digest.error().code, ErrorCode::kIntegrity);
    EXPECT_NE(digest.error().message.find("received " + std::to_string(body.size()) + " bytes"), std::string::npos);
  }
}

TEST(ContentVerifier, ChecksTheGitBlobIdAndStillGivesTheSha256) {
  ContentVerifier good(git_file(kHelloBlobId, kHello.size()));
  good.update(bytes_of(kHello));
  auto digest = good.finish();
  ASSERT_TRUE(digest) << digest.error().describe();
  EXPECT_EQ(to_hex(*digest), kHelloSha256);

  ContentVerifier bad(git_file(kHelloBlobId, kHello.size()));
  bad.update(bytes_of("jello\n"));
  auto refused = bad.finish();
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, ErrorCode::kIntegrity);
  EXPECT_NE(refused.error().message.find("git blob id"), std::string::npos);
}

class SpoolFileTest : public ::testing::Test {
 protected:
  std::string path() const { return folder_.file("spool"); }

  TemporaryFolder folder_;
};

TEST_F(SpoolFileTest, AReaderWaitsForTheBytesItAsksFor) {
  auto spool = SpoolFile::create(path(), 8);
  ASSERT_TRUE(spool) << spool.error().describe();
  auto reader = (*spool)->reader();
  std::string seen(4, '\0');
  std::thread waiting([&] {
    ASSERT_TRUE(reader->read_at(4, std::span(reinterpret_cast<uint8_t*>(seen.data()), seen.size())));
  });
  ASSERT_TRUE((*spool)->append(bytes_of("abcd")));
  std::this_thread::sleep_for(20ms);
  ASSERT_TRUE((*spool)->append(bytes_of("efgh")));
  waiting.join();
  EXPECT_EQ(seen, "efgh");
  (*spool)->finish({});
  EXPECT_TRUE((*spool)->wait_finished());
}

TEST_F(SpoolFileTest, AShortOrOverlongDownloadFailsItsReaders) {
  auto spool = SpoolFile::create(path(), 8);
  ASSERT_TRUE(spool);
  ASSERT_TRUE((*spool)->append(bytes_of("abc")));
  auto overlong = (*spool)->append(bytes_of("defghi"));
  ASSERT_FALSE(overlong);
  EXPECT_EQ(overlong.error().code, ErrorCode::kLimitExceeded);
  (*spool)->finish({});
  auto finished = (*spool)->wait_finished();
  ASSERT_FALSE(finished);
  EXPECT_NE(finished.error().message.find("after 3 of 8 bytes"), std::string::npos);
  std::string out(2, '\0');
  EXPECT_FALSE((*spool)->reader()->read_at(4, std::span(reinterpret_cast<uint8_t*>(out.data()), out.size())));
}

TEST_F(SpoolFileTest, AKeptDownloadOpensFinished) {
  {
    auto spool = SpoolFile::create(path(), 4);
    ASSERT_TRUE(spool);
    ASSERT_TRUE((*spool)->append(bytes_of("wxyz")));
    (*spool)->finish({});
  }
  auto kept = SpoolFile::open_complete(path(), 4);
  ASSERT_TRUE(kept) << kept.error().describe();
  EXPECT_TRUE((*kept)->wait_finished());
  std::string out(4, '\0');
  ASSERT_TRUE((*kept)->reader()->read_at(0, std::span(reinterpret_cast<uint8_t*>(out.data()), out.size())));
  EXPECT_EQ(out, "wxyz");
  EXPECT_FALSE(SpoolFile::open_complete(folder_.file("missing"), 4));
}

TEST(Completion, AWaiterGetsTheValueOrGivesUpAtItsDeadline) {
  boost::asio::io_context io;
  Completion<int> completion;
  std::optional<int> early;
  std::optional<int> late = -1;
  auto wait_long = [&]() -> boost::asio::awaitable<void> { late = co_await completion.wait(10s); };
  auto wait_short = [&]() -> boost::asio::awaitable<void> { early = co_await completion.wait(10ms); };
  boost::asio::co_spawn(io, wait_long, boost::asio::detached);
  boost::asio::co_spawn(io, wait_short, boost::asio::detached);
  boost::asio::steady_timer later(io, 100ms);
  later.async_wait([&](boost::system::error_code) {
    completion.set(7);
    completion.set(8);  // ignored: the first value stands
  });
  const auto started = std::chrono::steady_clock::now();
  io.run();
  EXPECT_LT(std::chrono::steady_clock::now() - started, 5s);
  EXPECT_EQ(early, std::nullopt);
  EXPECT_EQ(late, 7);
  EXPECT_EQ(completion.value(), 7);
}

}  // namespace
}  // namespace zoogate::proxy
