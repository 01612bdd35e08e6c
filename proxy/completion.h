// A value that arrives once, awaited by any number of coroutines with a deadline each.
//
// Why: concurrent requests for one file join the request that fetches it (the artifact pipeline's
// jobs, the Hub router's identification of a new file); each waiter gives up after its own timeout
// and answers 503, while the work goes on.
//
// Thread safety: set() and value() from any thread; wait() from a coroutine whose executor is a
// strand or single-threaded (set() wakes a waiter by posting to that executor, which then runs only
// after the waiter is suspended in the timer's wait).
//
// Lifetime: a waiter's timer belongs to the waiting coroutine alone; the Completion only points at it.
// A Completion shared by coroutines on several event loops may outlive some waiters and their loops
// (a coroutine destroyed while suspended, a loop destroyed before the Completion), and must then
// neither keep a gone waiter's timer nor post to a gone loop.
#pragma once

#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <utility>
#include <vector>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

namespace zoogate::proxy {

template <typename T>
class Completion {
 public:
  // Sets the value and wakes every waiter; a second call is ignored (the first value stands).
  void set(T value) {
    std::vector<std::weak_ptr<boost::asio::steady_timer>> waiters;
    {
      std::lock_guard lock(mutex_);
      if (value_) return;
      value_ = std::move(value);
      waiters.swap(waiters_);
    }
    for (auto& waiter : waiters) {
      if (auto timer = waiter.lock()) boost::asio::post(timer->get_executor(), [timer] { timer->cancel(); });
    }
  }

  std::optional<T> value() const {
    std::lock_guard lock(mutex_);
    return value_;
  }

  // The value, or nullopt when `timeout` passed first.
  boost::asio::awaitable<std::optional<T>> wait(std::chrono::milliseconds timeout) {
    auto timer = std::make_shared<boost::asio::steady_timer>(co_await boost::asio::this_coro::executor, timeout);
    {
      std::lock_guard lock(mutex_);
      if (value_) co_return value_;
      waiters_.push_back(timer);
    }
    (void)co_await timer->async_wait(boost::asio::as_tuple(boost::asio::use_awaitable));
    std::lock_guard lock(mutex_);
    std::erase_if(waiters_, [&](const auto& waiter) { return waiter.expired() || waiter.lock() == timer; });
    co_return value_;
  }

 private:
  mutable std::mutex mutex_;
  std::optional<T> value_;                                            // guarded by mutex_
  std::vector<std::weak_ptr<boost::asio::steady_timer>> waiters_;  // guarded by mutex_
};

}  // namespace zoogate::proxy
