#include "cdr/zip_writer.h"

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

bool ZipWriter::sizes_need_zip64(uint64_t size) const { return options_.force_zip64 || size >= kSentinel32; }
bool ZipWriter::offset_needs_zip64(uint64_t offset) const { return options_.force_zip64 || offset >= kSentinel32; }

Status ZipWriter::emit(const std::vector<uint8_t>& bytes) { return sink_.write(std::span<const uint8_t>(bytes)); }

Status ZipWriter::begin_entry(std::string name, uint64_t size, std::optional<uint32_t> crc32) {
  return guarded([&]() -> Status {
    if (finished_) return fail(ErrorCode::kInvalidArgument, "begin_entry after finish");
    if (entry_open_) {
      return fail(ErrorCode::kInvalidArgument, "begin_entry while " + quoted(entries_.back().name) + " is open");
    }
    ZG_TRY(names_.add(name));
    const uint64_t offset = archive_position();
    const bool zip64_sizes = sizes_need_zip64(size);
    const bool zip64 = zip64_sizes || offset_needs_zip64(offset);

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
    ZG_TRY(emit(header));

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
    std::vector<uint8_t> descriptor;
    append_u32(descriptor, kDataDescriptorSignature);
    append_u32(descriptor, entry.crc32);
    if (sizes_need_zip64(entry.size)) {
      append_u64(descriptor, entry.size);
      append_u64(descriptor, entry.size);
    } else {
      append_u32(descriptor, static_cast<uint32_t>(entry.size));
      append_u32(descriptor, static_cast<uint32_t>(entry.size));
    }
    ZG_TRY(emit(descriptor));
    entry_open_ = false;
    return {};
  });
}

void ZipWriter::append_central_header(std::vector<uint8_t>& out, const Entry& entry) const {
  const bool zip64_sizes = sizes_need_zip64(entry.size);
  const bool zip64_offset = offset_needs_zip64(entry.offset);
  const size_t zip64_length = (zip64_sizes ? kZip64SizesLength : 0) + (zip64_offset ? kZip64ValueLength : 0);
  append_u32(out, kCentralHeaderSignature);
  append_u16(out, kVersionMadeBy);
  append_u16(out, zip64_length > 0 ? kVersionZip64 : kVersionDefault);
  append_u16(out, kWriterFlags);
  append_u16(out, kMethodStored);
  append_u16(out, kDosTime);
  append_u16(out, kDosDate);
  append_u32(out, entry.crc32);
  append_u32(out, zip64_sizes ? kSentinel32 : static_cast<uint32_t>(entry.size));  // compressed size
  append_u32(out, zip64_sizes ? kSentinel32 : static_cast<uint32_t>(entry.size));
  append_u16(out, static_cast<uint16_t>(entry.name.size()));
  append_u16(out, static_cast<uint16_t>(zip64_length > 0 ? kExtraHeaderSize + zip64_length : 0));
  append_u16(out, 0);  // comment length
  append_u16(out, 0);  // disk number start
  append_u16(out, 0);  // internal attributes
  append_u32(out, 0);  // external attributes
  append_u32(out, zip64_offset ? kSentinel32 : static_cast<uint32_t>(entry.offset));
  append_bytes(out, entry.name);
  if (zip64_length > 0) {
    append_u16(out, kExtraZip64);
    append_u16(out, static_cast<uint16_t>(zip64_length));
    if (zip64_sizes) {
      append_u64(out, entry.size);
      append_u64(out, entry.size);
    }
    if (zip64_offset) append_u64(out, entry.offset);
  }
}

void ZipWriter::append_end_records(std::vector<uint8_t>& out, uint64_t cd_offset, uint64_t cd_size) const {
  const uint64_t count = entries_.size();
  const bool force = options_.force_zip64;
  const bool zip64_count = force || count >= kSentinel16;
  const bool zip64_cd_size = force || cd_size >= kSentinel32;
  const bool zip64_cd_offset = force || cd_offset >= kSentinel32;
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
      append_central_header(buffer, entry);
      if (buffer.size() >= kCentralFlushSize) {
        ZG_TRY(emit(buffer));
        cd_size += buffer.size();
        buffer.clear();
      }
    }
    cd_size += buffer.size();
    append_end_records(buffer, cd_offset, cd_size);
    ZG_TRY(emit(buffer));
    finished_ = true;
    return {};
  });
}

}  // namespace zoogate::cdr
