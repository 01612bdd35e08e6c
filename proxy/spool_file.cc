#include "proxy/spool_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>

namespace zoogate::proxy {

namespace {

constexpr uint64_t align_up(uint64_t value, uint64_t alignment) {
  return (value + alignment - 1) / alignment * alignment;
}

Status read_failure(int error_number, uint64_t offset) {
  return fail(ErrorCode::kIo, "cannot read the spooled download: " + std::string(std::strerror(error_number)), offset);
}

}  // namespace

class SpoolFile::Reader final : public ByteSource {
 public:
  explicit Reader(std::shared_ptr<SpoolFile> spool) : spool_(std::move(spool)) {}
  uint64_t size() const override { return spool_->expected_size_; }
  Status read_at(uint64_t offset, std::span<uint8_t> out) const override {
    if (offset > size() || out.size() > size() - offset) {
      return fail(ErrorCode::kIo, "read past the end of the spooled download", offset);
    }
    ZG_TRY(spool_->wait_for(offset + out.size()));
    return spool_->direct_io() ? read_direct(offset, out) : read_buffered(offset, out);
  }

 private:
  Status read_buffered(uint64_t offset, std::span<uint8_t> out) const {
    size_t done = 0;
    while (done < out.size()) {
      const ssize_t got = ::pread(spool_->fd_, out.data() + done, out.size() - done, static_cast<off_t>(offset + done));
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) return read_failure(got == 0 ? EIO : errno, offset + done);
      done += static_cast<size_t>(got);
    }
    return {};
  }

  // Serves reads from a window of the file, refilled with one aligned direct read where a read
  // leaves it: the disarm reads front to back in pieces that do not start on aligned offsets.
  Status read_direct(uint64_t offset, std::span<uint8_t> out) const {
    std::lock_guard lock(window_mutex_);
    if (!window_) window_ = allocate_aligned(kReadWindow);
    if (!window_) return fail(ErrorCode::kIo, "cannot allocate a window to read the spool through", offset);
    size_t done = 0;
    while (done < out.size()) {
      const uint64_t position = offset + done;
      if (position < window_start_ || position >= window_start_ + window_size_) ZG_TRY(fill_window(position));
      const size_t count =
          static_cast<size_t>(std::min<uint64_t>(out.size() - done, window_start_ + window_size_ - position));
      std::memcpy(out.data() + done, window_.get() + (position - window_start_), count);
      done += count;
    }
    return {};
  }

  // Reads the aligned window that holds `position`, up to what can be read (the file may end inside
  // the window's last aligned block: that read comes back short).
  Status fill_window(uint64_t position) const {
    const uint64_t start = position / kDirectIoAlignment * kDirectIoAlignment;
    const uint64_t readable = spool_->readable_bytes();
    const size_t length =
        static_cast<size_t>(std::min<uint64_t>(kReadWindow, align_up(readable, kDirectIoAlignment) - start));
    window_size_ = 0;
    size_t got_total = 0;
    while (got_total < length) {
      const ssize_t got = ::pread(spool_->fd_, window_.get() + got_total, length - got_total,
                                  static_cast<off_t>(start + got_total));
      if (got < 0 && errno == EINTR) continue;
      if (got < 0) return read_failure(errno, start + got_total);
      if (got == 0) break;
      got_total += static_cast<size_t>(got);
    }
    window_start_ = start;
    window_size_ = std::min<uint64_t>(got_total, readable - start);
    if (position >= window_start_ + window_size_) return read_failure(EIO, position);
    return {};
  }

  // Two blocks: a block-sized read that starts anywhere needs one refill at most.
  static constexpr size_t kReadWindow = 2 * kDirectIoBlock;
  std::shared_ptr<SpoolFile> spool_;
  mutable std::mutex window_mutex_;  // guards the window: reads may come from several threads
  mutable AlignedBlock window_;      // aligned for O_DIRECT, allocated at the first direct read
  mutable uint64_t window_start_ = 0;
  mutable uint64_t window_size_ = 0;
};

Result<std::shared_ptr<SpoolFile>> SpoolFile::create(const std::string& path, uint64_t expected_size,
                                                     bool direct_io) {
  constexpr int kFlags = O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC;
  int fd = -1;
  AlignedBlock staging;
  if (direct_io) {
    fd = ::open(path.c_str(), kFlags | O_DIRECT, 0600);
    // EINVAL: the file system does not do direct I/O; the page cache it is.
    if (fd < 0 && errno != EINVAL) return fail(ErrorCode::kIo, "cannot create " + path + ": " + std::strerror(errno));
    if (fd >= 0) staging = allocate_aligned(kDirectIoBlock);
    if (fd >= 0 && !staging) {
      ::close(fd);
      return fail(ErrorCode::kIo, "cannot allocate the staging block of " + path);
    }
  }
  if (fd < 0) fd = ::open(path.c_str(), kFlags, 0600);
  if (fd < 0) return fail(ErrorCode::kIo, "cannot create " + path + ": " + std::strerror(errno));
  return std::shared_ptr<SpoolFile>(new SpoolFile(fd, path, expected_size, std::move(staging)));
}

SpoolFile::AlignedBlock SpoolFile::allocate_aligned(size_t bytes) {
  void* allocated = nullptr;
  if (::posix_memalign(&allocated, kDirectIoAlignment, bytes) != 0) return nullptr;
  return AlignedBlock(static_cast<uint8_t*>(allocated));
}

Result<std::shared_ptr<SpoolFile>> SpoolFile::open_complete(const std::string& path, uint64_t size) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return fail(ErrorCode::kIo, "cannot open " + path + ": " + std::strerror(errno));
  std::shared_ptr<SpoolFile> spool(new SpoolFile(fd, path, size, nullptr));
  spool->appended_ = size;
  spool->readable_ = size;
  spool->finished_ = true;
  return spool;
}

SpoolFile::~SpoolFile() { ::close(fd_); }

Status SpoolFile::append(std::span<const uint8_t> bytes) {
  uint64_t offset;
  {
    std::lock_guard lock(mutex_);
    if (finished_) return fail(ErrorCode::kInternal, "append to a finished spool");
    if (bytes.size() > expected_size_ - appended_) {
      return fail(ErrorCode::kLimitExceeded,
                  "the upstream sent more than the " + std::to_string(expected_size_) + " bytes it announced");
    }
    offset = appended_;
  }
  if (!direct_io()) {
    ZG_TRY(write_fully(bytes, offset));
    {
      std::lock_guard lock(mutex_);
      appended_ += bytes.size();
      readable_ = appended_;
    }
    progress_.notify_all();
    return {};
  }
  // Only the writer changes appended_ and readable_, so reading them here needs no lock.
  size_t taken = 0;
  while (taken < bytes.size()) {
    const size_t staged = static_cast<size_t>(appended_ - readable_);
    const size_t count = std::min(kDirectIoBlock - staged, bytes.size() - taken);
    std::memcpy(staging_.get() + staged, bytes.data() + taken, count);
    taken += count;
    {
      std::lock_guard lock(mutex_);
      appended_ += count;
    }
    if (staged + count == kDirectIoBlock || appended_ == expected_size_) ZG_TRY(write_staged_block(staged + count));
  }
  return {};
}

Status SpoolFile::write_fully(std::span<const uint8_t> bytes, uint64_t offset) {
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t put = ::pwrite(fd_, bytes.data() + done, bytes.size() - done, static_cast<off_t>(offset + done));
    if (put < 0 && errno == EINTR) continue;
    if (put <= 0) return fail(ErrorCode::kIo, "cannot write the spool " + path_ + ": " + std::strerror(errno));
    done += static_cast<size_t>(put);
  }
  return {};
}

Status SpoolFile::write_staged_block(size_t staged_bytes) {
  const uint64_t offset = readable_;
  const bool last = offset + staged_bytes == expected_size_;
  // Direct writes are whole aligned blocks: the last one is padded with zeros, then cut off.
  const size_t length = last ? static_cast<size_t>(align_up(staged_bytes, kDirectIoAlignment)) : staged_bytes;
  std::memset(staging_.get() + staged_bytes, 0, length - staged_bytes);
  ZG_TRY(write_fully(std::span<const uint8_t>(staging_.get(), length), offset));
  if (last && ::ftruncate(fd_, static_cast<off_t>(expected_size_)) != 0) {
    return fail(ErrorCode::kIo, "cannot cut the spool " + path_ + " to its size: " + std::strerror(errno));
  }
  {
    std::lock_guard lock(mutex_);
    readable_ += staged_bytes;
  }
  progress_.notify_all();
  return {};
}

void SpoolFile::finish(Status outcome) {
  {
    std::lock_guard lock(mutex_);
    if (finished_) return;
    finished_ = true;
    if (!outcome) {
      failure_ = outcome.error();
    } else if (appended_ != expected_size_) {
      failure_ = Error{ErrorCode::kIo, "the upstream body ended after " + std::to_string(appended_) + " of " +
                                           std::to_string(expected_size_) + " bytes",
                       std::nullopt};
    }
  }
  progress_.notify_all();
}

uint64_t SpoolFile::readable_bytes() {
  std::lock_guard lock(mutex_);
  return readable_;
}

Status SpoolFile::wait_for(uint64_t end) {
  std::unique_lock lock(mutex_);
  progress_.wait(lock, [&] { return readable_ >= end || finished_ || failure_; });
  if (failure_) return tl::unexpected(*failure_);
  if (readable_ < end) return fail(ErrorCode::kIo, "the download ended before this read", end);
  return {};
}

Status SpoolFile::wait_finished() {
  std::unique_lock lock(mutex_);
  progress_.wait(lock, [&] { return finished_; });
  if (failure_) return tl::unexpected(*failure_);
  return {};
}

std::unique_ptr<ByteSource> SpoolFile::reader() { return std::make_unique<Reader>(shared_from_this()); }

}  // namespace zoogate::proxy
