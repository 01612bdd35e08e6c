#include "proxy/spool_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace zoogate::proxy {

class SpoolFile::Reader final : public ByteSource {
 public:
  explicit Reader(std::shared_ptr<SpoolFile> spool) : spool_(std::move(spool)) {}
  uint64_t size() const override { return spool_->expected_size_; }
  Status read_at(uint64_t offset, std::span<uint8_t> out) const override {
    if (offset > size() || out.size() > size() - offset) {
      return fail(ErrorCode::kIo, "read past the end of the spooled download", offset);
    }
    ZG_TRY(spool_->wait_for(offset + out.size()));
    size_t done = 0;
    while (done < out.size()) {
      const ssize_t got = ::pread(spool_->fd_, out.data() + done, out.size() - done, static_cast<off_t>(offset + done));
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) {
        return fail(ErrorCode::kIo, "cannot read the spooled download: " + std::string(std::strerror(errno)), offset);
      }
      done += static_cast<size_t>(got);
    }
    return {};
  }

 private:
  std::shared_ptr<SpoolFile> spool_;
};

Result<std::shared_ptr<SpoolFile>> SpoolFile::create(const std::string& path, uint64_t expected_size) {
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return fail(ErrorCode::kIo, "cannot create " + path + ": " + std::strerror(errno));
  return std::shared_ptr<SpoolFile>(new SpoolFile(fd, path, expected_size));
}

Result<std::shared_ptr<SpoolFile>> SpoolFile::open_complete(const std::string& path, uint64_t size) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return fail(ErrorCode::kIo, "cannot open " + path + ": " + std::strerror(errno));
  std::shared_ptr<SpoolFile> spool(new SpoolFile(fd, path, size));
  spool->written_ = size;
  spool->finished_ = true;
  return spool;
}

SpoolFile::~SpoolFile() { ::close(fd_); }

Status SpoolFile::append(std::span<const uint8_t> bytes) {
  uint64_t offset;
  {
    std::lock_guard lock(mutex_);
    if (finished_) return fail(ErrorCode::kInternal, "append to a finished spool");
    if (bytes.size() > expected_size_ - written_) {
      return fail(ErrorCode::kLimitExceeded,
                  "the upstream sent more than the " + std::to_string(expected_size_) + " bytes it announced");
    }
    offset = written_;
  }
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t put = ::pwrite(fd_, bytes.data() + done, bytes.size() - done, static_cast<off_t>(offset + done));
    if (put < 0 && errno == EINTR) continue;
    if (put <= 0) return fail(ErrorCode::kIo, "cannot write the spool " + path_ + ": " + std::strerror(errno));
    done += static_cast<size_t>(put);
  }
  {
    std::lock_guard lock(mutex_);
    written_ += bytes.size();
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
    } else if (written_ != expected_size_) {
      failure_ = Error{ErrorCode::kIo, "the upstream body ended after " + std::to_string(written_) + " of " +
                                           std::to_string(expected_size_) + " bytes",
                       std::nullopt};
    }
  }
  progress_.notify_all();
}

Status SpoolFile::wait_for(uint64_t end) {
  std::unique_lock lock(mutex_);
  progress_.wait(lock, [&] { return written_ >= end || finished_ || failure_; });
  if (failure_) return tl::unexpected(*failure_);
  if (written_ < end) return fail(ErrorCode::kIo, "the download ended before this read", end);
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
