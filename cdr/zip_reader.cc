#include "cdr/zip_reader.h"

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstring>
#include <optional>

#include <zlib.h>

#include "cdr/zip_format.h"
#include "common/checked.h"

namespace zoogate::cdr {
namespace {

using namespace zip;  // NOLINT(google-build-using-namespace): the record constants read better unqualified

constexpr size_t kCursorChunk = 64 << 10;          // central directory read-ahead
constexpr size_t kInflateInputChunk = 256 << 10;   // compressed bytes read per refill

std::string quoted(std::string_view name) { return "'" + std::string(name) + "'"; }

std::string hex(uint64_t value) {
  char text[24];
  std::snprintf(text, sizeof text, "0x%llx", static_cast<unsigned long long>(value));
  return text;
}

tl::unexpected<Error> at(Error error, uint64_t offset) {
  error.offset = offset;
  return tl::unexpected<Error>(std::move(error));
}

// Reads consecutive records of [begin, end) of a source through a bounded read-ahead buffer.
class RecordCursor {
 public:
  RecordCursor(const ByteSource& source, uint64_t begin, uint64_t end)
      : source_(source), position_(begin), end_(end) {}

  uint64_t position() const { return position_; }

  // The next `length` bytes, valid until the next call. A kParse error naming `what` when the range
  // ends first.
  Result<std::span<const uint8_t>> take(size_t length, std::string_view what) {
    if (length > end_ - position_) {
      return fail(ErrorCode::kParse,
                  std::string(what) + " needs " + std::to_string(length) + " bytes but the central directory ends " +
                      std::to_string(end_ - position_) + " bytes later",
                  position_);
    }
    size_t buffered = buffered_end_ - buffered_begin_;
    if (buffered < length) {
      if (buffered > 0) std::memmove(buffer_.data(), buffer_.data() + buffered_begin_, buffered);
      buffer_.resize(std::max({buffer_.size(), kCursorChunk, length}));
      uint64_t next = position_ + buffered;
      size_t more = static_cast<size_t>(std::min<uint64_t>(buffer_.size() - buffered, end_ - next));
      ZG_TRY(source_.read_at(next, std::span<uint8_t>(buffer_.data() + buffered, more)));
      buffered_begin_ = 0;
      buffered_end_ = buffered + more;
    }
    std::span<const uint8_t> out(buffer_.data() + buffered_begin_, length);
    buffered_begin_ += length;
    position_ += length;
    return out;
  }

 private:
  const ByteSource& source_;
  uint64_t position_;  // file offset of the next byte take() returns
  uint64_t end_;
  std::vector<uint8_t> buffer_;
  size_t buffered_begin_ = 0;  // buffer_[buffered_begin_] holds the byte at position_
  size_t buffered_end_ = 0;
};

// The end records, resolved: where the central directory is and how many entries it holds.
struct EndRecords {
  uint64_t entry_count = 0;
  uint64_t cd_offset = 0;
  uint64_t cd_end = 0;  // where the end records begin; the central directory must fill [cd_offset, cd_end)
};

// A plausible end-of-central-directory record other than the one at the end would let a reader that
// scans from another direction see a different archive. Plausible means its comment would reach
// exactly the end of the file, as a real one must: tensor bytes that merely contain the signature
// (a benign checkpoint can) are data, and every byte of data is accounted for by its entry anyway.
bool looks_like_end_record(std::span<const uint8_t> tail, size_t at, uint64_t file_offset, uint64_t file_size) {
  const uint8_t* p = tail.data() + at;
  if (load_u32(p) != kEndOfCentralDirSignature) return false;
  if (load_u16(p + 4) != 0 || load_u16(p + 6) != 0) return false;
  if (file_offset + kEndOfCentralDirSize + load_u16(p + 20) != file_size) return false;
  uint32_t cd_size = load_u32(p + 12);
  uint32_t cd_offset = load_u32(p + 16);
  if (cd_size == kSentinel32 || cd_offset == kSentinel32) return true;
  return uint64_t{cd_offset} + cd_size <= file_offset;
}

Status check_single_disk(uint64_t this_disk, uint64_t cd_disk, uint64_t entries_here, uint64_t entries_total,
                         std::string_view record, uint64_t offset) {
  if (this_disk != 0 || cd_disk != 0 || entries_here != entries_total) {
    return fail(ErrorCode::kUnsupported, std::string(record) + " describes a multi-disk (spanned) archive", offset);
  }
  return {};
}

// An end-of-central-directory field must hold the zip64 record's value, or the sentinel that defers to it.
Status check_deferred_field(std::string_view field, uint64_t value, uint64_t sentinel, uint64_t zip64_value,
                            uint64_t offset) {
  if (value == sentinel || value == zip64_value) return {};
  return fail(ErrorCode::kParse,
              "end-of-central-directory " + std::string(field) + " " + std::to_string(value) +
                  " disagrees with the zip64 end record's " + std::to_string(zip64_value),
              offset);
}

Result<EndRecords> read_zip64_end_records(const ByteSource& source, uint64_t eocd_start,
                                          std::span<const uint8_t> eocd) {
  const uint64_t locator_start = eocd_start - kZip64EndLocatorSize;
  auto locator = source.read_vector(locator_start, kZip64EndLocatorSize);
  if (!locator) return fail(locator.error());
  uint32_t record_disk = load_u32(locator->data() + 4);
  uint64_t record_offset = load_u64(locator->data() + 8);
  uint32_t total_disks = load_u32(locator->data() + 16);
  if (record_disk != 0 || total_disks > 1) {
    return fail(ErrorCode::kUnsupported, "zip64 end locator describes a multi-disk (spanned) archive", locator_start);
  }
  if (locator_start < kZip64EndRecordSize || record_offset != locator_start - kZip64EndRecordSize) {
    return fail(ErrorCode::kParse,
                "zip64 end locator points at offset " + std::to_string(record_offset) +
                    ", not at a zip64 end record directly before it",
                locator_start);
  }
  auto record = source.read_vector(record_offset, kZip64EndRecordSize);
  if (!record) return fail(record.error());
  const uint8_t* r = record->data();
  if (load_u32(r) != kZip64EndRecordSignature) {
    return fail(ErrorCode::kParse, "zip64 end locator points at bytes that are not a zip64 end record", record_offset);
  }
  if (load_u64(r + 4) != kZip64EndRecordRemainder) {
    return fail(ErrorCode::kParse,
                "zip64 end record states a size of " + std::to_string(load_u64(r + 4)) + " bytes, expected " +
                    std::to_string(kZip64EndRecordRemainder) + " (no extensible data)",
                record_offset);
  }
  if ((load_u16(r + 14) & 0xFF) > kMaxVersionNeeded) {
    return fail(ErrorCode::kUnsupported,
                "zip64 end record needs ZIP version " + std::to_string(load_u16(r + 14) & 0xFF), record_offset);
  }
  EndRecords out;
  out.entry_count = load_u64(r + 32);
  uint64_t cd_size = load_u64(r + 40);
  out.cd_offset = load_u64(r + 48);
  out.cd_end = record_offset;
  ZG_TRY(check_single_disk(load_u32(r + 16), load_u32(r + 20), load_u64(r + 24), out.entry_count, "zip64 end record",
                           record_offset));

  ZG_TRY(check_deferred_field("entry count", load_u16(eocd.data() + 10), kSentinel16, out.entry_count, eocd_start));
  ZG_TRY(check_deferred_field("central directory size", load_u32(eocd.data() + 12), kSentinel32, cd_size, eocd_start));
  ZG_TRY(check_deferred_field("central directory offset", load_u32(eocd.data() + 16), kSentinel32, out.cd_offset,
                              eocd_start));
  if (checked_add(out.cd_offset, cd_size) != out.cd_end) {
    return fail(ErrorCode::kParse,
                "central directory [" + std::to_string(out.cd_offset) + ", +" + std::to_string(cd_size) +
                    ") does not end where the zip64 end record begins (" + std::to_string(out.cd_end) + ")",
                record_offset);
  }
  return out;
}

Result<EndRecords> read_end_records(const ByteSource& source) {
  const uint64_t file_size = source.size();
  const uint64_t eocd_start = file_size - kEndOfCentralDirSize;  // caller checked file_size
  const uint64_t tail_start = eocd_start > kMaxEndOfCentralDirComment ? eocd_start - kMaxEndOfCentralDirComment : 0;
  auto tail = source.read_vector(tail_start, static_cast<size_t>(file_size - tail_start));
  if (!tail) return fail(tail.error());
  const size_t eocd_in_tail = static_cast<size_t>(eocd_start - tail_start);
  std::span<const uint8_t> eocd(tail->data() + eocd_in_tail, kEndOfCentralDirSize);

  if (load_u32(eocd.data()) != kEndOfCentralDirSignature) {
    // Say why: a comment, bytes appended after the record, or no record at all.
    for (size_t at = eocd_in_tail; at-- > 0;) {
      if (load_u32(tail->data() + at) != kEndOfCentralDirSignature) continue;
      uint64_t record = tail_start + at;
      uint64_t record_end = record + kEndOfCentralDirSize + load_u16(tail->data() + at + 20);
      if (record_end == file_size) {
        return fail(ErrorCode::kUnsupported,
                    "archive comment of " + std::to_string(file_size - record - kEndOfCentralDirSize) +
                        " bytes (comments are not accepted)",
                    record + kEndOfCentralDirSize);
      }
      if (record_end < file_size) {
        return fail(ErrorCode::kParse,
                    std::to_string(file_size - record_end) + " bytes appended after the end-of-central-directory record",
                    record_end);
      }
    }
    return fail(ErrorCode::kParse, "no end-of-central-directory record at the end of the file", eocd_start);
  }
  if (load_u16(eocd.data() + 20) != 0) {
    return fail(ErrorCode::kParse,
                "end-of-central-directory record claims a " + std::to_string(load_u16(eocd.data() + 20)) +
                    "-byte comment but ends the file",
                eocd_start);
  }
  for (size_t at = 0; at < eocd_in_tail; ++at) {
    if (looks_like_end_record(*tail, at, tail_start + at, file_size)) {
      return fail(ErrorCode::kParse,
                  "a second end-of-central-directory record (a reader scanning from the front would use it)",
                  tail_start + at);
    }
  }
  ZG_TRY(check_single_disk(load_u16(eocd.data() + 4), load_u16(eocd.data() + 6), load_u16(eocd.data() + 8),
                           load_u16(eocd.data() + 10), "end-of-central-directory record", eocd_start));

  if (eocd_start >= kZip64EndLocatorSize &&
      load_u32(tail->data() + eocd_in_tail - kZip64EndLocatorSize) == kZip64EndLocatorSignature) {
    return read_zip64_end_records(source, eocd_start, eocd);
  }
  EndRecords out;
  out.entry_count = load_u16(eocd.data() + 10);
  uint64_t cd_size = load_u32(eocd.data() + 12);
  out.cd_offset = load_u32(eocd.data() + 16);
  out.cd_end = eocd_start;
  if (out.cd_offset + cd_size != out.cd_end) {
    return fail(ErrorCode::kParse,
                "central directory [" + std::to_string(out.cd_offset) + ", +" + std::to_string(cd_size) +
                    ") does not end where the end-of-central-directory record begins (" + std::to_string(out.cd_end) +
                    ")",
                eocd_start);
  }
  return out;
}

// The fields of one extra field block that the reader interprets.
struct ExtraFields {
  std::optional<std::span<const uint8_t>> zip64;  // data of the zip64 field
};

// Splits an extra field block into well-formed, non-repeating TLVs. `offset` is the block's file offset.
Result<ExtraFields> parse_extra_fields(std::span<const uint8_t> block, uint64_t offset, std::string_view owner) {
  ExtraFields out;
  std::vector<uint16_t> ids;
  size_t pos = 0;
  while (pos < block.size()) {
    if (block.size() - pos < kExtraHeaderSize) {
      return fail(ErrorCode::kParse, "extra field of " + std::string(owner) + " ends inside a field header", offset + pos);
    }
    uint16_t id = load_u16(block.data() + pos);
    uint16_t length = load_u16(block.data() + pos + 2);
    if (length > block.size() - pos - kExtraHeaderSize) {
      return fail(ErrorCode::kParse,
                  "extra field " + hex(id) + " of " + std::string(owner) + " runs past the end of the extra data",
                  offset + pos);
    }
    if (id == kExtraUnicodePath || id == kExtraUnicodeComment) {
      return fail(ErrorCode::kUnsupported,
                  "extra field " + hex(id) + " of " + std::string(owner) +
                      " gives a second name or comment, which readers may use instead",
                  offset + pos);
    }
    auto data = block.subspan(pos + kExtraHeaderSize, length);
    if (id == kExtraZip64) out.zip64 = data;
    ids.push_back(id);
    pos += kExtraHeaderSize + length;
  }
  std::sort(ids.begin(), ids.end());
  if (auto repeated = std::adjacent_find(ids.begin(), ids.end()); repeated != ids.end()) {
    return fail(ErrorCode::kParse, "extra field " + hex(*repeated) + " appears twice in " + std::string(owner), offset);
  }
  return out;
}

// What the central directory says about an entry, and what its local header must repeat.
struct CentralRecord {
  ZipEntry entry;  // data_offset is filled in when the local header is checked
  uint64_t header_offset = 0;
};

Status check_flags_and_method(uint16_t flags, uint16_t method, const std::string& owner, uint64_t offset) {
  if (flags & (kFlagEncrypted | kFlagStrongEncryption | kFlagMaskedHeaders)) {
    return fail(ErrorCode::kUnsupported, owner + " is encrypted (flags " + hex(flags) + ")", offset);
  }
  if (flags & ~kAllowedFlags) {
    return fail(ErrorCode::kUnsupported,
                owner + " sets general purpose flags " + hex(flags & ~kAllowedFlags) +
                    " (only bit 3, data descriptor, and bit 11, UTF-8 name, are accepted)",
                offset);
  }
  if (method != kMethodStored && method != kMethodDeflate) {
    return fail(ErrorCode::kUnsupported,
                owner + " uses compression method " + std::to_string(method) + " (only 0, stored, and 8, deflate)",
                offset);
  }
  return {};
}

Status check_version_needed(uint16_t version_needed, const std::string& owner, uint64_t offset) {
  // The low byte is the APPNOTE version times ten; some writers put a host system in the high byte.
  if ((version_needed & 0xFF) > kMaxVersionNeeded) {
    return fail(ErrorCode::kUnsupported,
                owner + " needs ZIP version " + std::to_string(version_needed & 0xFF) + " (at most " +
                    std::to_string(kMaxVersionNeeded) + ")",
                offset);
  }
  return {};
}

// Unix file types (high bits of st_mode) that a file entry may carry in its external attributes.
constexpr uint32_t kUnixTypeMask = 0170000, kUnixRegularFile = 0100000;
constexpr uint32_t kDosDirectoryAttribute = 0x10;
constexpr uint16_t kHostUnix = 3;

Status check_file_type(uint16_t version_made_by, uint32_t external_attributes, const std::string& owner,
                       uint64_t offset) {
  if (external_attributes & kDosDirectoryAttribute) {
    return fail(ErrorCode::kForbidden, owner + " is marked as a directory", offset);
  }
  uint32_t unix_type = (external_attributes >> 16) & kUnixTypeMask;
  if ((version_made_by >> 8) == kHostUnix && unix_type != 0 && unix_type != kUnixRegularFile) {
    return fail(ErrorCode::kForbidden,
                owner + " is not a regular file (Unix mode " + hex(external_attributes >> 16) + ")", offset);
  }
  return {};
}

// Central header fields that may defer to the zip64 extra field (APPNOTE 4.5.3): each 0xFFFFFFFF (or
// 0xFFFF) field takes the next value, in this order, and the extra field holds nothing else.
Status resolve_central_zip64(const ExtraFields& extra, ZipEntry& entry, uint32_t& disk_start, const std::string& owner,
                             uint64_t offset) {
  std::span<const uint8_t> data = extra.zip64.value_or(std::span<const uint8_t>());
  size_t used = 0;
  auto next = [&](uint64_t& value, size_t width) -> Status {
    if (data.size() - used < width) {
      return fail(ErrorCode::kParse,
                  owner + " marks a field 0xFFFFFFFF but its zip64 extra field does not hold the value", offset);
    }
    value = width == 8 ? load_u64(data.data() + used) : load_u32(data.data() + used);
    used += width;
    return {};
  };
  if (entry.size == kSentinel32) ZG_TRY(next(entry.size, 8));
  if (entry.compressed_size == kSentinel32) ZG_TRY(next(entry.compressed_size, 8));
  if (entry.local_header_offset == kSentinel32) ZG_TRY(next(entry.local_header_offset, 8));
  if (disk_start == kSentinel16) {
    uint64_t disk = 0;
    ZG_TRY(next(disk, 4));
    disk_start = static_cast<uint32_t>(disk);
  }
  if (used != data.size()) {
    return fail(ErrorCode::kParse,
                owner + " has a zip64 extra field of " + std::to_string(data.size()) + " bytes but only " +
                    std::to_string(used) + " are called for by 0xFFFFFFFF fields",
                offset);
  }
  return {};
}

Result<CentralRecord> read_central_record(RecordCursor& cursor, uint64_t index, uint64_t count, EntryNames& names,
                                          const ZipLimits& limits) {
  CentralRecord record;
  record.header_offset = cursor.position();
  const std::string position = "central directory entry " + std::to_string(index + 1) + " of " + std::to_string(count);
  auto fixed = cursor.take(kCentralHeaderSize, position);
  if (!fixed) return fail(fixed.error());
  const uint8_t* h = fixed->data();
  if (load_u32(h) != kCentralHeaderSignature) {
    return fail(ErrorCode::kParse, position + " does not start with a central header signature", record.header_offset);
  }
  uint16_t version_made_by = load_u16(h + kCentralVersionMadeBy);
  uint16_t version_needed = load_u16(h + kCentralVersionNeeded);
  ZipEntry& entry = record.entry;
  entry.flags = load_u16(h + kCentralFlags);
  entry.method = load_u16(h + kCentralMethod);
  entry.crc32 = load_u32(h + kCentralCrc);
  entry.compressed_size = load_u32(h + kCentralCompressedSize);
  entry.size = load_u32(h + kCentralSize);
  uint16_t name_length = load_u16(h + kCentralNameLength);
  uint16_t extra_length = load_u16(h + kCentralExtraLength);
  uint16_t comment_length = load_u16(h + kCentralCommentLength);
  uint32_t disk_start = load_u16(h + kCentralDiskStart);
  uint32_t external_attributes = load_u32(h + kCentralExternalAttributes);
  entry.local_header_offset = load_u32(h + kCentralLocalHeaderOffset);

  const uint64_t name_offset = cursor.position();
  auto variable = cursor.take(size_t{name_length} + extra_length + comment_length, position + " name and extra field");
  if (!variable) return fail(variable.error());
  entry.name.assign(reinterpret_cast<const char*>(variable->data()), name_length);
  const std::string owner = "entry " + quoted(entry.name);

  ZG_TRY(check_version_needed(version_needed, owner, record.header_offset));
  ZG_TRY(check_flags_and_method(entry.flags, entry.method, owner, record.header_offset));
  if (!(entry.flags & kFlagUtf8Name) &&
      std::any_of(entry.name.begin(), entry.name.end(), [](char c) { return static_cast<uint8_t>(c) >= 0x80; })) {
    return fail(ErrorCode::kForbidden,
                owner + " has a non-ASCII name without the UTF-8 flag (readers disagree on its encoding)", name_offset);
  }
  if (auto named = names.add(entry.name); !named) return at(named.error(), name_offset);
  if (comment_length != 0) {
    return fail(ErrorCode::kUnsupported, owner + " has a comment (entry comments are not accepted)",
                name_offset + name_length + extra_length);
  }
  ZG_TRY(check_file_type(version_made_by, external_attributes, owner, record.header_offset));

  auto extra = parse_extra_fields(variable->subspan(name_length, extra_length), name_offset + name_length,
                                  "central directory " + owner);
  if (!extra) return fail(extra.error());
  ZG_TRY(resolve_central_zip64(*extra, entry, disk_start, owner, name_offset + name_length));
  if (disk_start != 0) {
    return fail(ErrorCode::kUnsupported, owner + " starts on disk " + std::to_string(disk_start), record.header_offset);
  }

  if (entry.method == kMethodStored && entry.compressed_size != entry.size) {
    return fail(ErrorCode::kParse,
                "stored " + owner + " has compressed size " + std::to_string(entry.compressed_size) + " but size " +
                    std::to_string(entry.size),
                record.header_offset);
  }
  if (entry.method == kMethodDeflate && entry.compressed_size == 0) {
    return fail(ErrorCode::kParse, "deflated " + owner + " has no compressed data", record.header_offset);
  }
  if (entry.size > limits.max_entry_size) {
    return fail(ErrorCode::kLimitExceeded,
                owner + " declares " + std::to_string(entry.size) + " bytes, over the limit of " +
                    std::to_string(limits.max_entry_size),
                record.header_offset);
  }
  if (entry.method == kMethodDeflate) {
    auto allowed = checked_mul(entry.compressed_size, limits.max_compression_ratio);
    if (allowed && entry.size > *allowed) {
      return fail(ErrorCode::kLimitExceeded,
                  owner + " inflates " + std::to_string(entry.compressed_size) + " bytes to " +
                      std::to_string(entry.size) + ", over the compression ratio limit of " +
                      std::to_string(limits.max_compression_ratio),
                  record.header_offset);
    }
  }
  return record;
}

// The local zip64 extra field: writers put the two sizes (required by APPNOTE when a size field is
// 0xFFFFFFFF), the local header offset (miniz, for records past 4 GiB), or both, in that order.
struct LocalZip64 {
  std::optional<uint64_t> size;
  std::optional<uint64_t> compressed_size;
  std::optional<uint64_t> header_offset;
};

Result<LocalZip64> parse_local_zip64(std::span<const uint8_t> data, const std::string& owner, uint64_t offset) {
  LocalZip64 out;
  switch (data.size()) {
    case 8:
      out.header_offset = load_u64(data.data());
      return out;
    case 28:
      if (load_u32(data.data() + 24) != 0) {
        return fail(ErrorCode::kUnsupported, "local header of " + owner + " names another disk", offset);
      }
      [[fallthrough]];
    case 24:
      out.header_offset = load_u64(data.data() + 16);
      [[fallthrough]];
    case 16:
      out.size = load_u64(data.data());
      out.compressed_size = load_u64(data.data() + 8);
      return out;
    default:
      return fail(ErrorCode::kParse,
                  "local zip64 extra field of " + owner + " has " + std::to_string(data.size()) +
                      " bytes (expected 8, 16, 24 or 28)",
                  offset);
  }
}

// One size as the local header states it: the 32-bit field, or the zip64 value the sentinel defers to.
// Without a data descriptor both must equal the central value. With one, the header carries zero
// (APPNOTE 4.4.4) or the sentinel, and a zip64 value is zero (Python's zipfile) or the real size (miniz,
// which knows it up front); the descriptor then states the size.
Status check_local_size(std::string_view field, uint32_t header_value, std::optional<uint64_t> zip64_value,
                        uint64_t central_value, bool has_descriptor, const std::string& owner, uint64_t offset) {
  auto refuse = [&](uint64_t local_value, std::string_view expected) {
    return fail(ErrorCode::kParse,
                "local header of " + owner + " states " + std::string(field) + " " + std::to_string(local_value) +
                    ", expected " + std::string(expected),
                offset);
  };
  const std::string central = std::to_string(central_value) + " as in the central directory";
  if (header_value == kSentinel32 && !zip64_value) {
    return fail(ErrorCode::kParse,
                "local header of " + owner + " marks its " + std::string(field) + " 0xFFFFFFFF without a zip64 value",
                offset);
  }
  if (has_descriptor) {
    if (header_value != 0 && header_value != kSentinel32) return refuse(header_value, "0 before a data descriptor");
    if (zip64_value && *zip64_value != 0 && *zip64_value != central_value) {
      return refuse(*zip64_value, "0 or " + central);
    }
    return {};
  }
  if (header_value != kSentinel32 && header_value != central_value) return refuse(header_value, central);
  if (zip64_value && *zip64_value != central_value) return refuse(*zip64_value, central);
  return {};
}

// Checks the data descriptor after the data of `entry` and returns its length.
Result<uint64_t> check_data_descriptor(const ByteSource& source, const ZipEntry& entry, uint64_t data_end,
                                       uint64_t cd_offset, bool zip64, const std::string& owner) {
  if (entry.crc32 == kDataDescriptorSignature) {
    return fail(ErrorCode::kParse,
                owner + " has a CRC equal to the data descriptor signature, so readers disagree on where its "
                        "descriptor starts",
                data_end);
  }
  const size_t longest = 4 + 4 + 16;
  auto bytes = source.read_vector(data_end, static_cast<size_t>(std::min<uint64_t>(longest, cd_offset - data_end)));
  if (!bytes) return fail(bytes.error());
  bool signed_form = bytes->size() >= 4 && load_u32(bytes->data()) == kDataDescriptorSignature;
  size_t length = (signed_form ? 4 : 0) + 4 + (zip64 ? 16 : 8);
  if (bytes->size() < length) {
    return fail(ErrorCode::kParse, "data descriptor of " + owner + " runs into the central directory", data_end);
  }
  const uint8_t* d = bytes->data() + (signed_form ? 4 : 0);
  uint32_t crc = load_u32(d);
  uint64_t compressed_size = zip64 ? load_u64(d + 4) : load_u32(d + 4);
  uint64_t size = zip64 ? load_u64(d + 12) : load_u32(d + 8);
  if (crc != entry.crc32 || compressed_size != entry.compressed_size || size != entry.size) {
    return fail(ErrorCode::kParse,
                "data descriptor of " + owner + " (CRC " + hex(crc) + ", sizes " + std::to_string(compressed_size) +
                    "/" + std::to_string(size) + ") disagrees with the central directory (CRC " + hex(entry.crc32) +
                    ", sizes " + std::to_string(entry.compressed_size) + "/" + std::to_string(entry.size) + ")",
                data_end);
  }
  return length;
}

// Checks the local record (header, name, extra field, data, data descriptor) of `entry`, which must start
// at entry.local_header_offset and end before `cd_offset`; fills in data_offset and returns the record end.
Result<uint64_t> check_local_record(const ByteSource& source, ZipEntry& entry, uint64_t cd_offset) {
  const std::string owner = quoted(entry.name);
  const uint64_t offset = entry.local_header_offset;
  if (!range_fits(offset, kLocalHeaderSize, cd_offset)) {
    return fail(ErrorCode::kParse, "local header of " + owner + " runs into the central directory", offset);
  }
  auto fixed = source.read_vector(offset, kLocalHeaderSize);
  if (!fixed) return fail(fixed.error());
  const uint8_t* h = fixed->data();
  if (load_u32(h) != kLocalHeaderSignature) {
    return fail(ErrorCode::kParse, "no local header for " + owner + " where the central directory says", offset);
  }
  uint16_t flags = load_u16(h + kLocalFlags);
  uint16_t method = load_u16(h + kLocalMethod);
  ZG_TRY(check_version_needed(load_u16(h + kLocalVersionNeeded), "local header of " + owner, offset));
  if (flags != entry.flags) {
    return fail(ErrorCode::kParse,
                "local header of " + owner + " has flags " + hex(flags) + ", the central directory " + hex(entry.flags),
                offset + kLocalFlags);
  }
  if (method != entry.method) {
    return fail(ErrorCode::kParse,
                "local header of " + owner + " has method " + std::to_string(method) + ", the central directory " +
                    std::to_string(entry.method),
                offset + kLocalMethod);
  }
  uint16_t name_length = load_u16(h + kLocalNameLength);
  uint16_t extra_length = load_u16(h + kLocalExtraLength);
  const uint64_t name_offset = offset + kLocalHeaderSize;
  if (!range_fits(name_offset, size_t{name_length} + extra_length, cd_offset)) {
    return fail(ErrorCode::kParse, "local header of " + owner + " runs into the central directory", offset);
  }
  auto variable = source.read_vector(name_offset, size_t{name_length} + extra_length);
  if (!variable) return fail(variable.error());
  std::string_view local_name(reinterpret_cast<const char*>(variable->data()), name_length);
  if (local_name != entry.name) {
    return fail(ErrorCode::kParse,
                "local header names " + quoted(local_name) + " but the central directory names " + owner, name_offset);
  }

  const uint64_t extra_offset = name_offset + name_length;
  auto extra = parse_extra_fields(std::span<const uint8_t>(*variable).subspan(name_length), extra_offset,
                                  "local header of " + owner);
  if (!extra) return fail(extra.error());
  LocalZip64 zip64;
  if (extra->zip64) {
    auto parsed = parse_local_zip64(*extra->zip64, owner, extra_offset);
    if (!parsed) return fail(parsed.error());
    zip64 = *parsed;
    if (zip64.header_offset && *zip64.header_offset != offset) {
      return fail(ErrorCode::kParse,
                  "local zip64 extra field of " + owner + " states offset " + std::to_string(*zip64.header_offset),
                  extra_offset);
    }
  }
  const bool has_descriptor = entry.flags & kFlagDataDescriptor;
  uint32_t local_crc = load_u32(h + kLocalCrc);
  if (local_crc != (has_descriptor ? 0 : entry.crc32)) {
    return fail(ErrorCode::kParse,
                "local header of " + owner + " has CRC " + hex(local_crc) + ", expected " +
                    hex(has_descriptor ? 0 : entry.crc32),
                offset + kLocalCrc);
  }
  ZG_TRY(check_local_size("compressed size", load_u32(h + kLocalCompressedSize), zip64.compressed_size,
                          entry.compressed_size, has_descriptor, owner, offset + kLocalCompressedSize));
  ZG_TRY(check_local_size("size", load_u32(h + kLocalSize), zip64.size, entry.size, has_descriptor, owner,
                          offset + kLocalSize));

  entry.data_offset = extra_offset + extra_length;
  auto data_end = checked_add(entry.data_offset, entry.compressed_size);
  if (!data_end || *data_end > cd_offset) {
    return fail(ErrorCode::kParse,
                "data of " + owner + " (" + std::to_string(entry.compressed_size) +
                    " bytes) runs into the central directory",
                entry.data_offset);
  }
  if (!has_descriptor) return *data_end;
  // APPNOTE 4.3.9: the descriptor's sizes are 8 bytes exactly when the local header has a zip64 field.
  auto descriptor = check_data_descriptor(source, entry, *data_end, cd_offset, extra->zip64.has_value(), owner);
  if (!descriptor) return fail(descriptor.error());
  return *data_end + *descriptor;
}

// Explains why the record of entries[i] does not start at `expected`, the end of the previous record.
Error misplaced_record(const std::vector<ZipEntry>& entries, size_t i, uint64_t expected) {
  const ZipEntry& entry = entries[i];
  for (size_t later = i + 1; later < entries.size(); ++later) {
    if (entries[later].local_header_offset == expected) {
      return Error{ErrorCode::kParse,
                   "local records are not in central directory order: the record here belongs to " +
                       quoted(entries[later].name) + " but the central directory lists " + quoted(entry.name) +
                       " first",
                   expected};
    }
  }
  if (entry.local_header_offset > expected) {
    std::string where = i == 0 ? "before the first local record"
                               : "between the records of " + quoted(entries[i - 1].name) + " and " + quoted(entry.name);
    return Error{ErrorCode::kParse,
                 std::to_string(entry.local_header_offset - expected) + " bytes " + where + " belong to no entry",
                 expected};
  }
  return Error{ErrorCode::kParse,
               "local record of " + quoted(entry.name) + " overlaps the record of " + quoted(entries[i - 1].name) +
                   ", which ends at " + std::to_string(expected),
               entry.local_header_offset};
}

// Every byte before the central directory must belong to exactly one local record, in directory order.
Status check_local_records(const ByteSource& source, std::vector<ZipEntry>& entries, uint64_t cd_offset) {
  uint64_t expected = 0;  // where the next record must start: the end of the previous one
  for (size_t i = 0; i < entries.size(); ++i) {
    if (entries[i].local_header_offset != expected) return fail(misplaced_record(entries, i, expected));
    auto record_end = check_local_record(source, entries[i], cd_offset);
    if (!record_end) return fail(record_end.error());
    expected = *record_end;
  }
  if (expected != cd_offset) {
    return fail(ErrorCode::kParse,
                std::to_string(cd_offset - expected) +
                    " bytes between the last local record and the central directory belong to no entry",
                expected);
  }
  return {};
}

}  // namespace

ZipDirectory::ZipDirectory(std::vector<ZipEntry> entries, std::string top_folder)
    : entries_(std::move(entries)), top_folder_(std::move(top_folder)), by_name_(entries_.size()) {
  for (size_t i = 0; i < by_name_.size(); ++i) by_name_[i] = i;
  std::sort(by_name_.begin(), by_name_.end(), [this](size_t a, size_t b) { return entries_[a].name < entries_[b].name; });
}

const ZipEntry* ZipDirectory::find(std::string_view name) const {
  auto it = std::lower_bound(by_name_.begin(), by_name_.end(), name,
                             [this](size_t index, std::string_view key) { return entries_[index].name < key; });
  if (it == by_name_.end() || entries_[*it].name != name) return nullptr;
  return &entries_[*it];
}

Result<LocalHeader> read_local_header(const ByteSource& source, uint64_t offset) {
  if (!range_fits(offset, kLocalHeaderSize, source.size())) {
    return fail(ErrorCode::kParse, "no room for a local header", offset);
  }
  auto fixed = source.read_vector(offset, kLocalHeaderSize);
  if (!fixed) return fail(fixed.error());
  const uint8_t* h = fixed->data();
  if (load_u32(h) != kLocalHeaderSignature) return fail(ErrorCode::kParse, "no local header here", offset);
  LocalHeader header;
  header.flags = load_u16(h + kLocalFlags);
  header.method = load_u16(h + kLocalMethod);
  ZG_TRY(check_flags_and_method(header.flags, header.method, "local header", offset));
  const uint16_t name_length = load_u16(h + kLocalNameLength);
  const uint16_t extra_length = load_u16(h + kLocalExtraLength);
  const uint64_t name_offset = offset + kLocalHeaderSize;
  if (!range_fits(name_offset, size_t{name_length} + extra_length, source.size())) {
    return fail(ErrorCode::kParse, "local header runs past the end of the file", offset);
  }
  auto variable = source.read_vector(name_offset, size_t{name_length} + extra_length);
  if (!variable) return fail(variable.error());
  header.name.assign(reinterpret_cast<const char*>(variable->data()), name_length);
  const uint64_t extra_offset = name_offset + name_length;
  auto extra = parse_extra_fields(std::span<const uint8_t>(*variable).subspan(name_length), extra_offset,
                                  "local header of " + quoted(header.name));
  if (!extra) return fail(extra.error());
  LocalZip64 zip64;
  if (extra->zip64) {
    auto parsed = parse_local_zip64(*extra->zip64, quoted(header.name), extra_offset);
    if (!parsed) return fail(parsed.error());
    zip64 = *parsed;
  }
  header.zip64_extra = extra->zip64.has_value();
  header.data_offset = extra_offset + extra_length;
  if (!(header.flags & kFlagDataDescriptor)) {
    auto resolve = [](uint32_t value, std::optional<uint64_t> wide) -> std::optional<uint64_t> {
      if (value != kSentinel32) return value;
      return wide;
    };
    header.compressed_size = resolve(load_u32(h + kLocalCompressedSize), zip64.compressed_size);
    header.size = resolve(load_u32(h + kLocalSize), zip64.size);
    if (!header.compressed_size || !header.size) {
      return fail(ErrorCode::kParse,
                  "local header of " + quoted(header.name) + " defers a size to a missing zip64 field", offset);
    }
  }
  return header;
}

Result<uint64_t> local_record_end(const ByteSource& source, const LocalHeader& header, uint64_t compressed_size) {
  auto data_end = checked_add(header.data_offset, compressed_size);
  if (!data_end || *data_end > source.size()) {
    return fail(ErrorCode::kParse, "data of " + quoted(header.name) + " runs past the end of the file",
                header.data_offset);
  }
  if (!(header.flags & kFlagDataDescriptor)) return *data_end;
  const uint64_t length = 4 + 4 + (header.zip64_extra ? 16 : 8);
  if (!range_fits(*data_end, length, source.size())) {
    return fail(ErrorCode::kParse, "data descriptor of " + quoted(header.name) + " runs past the end of the file",
                *data_end);
  }
  auto signature = source.read_vector(*data_end, 4);
  if (!signature) return fail(signature.error());
  if (load_u32(signature->data()) != kDataDescriptorSignature) {
    return fail(ErrorCode::kUnsupported, "data descriptor of " + quoted(header.name) + " has no signature", *data_end);
  }
  return *data_end + length;
}

Result<uint64_t> find_small_stored_size(const ByteSource& source, const LocalHeader& header, uint64_t max_size) {
  const size_t descriptor_length = 4 + 4 + (header.zip64_extra ? 16 : 8);
  const uint64_t available = source.size() > header.data_offset ? source.size() - header.data_offset : 0;
  auto bytes = source.read_vector(header.data_offset,
                                  static_cast<size_t>(std::min<uint64_t>(max_size + descriptor_length, available)));
  if (!bytes) return fail(bytes.error());
  for (size_t size = 0; size <= max_size && size + descriptor_length <= bytes->size(); ++size) {
    const uint8_t* d = bytes->data() + size;
    if (load_u32(d) != kDataDescriptorSignature) continue;
    const uint64_t compressed = header.zip64_extra ? load_u64(d + 8) : load_u32(d + 8);
    const uint64_t stated = header.zip64_extra ? load_u64(d + 16) : load_u32(d + 12);
    if (compressed == size && stated == size && load_u32(d + 4) == crc32_update(0, std::span(bytes->data(), size))) {
      return size;
    }
  }
  return fail(ErrorCode::kParse, "no data descriptor within " + std::to_string(max_size) + " bytes of " +
                                     quoted(header.name),
              header.data_offset);
}

Result<ZipDirectory> read_zip_directory(const ByteSource& source, const ZipLimits& limits) {
  if (source.size() < kLocalHeaderSize + kEndOfCentralDirSize) {
    return fail(ErrorCode::kParse, "file of " + std::to_string(source.size()) + " bytes is too small for a zip archive",
                0);
  }
  auto magic = source.read_vector(0, 4);
  if (!magic) return fail(magic.error());
  if (load_u32(magic->data()) != kLocalHeaderSignature) {
    return fail(ErrorCode::kParse, "file does not start with a zip local header", 0);
  }
  auto end = read_end_records(source);
  if (!end) return fail(end.error());
  if (end->entry_count == 0) return fail(ErrorCode::kParse, "archive has no entries", end->cd_offset);
  if (end->entry_count > limits.max_entries) {
    return fail(ErrorCode::kLimitExceeded,
                "archive has " + std::to_string(end->entry_count) + " entries, over the limit of " +
                    std::to_string(limits.max_entries),
                end->cd_end);
  }
  if (end->entry_count > (end->cd_end - end->cd_offset) / kCentralHeaderSize) {
    return fail(ErrorCode::kParse,
                "central directory of " + std::to_string(end->cd_end - end->cd_offset) + " bytes cannot hold " +
                    std::to_string(end->entry_count) + " entries",
                end->cd_offset);
  }

  std::vector<ZipEntry> entries;
  entries.reserve(static_cast<size_t>(end->entry_count));
  EntryNames names;
  RecordCursor cursor(source, end->cd_offset, end->cd_end);
  for (uint64_t i = 0; i < end->entry_count; ++i) {
    auto record = read_central_record(cursor, i, end->entry_count, names, limits);
    if (!record) return fail(record.error());
    entries.push_back(std::move(record->entry));
  }
  if (cursor.position() != end->cd_end) {
    return fail(ErrorCode::kParse,
                std::to_string(end->cd_end - cursor.position()) + " bytes after the last of " +
                    std::to_string(end->entry_count) + " central directory entries",
                cursor.position());
  }
  ZG_TRY(check_local_records(source, entries, end->cd_offset));
  return ZipDirectory(std::move(entries), names.top_folder());
}

// Zlib state for a deflated entry. Lives behind a pointer because z_stream must not move once initialized.
struct ZipEntryStream::Inflater {
  z_stream z{};
  std::vector<uint8_t> input;
  uint64_t compressed_read = 0;  // compressed bytes read from the source so far
  bool stream_ended = false;     // inflate() reported the end of the deflate stream

  ~Inflater() { inflateEnd(&z); }
};

ZipEntryStream::ZipEntryStream(const ByteSource& source, const ZipEntry& entry, std::unique_ptr<Inflater> inflater)
    : source_(&source),
      name_(entry.name),
      data_offset_(entry.data_offset),
      compressed_size_(entry.compressed_size),
      entry_size_(entry.size),
      expected_crc_(entry.crc32),
      inflater_(std::move(inflater)) {}

ZipEntryStream::ZipEntryStream(ZipEntryStream&&) noexcept = default;
ZipEntryStream& ZipEntryStream::operator=(ZipEntryStream&&) noexcept = default;
ZipEntryStream::~ZipEntryStream() = default;

Result<ZipEntryStream> ZipEntryStream::open(const ByteSource& source, const ZipEntry& entry) {
  if (!range_fits(entry.data_offset, entry.compressed_size, source.size())) {
    return fail(ErrorCode::kInvalidArgument, "entry " + quoted(entry.name) + " lies outside this source");
  }
  if (entry.method == kMethodStored) return ZipEntryStream(source, entry, nullptr);
  if (entry.method != kMethodDeflate) {
    return fail(ErrorCode::kInvalidArgument, "entry " + quoted(entry.name) + " has an unsupported method");
  }
  auto inflater = std::make_unique<Inflater>();
  if (inflateInit2(&inflater->z, -MAX_WBITS) != Z_OK) {  // negative: raw deflate, as ZIP stores it
    return fail(ErrorCode::kInternal, "zlib could not start an inflater");
  }
  inflater->input.resize(static_cast<size_t>(std::min<uint64_t>(entry.compressed_size, kInflateInputChunk)));
  return ZipEntryStream(source, entry, std::move(inflater));
}

Result<size_t> ZipEntryStream::read(std::span<uint8_t> out) {
  if (finished_) return 0;
  if (produced_ == entry_size_) {  // an empty entry: nothing to produce, but still verify
    ZG_TRY(finish());
    return 0;
  }
  out = out.first(static_cast<size_t>(std::min<uint64_t>(out.size(), entry_size_ - produced_)));
  if (out.empty()) return 0;
  auto produced = inflater_ ? read_deflated(out) : read_stored(out);
  if (!produced) return produced;
  crc_ = crc32_update(crc_, out.first(*produced));
  produced_ += *produced;
  if (produced_ == entry_size_) ZG_TRY(finish());
  return produced;
}

Result<size_t> ZipEntryStream::read_stored(std::span<uint8_t> out) {
  ZG_TRY(source_->read_at(data_offset_ + produced_, out));
  return out.size();
}

uint64_t ZipEntryStream::compressed_consumed() const { return inflater_->compressed_read - inflater_->z.avail_in; }

Status ZipEntryStream::refill_input() {
  Inflater& in = *inflater_;
  uint64_t left = compressed_size_ - in.compressed_read;
  if (left == 0) return {};
  auto chunk = std::span<uint8_t>(in.input).first(static_cast<size_t>(std::min<uint64_t>(left, in.input.size())));
  ZG_TRY(source_->read_at(data_offset_ + in.compressed_read, chunk));
  in.compressed_read += chunk.size();
  in.z.next_in = chunk.data();
  in.z.avail_in = static_cast<uInt>(chunk.size());
  return {};
}

Status ZipEntryStream::inflate_step() {
  Inflater& in = *inflater_;
  if (in.z.avail_in == 0) ZG_TRY(refill_input());
  switch (int rc = inflate(&in.z, Z_NO_FLUSH); rc) {
    case Z_OK:
      return {};
    case Z_STREAM_END:
      in.stream_ended = true;
      return {};
    case Z_BUF_ERROR:
      // No progress was possible although there was room for output: the input ran out.
      if (in.z.avail_in == 0 && in.compressed_read == compressed_size_) {
        return fail(ErrorCode::kParse, "deflate data of " + quoted(name_) + " is truncated",
                    data_offset_ + compressed_size_);
      }
      return fail(ErrorCode::kInternal, "inflate made no progress with input left");
    default:
      return fail(ErrorCode::kParse,
                  "invalid deflate data in " + quoted(name_) + ": " +
                      (in.z.msg != nullptr ? std::string(in.z.msg) : "zlib error " + std::to_string(rc)),
                  data_offset_ + compressed_consumed());
  }
}

Result<size_t> ZipEntryStream::read_deflated(std::span<uint8_t> out) {
  Inflater& in = *inflater_;
  out = out.first(std::min<size_t>(out.size(), UINT_MAX));
  in.z.next_out = out.data();
  in.z.avail_out = static_cast<uInt>(out.size());
  while (in.z.avail_out > 0) {
    if (in.stream_ended) {
      return fail(ErrorCode::kParse,
                  "deflate data of " + quoted(name_) + " ends after " +
                      std::to_string(produced_ + out.size() - in.z.avail_out) + " bytes; the archive says " +
                      std::to_string(entry_size_),
                  data_offset_ + compressed_consumed());
    }
    ZG_TRY(inflate_step());
  }
  return out.size();
}

Status ZipEntryStream::check_deflate_end() {
  Inflater& in = *inflater_;
  // All declared bytes are out; the stream must end without producing another one.
  uint8_t one_more = 0;
  while (!in.stream_ended) {
    in.z.next_out = &one_more;
    in.z.avail_out = 1;
    ZG_TRY(inflate_step());
    if (in.z.avail_out == 0) {
      return fail(ErrorCode::kParse,
                  "deflate data of " + quoted(name_) + " inflates to more than the declared " +
                      std::to_string(entry_size_) + " bytes",
                  data_offset_ + compressed_consumed());
    }
  }
  if (compressed_consumed() != compressed_size_) {
    return fail(ErrorCode::kParse,
                std::to_string(compressed_size_ - compressed_consumed()) + " bytes follow the deflate stream of " +
                    quoted(name_) + " inside its compressed data",
                data_offset_ + compressed_consumed());
  }
  return {};
}

Status ZipEntryStream::finish() {
  if (inflater_) ZG_TRY(check_deflate_end());
  if (crc_ != expected_crc_) {
    return fail(ErrorCode::kIntegrity,
                "CRC-32 of " + quoted(name_) + " is " + hex(crc_) + " but the archive says " + hex(expected_crc_),
                data_offset_);
  }
  finished_ = true;
  return {};
}

}  // namespace zoogate::cdr
