#include "cdr/pickle_text.h"

#include <bit>
#include <cmath>
#include <cstring>
#include <vector>

namespace zoogate::cdr {
namespace {

constexpr uint32_t kMaxCodePoint = 0x10FFFF;
constexpr uint64_t kDecimalChunkDigits = 9;  // decimal digits folded into the binary number at once
constexpr uint64_t kDecimalChunkBase = 1'000'000'000;

Result<std::string> bad(std::string reason) { return fail(ErrorCode::kParse, std::move(reason)); }

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Drops sign-extension bytes that do not change the value, then picks the small form when it fits.
IntValue canonical_int(std::string bytes) {
  while (bytes.size() > 1) {
    auto last = static_cast<uint8_t>(bytes.back());
    auto prev = static_cast<uint8_t>(bytes[bytes.size() - 2]);
    bool redundant = (last == 0x00 && !(prev & 0x80)) || (last == 0xFF && (prev & 0x80));
    if (!redundant) break;
    bytes.pop_back();
  }
  if (bytes.size() > sizeof(int64_t)) return IntValue{0, std::move(bytes)};
  uint64_t raw = 0;
  for (size_t i = bytes.size(); i-- > 0;) raw = (raw << 8) | static_cast<uint8_t>(bytes[i]);
  if (!bytes.empty() && (static_cast<uint8_t>(bytes.back()) & 0x80)) {
    if (bytes.size() < sizeof(int64_t)) raw |= ~uint64_t{0} << (8 * bytes.size());  // sign-extend
  }
  return IntValue{static_cast<int64_t>(raw), {}};
}

// `magnitude` is little-endian and unsigned; the result is the canonical IntValue of +/- magnitude.
IntValue int_from_magnitude(std::string magnitude, bool negative) {
  magnitude.push_back('\0');  // room for the sign bit
  if (negative) {
    // Two's complement: invert and add one.
    bool carry = true;
    for (char& byte : magnitude) {
      auto inverted = static_cast<uint8_t>(~static_cast<uint8_t>(byte));
      if (carry) {
        inverted = static_cast<uint8_t>(inverted + 1);
        carry = inverted == 0;
      }
      byte = static_cast<char>(inverted);
    }
  }
  return canonical_int(std::move(magnitude));
}

}  // namespace

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

Result<std::string> decode_raw_unicode_escape(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  size_t i = 0;
  while (i < text.size()) {
    if (text[i] != '\\') {
      append_utf8(out, static_cast<uint8_t>(text[i]));  // Latin-1
      ++i;
      continue;
    }
    size_t run = 0;
    while (i + run < text.size() && text[i + run] == '\\') ++run;
    size_t after = i + run;
    bool escape = (run % 2 == 1) && after < text.size() && (text[after] == 'u' || text[after] == 'U');
    // Every backslash of the run is literal except the last one of an odd run before u/U.
    out.append(escape ? run - 1 : run, '\\');
    i = after;
    if (!escape) continue;
    size_t digits = text[i] == 'u' ? 4 : 8;
    if (text.size() - i - 1 < digits) return bad("truncated \\u or \\U escape");
    uint32_t cp = 0;
    for (size_t d = 0; d < digits; ++d) {
      int value = hex_digit(text[i + 1 + d]);
      if (value < 0) return bad("truncated \\u or \\U escape");
      cp = (cp << 4) | static_cast<uint32_t>(value);
    }
    if (cp > kMaxCodePoint) return bad("\\U escape beyond U+10FFFF");
    append_utf8(out, cp);
    i += 1 + digits;
  }
  return out;
}

Result<std::string> decode_string_repr(std::string_view quoted) {
  if (quoted.size() < 2 || quoted.front() != quoted.back() || (quoted.front() != '\'' && quoted.front() != '"')) {
    return bad("operand must be quoted");
  }
  std::string_view text = quoted.substr(1, quoted.size() - 2);
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (c != '\\') {
      out.push_back(c);
      continue;
    }
    if (++i == text.size()) return bad("trailing backslash");
    c = text[i];
    switch (c) {
      case '\n':
        break;  // line continuation
      case '\\':
        out.push_back('\\');
        break;
      case '\'':
        out.push_back('\'');
        break;
      case '"':
        out.push_back('"');
        break;
      case 'a':
        out.push_back('\a');
        break;
      case 'b':
        out.push_back('\b');
        break;
      case 'f':
        out.push_back('\f');
        break;
      case 'n':
        out.push_back('\n');
        break;
      case 'r':
        out.push_back('\r');
        break;
      case 't':
        out.push_back('\t');
        break;
      case 'v':
        out.push_back('\v');
        break;
      case 'x': {
        int high = i + 1 < text.size() ? hex_digit(text[i + 1]) : -1;
        int low = i + 2 < text.size() ? hex_digit(text[i + 2]) : -1;
        if (high < 0 || low < 0) return bad("invalid \\x escape");
        out.push_back(static_cast<char>(high * 16 + low));
        i += 2;
        break;
      }
      default:
        if (c >= '0' && c <= '7') {
          // Up to three octal digits; Python keeps the low eight bits of larger values.
          unsigned value = static_cast<unsigned>(c - '0');
          for (int extra = 0; extra < 2 && i + 1 < text.size() && text[i + 1] >= '0' && text[i + 1] <= '7'; ++extra) {
            value = value * 8 + static_cast<unsigned>(text[++i] - '0');
          }
          out.push_back(static_cast<char>(value & 0xFF));
        } else {
          out.push_back('\\');  // unknown escapes are kept as written
          out.push_back(c);
        }
    }
  }
  return out;
}

Result<IntValue> parse_decimal_int(std::string_view text, uint64_t max_digits) {
  bool negative = !text.empty() && text.front() == '-';
  std::string_view digits = negative ? text.substr(1) : text;
  if (digits.empty()) return fail(ErrorCode::kParse, "empty integer");
  if (digits.size() > max_digits) {
    return fail(ErrorCode::kLimitExceeded, "integer of " + std::to_string(digits.size()) +
                                               " digits exceeds max_int_bytes (" + std::to_string(max_digits) + ")");
  }
  for (char c : digits) {
    if (c < '0' || c > '9') return fail(ErrorCode::kParse, "integer text is not plain decimal");
  }
  if (digits.size() > 1 && digits.front() == '0') return fail(ErrorCode::kParse, "integer has leading zeros");

  // Binary magnitude in 32-bit limbs, little-endian: magnitude = magnitude * 10^k + chunk.
  std::vector<uint32_t> limbs;
  size_t first_chunk = digits.size() % kDecimalChunkDigits;
  if (first_chunk == 0) first_chunk = kDecimalChunkDigits;
  for (size_t pos = 0; pos < digits.size();) {
    size_t length = pos == 0 ? first_chunk : kDecimalChunkDigits;
    uint64_t chunk = 0;
    uint64_t scale = 1;
    for (size_t i = 0; i < length; ++i) {
      chunk = chunk * 10 + static_cast<uint64_t>(digits[pos + i] - '0');
      scale *= 10;
    }
    uint64_t carry = chunk;
    for (uint32_t& limb : limbs) {
      uint64_t product = uint64_t{limb} * scale + carry;
      limb = static_cast<uint32_t>(product);
      carry = product >> 32;
    }
    if (carry != 0) limbs.push_back(static_cast<uint32_t>(carry));
    pos += length;
  }
  static_assert(kDecimalChunkBase < (uint64_t{1} << 32), "a chunk must fit one limb");

  std::string magnitude;
  magnitude.reserve(limbs.size() * 4);
  for (uint32_t limb : limbs) {
    for (int shift = 0; shift < 32; shift += 8) magnitude.push_back(static_cast<char>((limb >> shift) & 0xFF));
  }
  return int_from_magnitude(std::move(magnitude), negative);
}

IntValue int_from_le_bytes(std::span<const uint8_t> bytes) {
  return canonical_int(std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
}

std::optional<IntValue> exact_int_of_double(double value) {
  if (!std::isfinite(value) || std::trunc(value) != value) return std::nullopt;
  constexpr double kTwoPow63 = 9223372036854775808.0;
  if (value >= -kTwoPow63 && value < kTwoPow63) return IntValue{static_cast<int64_t>(value), {}};
  // |value| >= 2^63: mantissa (53 bits, implicit one restored) shifted left by the exponent.
  auto bits = std::bit_cast<uint64_t>(value);
  constexpr int kMantissaBits = 52;
  constexpr int kExponentBias = 1075;  // 1023 + kMantissaBits
  int shift = static_cast<int>((bits >> kMantissaBits) & 0x7FF) - kExponentBias;
  uint64_t mantissa = (bits & ((uint64_t{1} << kMantissaBits) - 1)) | (uint64_t{1} << kMantissaBits);
  std::string magnitude(static_cast<size_t>(shift / 8) + sizeof(uint64_t) + 1, '\0');
  for (int bit = 0; bit <= kMantissaBits; ++bit) {
    if ((mantissa >> bit) & 1) {
      int position = bit + shift;
      magnitude[static_cast<size_t>(position / 8)] = static_cast<char>(
          static_cast<uint8_t>(magnitude[static_cast<size_t>(position / 8)]) | (1u << (position % 8)));
    }
  }
  return int_from_magnitude(std::move(magnitude), value < 0);
}

std::optional<std::string> utf8_to_latin1(std::string_view utf8) {
  std::string out;
  out.reserve(utf8.size());
  for (size_t i = 0; i < utf8.size(); ++i) {
    auto byte = static_cast<uint8_t>(utf8[i]);
    if (byte < 0x80) {
      out.push_back(static_cast<char>(byte));
    } else if ((byte == 0xC2 || byte == 0xC3) && i + 1 < utf8.size()) {
      // Two-byte sequences with leads C2/C3 are exactly U+0080..U+00FF.
      out.push_back(static_cast<char>(((byte & 0x03) << 6) | (static_cast<uint8_t>(utf8[++i]) & 0x3F)));
    } else {
      return std::nullopt;
    }
  }
  return out;
}

}  // namespace zoogate::cdr
