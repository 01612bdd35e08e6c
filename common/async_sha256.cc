#include "common/async_sha256.h"

namespace zoogate {

AsyncSha256::AsyncSha256() : worker_([this] { run(); }) {}

AsyncSha256::~AsyncSha256() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  work_ready_.notify_one();
  worker_.join();
}

uint64_t AsyncSha256::update(std::span<const uint8_t> bytes) {
  uint64_t ticket;
  {
    std::lock_guard lock(mutex_);
    queue_.push_back(bytes);
    ticket = ++queued_;
  }
  work_ready_.notify_one();
  return ticket;
}

void AsyncSha256::wait_for(uint64_t ticket) {
  std::unique_lock lock(mutex_);
  work_done_.wait(lock, [&] { return hashed_ >= ticket; });
}

Sha256::Digest AsyncSha256::finish() {
  uint64_t last;
  {
    std::lock_guard lock(mutex_);
    last = queued_;
  }
  wait_for(last);
  // The queue is empty and the worker is waiting for work: the hash is ours until the next update().
  return hash_.finish();
}

void AsyncSha256::run() {
  std::unique_lock lock(mutex_);
  while (true) {
    work_ready_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stopping, and nothing left to hash
    std::span<const uint8_t> bytes = queue_.front();
    lock.unlock();
    hash_.update(bytes);
    lock.lock();
    queue_.pop_front();
    ++hashed_;
    work_done_.notify_all();
  }
}

}  // namespace zoogate
