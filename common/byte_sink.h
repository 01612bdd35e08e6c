// Output for writers.
//
// Writers produce bytes front to back through ByteSink; they never seek. position() is the number of
// bytes accepted so far, which writers use for alignment and offsets. A RandomAccessSink can also be
// written at any offset and read back, for output assembled out of order. A sink is used by one thread
// at a time.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/async_sha256.h"
#include "common/error.h"
#include "common/sha256.h"

namespace zoogate {

class ByteSink {
 public:
  virtual ~ByteSink() = default;
  virtual uint64_t position() const = 0;

  Status write(std::span<const uint8_t> bytes) { return write_bytes(bytes); }
  Status write(std::string_view text) {
    return write_bytes(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(text.data()), text.size()));
  }

 protected:
  virtual Status write_bytes(std::span<const uint8_t> bytes) = 0;
};

// A sink whose bytes can also be written at any offset and read back: the CDR engine assembles a
// rebuilt archive in one, writing each tensor storage at its planned place as the input delivers it.
// position() is the end of the furthest byte written, and write() appends there; bytes never written
// (a hole not yet filled) read as zeros.
class RandomAccessSink : public ByteSink {
 public:
  virtual Status write_at(uint64_t offset, std::span<const uint8_t> bytes) = 0;
  // Fills `out` with the bytes at [offset, offset + out.size()), which must lie before position().
  virtual Status read_back(uint64_t offset, std::span<uint8_t> out) = 0;
};

// Collects everything in memory (tests, small pickles).
class MemorySink final : public RandomAccessSink {
 public:
  uint64_t position() const override { return bytes_.size(); }
  const std::vector<uint8_t>& bytes() const { return bytes_; }
  std::vector<uint8_t> take() { return std::move(bytes_); }
  Status write_at(uint64_t offset, std::span<const uint8_t> bytes) override;
  Status read_back(uint64_t offset, std::span<uint8_t> out) override;

 private:
  Status write_bytes(std::span<const uint8_t> bytes) override;
  std::vector<uint8_t> bytes_;
};

// Counts bytes and drops them (a dry run of a writer, or a read that only verifies).
class DiscardSink final : public ByteSink {
 public:
  uint64_t position() const override { return position_; }

 private:
  Status write_bytes(std::span<const uint8_t> bytes) override {
    position_ += bytes.size();
    return {};
  }
  uint64_t position_ = 0;
};

// Passes bytes on to another sink and hashes them on the way (the other sink must outlive this one).
// The hashing runs on a worker thread: bytes are copied into one of two staging buffers, which costs a
// tenth of hashing them, and the writer goes on while the full one is hashed. Writing a 1 GiB file
// then costs the writer no SHA-256 time.
class HashingSink final : public ByteSink {
 public:
  explicit HashingSink(ByteSink& next) : next_(next) {}
  uint64_t position() const override { return next_.position(); }
  // The digest of everything written; the sink then starts a new stream.
  Sha256::Digest finish();

 private:
  static constexpr size_t kStagingBytes = 1 << 20;
  Status write_bytes(std::span<const uint8_t> bytes) override;
  // Hands the current staging buffer to the worker and makes the other one current once it is free.
  void hand_over();

  ByteSink& next_;
  std::vector<uint8_t> staging_[2];
  uint64_t tickets_[2] = {0, 0};  // the hash ticket of each buffer's last hand-over
  size_t current_ = 0;
  AsyncSha256 hash_;  // last member: its worker stops before the buffers go
};

// Writes to a temporary file beside `path` and renames it into place on commit(), so readers never see
// a partial file. If the sink is destroyed without a successful commit(), the temporary file is removed:
// a failed or blocked run leaves nothing behind. commit() does not fsync: the rename never exposes a
// partial file to readers (as with cp or torch.save), and callers that need more verify what they read.
class AtomicFileSink final : public RandomAccessSink {
 public:
  static Result<std::unique_ptr<AtomicFileSink>> create(const std::string& path, unsigned mode = 0644);
  ~AtomicFileSink() override;
  AtomicFileSink(const AtomicFileSink&) = delete;
  AtomicFileSink& operator=(const AtomicFileSink&) = delete;

  uint64_t position() const override { return written_ + buffered_; }
  Status write_at(uint64_t offset, std::span<const uint8_t> bytes) override;
  Status read_back(uint64_t offset, std::span<uint8_t> out) override;
  // Flushes the file and renames it into place.
  Status commit();

 private:
  AtomicFileSink(int fd, std::string path, std::string temp_path);
  Status write_bytes(std::span<const uint8_t> bytes) override;
  // Writes all of `bytes` at `offset` of the file; written_ becomes at least their end.
  Status write_all_at(uint64_t offset, std::span<const uint8_t> bytes);
  Status flush();

  int fd_;
  std::string path_;
  std::string temp_path_;
  std::vector<uint8_t> buffer_;  // write-behind buffer so small writes do not become syscalls
  size_t buffered_ = 0;   // bytes in buffer_, which go at written_
  uint64_t written_ = 0;  // end of the furthest byte in the file
  bool committed_ = false;
};

// Reads a whole small file (config, keys, reports); large inputs go through FileSource instead.
Result<std::string> read_small_file(const std::string& path, uint64_t max_bytes);

}  // namespace zoogate
