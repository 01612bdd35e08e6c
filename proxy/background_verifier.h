// Checks a download against what its upstream announced (ContentVerifier) on the worker pool, without
// the I/O coroutine waiting for each piece.
//
// Why: waiting for every piece's hash in lockstep with the socket work stalls the whole chain (origin,
// zoogate, client) whenever the hashing thread is descheduled on a busy machine. Here pieces are
// hashed in order on a strand of the pool while the coroutine goes on reading and sending; it waits
// only to reuse a piece's buffer, and for the verdict.
//
// Ownership and thread safety: the object belongs to one coroutine, which calls every member on
// `home`, the executor it runs on. Each queued piece is shared with the hashing task, and what the
// hashing touches lives in a state shared with the tasks, so a coroutine that ends early (a client
// gone) leaves nothing dangling: the tasks finish on their own and release the last references.
// Since a finishing task posts to `home`, the worker pool must be joined before home's execution
// context is destroyed (the server joins its pools first).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/thread_pool.hpp>

#include "common/error.h"
#include "common/sha256.h"
#include "proxy/artifact_pipeline.h"

namespace zoogate::proxy {

class BackgroundVerifier {
 public:
  // A piece of the download; all of its bytes are hashed.
  using Piece = std::shared_ptr<std::vector<uint8_t>>;

  BackgroundVerifier(const UpstreamFile& file, boost::asio::thread_pool& workers, boost::asio::any_io_executor home);
  BackgroundVerifier(const BackgroundVerifier&) = delete;
  BackgroundVerifier& operator=(const BackgroundVerifier&) = delete;

  // Queues the next piece for hashing and returns its ticket. The caller must not change the piece
  // before wait_until_hashed(ticket) has returned.
  uint64_t add(Piece piece);
  // Returns once the piece of `ticket`, and every one before it, has been hashed.
  boost::asio::awaitable<void> wait_until_hashed(uint64_t ticket);
  // Waits for every queued piece, then gives ContentVerifier::finish()'s verdict. Call once, last.
  boost::asio::awaitable<Result<Sha256::Digest>> finish();
  // After finish(): true when exactly the announced number of bytes arrived.
  bool complete() const;

 private:
  struct State;
  std::shared_ptr<State> state_;
  boost::asio::strand<boost::asio::thread_pool::executor_type> hashing_;
  uint64_t queued_ = 0;
};

}  // namespace zoogate::proxy
