// A file that one writer fills while readers already read what has arrived: the spool that lets the
// disarm run while an upstream download is still coming in.
//
// Thread safety: one writer (append, finish) and any number of readers on other threads. Readers
// block in read_at() until the bytes they ask for have arrived or the spool has failed, so they must
// run on worker threads, never on an I/O thread.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>

#include "common/byte_source.h"
#include "common/error.h"

namespace zoogate::proxy {

class SpoolFile : public std::enable_shared_from_this<SpoolFile> {
 public:
  // Creates (truncates) `path`, mode 0600, for a download of exactly `expected_size` bytes.
  static Result<std::shared_ptr<SpoolFile>> create(const std::string& path, uint64_t expected_size);
  // A spool whose download ended earlier: the file at `path` with its `size` bytes, finished.
  static Result<std::shared_ptr<SpoolFile>> open_complete(const std::string& path, uint64_t size);
  ~SpoolFile();
  SpoolFile(const SpoolFile&) = delete;
  SpoolFile& operator=(const SpoolFile&) = delete;

  // Writer: appends bytes; more than expected_size in all is kLimitExceeded (the writer then
  // finishes the spool with that failure).
  Status append(std::span<const uint8_t> bytes);
  // Writer: the download ended. A success with fewer than expected_size bytes becomes a failure.
  // Readers waiting for bytes wake up with the failure.
  void finish(Status outcome);

  // A source of expected_size bytes whose reads wait for the writer. It keeps the spool alive.
  std::unique_ptr<ByteSource> reader();
  // Blocks until finish() and returns its outcome.
  Status wait_finished();

  const std::string& path() const { return path_; }
  uint64_t expected_size() const { return expected_size_; }

 private:
  class Reader;
  SpoolFile(int fd, std::string path, uint64_t expected_size)
      : fd_(fd), path_(std::move(path)), expected_size_(expected_size) {}
  // Waits until [0, end) has arrived; the failure when the download failed first.
  Status wait_for(uint64_t end);

  int fd_;
  std::string path_;
  uint64_t expected_size_;
  std::mutex mutex_;
  std::condition_variable progress_;
  uint64_t written_ = 0;  // guarded by mutex_
  bool finished_ = false;
  std::optional<Error> failure_;
};

}  // namespace zoogate::proxy
