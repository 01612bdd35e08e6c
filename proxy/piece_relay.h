// A body moved in pieces from where it is read (an upstream response) to where it goes (a client, the
// spool), over a fixed number of buffers, every piece hashed on the worker pool on the way.
//
// Why: reading and passing on run as two coroutines, each going on while it has a buffer to fill or a
// piece to pass on, so that neither waits for the end of the other's step, as a loop doing both in
// turn would. With a spare buffer, a 1 GiB pass-through took 5% less time than with that loop, on a
// 2-core machine where zoogate shares the cores with the origin and the client. A buffer is
// filled again only once its piece has been passed on and hashed, so memory stays at `pieces` buffers
// of `piece_size` whatever the body's size and the consumer's speed.
//
// Ownership and thread safety: a relay belongs to the coroutine that awaits run(), whose executor must
// run one handler at a time (an event loop of one thread, or a strand): the two coroutines run there
// and share the relay's state without a lock. The BackgroundVerifier must outlive the relay.
#pragma once

#include <cstddef>
#include <deque>
#include <functional>
#include <optional>
#include <span>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>

#include "common/error.h"
#include "proxy/background_verifier.h"

namespace zoogate::proxy {

class PieceRelay {
 public:
  using Piece = BackgroundVerifier::Piece;
  // Fills the buffer as far as the body goes; the byte count, 0 once the body has ended.
  using Read = std::function<boost::asio::awaitable<Result<size_t>>(std::span<uint8_t>)>;
  // Passes a whole piece on; an error stops the relay.
  using Consume = std::function<boost::asio::awaitable<Status>(std::span<const uint8_t>)>;

  enum class Ending { kBodyEnded, kReadFailed, kConsumeFailed };
  struct Outcome {
    Ending ending = Ending::kBodyEnded;
    std::optional<Error> error;  // with kReadFailed and kConsumeFailed
    // With kBodyEnded: the newest pieces, held back (see run()), oldest first.
    std::deque<Piece> held_back;
  };

  PieceRelay(boost::asio::any_io_executor executor, BackgroundVerifier& verifier, size_t pieces, size_t piece_size);
  PieceRelay(const PieceRelay&) = delete;
  PieceRelay& operator=(const PieceRelay&) = delete;

  // Relays `first` (bytes read before; none when empty), then what `read` gives, to `consume`. The
  // newest `held_back` pieces are passed on only once later ones have arrived, so the last ones are
  // never passed on here: they come back in the outcome, for the caller to pass on once the digest
  // has been checked. Call once; the relay's `pieces` must exceed `held_back`.
  boost::asio::awaitable<Outcome> run(Piece first, Read read, Consume consume, size_t held_back);

 private:
  struct Arrived {
    Piece piece;
    uint64_t hashing_ticket;
  };
  boost::asio::awaitable<void> read_pieces(const Read& read);
  boost::asio::awaitable<void> consume_pieces(const Consume& consume, size_t held_back);
  boost::asio::awaitable<void> wait_for_change();
  void notify() { changed_.cancel(); }

  BackgroundVerifier& verifier_;
  const size_t piece_size_;
  std::deque<Piece> free_;      // buffers to read into
  std::deque<Arrived> arrived_;  // read and queued for hashing, not passed on yet
  bool reading_done_ = false;    // the reader has stopped: at the body's end, on an error, or for the consumer
  bool consuming_done_ = false;  // the consumer has stopped: held-back pieces only, or an error
  Outcome outcome_;
  boost::asio::steady_timer changed_;  // cancelled at every change, which wakes every waiter
};

}  // namespace zoogate::proxy
