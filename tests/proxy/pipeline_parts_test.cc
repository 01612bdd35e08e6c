// The pipeline's building blocks that need no network: the check of downloaded bytes against what
// the upstream announced (in place and on the worker pool), the spool the disarm reads while the
// download writes, and the one-time value concurrent requests wait on.
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/thread_pool.hpp>
#include <gtest/gtest.h>

#include "common/encoding.h"
#include "common/sha256.h"
#include "proxy/artifact_pipeline.h"
#include "proxy/background_verifier.h"
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

// `count` pieces of `piece_size` bytes with varied contents, and the file that announces them.
struct ManyPieces {
  std::vector<std::vector<uint8_t>> pieces;
  UpstreamFile file;
};

ManyPieces many_pieces(size_t count, size_t piece_size) {
  ManyPieces made;
  Sha256 whole;
  for (size_t i = 0; i < count; ++i) {
    std::vector<uint8_t> piece(piece_size);
    for (size_t j = 0; j < piece_size; ++j) piece[j] = static_cast<uint8_t>((i * 131 + j * 7) >> 3);
    whole.update(piece);
    made.pieces.push_back(std::move(piece));
  }
  made.file = lfs_file(to_hex(whole.finish()), count * piece_size);
  return made;
}

using Body = std::function<boost::asio::awaitable<void>(boost::asio::thread_pool& workers)>;

// Runs `body` as a coroutine on a strand of an io_context with two threads, as sessions run, with a
// worker pool that ends before the io_context, as the server's does.
void run_on_strand(const Body& body) {
  boost::asio::io_context io;
  boost::asio::thread_pool workers(4);
  boost::asio::co_spawn(boost::asio::make_strand(io), [&] { return body(workers); }, boost::asio::detached);
  std::thread second([&] { io.run(); });
  io.run();
  second.join();
  workers.join();
}

TEST(BackgroundVerifier, HashesPiecesInOrderWhileTheCallerGoesOn) {
  const ManyPieces input = many_pieces(64, 64 * 1024);
  std::optional<Result<Sha256::Digest>> verdict;
  bool complete = false;
  run_on_strand([&](boost::asio::thread_pool& workers) -> boost::asio::awaitable<void> {
    BackgroundVerifier verifier(input.file, workers, co_await boost::asio::this_coro::executor);
    uint64_t ticket = 0;
    for (size_t i = 0; i < input.pieces.size(); ++i) {
      ticket = verifier.add(std::make_shared<std::vector<uint8_t>>(input.pieces[i]));
      EXPECT_EQ(ticket, i + 1);
      if (i % 8 == 0) co_await verifier.wait_until_hashed(ticket);
    }
    co_await verifier.wait_until_hashed(0);  // nothing to wait for
    verdict = co_await verifier.finish();
    complete = verifier.complete();
  });
  ASSERT_TRUE(verdict.has_value());
  ASSERT_TRUE(verdict->has_value()) << verdict->error().describe();
  EXPECT_EQ(**verdict, *input.file.lfs_sha256);
  EXPECT_TRUE(complete);
}

TEST(BackgroundVerifier, ReportsOtherBytesAndShortDownloads) {
  const ManyPieces input = many_pieces(8, 4096);
  std::optional<Result<Sha256::Digest>> changed;
  std::optional<Result<Sha256::Digest>> short_one;
  bool short_complete = true;
  run_on_strand([&](boost::asio::thread_pool& workers) -> boost::asio::awaitable<void> {
    BackgroundVerifier verifier(input.file, workers, co_await boost::asio::this_coro::executor);
    for (size_t i = 0; i < input.pieces.size(); ++i) {
      auto piece = std::make_shared<std::vector<uint8_t>>(input.pieces[i]);
      if (i == 5) (*piece)[17] ^= 1;
      verifier.add(std::move(piece));
    }
    changed = co_await verifier.finish();
  });
  run_on_strand([&](boost::asio::thread_pool& workers) -> boost::asio::awaitable<void> {
    BackgroundVerifier verifier(input.file, workers, co_await boost::asio::this_coro::executor);
    verifier.add(std::make_shared<std::vector<uint8_t>>(input.pieces[0]));
    short_one = co_await verifier.finish();
    short_complete = verifier.complete();
  });
  ASSERT_TRUE(changed.has_value());
  ASSERT_FALSE(changed->has_value());
  EXPECT_EQ(changed->error().code, ErrorCode::kIntegrity);
  EXPECT_NE(changed->error().message.find("X-Linked-Etag"), std::string::npos) << changed->error().message;
  ASSERT_TRUE(short_one.has_value());
  ASSERT_FALSE(short_one->has_value());
  EXPECT_EQ(short_one->error().code, ErrorCode::kIntegrity);
  EXPECT_FALSE(short_complete);
}

TEST(BackgroundVerifier, ACallerThatEndsEarlyLeavesTheHashingSafe) {
  // The coroutine gives up with pieces still queued (a client gone): the tasks keep what they use
  // alive and finish after it.
  const ManyPieces input = many_pieces(32, 256 * 1024);
  run_on_strand([&](boost::asio::thread_pool& workers) -> boost::asio::awaitable<void> {
    BackgroundVerifier verifier(input.file, workers, co_await boost::asio::this_coro::executor);
    for (const auto& piece : input.pieces) verifier.add(std::make_shared<std::vector<uint8_t>>(piece));
    co_return;
  });
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
