// safetensors: complete validation of a file's header and layout, and a canonical writer.
//
// Layout: an 8-byte little-endian header length N, N bytes of UTF-8 JSON, then the data section. The
// header is one object mapping tensor names to {"dtype", "shape", "data_offsets": [begin, end]} (offsets
// relative to the data section) plus an optional "__metadata__" object of strings.
//
// parse_safetensors_header() applies every rule of the safetensors reference implementation
// (safetensors/src/tensor.rs and the format section of its README) and, where that implementation is
// lenient in ways another parser could read differently, is stricter:
//   - N is capped (SafetensorsLimits), and 8 + N must lie inside the input;
//   - the header starts with '{' and is valid UTF-8 JSON with nothing after the object but whitespace;
//   - no key appears twice in any object (the reference's serde keeps the last, other parsers the first);
//   - a tensor has exactly dtype, shape and data_offsets (the reference ignores unknown fields);
//   - dtype is one the format defines, shape and offsets are non-negative integers (no "-0", no 2.0);
//   - end - begin == product(shape) * element size, with checked arithmetic (sub-byte dtypes must
//     fill whole bytes);
//   - sorted by offsets, tensors are contiguous from 0 with no gap or overlap, and the data section
//     ends exactly at the end of the input (no appended bytes).
// Each failure is one Error naming the tensor and the input offset: for header content, the offset at
// or just after the offending JSON token.
//
// write_safetensors() writes the canonical form of a set of tensors: the header in the same shape and
// order as the reference serializer, padded with spaces to a multiple of 8 bytes, then the data
// streamed from byte sources. parse(write(x)) gives x back.
//
// Everything here is pure and thread-safe; inputs are read only through ByteSource.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/byte_sink.h"
#include "common/byte_source.h"
#include "common/error.h"

namespace zoogate::cdr {

// The element types the safetensors format defines, in the reference implementation's declaration
// order (its serializer sorts by that order, which is also increasing alignment).
enum class SafetensorsDtype : uint8_t {
  kBool, kF4, kF6E2M3, kF6E3M2, kU8, kI8, kF8E5M2, kF8E4M3, kF8E8M0,
  kI16, kU16, kF16, kBF16, kI32, kU32, kF32, kC64, kF64, kI64, kU64,
};

// "BOOL", "F8_E4M3", ... as written in headers.
std::string_view safetensors_dtype_name(SafetensorsDtype dtype);
std::optional<SafetensorsDtype> safetensors_dtype_from_name(std::string_view name);
// Bits per element: 4 for F4, 6 for the F6 types, 8 to 64 for the others.
uint32_t safetensors_dtype_bits(SafetensorsDtype dtype);
// product(shape) * bits / 8, checked: fails on overflow, and when sub-byte elements do not fill whole
// bytes (the reference implementation refuses such tensors too).
Result<uint64_t> safetensors_byte_size(SafetensorsDtype dtype, const std::vector<uint64_t>& shape);

// The reference reader refuses headers above this size, whatever zoogate's own limit says; the writer
// never produces a larger one.
inline constexpr uint64_t kSafetensorsReferenceMaxHeaderSize = 100'000'000;

struct SafetensorsLimits {
  uint64_t max_header_size = kSafetensorsReferenceMaxHeaderSize;  // N, in bytes
  uint64_t max_tensor_count = 1'000'000;                           // tensors in one header
};

using SafetensorsMetadata = std::map<std::string, std::string>;

struct SafetensorsTensorInfo {
  std::string name;
  SafetensorsDtype dtype = SafetensorsDtype::kF32;
  std::vector<uint64_t> shape;
  uint64_t begin = 0;  // byte offsets relative to the data section, end exclusive
  uint64_t end = 0;
  bool operator==(const SafetensorsTensorInfo&) const = default;
};

struct SafetensorsHeader {
  std::vector<SafetensorsTensorInfo> tensors;  // in data order (by offsets, then by name)
  SafetensorsMetadata metadata;                // empty when the header has no "__metadata__"
  uint64_t header_size = 0;                    // N
  uint64_t data_offset() const { return 8 + header_size; }
  uint64_t data_size() const { return tensors.empty() ? 0 : tensors.back().end; }
};

// Validates the whole layout of a safetensors file (reading only the first 8 + N bytes).
// Error codes: kLimitExceeded (header size, tensor count), kUnsupported (a dtype the format does not
// define), kParse (everything else), or the source's own read error.
Result<SafetensorsHeader> parse_safetensors_header(const ByteSource& source, const SafetensorsLimits& limits);

// One tensor to write: its bytes are [source_offset, source_offset + byte size) of *source, which must
// stay alive and unchanged during the write.
struct SafetensorsTensorSpec {
  std::string name;
  SafetensorsDtype dtype = SafetensorsDtype::kF32;
  std::vector<uint64_t> shape;
  const ByteSource* source = nullptr;
  uint64_t source_offset = 0;
};

// Writes a canonical safetensors file to `sink`:
//   - data order: by dtype in the reverse of SafetensorsDtype's order (widest alignment first), then
//     by name in byte order: the reference serializer's order, which keeps every tensor aligned to
//     its element size because the data section starts at a multiple of 8;
//   - header: compact JSON, "__metadata__" first (only when not empty, keys sorted), then the tensors
//     in data order with fields dtype, shape, data_offsets; padded with spaces to a multiple of 8.
// Fails with kInvalidArgument, before writing anything, on a duplicate, "__metadata__" or non-UTF-8
// tensor name, non-UTF-8 metadata, a missing source or a source range outside its source, or a header
// above kSafetensorsReferenceMaxHeaderSize. Data is copied in bounded chunks, never held whole.
Status write_safetensors(const std::vector<SafetensorsTensorSpec>& tensors, const SafetensorsMetadata& metadata,
                         ByteSink& sink);

}  // namespace zoogate::cdr
