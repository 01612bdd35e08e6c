#include "common/byte_sink.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/encoding.h"

namespace zoogate {
namespace {
constexpr size_t kFileBufferSize = 1 << 20;
}

Status MemorySink::write_bytes(std::span<const uint8_t> bytes) {
  bytes_.insert(bytes_.end(), bytes.begin(), bytes.end());
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
  int fd = ::open(temp_path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
  if (fd < 0) return fail(ErrorCode::kIo, "cannot create " + temp_path + ": " + std::strerror(errno));
  return std::unique_ptr<AtomicFileSink>(new AtomicFileSink(fd, path, std::move(temp_path)));
}

AtomicFileSink::AtomicFileSink(int fd, std::string path, std::string temp_path)
    : fd_(fd), path_(std::move(path)), temp_path_(std::move(temp_path)), buffer_(kFileBufferSize) {}

AtomicFileSink::~AtomicFileSink() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(temp_path_.c_str());
}

Status AtomicFileSink::write_all(std::span<const uint8_t> bytes) {
  while (!bytes.empty()) {
    ssize_t n = ::write(fd_, bytes.data(), bytes.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail(ErrorCode::kIo, "write to " + temp_path_ + " failed: " + std::strerror(errno));
    }
    written_ += static_cast<uint64_t>(n);
    bytes = bytes.subspan(static_cast<size_t>(n));
  }
  return {};
}

Status AtomicFileSink::flush() {
  ZG_TRY(write_all(std::span<const uint8_t>(buffer_.data(), buffered_)));
  buffered_ = 0;
  return {};
}

Status AtomicFileSink::write_bytes(std::span<const uint8_t> bytes) {
  if (committed_) return fail(ErrorCode::kInternal, "write after commit to " + path_);
  // Large writes go straight to the kernel: copying them through the buffer first would cost a
  // memory pass over every tensor byte.
  if (bytes.size() >= buffer_.size()) {
    ZG_TRY(flush());
    return write_all(bytes);
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
