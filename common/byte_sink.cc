#include "common/byte_sink.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <utility>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/checked.h"
#include "common/encoding.h"

namespace zoogate {
namespace {
constexpr size_t kFileBufferSize = 1 << 20;
}

Status MemorySink::write_bytes(std::span<const uint8_t> bytes) {
  bytes_.insert(bytes_.end(), bytes.begin(), bytes.end());
  return {};
}

Status MemorySink::write_at(uint64_t offset, std::span<const uint8_t> bytes) {
  if (offset > bytes_.max_size() - bytes.size()) return fail(ErrorCode::kLimitExceeded, "write past memory", offset);
  const size_t end = static_cast<size_t>(offset) + bytes.size();
  if (end > bytes_.size()) bytes_.resize(end);
  std::copy(bytes.begin(), bytes.end(), bytes_.begin() + static_cast<ptrdiff_t>(offset));
  return {};
}

Status MemorySink::read_back(uint64_t offset, std::span<uint8_t> out) {
  if (!range_fits(offset, out.size(), bytes_.size())) {
    return fail(ErrorCode::kInternal, "read back past the end", offset);
  }
  std::copy_n(bytes_.begin() + static_cast<ptrdiff_t>(offset), out.size(), out.begin());
  return {};
}

Status HashingSink::write_bytes(std::span<const uint8_t> bytes) {
  ZG_TRY(next_.write(bytes));
  while (!bytes.empty()) {
    std::vector<uint8_t>& staging = staging_[current_];
    const size_t taken = std::min(bytes.size(), kStagingBytes - staging.size());
    staging.insert(staging.end(), bytes.begin(), bytes.begin() + static_cast<ptrdiff_t>(taken));
    bytes = bytes.subspan(taken);
    if (staging.size() == kStagingBytes) hand_over();
  }
  return {};
}

void HashingSink::hand_over() {
  tickets_[current_] = hash_.update(staging_[current_]);
  current_ ^= 1;
  hash_.wait_for(tickets_[current_]);
  staging_[current_].clear();
}

Sha256::Digest HashingSink::finish() {
  if (!staging_[current_].empty()) hand_over();
  Sha256::Digest digest = hash_.finish();
  staging_[0].clear();
  staging_[1].clear();
  return digest;
}

Result<std::unique_ptr<AtomicFileSink>> AtomicFileSink::create(const std::string& path, unsigned mode) {
  std::random_device entropy;
  uint8_t suffix[8];
  for (auto& byte : suffix) byte = static_cast<uint8_t>(entropy());
  std::string temp_path = path + ".tmp-" + to_hex(suffix);
  int fd = ::open(temp_path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, mode);
  if (fd < 0) return fail(ErrorCode::kIo, "cannot create " + temp_path + ": " + std::strerror(errno));
  return std::unique_ptr<AtomicFileSink>(new AtomicFileSink(fd, path, std::move(temp_path)));
}

AtomicFileSink::AtomicFileSink(int fd, std::string path, std::string temp_path)
    : fd_(fd), path_(std::move(path)), temp_path_(std::move(temp_path)), buffer_(kFileBufferSize) {}

AtomicFileSink::~AtomicFileSink() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(temp_path_.c_str());
}

Status AtomicFileSink::write_all_at(uint64_t offset, std::span<const uint8_t> bytes) {
  while (!bytes.empty()) {
    ssize_t n = ::pwrite(fd_, bytes.data(), bytes.size(), static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail(ErrorCode::kIo, "write to " + temp_path_ + " failed: " + std::strerror(errno));
    }
    offset += static_cast<uint64_t>(n);
    bytes = bytes.subspan(static_cast<size_t>(n));
  }
  written_ = std::max(written_, offset);
  return {};
}

Status AtomicFileSink::flush() {
  const size_t buffered = std::exchange(buffered_, 0);
  return write_all_at(written_, std::span<const uint8_t>(buffer_.data(), buffered));
}

Status AtomicFileSink::write_at(uint64_t offset, std::span<const uint8_t> bytes) {
  if (committed_) return fail(ErrorCode::kInternal, "write after commit to " + path_);
  ZG_TRY(flush());
  return write_all_at(offset, bytes);
}

Status AtomicFileSink::read_back(uint64_t offset, std::span<uint8_t> out) {
  if (committed_) return fail(ErrorCode::kInternal, "read back after commit of " + path_);
  ZG_TRY(flush());
  if (!range_fits(offset, out.size(), written_)) return fail(ErrorCode::kInternal, "read back past the end", offset);
  while (!out.empty()) {
    ssize_t n = ::pread(fd_, out.data(), out.size(), static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return fail(ErrorCode::kIo, "read back of " + temp_path_ + " failed: " + std::strerror(errno), offset);
    if (n == 0) return fail(ErrorCode::kIo, temp_path_ + " is shorter than what was written to it", offset);
    offset += static_cast<uint64_t>(n);
    out = out.subspan(static_cast<size_t>(n));
  }
  return {};
}

Status AtomicFileSink::write_bytes(std::span<const uint8_t> bytes) {
  if (committed_) return fail(ErrorCode::kInternal, "write after commit to " + path_);
  // Large writes go straight to the kernel: copying them through the buffer first would cost a
  // memory pass over every tensor byte.
  if (bytes.size() >= buffer_.size()) {
    ZG_TRY(flush());
    return write_all_at(written_, bytes);
  }
  while (!bytes.empty()) {
    if (buffered_ == buffer_.size()) ZG_TRY(flush());
    size_t take = std::min(bytes.size(), buffer_.size() - buffered_);
    std::memcpy(buffer_.data() + buffered_, bytes.data(), take);
    buffered_ += take;
    bytes = bytes.subspan(take);
  }
  return {};
}

Status AtomicFileSink::commit() {
  ZG_TRY(flush());
  ::close(fd_);
  fd_ = -1;
  if (::rename(temp_path_.c_str(), path_.c_str()) != 0) {
    return fail(ErrorCode::kIo, "cannot rename " + temp_path_ + " to " + path_ + ": " + std::strerror(errno));
  }
  committed_ = true;
  return {};
}

Result<std::string> read_small_file(const std::string& path, uint64_t max_bytes) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return fail(ErrorCode::kIo, "cannot open " + path + ": " + std::strerror(errno));
  std::string content;
  char chunk[65536];
  while (in.read(chunk, sizeof chunk) || in.gcount() > 0) {
    content.append(chunk, static_cast<size_t>(in.gcount()));
    if (content.size() > max_bytes) {
      return fail(ErrorCode::kLimitExceeded, path + " is larger than " + std::to_string(max_bytes) + " bytes");
    }
  }
  if (in.bad()) return fail(ErrorCode::kIo, "read of " + path + " failed");
  return content;
}

}  // namespace zoogate
