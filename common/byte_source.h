// Random-access, read-only input for parsers.
//
// Parsers never do I/O of their own: they read through this interface so that files, memory buffers
// and test inputs all work the same way. Implementations are immutable after construction and
// read_at() is safe to call from several threads at once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "common/error.h"

namespace zoogate {

class ByteSource {
 public:
  virtual ~ByteSource() = default;
  virtual uint64_t size() const = 0;
  // Fills `out` with the bytes at [offset, offset + out.size()). Reading past size() is a kParse error
  // that names the offset, so a truncated input reports where it ended.
  virtual Status read_at(uint64_t offset, std::span<uint8_t> out) const = 0;

  // Convenience: reads `length` bytes into a new buffer (for small, already size-checked reads).
  Result<std::vector<uint8_t>> read_vector(uint64_t offset, size_t length) const;
};

// A view over caller-owned memory; the memory must outlive the source.
class MemorySource final : public ByteSource {
 public:
  explicit MemorySource(std::span<const uint8_t> bytes) : bytes_(bytes) {}
  uint64_t size() const override { return bytes_.size(); }
  Status read_at(uint64_t offset, std::span<uint8_t> out) const override;
  std::span<const uint8_t> bytes() const { return bytes_; }

 private:
  std::span<const uint8_t> bytes_;
};

// A window [offset, offset + length) of another source, itself a source starting at 0. The parent
// must outlive the window.
class SubSource final : public ByteSource {
 public:
  SubSource(const ByteSource& parent, uint64_t offset, uint64_t length)
      : parent_(parent), offset_(offset), length_(length) {}
  uint64_t size() const override { return length_; }
  Status read_at(uint64_t offset, std::span<uint8_t> out) const override;

 private:
  const ByteSource& parent_;
  uint64_t offset_;
  uint64_t length_;
};

// A regular file read with pread(2). The size is fixed when the file is opened.
class FileSource final : public ByteSource {
 public:
  static Result<std::unique_ptr<FileSource>> open(const std::string& path);
  ~FileSource() override;
  FileSource(const FileSource&) = delete;
  FileSource& operator=(const FileSource&) = delete;

  uint64_t size() const override { return size_; }
  Status read_at(uint64_t offset, std::span<uint8_t> out) const override;
  const std::string& path() const { return path_; }

 private:
  FileSource(int fd, uint64_t size, std::string path) : fd_(fd), size_(size), path_(std::move(path)) {}
  int fd_;
  uint64_t size_;
  std::string path_;
};

}  // namespace zoogate
