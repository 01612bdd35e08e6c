// Canonical writer for PyTorch ZIP archives.
//
// Streams an archive to a ByteSink front to back (it never seeks) with memory independent of entry
// sizes. Output is deterministic: the same entries give the same bytes. The layout is the one torch.save
// produces (PyTorch's mmap loading relies on its 64-byte data alignment), and torch.load, Python's
// zipfile and zoogate's own strict reader read it:
//   - per entry: a local header (flags: data descriptor and UTF-8 name; method stored; time 00:00 and
//     date 1980-01-01; CRC and sizes zero, as the data descriptor carries them), the name, an extra field
//     with zip64 sizes when needed, then torch's "FB" padding field filled with 'Z' so that the data
//     starts at a multiple of 64 bytes; the data; a signed data descriptor (64-bit sizes with zip64);
//   - the central directory in entry order, with a zip64 extra field for sizes and offsets >= 0xFFFFFFFF;
//   - zip64 end record and locator when counts, sizes or offsets need them; the end record, no comment.
// Data descriptors let the CRC be computed while the data streams through; sizes are known up front.
//
// Entry names must follow zip::EntryNames (one top-level folder, no traversal, unique ignoring ASCII
// case). Every call returns an error on misuse (writing more or less than declared, calls out of order)
// and after any error the writer refuses further calls; the partial output must be discarded.
// The archive starts at the sink's position when the writer is constructed. Not thread-safe.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "cdr/zip_format.h"
#include "common/byte_sink.h"
#include "common/error.h"

namespace zoogate::cdr {

struct ZipWriterOptions {
  // Use zip64 fields and end records even where no value needs them, so that small archives exercise
  // the zip64 layout (tests, and consumers that want one layout for every size).
  bool force_zip64 = false;
};

class ZipWriter {
 public:
  explicit ZipWriter(ByteSink& sink, ZipWriterOptions options = {});

  // Starts an entry of exactly `size` bytes and writes its local header. `crc32`, when given, is the
  // CRC-32 of the bytes that will follow, already known to the caller (a copy from a ZipEntryStream,
  // which verifies its source's CRC while streaming): the writer then does not compute it again and
  // trusts it, so it must be right.
  Status begin_entry(std::string name, uint64_t size, std::optional<uint32_t> crc32 = std::nullopt);
  // Appends data to the open entry; more than the declared size in total is an error.
  Status write(std::span<const uint8_t> bytes);
  // Closes the open entry, which must have received exactly its declared size, with its data descriptor.
  Status end_entry();
  // Writes the central directory and end records. At least one entry is required.
  Status finish();

 private:
  struct Entry {
    std::string name;
    uint64_t offset = 0;  // of the local header, from the start of the archive
    uint64_t size = 0;
    uint32_t crc32 = 0;
  };

  // Runs one public operation: refuses it after an earlier failure, and records a new failure.
  template <typename Step>
  Status guarded(Step&& step);
  Status emit(const std::vector<uint8_t>& bytes);
  uint64_t archive_position() const { return sink_.position() - base_; }

  ByteSink& sink_;
  const ZipWriterOptions options_;
  const uint64_t base_;
  zip::EntryNames names_;
  std::vector<Entry> entries_;
  bool entry_open_ = false;
  bool crc_given_ = false;    // the open entry's CRC came from the caller
  uint64_t entry_written_ = 0;  // bytes of the open entry written so far
  bool finished_ = false;
  bool failed_ = false;
};

// The records of an archive whose entry names and sizes are all known before any data is written, in
// exactly the bytes ZipWriter writes for the same entries, CRCs and options (archive offsets from 0).
// Every record's place is fixed up front, so an entry's data can be written whenever it is at hand, in
// any order (the CDR engine copies storages as a download delivers them), and its descriptor right after
// it once its CRC is known. Immutable after plan(); safe to share between threads.
class ZipLayout {
 public:
  struct PlannedEntry {
    std::string name;
    uint64_t size = 0;
  };
  // Checks the names as ZipWriter does (zip::EntryNames); at least one entry.
  static Result<ZipLayout> plan(std::vector<PlannedEntry> entries, ZipWriterOptions options = {});

  size_t entry_count() const { return entries_.size(); }
  const std::string& name(size_t index) const { return entries_.at(index).name; }
  uint64_t size(size_t index) const { return entries_.at(index).size; }
  uint64_t header_offset(size_t index) const { return entries_.at(index).header_offset; }
  uint64_t data_offset(size_t index) const { return entries_.at(index).data_offset; }
  // Bytes at header_offset(i), up to data_offset(i).
  std::vector<uint8_t> local_header(size_t index) const;
  // Bytes at data_offset(i) + size(i), right after the data.
  std::vector<uint8_t> data_descriptor(size_t index, uint32_t crc32) const;
  uint64_t central_directory_offset() const { return central_directory_offset_; }
  // The central directory and end records, at central_directory_offset(), given every entry's CRC-32
  // (one per entry, in order, else kInvalidArgument); they end the archive.
  Result<std::vector<uint8_t>> central_directory(std::span<const uint32_t> crc32s) const;

 private:
  struct Placed {
    std::string name;
    uint64_t size = 0;
    uint64_t header_offset = 0;
    uint64_t data_offset = 0;
  };
  ZipWriterOptions options_;
  std::vector<Placed> entries_;
  uint64_t central_directory_offset_ = 0;
};

}  // namespace zoogate::cdr
