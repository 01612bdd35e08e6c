// The pipeline's building blocks that need no network: the check of downloaded bytes against what
// the upstream announced (in place and on the worker pool), the spool the disarm reads while the
// download writes, the relay that moves a body through a fixed set of buffers, and the one-time value
// concurrent requests wait on.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <fstream>
#include <iterator>
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
#include "proxy/piece_relay.h"
#include "proxy/spool_file.h"
#include "tests/common/temporary_folder.h"

namespace zoogate::proxy {
namespace {

using namespace std::chrono_literals;
using zoogate::testing::TemporaryFolder;

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

// Every SpoolFile test runs with the page cache and with direct I/O.
class SpoolFileTest : public ::testing::TestWithParam<bool> {
 protected:
  std::string path() const { return folder_.file("spool"); }
  bool direct_io() const { return GetParam(); }
  Result<std::shared_ptr<SpoolFile>> create(uint64_t expected_size) const {
    auto spool = SpoolFile::create(path(), expected_size, direct_io());
    // The test folder's file system takes O_DIRECT (ext4 here): a spool asked for direct I/O uses it.
    if (spool) {
      EXPECT_EQ((*spool)->direct_io(), direct_io());
    }
    return spool;
  }

  TemporaryFolder folder_;
};

INSTANTIATE_TEST_SUITE_P(PageCacheAndDirectIo, SpoolFileTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& mode) {
                           return mode.param ? "DirectIo" : "PageCache";
                         });

TEST_P(SpoolFileTest, AReaderWaitsForTheBytesItAsksFor) {
  auto spool = create(8);
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

TEST_P(SpoolFileTest, AShortOrOverlongDownloadFailsItsReaders) {
  auto spool = create(8);
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

TEST_P(SpoolFileTest, AKeptDownloadOpensFinished) {
  {
    auto spool = create(4);
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

// Bytes whose value tells their offset apart within a few MiB.
std::vector<uint8_t> numbered_bytes(size_t count) {
  std::vector<uint8_t> bytes(count);
  for (size_t i = 0; i < count; ++i) bytes[i] = static_cast<uint8_t>((i * 2654435761u) >> 13);
  return bytes;
}

TEST_P(SpoolFileTest, ReadsGiveTheAppendedBytesAcrossBlocksAndTheFileEndsAtItsSize) {
  // Two whole direct-I/O blocks and an end that is not aligned, appended in pieces that are not either.
  const std::vector<uint8_t> bytes = numbered_bytes(2 * SpoolFile::kDirectIoBlock + 12345);
  auto spool = create(bytes.size());
  ASSERT_TRUE(spool) << spool.error().describe();
  for (size_t at = 0, piece = 1000; at < bytes.size(); at += piece, piece = 300'001) {
    const size_t count = std::min(piece, bytes.size() - at);
    ASSERT_TRUE((*spool)->append(std::span(bytes).subspan(at, count)));
  }
  (*spool)->finish({});
  ASSERT_TRUE((*spool)->wait_finished());

  // Readers on several threads at once, each over spans that start and end anywhere.
  auto reader = (*spool)->reader();
  std::vector<std::thread> threads;
  for (size_t thread = 0; thread < 4; ++thread) {
    threads.emplace_back([&, thread] {
      for (uint64_t offset = thread * 77'777; offset < bytes.size(); offset += 1'234'567) {
        std::vector<uint8_t> out(std::min<uint64_t>(1'500'000, bytes.size() - offset));
        ASSERT_TRUE(reader->read_at(offset, out)) << offset;
        ASSERT_TRUE(std::equal(out.begin(), out.end(), bytes.begin() + static_cast<std::ptrdiff_t>(offset))) << offset;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  std::vector<uint8_t> tail(10);
  ASSERT_TRUE(reader->read_at(bytes.size() - tail.size(), tail));
  EXPECT_TRUE(std::equal(tail.begin(), tail.end(), bytes.end() - 10));

  // The padding of the last direct write is cut off: the file holds exactly the download.
  std::ifstream file(path(), std::ios::binary);
  const std::vector<uint8_t> on_disk((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  EXPECT_EQ(on_disk.size(), bytes.size());
  EXPECT_TRUE(on_disk == bytes);
}

TEST_P(SpoolFileTest, AReaderGetsBytesOnlyOnceTheyAreInTheFile) {
  // With direct I/O, appended bytes wait in memory for a whole block; a reader must wait with them
  // rather than read the file where they are not yet.
  const std::vector<uint8_t> bytes = numbered_bytes(SpoolFile::kDirectIoBlock + 100);
  auto spool = create(bytes.size());
  ASSERT_TRUE(spool) << spool.error().describe();
  const size_t first = SpoolFile::kDirectIoBlock - 1;
  ASSERT_TRUE((*spool)->append(std::span(bytes).first(first)));
  auto reader = (*spool)->reader();
  std::vector<uint8_t> out(16);
  std::atomic<bool> done = false;
  std::thread waiting([&] {
    EXPECT_TRUE(reader->read_at(0, out));
    done = true;
  });
  if (direct_io()) {
    // Not before the block is whole.
    std::this_thread::sleep_for(50ms);
    EXPECT_FALSE(done.load());
  } else {
    // Through the page cache the bytes are readable at once.
    waiting.join();
    EXPECT_TRUE(done.load());
  }
  ASSERT_TRUE((*spool)->append(std::span(bytes).subspan(first)));
  if (waiting.joinable()) waiting.join();
  EXPECT_TRUE(std::equal(out.begin(), out.end(), bytes.begin()));
  (*spool)->finish({});
  EXPECT_TRUE((*spool)->wait_finished());
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

// Runs `body` as a coroutine on a strand of an io_context with two threads (the most the contracts of
// BackgroundVerifier and PieceRelay allow; sessions run on an event loop of one thread), with a worker
// pool that ends before the io_context, as the server's does.
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

// A body that fills each read from `input` as far as it goes, failing instead of reading at
// `fail_at_read` when set; counts its reads and the bytes it has given.
struct ScriptedBody {
  std::vector<uint8_t> input;
  std::optional<size_t> fail_at_read;
  size_t reads = 0;
  size_t given = 0;

  boost::asio::awaitable<Result<size_t>> read(std::span<uint8_t> out) {
    // A pause on the executor, as a socket read takes, so that the two coroutines interleave.
    boost::asio::steady_timer pause(co_await boost::asio::this_coro::executor, std::chrono::microseconds(50 * (reads % 3)));
    co_await pause.async_wait(boost::asio::use_awaitable);
    if (fail_at_read && reads == *fail_at_read) co_return fail(ErrorCode::kIo, "the upstream reset the connection");
    ++reads;
    const size_t count = std::min(out.size(), input.size() - given);
    std::copy_n(input.begin() + static_cast<ptrdiff_t>(given), count, out.begin());
    given += count;
    co_return count;
  }
};

std::vector<uint8_t> joined(const std::vector<std::vector<uint8_t>>& pieces) {
  std::vector<uint8_t> all;
  for (const auto& piece : pieces) all.insert(all.end(), piece.begin(), piece.end());
  return all;
}

TEST(PieceRelay, PassesEveryPieceOnInOrderButTheNewestHeldBackWithinItsBuffers) {
  const ManyPieces input = many_pieces(40, 3000);
  const std::vector<uint8_t> all = joined(input.pieces);
  const size_t first_size = 1000;
  for (size_t held_back : {0u, 1u, 2u}) {
    ScriptedBody body{std::vector<uint8_t>(all.begin() + first_size, all.end()), std::nullopt};
    std::vector<uint8_t> consumed;
    size_t most_ahead = 0;  // bytes read but not yet passed on, at most
    std::optional<PieceRelay::Outcome> outcome;
    std::optional<Result<Sha256::Digest>> verdict;
    run_on_strand([&](boost::asio::thread_pool& workers) -> boost::asio::awaitable<void> {
      const auto executor = co_await boost::asio::this_coro::executor;
      BackgroundVerifier verifier(input.file, workers, executor);
      PieceRelay relay(executor, verifier, /*pieces=*/4, /*piece_size=*/4096);
      PieceRelay::Read read = [&body](std::span<uint8_t> out) { return body.read(out); };
      PieceRelay::Consume consume = [&](std::span<const uint8_t> piece) -> boost::asio::awaitable<Status> {
        most_ahead = std::max(most_ahead, first_size + body.given - consumed.size());
        boost::asio::steady_timer pause(co_await boost::asio::this_coro::executor, std::chrono::microseconds(70));
        co_await pause.async_wait(boost::asio::use_awaitable);
        consumed.insert(consumed.end(), piece.begin(), piece.end());
        co_return Status{};
      };
      auto first = std::make_shared<std::vector<uint8_t>>(all.begin(), all.begin() + first_size);
      outcome = co_await relay.run(first, read, consume, held_back);
      verdict = co_await verifier.finish();
    });
    ASSERT_TRUE(outcome.has_value());
    ASSERT_EQ(outcome->ending, PieceRelay::Ending::kBodyEnded) << (outcome->error ? outcome->error->describe() : "");
    EXPECT_EQ(outcome->held_back.size(), held_back);
    std::vector<uint8_t> relayed = consumed;
    for (const auto& piece : outcome->held_back) relayed.insert(relayed.end(), piece->begin(), piece->end());
    EXPECT_EQ(relayed, all) << "held back " << held_back;
    EXPECT_LE(most_ahead, 4u * 4096) << "held back " << held_back;
    ASSERT_TRUE(verdict.has_value() && verdict->has_value());
    EXPECT_EQ(**verdict, *input.file.lfs_sha256);
  }
}

TEST(PieceRelay, AFailedReadOrConsumerEndsIt) {
  const ManyPieces input = many_pieces(20, 4096);
  const std::vector<uint8_t> all = joined(input.pieces);
  auto relay_with = [&](std::optional<size_t> fail_at_read, std::optional<size_t> refuse_at_piece, size_t& reads,
                        size_t& consumed_pieces) {
    ScriptedBody body{all, fail_at_read};
    std::optional<PieceRelay::Outcome> outcome;
    consumed_pieces = 0;
    run_on_strand([&](boost::asio::thread_pool& workers) -> boost::asio::awaitable<void> {
      const auto executor = co_await boost::asio::this_coro::executor;
      BackgroundVerifier verifier(input.file, workers, executor);
      PieceRelay relay(executor, verifier, /*pieces=*/3, /*piece_size=*/4096);
      PieceRelay::Read read = [&body](std::span<uint8_t> out) { return body.read(out); };
      PieceRelay::Consume consume = [&](std::span<const uint8_t>) -> boost::asio::awaitable<Status> {
        if (refuse_at_piece && consumed_pieces == *refuse_at_piece) co_return fail(ErrorCode::kIo, "the client left");
        ++consumed_pieces;
        co_return Status{};
      };
      outcome = co_await relay.run(std::make_shared<std::vector<uint8_t>>(), read, consume, 1);
    });
    reads = body.reads;
    return *outcome;
  };
  size_t reads = 0;
  size_t consumed = 0;
  const PieceRelay::Outcome read_failed = relay_with(5, std::nullopt, reads, consumed);
  EXPECT_EQ(read_failed.ending, PieceRelay::Ending::kReadFailed);
  ASSERT_TRUE(read_failed.error.has_value());
  EXPECT_EQ(read_failed.error->message, "the upstream reset the connection");
  EXPECT_TRUE(read_failed.held_back.empty());
  EXPECT_EQ(reads, 5u);
  EXPECT_LE(consumed, 4u);  // the newest piece read was never passed on

  const PieceRelay::Outcome refused = relay_with(std::nullopt, 2, reads, consumed);
  EXPECT_EQ(refused.ending, PieceRelay::Ending::kConsumeFailed);
  ASSERT_TRUE(refused.error.has_value());
  EXPECT_EQ(refused.error->message, "the client left");
  EXPECT_EQ(consumed, 2u);
  EXPECT_LE(reads, 2u + 3u) << "the reading went on after the consumer had stopped";
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

TEST(Completion, OutlivesTheEventLoopsOfItsWaiters) {
  // A loop destroyed with a waiter still suspended on it, while the Completion, shared with other
  // loops' coroutines, lives on: it must not keep the gone loop's timer, nor post to that loop.
  auto completion = std::make_shared<Completion<int>>();
  {
    boost::asio::io_context loop;
    auto wait = [completion]() -> boost::asio::awaitable<void> { (void)co_await completion->wait(10s); };
    boost::asio::co_spawn(loop, wait, boost::asio::detached);
    loop.run_for(20ms);  // the waiter is suspended in its timer's wait
  }
  completion->set(3);
  EXPECT_EQ(completion->value(), 3);
  completion.reset();
}

}  // namespace
}  // namespace zoogate::proxy
