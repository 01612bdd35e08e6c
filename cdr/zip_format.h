// What the strict ZIP reader and the canonical ZIP writer share: record layouts, constants, and the
// rules for entry names. Internal to cdr/; other modules use zip_reader.h and zip_writer.h.
//
// Layouts follow PKWARE's APPNOTE.TXT 6.3. All integers in ZIP records are little-endian.
#pragma once

#include <cstdint>
#include <span>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "common/error.h"

namespace zoogate::cdr::zip {

// Record signatures.
inline constexpr uint32_t kLocalHeaderSignature = 0x04034b50;       // "PK\3\4"
inline constexpr uint32_t kCentralHeaderSignature = 0x02014b50;     // "PK\1\2"
inline constexpr uint32_t kDataDescriptorSignature = 0x08074b50;    // "PK\7\8"
inline constexpr uint32_t kEndOfCentralDirSignature = 0x06054b50;   // "PK\5\6"
inline constexpr uint32_t kZip64EndRecordSignature = 0x06064b50;    // "PK\6\6"
inline constexpr uint32_t kZip64EndLocatorSignature = 0x07064b50;   // "PK\6\7"

// Fixed sizes of the records (before their variable-length name, extra field and comment).
inline constexpr size_t kLocalHeaderSize = 30;
inline constexpr size_t kCentralHeaderSize = 46;
inline constexpr size_t kEndOfCentralDirSize = 22;
inline constexpr size_t kZip64EndRecordSize = 56;   // with no extensible data sector
inline constexpr size_t kZip64EndLocatorSize = 20;
inline constexpr uint64_t kZip64EndRecordRemainder = kZip64EndRecordSize - 12;  // its "size of record" field
inline constexpr size_t kMaxEndOfCentralDirComment = 0xFFFF;

// Offsets of fields inside the fixed part of a local header.
inline constexpr size_t kLocalVersionNeeded = 4, kLocalFlags = 6, kLocalMethod = 8, kLocalCrc = 14,
                        kLocalCompressedSize = 18, kLocalSize = 22, kLocalNameLength = 26, kLocalExtraLength = 28;
// Offsets of fields inside the fixed part of a central directory header.
inline constexpr size_t kCentralVersionMadeBy = 4, kCentralVersionNeeded = 6, kCentralFlags = 8,
                        kCentralMethod = 10, kCentralCrc = 16, kCentralCompressedSize = 20, kCentralSize = 24,
                        kCentralNameLength = 28, kCentralExtraLength = 30, kCentralCommentLength = 32,
                        kCentralDiskStart = 34, kCentralExternalAttributes = 38, kCentralLocalHeaderOffset = 42;

// General purpose flag bits.
inline constexpr uint16_t kFlagEncrypted = 1u << 0;
inline constexpr uint16_t kFlagDataDescriptor = 1u << 3;
inline constexpr uint16_t kFlagStrongEncryption = 1u << 6;
inline constexpr uint16_t kFlagUtf8Name = 1u << 11;
inline constexpr uint16_t kFlagMaskedHeaders = 1u << 13;
inline constexpr uint16_t kAllowedFlags = kFlagDataDescriptor | kFlagUtf8Name;

inline constexpr uint16_t kMethodStored = 0;
inline constexpr uint16_t kMethodDeflate = 8;

// "Version needed to extract" values: 2.0 covers deflate and data descriptors, 4.5 covers zip64.
inline constexpr uint16_t kVersionDefault = 20;
inline constexpr uint16_t kVersionZip64 = 45;
inline constexpr uint16_t kMaxVersionNeeded = kVersionZip64;

// Field values that mean "the real value is in the zip64 extra field or end record".
inline constexpr uint32_t kSentinel32 = 0xFFFFFFFF;
inline constexpr uint16_t kSentinel16 = 0xFFFF;

// Extra field ids.
inline constexpr uint16_t kExtraZip64 = 0x0001;
inline constexpr uint16_t kExtraTorchPadding = 0x4246;      // "FB": torch.save pads with it to align data
inline constexpr uint16_t kExtraUnicodePath = 0x7075;       // Info-ZIP: a second name for the entry
inline constexpr uint16_t kExtraUnicodeComment = 0x6375;    // Info-ZIP: a second comment
inline constexpr size_t kExtraHeaderSize = 4;               // id and length of one extra field

// Longest entry name accepted. PyTorch's names are the archive folder (a file stem, at most 255 bytes on
// common file systems) plus a short record name; the cap keeps a directory's memory proportional to its
// entry count rather than to 64 KiB per name.
inline constexpr size_t kMaxEntryNameLength = 1024;

// torch.save aligns every entry's data to this many bytes (PyTorch's kFieldAlignment); so does ZipWriter.
inline constexpr uint64_t kDataAlignment = 64;

inline uint16_t load_u16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
inline uint32_t load_u32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) | (static_cast<uint32_t>(p[2]) << 16) |
         (static_cast<uint32_t>(p[3]) << 24);
}
inline uint64_t load_u64(const uint8_t* p) {
  return static_cast<uint64_t>(load_u32(p)) | (static_cast<uint64_t>(load_u32(p + 4)) << 32);
}

inline void append_u16(std::vector<uint8_t>& out, uint16_t value) {
  out.push_back(static_cast<uint8_t>(value));
  out.push_back(static_cast<uint8_t>(value >> 8));
}
inline void append_u32(std::vector<uint8_t>& out, uint32_t value) {
  append_u16(out, static_cast<uint16_t>(value));
  append_u16(out, static_cast<uint16_t>(value >> 16));
}
inline void append_u64(std::vector<uint8_t>& out, uint64_t value) {
  append_u32(out, static_cast<uint32_t>(value));
  append_u32(out, static_cast<uint32_t>(value >> 32));
}
inline void append_bytes(std::vector<uint8_t>& out, std::string_view bytes) { out.insert(out.end(), bytes.begin(), bytes.end()); }

// CRC-32 (the ZIP polynomial) of `bytes` continued from `crc` (0 for a new stream), as zlib's crc32()
// computes it: by carry-less multiplication where the CPU has PCLMULQDQ, through zlib otherwise.
uint32_t crc32_update(uint32_t crc, std::span<const uint8_t> bytes);

// The names of one archive, checked one by one against the rules every accepted archive follows:
//   - valid UTF-8 with no control characters (NUL included), no '\\' and no ':';
//   - relative paths of '/'-separated segments, none empty, "." or "..", so never absolute and never a
//     directory entry (trailing '/');
//   - either every name has at least two segments, the first of which (the top-level folder) is the
//     same for every name (PyTorch archives), or every name is a single segment (NumPy .npz files);
//   - unique, also when ASCII letters are compared without regard to case (case-insensitive file
//     systems and loaders would otherwise see two entries as one);
//   - at most kMaxEntryNameLength bytes (kLimitExceeded).
// Violations are kForbidden errors without an offset (callers know where the name came from).
enum class NameLayout { kOneTopFolder, kFlat };

class EntryNames {
 public:
  Status add(std::string_view name);
  // Empty until the first name was accepted, and for flat archives.
  const std::string& top_folder() const { return top_folder_; }

 private:
  std::optional<NameLayout> layout_;  // set by the first name
  std::string top_folder_;
  // ASCII-lowercased name -> hash of the name as given (tells an exact repeat from a case variant).
  std::unordered_map<std::string, size_t> by_folded_name_;
};


}  // namespace zoogate::cdr::zip
