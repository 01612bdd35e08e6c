// A file that one writer fills while readers already read what has arrived: the spool that lets the
// disarm run while an upstream download is still coming in.
//
// Direct I/O (when the caller asks for it: `cache.spool_direct_io`): a spool is written once, read
// once by the disarm right behind the download, and kept for later variants. Through the page cache
// it takes as many new pages as the file is large, pushing out the cache entries that clients are
// reading, and on some machines filling new pages costs more than the disk: on the benchmark VM, dd
// wrote 1 GiB at 0.5 to 0.8 GB/s through the page cache and at 2 to 3 GB/s with O_DIRECT. The price
// is that the disarm reads every byte back from the volume. With direct I/O, appended bytes are
// staged in memory and reach the file, and the readers, kDirectIoBlock at a time; the last, partial
// block is written padded with zeros and the file then cut to its size. Readers read aligned windows
// and copy out what was asked. A file system that refuses O_DIRECT at open (EINVAL) gets the page
// cache.
//
// Thread safety: one writer (append, finish) and any number of readers on other threads. Readers
// block in read_at() until the bytes they ask for have arrived or the spool has failed, so they must
// run on worker threads, never on an I/O thread.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <cstdlib>
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
  // Bytes staged for one direct write; the last write is shorter (padded to kDirectIoAlignment).
  static constexpr size_t kDirectIoBlock = 1 << 20;
  // What O_DIRECT asks offsets, lengths and buffers to be multiples of (the largest logical block
  // size of common devices).
  static constexpr size_t kDirectIoAlignment = 4096;

  // Creates (truncates) `path`, mode 0600, for a download of exactly `expected_size` bytes, with
  // direct I/O when `direct_io` is set and the file system takes it.
  static Result<std::shared_ptr<SpoolFile>> create(const std::string& path, uint64_t expected_size, bool direct_io);
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
  // True when the spool bypasses the page cache (see the top of this file).
  bool direct_io() const { return staging_ != nullptr; }

 private:
  class Reader;
  struct FreeAligned {
    void operator()(uint8_t* block) const { std::free(block); }
  };
  using AlignedBlock = std::unique_ptr<uint8_t, FreeAligned>;
  // `bytes` aligned to kDirectIoAlignment; null when memory runs out.
  static AlignedBlock allocate_aligned(size_t bytes);

  SpoolFile(int fd, std::string path, uint64_t expected_size, AlignedBlock staging)
      : fd_(fd), path_(std::move(path)), expected_size_(expected_size), staging_(std::move(staging)) {}
  // Writes [offset, offset + bytes.size()) to the file, whole.
  Status write_fully(std::span<const uint8_t> bytes, uint64_t offset);
  // Direct I/O: writes the staged block at readable_ (padded when it is the last one) and cuts the
  // file to its size after the last one.
  Status write_staged_block(size_t staged_bytes);
  // Waits until [0, end) can be read; the failure when the download failed first.
  Status wait_for(uint64_t end);
  uint64_t readable_bytes();

  int fd_;
  std::string path_;
  uint64_t expected_size_;
  AlignedBlock staging_;  // direct I/O only: the block being filled; writer only
  std::mutex mutex_;
  std::condition_variable progress_;
  uint64_t appended_ = 0;  // guarded by mutex_: bytes given to append()
  uint64_t readable_ = 0;  // guarded by mutex_: bytes in the file; behind appended_ by the staged ones
  bool finished_ = false;
  std::optional<Error> failure_;
};

}  // namespace zoogate::proxy
