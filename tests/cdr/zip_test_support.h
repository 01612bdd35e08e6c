// Helpers for the ZIP reader and writer tests: an assembler for hand-made archives (valid by default,
// with a knob for every defect the reader must refuse), byte patching, scratch files, and Python runs.
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <zlib.h>

#include "cdr/zip_format.h"
#include "tests/cdr/python_runner.h"
#include "tests/common/temporary_folder.h"

namespace zoogate::cdr::ziptest {

using Bytes = std::vector<uint8_t>;
using zoogate::testing::TemporaryFolder;

inline std::span<const uint8_t> as_bytes(std::string_view text) {
  return {reinterpret_cast<const uint8_t*>(text.data()), text.size()};
}

inline uint32_t crc_of(std::string_view data) { return zip::crc32_update(0, as_bytes(data)); }

// Raw deflate (no zlib header), as ZIP stores it.
inline std::string deflate_raw(std::string_view data, int level = Z_BEST_COMPRESSION) {
  z_stream z{};
  deflateInit2(&z, level, Z_DEFLATED, -MAX_WBITS, 8, Z_DEFAULT_STRATEGY);
  std::string out(deflateBound(&z, data.size()), '\0');
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  z.avail_in = static_cast<uInt>(data.size());
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(out.size());
  deflate(&z, Z_FINISH);
  out.resize(z.total_out);
  deflateEnd(&z);
  return out;
}

inline std::string le16(uint16_t v) { return {static_cast<char>(v), static_cast<char>(v >> 8)}; }
inline std::string le32(uint32_t v) { return le16(static_cast<uint16_t>(v)) + le16(static_cast<uint16_t>(v >> 16)); }
inline std::string le64(uint64_t v) { return le32(static_cast<uint32_t>(v)) + le32(static_cast<uint32_t>(v >> 32)); }

// One extra field: id, length, data.
inline std::string extra_field(uint16_t id, std::string_view data) {
  return le16(id) + le16(static_cast<uint16_t>(data.size())) + std::string(data);
}
inline std::string zip64_extra(const std::vector<uint64_t>& values) {
  std::string data;
  for (uint64_t v : values) data += le64(v);
  return extra_field(zip::kExtraZip64, data);
}

// One entry of a hand-assembled archive. The defaults give a valid stored entry; a test changes one
// thing to produce one defect.
struct RawEntry {
  std::string name;
  std::string content;                  // uncompressed bytes
  uint16_t method = zip::kMethodStored;  // with kMethodDeflate the assembler deflates `content`
  uint16_t flags = zip::kFlagUtf8Name;   // with bit 3 the assembler writes a data descriptor
  uint16_t version_needed = zip::kVersionDefault;
  uint16_t version_made_by = zip::kVersionDefault;
  uint32_t external_attributes = 0;
  std::string local_extra;    // raw extra field bytes of the local header
  std::string central_extra;  // ... and of the central header
  std::string comment;        // entry comment in the central directory
  bool descriptor_signature = true;
  bool descriptor_zip64 = false;         // 64-bit sizes in the data descriptor
  std::optional<std::string> stored;     // bytes as stored; defaults to content, deflated when method 8
  std::optional<uint32_t> crc;           // central CRC; defaults to the CRC of content
  std::optional<uint64_t> size;          // central size; defaults to content.size()
  bool omit_local = false;               // no local record in the file (the central entry points elsewhere)
  std::optional<uint64_t> local_offset;  // central "local header offset"; defaults to where the record is
  std::string after;                     // raw bytes placed after this entry's record

  std::string stored_bytes() const {
    if (stored) return *stored;
    return method == zip::kMethodDeflate ? deflate_raw(content) : content;
  }
  uint32_t central_crc() const { return crc.value_or(crc_of(content)); }
  uint64_t central_size() const { return size.value_or(content.size()); }
};

// The local record of an entry: header, name, extra field, data, optional descriptor.
inline std::string local_record(const RawEntry& e) {
  const std::string data = e.stored_bytes();
  const bool descriptor = e.flags & zip::kFlagDataDescriptor;
  std::string out = le32(zip::kLocalHeaderSignature) + le16(e.version_needed) + le16(e.flags) + le16(e.method) +
                    le16(0) + le16(0x21) + le32(descriptor ? 0 : e.central_crc()) +
                    le32(descriptor ? 0 : static_cast<uint32_t>(data.size())) +
                    le32(descriptor ? 0 : static_cast<uint32_t>(e.central_size())) +
                    le16(static_cast<uint16_t>(e.name.size())) + le16(static_cast<uint16_t>(e.local_extra.size())) +
                    e.name + e.local_extra + data;
  if (descriptor) {
    if (e.descriptor_signature) out += le32(zip::kDataDescriptorSignature);
    out += le32(e.central_crc());
    out += e.descriptor_zip64 ? le64(data.size()) + le64(e.central_size())
                              : le32(static_cast<uint32_t>(data.size())) + le32(static_cast<uint32_t>(e.central_size()));
  }
  return out;
}

struct RawArchive {
  std::string prefix;  // bytes before the first local record
  std::vector<RawEntry> entries;
  std::vector<size_t> central_order;  // order of the central entries; defaults to entry order
  bool zip64_end_records = false;     // torch.save style: zip64 end record and locator, real values in the EOCD
  std::string comment;                // archive comment
  std::string suffix;                 // bytes after the end record
};

struct Assembled {
  Bytes bytes;
  std::vector<uint64_t> local_offsets;    // of each entry's local header (by entry index)
  std::vector<uint64_t> central_offsets;  // of each entry's central header (by entry index)
  uint64_t cd_offset = 0;
  uint64_t zip64_end_offset = 0;  // 0 when there is none
  uint64_t end_offset = 0;        // of the end-of-central-directory record
};

inline Assembled assemble(const RawArchive& archive) {
  Assembled out;
  std::string file = archive.prefix;
  for (const RawEntry& e : archive.entries) {
    out.local_offsets.push_back(file.size());
    if (!e.omit_local) file += local_record(e);
    file += e.after;
  }
  out.cd_offset = file.size();
  std::vector<size_t> order = archive.central_order;
  if (order.empty()) {
    for (size_t i = 0; i < archive.entries.size(); ++i) order.push_back(i);
  }
  out.central_offsets.resize(archive.entries.size());
  for (size_t i : order) {
    const RawEntry& e = archive.entries[i];
    out.central_offsets[i] = file.size();
    file += le32(zip::kCentralHeaderSignature) + le16(e.version_made_by) + le16(e.version_needed) + le16(e.flags) +
            le16(e.method) + le16(0) + le16(0x21) + le32(e.central_crc()) +
            le32(static_cast<uint32_t>(e.stored_bytes().size())) + le32(static_cast<uint32_t>(e.central_size())) +
            le16(static_cast<uint16_t>(e.name.size())) + le16(static_cast<uint16_t>(e.central_extra.size())) +
            le16(static_cast<uint16_t>(e.comment.size())) + le16(0) + le16(0) + le32(e.external_attributes) +
            le32(static_cast<uint32_t>(e.local_offset.value_or(out.local_offsets[i]))) + e.name + e.central_extra +
            e.comment;
  }
  const uint64_t cd_size = file.size() - out.cd_offset;
  const uint64_t count = order.size();
  if (archive.zip64_end_records) {
    out.zip64_end_offset = file.size();
    file += le32(zip::kZip64EndRecordSignature) + le64(zip::kZip64EndRecordRemainder) + le16(45) + le16(45) +
            le32(0) + le32(0) + le64(count) + le64(count) + le64(cd_size) + le64(out.cd_offset);
    file += le32(zip::kZip64EndLocatorSignature) + le32(0) + le64(out.zip64_end_offset) + le32(1);
  }
  out.end_offset = file.size();
  file += le32(zip::kEndOfCentralDirSignature) + le16(0) + le16(0) + le16(static_cast<uint16_t>(count)) +
          le16(static_cast<uint16_t>(count)) + le32(static_cast<uint32_t>(cd_size)) +
          le32(static_cast<uint32_t>(out.cd_offset)) + le16(static_cast<uint16_t>(archive.comment.size())) +
          archive.comment;
  file += archive.suffix;
  out.bytes.assign(file.begin(), file.end());
  return out;
}

inline void patch16(Bytes& bytes, uint64_t offset, uint16_t value) {
  bytes.at(offset) = static_cast<uint8_t>(value);
  bytes.at(offset + 1) = static_cast<uint8_t>(value >> 8);
}
inline void patch32(Bytes& bytes, uint64_t offset, uint32_t value) {
  patch16(bytes, offset, static_cast<uint16_t>(value));
  patch16(bytes, offset + 2, static_cast<uint16_t>(value >> 16));
}
inline void patch64(Bytes& bytes, uint64_t offset, uint64_t value) {
  patch32(bytes, offset, static_cast<uint32_t>(value));
  patch32(bytes, offset + 4, static_cast<uint32_t>(value >> 32));
}


inline void write_file(const std::string& path, std::span<const uint8_t> bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

inline Bytes read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Runs `script` with the system Python (tests/cdr/python_runner.h) inside `dir`, so that the files it
// writes stay there for the test to read.
inline testing::PythonRun run_python_in(const TemporaryFolder& dir, std::string_view script) {
  return testing::run_python("import os\nos.chdir(r'" + dir.path().string() + "')\n" + std::string(script));
}

// True when the system Python can import torch (checked once).
inline bool system_torch_available() {
  static const bool available = testing::run_python("import torch\n").exit_code == 0;
  return available;
}

}  // namespace zoogate::cdr::ziptest
