#include "proxy/background_verifier.h"

#include <span>
#include <utility>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

namespace zoogate::proxy {

namespace asio = boost::asio;

struct BackgroundVerifier::State {
  State(const UpstreamFile& file, asio::any_io_executor home) : verifier(file), progress(std::move(home)) {
    progress.expires_at(asio::steady_timer::time_point::max());
  }
  ContentVerifier verifier;     // used by one hashing task at a time (the strand), then by finish()
  asio::steady_timer progress;  // on home: cancelled to wake a waiting coroutine after each piece
  uint64_t hashed = 0;          // on home: pieces hashed so far
};

BackgroundVerifier::BackgroundVerifier(const UpstreamFile& file, asio::thread_pool& workers,
                                       asio::any_io_executor home)
    : state_(std::make_shared<State>(file, std::move(home))), hashing_(asio::make_strand(workers)) {}

uint64_t BackgroundVerifier::add(Piece piece) {
  // The task is built here, outside any coroutine (see worker_pool.h about g++ 12 and lambdas).
  asio::post(hashing_, [state = state_, piece = std::move(piece)] {
    state->verifier.update(std::span<const uint8_t>(*piece));
    asio::post(state->progress.get_executor(), [state] {
      ++state->hashed;
      state->progress.cancel();
    });
  });
  return ++queued_;
}

asio::awaitable<void> BackgroundVerifier::wait_until_hashed(uint64_t ticket) {
  // Both the count and the timer live on home, where this coroutine runs: a piece finished before the
  // wait begins is seen in the count, so no wake-up is lost.
  while (state_->hashed < ticket) {
    (void)co_await state_->progress.async_wait(asio::as_tuple(asio::use_awaitable));
  }
}

asio::awaitable<Result<Sha256::Digest>> BackgroundVerifier::finish() {
  co_await wait_until_hashed(queued_);
  co_return state_->verifier.finish();
}

bool BackgroundVerifier::complete() const { return state_->verifier.complete(); }

}  // namespace zoogate::proxy
