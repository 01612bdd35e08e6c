// Running blocking work (file I/O, hashing, scrypt, disarm) on the worker pool from a coroutine on
// an I/O thread, and resuming that coroutine on its own executor with the result.
//
// Why a helper: g++ 12 destroys a capturing lambda twice when the lambda is a temporary in the same
// expression as a co_await (the second destructor call frees the captures again). The closure is
// therefore built here, in a function that is not a coroutine, and callers pass a callable and its
// arguments instead of writing a lambda next to their co_await.
#pragma once

#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_awaitable.hpp>

namespace zoogate::proxy {

// Calls std::invoke(function, arguments...) on a thread of `pool`. The arguments are copied or moved
// into the task, so references held by the caller need not outlive it; `function` must be safe to run
// on any worker thread.
template <typename Function, typename... Arguments>
[[nodiscard]] auto run_on_workers(boost::asio::thread_pool& pool, Function function, Arguments... arguments)
    -> boost::asio::awaitable<std::invoke_result_t<Function&, Arguments&...>> {
  using Value = std::invoke_result_t<Function&, Arguments&...>;
  auto task = [function = std::move(function),
               bound = std::make_tuple(std::move(arguments)...)]() mutable -> boost::asio::awaitable<Value> {
    co_return std::apply(function, bound);
  };
  return boost::asio::co_spawn(pool, std::move(task), boost::asio::use_awaitable);
}

}  // namespace zoogate::proxy
