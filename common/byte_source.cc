#include "common/byte_source.h"

#include <cerrno>
#include <cstring>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/checked.h"

namespace zoogate {
namespace {

Status out_of_range(uint64_t offset, size_t length, uint64_t size) {
  return fail(ErrorCode::kParse,
              "read of " + std::to_string(length) + " bytes past the end of the input (size " +
                  std::to_string(size) + ")",
              offset);
}

}  // namespace

Result<std::vector<uint8_t>> ByteSource::read_vector(uint64_t offset, size_t length) const {
  if (!range_fits(offset, length, size())) return tl::unexpected(out_of_range(offset, length, size()).error());
  std::vector<uint8_t> buffer(length);
  ZG_TRY(read_at(offset, buffer));
  return buffer;
}

Status MemorySource::read_at(uint64_t offset, std::span<uint8_t> out) const {
  if (!range_fits(offset, out.size(), bytes_.size())) return out_of_range(offset, out.size(), bytes_.size());
  if (!out.empty()) std::memcpy(out.data(), bytes_.data() + offset, out.size());
  return {};
}

Status SubSource::read_at(uint64_t offset, std::span<uint8_t> out) const {
  if (!range_fits(offset, out.size(), length_)) return out_of_range(offset, out.size(), length_);
  return parent_.read_at(offset_ + offset, out);
}

Result<std::unique_ptr<FileSource>> FileSource::open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return fail(ErrorCode::kIo, "cannot open " + path + ": " + std::strerror(errno));
  struct stat info {};
  if (::fstat(fd, &info) != 0 || !S_ISREG(info.st_mode)) {
    ::close(fd);
    return fail(ErrorCode::kIo, path + " is not a readable regular file");
  }
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  return std::unique_ptr<FileSource>(new FileSource(fd, static_cast<uint64_t>(info.st_size), path));
}

FileSource::~FileSource() { ::close(fd_); }

Status FileSource::read_at(uint64_t offset, std::span<uint8_t> out) const {
  if (!range_fits(offset, out.size(), size_)) return out_of_range(offset, out.size(), size_);
  size_t done = 0;
  while (done < out.size()) {
    ssize_t n = ::pread(fd_, out.data() + done, out.size() - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail(ErrorCode::kIo, "read of " + path_ + " failed: " + std::strerror(errno), offset + done);
    }
    if (n == 0) return fail(ErrorCode::kIo, path_ + " shrank while being read", offset + done);
    done += static_cast<size_t>(n);
  }
  return {};
}

}  // namespace zoogate
