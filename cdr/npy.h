// NumPy .npy: strict validation of a file's header and layout, and a canonical header writer.
//
// Layout (numpy/lib/format.py): "\x93NUMPY", a major and a minor version byte (1.0, 2.0 or 3.0), the
// header length as a little-endian u16 (1.0) or u32 (2.0, 3.0), then the header: a Python dict literal
// {'descr': ..., 'fortran_order': ..., 'shape': (...), } padded with spaces and ended by '\n', then
// the array data, product(shape) * itemsize bytes.
//
// parse_npy_header() does not evaluate Python: it accepts one small literal grammar, exactly the keys
// descr, fortran_order and shape, each once, in any order, with an optional trailing comma, spaces as
// the only whitespace, and nothing after the closing brace but spaces and the final '\n':
//   - descr: a single-quoted array-protocol string for a plain numeric dtype (see parse_numpy_descr);
//     object dtypes are kForbidden (their data is a pickle), structured, string and void dtypes are
//     kUnsupported;
//   - fortran_order: True or False;
//   - shape: a tuple of decimal integers in [0, 2^63): (), (3,), (2, 3) or (2, 3,).
// The data must start at a multiple of 16 (numpy.save pads to 64, older writers to 16) and the input must
// end exactly where the data does: no truncation, no appended bytes. Sizes use checked arithmetic.
//
// write_npy_header() writes byte for byte what numpy.save (numpy 1.24) writes for the same array.
// Pure and thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/byte_sink.h"
#include "common/byte_source.h"
#include "common/error.h"

namespace zoogate::cdr {

// A plain numeric dtype in NumPy's array-protocol spelling, normalised as numpy.dtype(...).str does:
// '|' for one-byte types, '<' for '=' and '|' on wider ones (zoogate runs on little-endian hosts).
struct NumpyDescr {
  char byte_order = '<';      // '<', '>' or '|'
  char kind = 'f';            // 'b' bool, 'i' int, 'u' uint, 'f' float, 'c' complex, 'M' datetime, 'm' timedelta
  uint32_t itemsize = 4;      // bytes per element
  std::string datetime_unit;  // 'M'/'m' only, without brackets and with no multiplier of 1: "ns", "5s", or empty
  // "<f4", "|b1", "<M8[ns]".
  std::string str() const;
  bool operator==(const NumpyDescr&) const = default;
};

// Accepts "<f4"-style strings: byte order ('<', '>', '|', '='), kind and itemsize from b1, i1/2/4/8,
// u1/2/4/8, f2/4/8, c8/16, M8/m8 with an optional "[<multiple><unit>]" (units Y M W D h m s ms us ns
// ps fs as). Refuses 'O' (kForbidden), 'U', 'S', 'a', 'V' (kUnsupported), long double f16/c32
// (kUnsupported: its layout depends on the platform) and any other spelling (kParse). Errors carry no
// offset; callers add theirs.
Result<NumpyDescr> parse_numpy_descr(std::string_view text);

// What an .npy header declares.
struct NpyHeader {
  NumpyDescr descr;
  bool fortran_order = false;
  std::vector<uint64_t> shape;  // () is a scalar: one element
  bool operator==(const NpyHeader&) const = default;
};

// product(shape) * itemsize, or kParse when it does not fit in 64 bits.
Result<uint64_t> npy_data_size(const NpyHeader& header);

struct NpyLimits {
  // Header bytes after the length field. numpy.load refuses more than 10000 unless told otherwise.
  uint64_t max_header_size = 10'000;
};

// A validated .npy input.
struct NpyFile {
  NpyHeader header;
  uint8_t major_version = 1;  // 1, 2 or 3 (the minor version is always 0)
  uint64_t data_offset = 0;   // where the array data starts
  uint64_t data_size = 0;     // npy_data_size(header), which is also size - data_offset
};

// Validates the header and the layout of a whole .npy input (reading only the header). Errors carry
// the input offset of the problem. Codes: kLimitExceeded (header size), kForbidden (object dtype),
// kUnsupported (versions other than 1.0/2.0/3.0, dtypes outside the plain numeric set), kParse (the rest).
Result<NpyFile> parse_npy_header(const ByteSource& source, const NpyLimits& limits);

// Writes the magic, version, length and header for `header`, as numpy 1.24's numpy.save does: keys
// sorted, Python reprs, spare spaces for growing the first (C order) or last (Fortran order) axis,
// padded so that the data starts at a multiple of 64; version 1.0, or 2.0 when the header exceeds
// 65535 bytes. The caller streams the data after it. Fails with kInvalidArgument, before writing, when
// the header would not pass parse_npy_header (descr outside the accepted set, a dimension of 2^63 or
// more, a data size beyond 64 bits).
Status write_npy_header(const NpyHeader& header, ByteSink& sink);

}  // namespace zoogate::cdr
