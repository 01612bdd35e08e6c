// The bounded, expiring memo that keeps the Hub's recent answers.
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "proxy/expiring_memo.h"

namespace zoogate::proxy {
namespace {

using namespace std::chrono_literals;
using Memo = ExpiringMemo<int>;

TEST(ExpiringMemo, KeepsAValueForItsTimeThenForgetsIt) {
  Memo memo(10s, 100);
  const auto start = Memo::Clock::now();
  memo.remember("a", 1, start);
  EXPECT_EQ(memo.find("a", start + 9s), 1);
  EXPECT_EQ(memo.find("a", start + 10s), std::nullopt);
  EXPECT_EQ(memo.size(), 0u);  // the expired entry went when it was looked up
  EXPECT_EQ(memo.find("b", start), std::nullopt);
}

TEST(ExpiringMemo, RememberingAgainReplacesTheValueAndStartsItsTimeAnew) {
  Memo memo(10s, 100);
  const auto start = Memo::Clock::now();
  memo.remember("a", 1, start);
  memo.remember("a", 2, start + 8s);
  EXPECT_EQ(memo.find("a", start + 17s), 2);
  EXPECT_EQ(memo.size(), 1u);
}

TEST(ExpiringMemo, BeyondItsCapacityTheOldestGoesFirst) {
  Memo memo(1h, 3);
  const auto start = Memo::Clock::now();
  memo.remember("a", 1, start);
  memo.remember("b", 2, start + 1s);
  memo.remember("c", 3, start + 2s);
  memo.remember("a", 4, start + 3s);  // a is now the newest
  memo.remember("d", 5, start + 4s);  // over capacity: b goes
  EXPECT_EQ(memo.size(), 3u);
  EXPECT_EQ(memo.find("b", start + 5s), std::nullopt);
  EXPECT_EQ(memo.find("a", start + 5s), 4);
  EXPECT_EQ(memo.find("c", start + 5s), 3);
  EXPECT_EQ(memo.find("d", start + 5s), 5);
}

TEST(ExpiringMemo, ExpiredEntriesMakeRoomBeforeLiveOnes) {
  Memo memo(10s, 100);
  const auto start = Memo::Clock::now();
  memo.remember("old", 1, start);
  memo.remember("new", 2, start + 20s);  // "old" has expired by then and is dropped
  EXPECT_EQ(memo.size(), 1u);
  EXPECT_EQ(memo.find("new", start + 21s), 2);
}

TEST(ExpiringMemo, AZeroTimeKeepsNothing) {
  Memo memo(0ms, 100);
  memo.remember("a", 1);
  EXPECT_EQ(memo.find("a"), std::nullopt);
  EXPECT_EQ(memo.size(), 0u);
}

TEST(ExpiringMemo, ManyThreadsShareOneMemo) {
  Memo memo(1h, 64);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&memo, t] {
      for (int i = 0; i < 2000; ++i) {
        const std::string key = std::to_string((i * 7 + t) % 100);
        memo.remember(key, i);
        (void)memo.find(key);
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_LE(memo.size(), 64u);
}

}  // namespace
}  // namespace zoogate::proxy
