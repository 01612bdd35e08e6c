// SHA-256 on a worker thread, so that the calling thread can do other work with the same bytes (for
// example write them out while they are being hashed).
//
// Contract: the bytes passed to update() are not copied; they must stay valid and unchanged until
// wait_for() has returned for the ticket update() gave back (or until finish()). One caller thread
// uses an object; the worker thread is internal. Hashing order is the order of update() calls.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <span>
#include <thread>

#include "common/sha256.h"

namespace zoogate {

class AsyncSha256 {
 public:
  AsyncSha256();
  ~AsyncSha256();
  AsyncSha256(const AsyncSha256&) = delete;
  AsyncSha256& operator=(const AsyncSha256&) = delete;

  // Queues `bytes` for hashing and returns a ticket for wait_for().
  uint64_t update(std::span<const uint8_t> bytes);
  // Blocks until the bytes of `ticket` (and everything queued before) have been hashed.
  void wait_for(uint64_t ticket);
  // Waits for everything queued, returns the digest and starts a new stream.
  Sha256::Digest finish();

 private:
  void run();

  std::mutex mutex_;
  std::condition_variable work_ready_;
  std::condition_variable work_done_;
  std::deque<std::span<const uint8_t>> queue_;
  uint64_t queued_ = 0;  // tickets handed out
  uint64_t hashed_ = 0;  // tickets completed
  bool stopping_ = false;
  Sha256 hash_;          // touched only by the worker, and by finish() once the queue is drained
  std::thread worker_;   // last member: starts after everything it uses exists
};

}  // namespace zoogate
