#include "cdr/zip_writer.h"

#include "common/checked.h"

namespace zoogate::cdr {
namespace {

using namespace zip;  // NOLINT(google-build-using-namespace): the record constants read better unqualified

constexpr uint16_t kWriterFlags = kFlagDataDescriptor | kFlagUtf8Name;
constexpr uint16_t kDosTime = 0;                    // 00:00:00
constexpr uint16_t kDosDate = (1 << 5) | 1;         // 1980-01-01, the earliest date DOS can express
constexpr uint16_t kVersionMadeBy = kVersionZip64;  // host 0 (MS-DOS): no Unix file type or permissions
constexpr size_t kZip64SizesLength = 16;            // zip64 extra data holding both sizes
constexpr size_t kZip64ValueLength = 8;
constexpr uint8_t kPaddingByte = 'Z';               // what torch.save fills its padding field with
constexpr size_t kCentralFlushSize = 64 << 10;

std::string quoted(std::string_view name) { return "'" + std::string(name) + "'"; }

bool sizes_need_zip64(uint64_t size, bool force) { return force || size >= kSentinel32; }
bool offset_needs_zip64(uint64_t offset, bool force) { return force || offset >= kSentinel32; }

// The local header of an entry of `size` bytes whose header starts at `offset` of the archive, padded so
// that the data after it starts at a multiple of kDataAlignment.
std::vector<uint8_t> local_header_bytes(std::string_view name, uint64_t size, uint64_t offset, bool force_zip64) {
  const bool zip64_sizes = sizes_need_zip64(size, force_zip64);
  const bool zip64 = zip64_sizes || offset_needs_zip64(offset, force_zip64);
  std::vector<uint8_t> header;
  header.reserve(kLocalHeaderSize + name.size() + 2 * kExtraHeaderSize + kZip64SizesLength + kDataAlignment);
  append_u32(header, kLocalHeaderSignature);
  append_u16(header, zip64 ? kVersionZip64 : kVersionDefault);
  append_u16(header, kWriterFlags);
  append_u16(header, kMethodStored);
  append_u16(header, kDosTime);
  append_u16(header, kDosDate);
  append_u32(header, 0);  // CRC and sizes follow the data, in the descriptor (APPNOTE 4.4.4)
  append_u32(header, zip64_sizes ? kSentinel32 : 0);
  append_u32(header, zip64_sizes ? kSentinel32 : 0);
  append_u16(header, static_cast<uint16_t>(name.size()));
  append_u16(header, 0);  // extra field length, set below
  append_bytes(header, name);
  if (zip64_sizes) {
    append_u16(header, kExtraZip64);
    append_u16(header, kZip64SizesLength);
    append_u64(header, 0);
    append_u64(header, 0);
  }
  // torch.save's padding field: always present, its data as long as it takes to align the entry data.
  const uint64_t unpadded_end = offset + header.size() + kExtraHeaderSize;
  const auto padding = static_cast<uint16_t>((kDataAlignment - unpadded_end % kDataAlignment) % kDataAlignment);
  append_u16(header, kExtraTorchPadding);
  append_u16(header, padding);
  header.insert(header.end(), padding, kPaddingByte);
  const auto extra_length = static_cast<uint16_t>(header.size() - kLocalHeaderSize - name.size());
  header[kLocalExtraLength] = static_cast<uint8_t>(extra_length);
  header[kLocalExtraLength + 1] = static_cast<uint8_t>(extra_length >> 8);
  return header;
}

std::vector<uint8_t> data_descriptor_bytes(uint64_t size, uint32_t crc32, bool force_zip64) {
  std::vector<uint8_t> descriptor;
  append_u32(descriptor, kDataDescriptorSignature);
  append_u32(descriptor, crc32);
  if (sizes_need_zip64(size, force_zip64)) {
    append_u64(descriptor, size);
    append_u64(descriptor, size);
  } else {
    append_u32(descriptor, static_cast<uint32_t>(size));
    append_u32(descriptor, static_cast<uint32_t>(size));
  }
  return descriptor;
}

void append_central_header(std::vector<uint8_t>& out, std::string_view name, uint64_t offset, uint64_t size,
                           uint32_t crc32, bool force_zip64) {
  const bool zip64_sizes = sizes_need_zip64(size, force_zip64);
  const bool zip64_offset = offset_needs_zip64(offset, force_zip64);
  const size_t zip64_length = (zip64_sizes ? kZip64SizesLength : 0) + (zip64_offset ? kZip64ValueLength : 0);
  append_u32(out, kCentralHeaderSignature);
  append_u16(out, kVersionMadeBy);
  append_u16(out, zip64_length > 0 ? kVersionZip64 : kVersionDefault);
  append_u16(out, kWriterFlags);
  append_u16(out, kMethodStored);
  append_u16(out, kDosTime);
  append_u16(out, kDosDate);
  append_u32(out, crc32);
  append_u32(out, zip64_sizes ? kSentinel32 : static_cast<uint32_t>(size));  // compressed size
  append_u32(out, zip64_sizes ? kSentinel32 : static_cast<uint32_t>(size));
  append_u16(out, static_cast<uint16_t>(name.size()));
  append_u16(out, static_cast<uint16_t>(zip64_length > 0 ? kExtraHeaderSize + zip64_length : 0));
  append_u16(out, 0);  // comment length
  append_u16(out, 0);  // disk number start
  append_u16(out, 0);  // internal attributes
  append_u32(out, 0);  // external attributes
  append_u32(out, zip64_offset ? kSentinel32 : static_cast<uint32_t>(offset));
  append_bytes(out, name);
  if (zip64_length > 0) {
    append_u16(out, kExtraZip64);
    append_u16(out, static_cast<uint16_t>(zip64_length));
    if (zip64_sizes) {
      append_u64(out, size);
      append_u64(out, size);
    }
    if (zip64_offset) append_u64(out, offset);
  }
}

void append_end_records(std::vector<uint8_t>& out, uint64_t count, uint64_t cd_offset, uint64_t cd_size,
                        bool force_zip64) {
  const bool zip64_count = force_zip64 || count >= kSentinel16;
  const bool zip64_cd_size = force_zip64 || cd_size >= kSentinel32;
  const bool zip64_cd_offset = force_zip64 || cd_offset >= kSentinel32;
  if (zip64_count || zip64_cd_size || zip64_cd_offset) {
    const uint64_t record_offset = cd_offset + cd_size;
    append_u32(out, kZip64EndRecordSignature);
    append_u64(out, kZip64EndRecordRemainder);
    append_u16(out, kVersionMadeBy);
    append_u16(out, kVersionZip64);
    append_u32(out, 0);  // this disk
    append_u32(out, 0);  // disk with the central directory
    append_u64(out, count);
    append_u64(out, count);
    append_u64(out, cd_size);
    append_u64(out, cd_offset);
    append_u32(out, kZip64EndLocatorSignature);
    append_u32(out, 0);  // disk with the zip64 end record
    append_u64(out, record_offset);
    append_u32(out, 1);  // total disks
  }
  const auto count16 = zip64_count ? kSentinel16 : static_cast<uint16_t>(count);
  append_u32(out, kEndOfCentralDirSignature);
  append_u16(out, 0);  // this disk
  append_u16(out, 0);  // disk with the central directory
  append_u16(out, count16);
  append_u16(out, count16);
  append_u32(out, zip64_cd_size ? kSentinel32 : static_cast<uint32_t>(cd_size));
  append_u32(out, zip64_cd_offset ? kSentinel32 : static_cast<uint32_t>(cd_offset));
  append_u16(out, 0);  // comment length
}

}  // namespace

ZipWriter::ZipWriter(ByteSink& sink, ZipWriterOptions options)
    : sink_(sink), options_(options), base_(sink.position()) {}

template <typename Step>
Status ZipWriter::guarded(Step&& step) {
  if (failed_) return fail(ErrorCode::kInvalidArgument, "zip writer failed earlier; its output must be discarded");
  Status status = step();
  if (!status) failed_ = true;
  return status;
}

Status ZipWriter::emit(const std::vector<uint8_t>& bytes) { return sink_.write(std::span<const uint8_t>(bytes)); }

Status ZipWriter::begin_entry(std::string name, uint64_t size, std::optional<uint32_t> crc32) {
  return guarded([&]() -> Status {
    if (finished_) return fail(ErrorCode::kInvalidArgument, "begin_entry after finish");
    if (entry_open_) {
      return fail(ErrorCode::kInvalidArgument, "begin_entry while " + quoted(entries_.back().name) + " is open");
    }
    ZG_TRY(names_.add(name));
    const uint64_t offset = archive_position();
    ZG_TRY(emit(local_header_bytes(name, size, offset, options_.force_zip64)));
    entries_.push_back(Entry{std::move(name), offset, size, crc32.value_or(0)});
    entry_open_ = true;
    crc_given_ = crc32.has_value();
    entry_written_ = 0;
    return {};
  });
}

Status ZipWriter::write(std::span<const uint8_t> bytes) {
  return guarded([&]() -> Status {
    if (!entry_open_) return fail(ErrorCode::kInvalidArgument, "write without an open entry");
    Entry& entry = entries_.back();
    if (bytes.size() > entry.size - entry_written_) {
      return fail(ErrorCode::kInvalidArgument,
                  "write of " + std::to_string(bytes.size()) + " bytes would exceed the declared size " +
                      std::to_string(entry.size) + " of " + quoted(entry.name));
    }
    if (!crc_given_) entry.crc32 = crc32_update(entry.crc32, bytes);
    ZG_TRY(sink_.write(bytes));
    entry_written_ += bytes.size();
    return {};
  });
}

Status ZipWriter::end_entry() {
  return guarded([&]() -> Status {
    if (!entry_open_) return fail(ErrorCode::kInvalidArgument, "end_entry without an open entry");
    const Entry& entry = entries_.back();
    if (entry_written_ != entry.size) {
      return fail(ErrorCode::kInvalidArgument,
                  quoted(entry.name) + " received " + std::to_string(entry_written_) + " of its declared " +
                      std::to_string(entry.size) + " bytes");
    }
    ZG_TRY(emit(data_descriptor_bytes(entry.size, entry.crc32, options_.force_zip64)));
    entry_open_ = false;
    return {};
  });
}

Status ZipWriter::finish() {
  return guarded([&]() -> Status {
    if (finished_) return fail(ErrorCode::kInvalidArgument, "finish called twice");
    if (entry_open_) {
      return fail(ErrorCode::kInvalidArgument, "finish while " + quoted(entries_.back().name) + " is open");
    }
    if (entries_.empty()) return fail(ErrorCode::kInvalidArgument, "an archive needs at least one entry");
    const uint64_t cd_offset = archive_position();
    uint64_t cd_size = 0;
    std::vector<uint8_t> buffer;
    for (const Entry& entry : entries_) {
      append_central_header(buffer, entry.name, entry.offset, entry.size, entry.crc32, options_.force_zip64);
      if (buffer.size() >= kCentralFlushSize) {
        ZG_TRY(emit(buffer));
        cd_size += buffer.size();
        buffer.clear();
      }
    }
    cd_size += buffer.size();
    append_end_records(buffer, entries_.size(), cd_offset, cd_size, options_.force_zip64);
    ZG_TRY(emit(buffer));
    finished_ = true;
    return {};
  });
}

Result<ZipLayout> ZipLayout::plan(std::vector<PlannedEntry> entries, ZipWriterOptions options) {
  if (entries.empty()) return fail(ErrorCode::kInvalidArgument, "an archive needs at least one entry");
  ZipLayout layout;
  layout.options_ = options;
  zip::EntryNames names;
  uint64_t offset = 0;
  for (PlannedEntry& entry : entries) {
    ZG_TRY(names.add(entry.name));
    const uint64_t header_length = local_header_bytes(entry.name, entry.size, offset, options.force_zip64).size();
    const uint64_t descriptor_length = data_descriptor_bytes(entry.size, 0, options.force_zip64).size();
    auto end = checked_add(offset, header_length + descriptor_length);
    if (end) end = checked_add(*end, entry.size);
    if (!end) return fail(ErrorCode::kLimitExceeded, "archive of these entries would exceed 2^64 bytes");
    layout.entries_.push_back(Placed{std::move(entry.name), entry.size, offset, offset + header_length});
    offset = *end;
  }
  layout.central_directory_offset_ = offset;
  return layout;
}

std::vector<uint8_t> ZipLayout::local_header(size_t index) const {
  const Placed& entry = entries_.at(index);
  return local_header_bytes(entry.name, entry.size, entry.header_offset, options_.force_zip64);
}

std::vector<uint8_t> ZipLayout::data_descriptor(size_t index, uint32_t crc32) const {
  return data_descriptor_bytes(entries_.at(index).size, crc32, options_.force_zip64);
}

Result<std::vector<uint8_t>> ZipLayout::central_directory(std::span<const uint32_t> crc32s) const {
  if (crc32s.size() != entries_.size()) {
    return fail(ErrorCode::kInvalidArgument, "the central directory needs one CRC per entry");
  }
  std::vector<uint8_t> out;
  for (size_t i = 0; i < entries_.size(); ++i) {
    const Placed& entry = entries_[i];
    append_central_header(out, entry.name, entry.header_offset, entry.size, crc32s[i], options_.force_zip64);
  }
  append_end_records(out, entries_.size(), central_directory_offset_, out.size(), options_.force_zip64);
  return out;
}

}  // namespace zoogate::cdr
