// A bounded map whose entries expire after a fixed time: answers of the upstream that may be reused
// for a short while (the Hub's answer naming a file, for instance).
//
// Every entry lives `ttl` from when it was remembered; remembering a key again starts its time anew.
// Beyond `capacity` entries the one remembered longest ago goes first, which, with one ttl for all,
// is also the one that expires first. A ttl of zero keeps nothing.
//
// Thread safety: every member may be called from any thread. Values are copied in and out.
#pragma once

#include <chrono>
#include <cstddef>
#include <list>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>

namespace zoogate::proxy {

template <typename Value>
class ExpiringMemo {
 public:
  using Clock = std::chrono::steady_clock;

  ExpiringMemo(std::chrono::milliseconds ttl, size_t capacity) : ttl_(ttl), capacity_(capacity) {}

  // The value remembered for `key`, unless there is none or it has expired by `now`.
  std::optional<Value> find(const std::string& key, Clock::time_point now = Clock::now()) {
    std::lock_guard lock(mutex_);
    auto found = entries_.find(key);
    if (found == entries_.end()) return std::nullopt;
    if (found->second.expires <= now) {
      order_.erase(found->second.position);
      entries_.erase(found);
      return std::nullopt;
    }
    return found->second.value;
  }

  void remember(const std::string& key, Value value, Clock::time_point now = Clock::now()) {
    if (ttl_.count() <= 0 || capacity_ == 0) return;
    std::lock_guard lock(mutex_);
    if (auto found = entries_.find(key); found != entries_.end()) {
      order_.erase(found->second.position);
      entries_.erase(found);
    }
    while (!order_.empty() && (entries_.size() >= capacity_ || entries_.at(order_.front()).expires <= now)) {
      entries_.erase(order_.front());
      order_.pop_front();
    }
    order_.push_back(key);
    entries_.emplace(key, Entry{std::move(value), now + ttl_, std::prev(order_.end())});
  }

  size_t size() const {
    std::lock_guard lock(mutex_);
    return entries_.size();
  }

 private:
  struct Entry {
    Value value;
    Clock::time_point expires;
    std::list<std::string>::iterator position;  // in order_
  };

  const std::chrono::milliseconds ttl_;
  const size_t capacity_;
  mutable std::mutex mutex_;
  std::list<std::string> order_;                     // keys, remembered longest ago first; guarded by mutex_
  std::unordered_map<std::string, Entry> entries_;  // guarded by mutex_
};

}  // namespace zoogate::proxy
