#include "proxy/piece_relay.h"

#include <memory>
#include <utility>
#include <vector>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/use_awaitable.hpp>

namespace zoogate::proxy {

namespace asio = boost::asio;

PieceRelay::PieceRelay(asio::any_io_executor executor, BackgroundVerifier& verifier, size_t pieces,
                       size_t piece_size)
    : verifier_(verifier), piece_size_(piece_size), changed_(std::move(executor), asio::steady_timer::time_point::max()) {
  for (size_t i = 0; i < pieces; ++i) free_.push_back(std::make_shared<std::vector<uint8_t>>());
}

asio::awaitable<void> PieceRelay::wait_for_change() {
  // Both coroutines run one handler at a time on one executor: a change made while one of them runs
  // is seen by the other's check before it waits, so no wake-up is lost.
  (void)co_await changed_.async_wait(asio::as_tuple(asio::use_awaitable));
}

asio::awaitable<PieceRelay::Outcome> PieceRelay::run(Piece first, Read read, Consume consume, size_t held_back) {
  using namespace asio::experimental::awaitable_operators;
  if (!first->empty()) {
    free_.pop_front();  // `first` takes its place
    const uint64_t ticket = verifier_.add(first);
    arrived_.push_back({std::move(first), ticket});
  }
  co_await (read_pieces(read) && consume_pieces(consume, held_back));
  if (outcome_.ending == Ending::kBodyEnded) {
    for (auto& arrived : arrived_) outcome_.held_back.push_back(std::move(arrived.piece));
  }
  co_return std::move(outcome_);
}

asio::awaitable<void> PieceRelay::read_pieces(const Read& read) {
  for (;;) {
    while (free_.empty() && !consuming_done_) co_await wait_for_change();
    if (consuming_done_) break;  // failed, or nothing more can be passed on
    Piece piece = std::move(free_.front());
    free_.pop_front();
    piece->resize(piece_size_);
    Result<size_t> got = co_await read(std::span<uint8_t>(*piece));
    if (!got) {
      if (!consuming_done_) outcome_ = Outcome{Ending::kReadFailed, got.error(), {}};
      break;
    }
    if (*got == 0) break;
    piece->resize(*got);
    const uint64_t ticket = verifier_.add(piece);
    arrived_.push_back({std::move(piece), ticket});
    notify();
  }
  reading_done_ = true;
  notify();
}

asio::awaitable<void> PieceRelay::consume_pieces(const Consume& consume, size_t held_back) {
  for (;;) {
    while (arrived_.size() <= held_back && !reading_done_) co_await wait_for_change();
    if (outcome_.ending != Ending::kBodyEnded || arrived_.size() <= held_back) break;
    Arrived next = std::move(arrived_.front());
    arrived_.pop_front();
    if (Status passed = co_await consume(std::span<const uint8_t>(*next.piece)); !passed) {
      outcome_ = Outcome{Ending::kConsumeFailed, passed.error(), {}};
      break;
    }
    co_await verifier_.wait_until_hashed(next.hashing_ticket);  // before the buffer is read into again
    free_.push_back(std::move(next.piece));
    notify();
  }
  consuming_done_ = true;
  notify();
}

}  // namespace zoogate::proxy
