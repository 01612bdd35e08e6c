// Decoders for the operand encodings of pickle opcodes (private to cdr/).
//
// Pure functions over bytes. Errors are kParse (malformed) or kLimitExceeded without an offset: the
// VM adds the opcode's offset and name. Every function is bounded by the size of its input.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "cdr/value.h"
#include "common/encoding.h"
#include "common/error.h"

namespace zoogate::cdr {

// Appends code point `cp` (at most U+10FFFF; surrogates allowed) as UTF-8 to `out`.
void append_utf8(std::string& out, uint32_t cp);

// The UNICODE opcode's "raw-unicode-escape" text to UTF-8 (surrogatepass): bytes are Latin-1 except
// \uXXXX and \UXXXXXXXX escapes introduced by an odd number of backslashes.
Result<std::string> decode_raw_unicode_escape(std::string_view text);

// The STRING opcode's operand: a quoted Python 2 repr, unquoted and escape-decoded as
// codecs.escape_decode does (\\ \' \" \a \b \f \n \r \t \v, octal, \xHH, backslash-newline; other
// escapes stay as written).
Result<std::string> decode_string_repr(std::string_view quoted);

// Strict decimal text of INT/LONG: an optional '-' and digits, no leading zeros, no spaces, no '+',
// no base prefixes (Python's C and pure unpicklers disagree on those). More than `max_digits` digits
// is kLimitExceeded. Cost is quadratic in the digit count, which the limit bounds.
Result<IntValue> parse_decimal_int(std::string_view text, uint64_t max_digits);

// The canonical IntValue for a little-endian two's-complement byte string (LONG1/LONG4 operands).
IntValue int_from_le_bytes(std::span<const uint8_t> bytes);

// The exact integer value of `value` when it is finite and integral (as Python's int(value)).
std::optional<IntValue> exact_int_of_double(double value);

// Encodes UTF-8 text to Latin-1 bytes as str.encode('latin-1'); nullopt if a code point is above U+00FF.
std::optional<std::string> utf8_to_latin1(std::string_view utf8);

}  // namespace zoogate::cdr
