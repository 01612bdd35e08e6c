// Strict reader for PyTorch ZIP archives.
//
// Container tricks that make a scanner and a loader read different bytes (duplicate names, local
// headers that disagree with the central directory, data hidden between records, a second end
// record, appended or prepended bytes) are a main attack class. This reader therefore accepts only
// archives with exactly one interpretation:
//   - the file starts with a local header and ends with the one end-of-central-directory record, whose
//     comment is empty; zip64 end records, when present, sit right before it and agree with it;
//   - every byte belongs to exactly one structure: local records (header, name, extra field, data,
//     optional data descriptor) back to back from offset 0 in central-directory order, then the central
//     directory, then the end records;
//   - each local header repeats its central entry (name, method, flags, and CRC and sizes unless a data
//     descriptor carries them, which must then match), extra fields are well-formed;
//   - only flags 3 (data descriptor) and 11 (UTF-8 name), methods stored and deflate, one disk;
//   - names follow zip::EntryNames (one top-level folder, no traversal, unique ignoring ASCII case);
//   - entry count, entry size and compression ratio stay within ZipLimits.
// Errors carry the byte offset of the offending structure. Codes: kParse (malformed), kLimitExceeded,
// kUnsupported (valid ZIP features zoogate does not accept), kForbidden (names), kIntegrity (CRC).
//
// The reader does no I/O of its own: everything goes through a ByteSource. Reading the directory
// touches only headers; entry data is read later, in bounded chunks, by ZipEntryStream.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "cdr/policy.h"
#include "common/byte_source.h"
#include "common/error.h"

namespace zoogate::cdr {

struct ZipLimits {
  uint64_t max_entries = Limits{}.max_zip_entries;
  uint64_t max_entry_size = Limits{}.max_entry_size;                // uncompressed bytes of one entry
  uint64_t max_compression_ratio = Limits{}.max_compression_ratio;  // size / compressed size, deflated entries

  static ZipLimits from(const Limits& limits) {
    return {limits.max_zip_entries, limits.max_entry_size, limits.max_compression_ratio};
  }
};

// One entry as the central directory states it, after every check passed.
struct ZipEntry {
  std::string name;
  uint64_t local_header_offset = 0;
  uint64_t data_offset = 0;      // first byte of the (possibly compressed) data
  uint64_t compressed_size = 0;  // bytes of data in the archive
  uint64_t size = 0;             // bytes after decompression
  uint32_t crc32 = 0;            // CRC-32 of the uncompressed bytes
  uint16_t method = 0;           // 0 stored, 8 deflate
  uint16_t flags = 0;            // general purpose bits (only 3 and 11 can be set)
};

// The validated directory of an archive. Immutable; safe to share between threads.
class ZipDirectory {
 public:
  ZipDirectory() = default;
  // Takes entries that already passed the reader's checks (names unique, one top folder).
  ZipDirectory(std::vector<ZipEntry> entries, std::string top_folder);

  // In archive order, which is also the order of the data in the file.
  const std::vector<ZipEntry>& entries() const { return entries_; }
  // The one top-level folder every name starts with ("archive" for recent torch.save files); empty
  // when every name is at the top level (.npz files).
  const std::string& top_folder() const { return top_folder_; }
  // The entry with exactly this full name ("archive/data.pkl"), or nullptr. O(log n).
  const ZipEntry* find(std::string_view name) const;

 private:
  std::vector<ZipEntry> entries_;
  std::string top_folder_;
  std::vector<size_t> by_name_;  // indices into entries_, sorted by name
};

// Reads and validates everything but the entry data (which ZipEntryStream checks as it streams).
Result<ZipDirectory> read_zip_directory(const ByteSource& source, const ZipLimits& limits);

// A local header read ahead of the central directory, by a reader that follows an archive while it is
// still arriving (the CDR engine copies storages as a download delivers them). Nothing in it has been
// checked against the central directory: a caller must confirm everything it used against the entry
// read_zip_directory() gives once the archive is complete, and must not trust it before.
struct LocalHeader {
  std::string name;
  uint64_t data_offset = 0;
  uint16_t flags = 0;
  uint16_t method = 0;
  bool zip64_extra = false;  // a zip64 extra field: a data descriptor's sizes are then 8 bytes each
  // The header's sizes; nullopt when a data descriptor after the data carries them (and the CRC).
  std::optional<uint64_t> compressed_size;
  std::optional<uint64_t> size;
};

// The local header at `offset`. kParse when none starts there (the central directory, or other bytes)
// or it is malformed; kUnsupported for flags or methods the strict reader refuses.
Result<LocalHeader> read_local_header(const ByteSource& source, uint64_t offset);
// Where the record of `header` ends if its data is `compressed_size` bytes: after the data and, when the
// header defers its sizes, after the data descriptor, which must have the signed form (torch.save's).
Result<uint64_t> local_record_end(const ByteSource& source, const LocalHeader& header, uint64_t compressed_size);
// The size of a small stored entry whose header defers its sizes to a data descriptor: the one length up
// to `max_size` after which a signed descriptor states that length and the CRC of the bytes before it.
// kParse when no length fits.
Result<uint64_t> find_small_stored_size(const ByteSource& source, const LocalHeader& header, uint64_t max_size);

// Yields the uncompressed bytes of one entry in caller-sized chunks, never holding the entry in memory.
// Stored data is read straight into the caller's buffer (pass about 1 MiB for full speed); deflated data
// goes through zlib with a fixed input buffer.
//
// Enforced while streaming: the data inflates to exactly `size` bytes (not one more, not one fewer), the
// deflate stream ends exactly at the end of the compressed data, and the CRC-32 of the produced bytes
// equals the entry's: the read call that would complete the entry returns kIntegrity instead on a
// mismatch. Since read_zip_directory checked size <= max_compression_ratio x compressed size and no
// stream produces more than `size`, the ratio limit holds for the bytes actually inflated.
//
// The source must outlive the stream and be the one the entry was read from. Not thread-safe; movable.
class ZipEntryStream {
 public:
  static Result<ZipEntryStream> open(const ByteSource& source, const ZipEntry& entry);

  ZipEntryStream(ZipEntryStream&&) noexcept;
  ZipEntryStream& operator=(ZipEntryStream&&) noexcept;
  ~ZipEntryStream();

  // Fills a prefix of `out` with the next bytes and returns how many (at most out.size(), and more than
  // zero while bytes remain and out is not empty). Returns 0 once the whole entry was produced and
  // verified. After an error the stream is unusable.
  Result<size_t> read(std::span<uint8_t> out);

  // CRC-32 of the bytes produced so far: a copier can hand it on (e.g. to ZipWriter) instead of
  // computing it a second time.
  uint32_t crc32() const { return crc_; }
  uint64_t produced() const { return produced_; }
  uint64_t size() const { return entry_size_; }
  // True once every byte was produced and the CRC matched.
  bool finished() const { return finished_; }

 private:
  struct Inflater;
  ZipEntryStream(const ByteSource& source, const ZipEntry& entry, std::unique_ptr<Inflater> inflater);
  Result<size_t> read_stored(std::span<uint8_t> out);
  Result<size_t> read_deflated(std::span<uint8_t> out);
  Status refill_input();
  Status inflate_step();
  Status check_deflate_end();
  Status finish();
  uint64_t compressed_consumed() const;

  const ByteSource* source_;
  std::string name_;  // for error messages
  uint64_t data_offset_;
  uint64_t compressed_size_;
  uint64_t entry_size_;
  uint32_t expected_crc_;
  std::unique_ptr<Inflater> inflater_;  // null for stored entries
  uint64_t produced_ = 0;
  uint32_t crc_ = 0;
  bool finished_ = false;
};

}  // namespace zoogate::cdr
