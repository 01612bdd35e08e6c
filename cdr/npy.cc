#include "cdr/npy.h"

#include <algorithm>
#include <array>
#include <limits>
#include <optional>
#include <span>
#include <utility>

#include "cdr/message_text.h"
#include "common/checked.h"

namespace zoogate::cdr {
namespace {

using namespace std::string_view_literals;

constexpr std::string_view kMagic = "\x93NUMPY"sv;
constexpr uint64_t kVersionOffset = 6;
constexpr uint64_t kLengthOffset = 8;
// numpy.save aligns the data to 64 bytes; older numpy versions and other writers align it to 16.
constexpr uint64_t kWriterAlignment = 64;
constexpr uint64_t kMinimumDataAlignment = 16;
// numpy.save leaves room for the growing axis to reach this many digits without moving the data.
constexpr size_t kGrowthAxisMaxDigits = 21;
constexpr uint64_t kMaxDimension = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
constexpr uint64_t kMaxDatetimeMultiple = static_cast<uint64_t>(std::numeric_limits<int32_t>::max());

constexpr std::array kDatetimeUnits = {"Y"sv, "M"sv, "W"sv, "D"sv, "h"sv, "m"sv, "s"sv,
                                       "ms"sv, "us"sv, "ns"sv, "ps"sv, "fs"sv, "as"sv};

bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_identifier_char(char c) {
  return is_digit(c) || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_' || c == '.';
}

// A decimal number at the start of `text`: no sign, no leading zero (Python 3 refuses "03"), at most
// `max`. Returns the value and the digits used, or nullopt.
std::optional<std::pair<uint64_t, size_t>> leading_decimal(std::string_view text, uint64_t max) {
  size_t digits = 0;
  uint64_t value = 0;
  while (digits < text.size() && is_digit(text[digits])) {
    const auto digit = static_cast<uint64_t>(text[digits] - '0');
    if (value > (max - digit) / 10) return std::nullopt;
    value = value * 10 + digit;
    ++digits;
  }
  if (digits == 0 || (digits > 1 && text[0] == '0')) return std::nullopt;
  return std::pair{value, digits};
}

bool itemsize_allowed(char kind, uint64_t itemsize) {
  switch (kind) {
    case 'b': return itemsize == 1;
    case 'i':
    case 'u': return itemsize == 1 || itemsize == 2 || itemsize == 4 || itemsize == 8;
    case 'f': return itemsize == 2 || itemsize == 4 || itemsize == 8;
    case 'c': return itemsize == 8 || itemsize == 16;
    case 'M':
    case 'm': return itemsize == 8;
    default: return false;
  }
}

// "[ns]", "[5s]": the bracketed unit of a datetime or timedelta, returned without brackets and
// without a multiple of 1 (numpy spells "[1s]" as "[s]").
Result<std::string> parse_datetime_unit(std::string_view text) {
  if (text.size() < 3 || text.front() != '[' || text.back() != ']') {
    return fail(ErrorCode::kParse, "datetime unit must be written as [unit]");
  }
  std::string_view inside = text.substr(1, text.size() - 2);
  uint64_t multiple = 1;
  if (!inside.empty() && is_digit(inside[0])) {
    auto number = leading_decimal(inside, kMaxDatetimeMultiple);
    if (!number || number->first == 0) return fail(ErrorCode::kParse, "datetime unit multiple must be 1 to 2^31-1");
    multiple = number->first;
    inside.remove_prefix(number->second);
  }
  if (std::find(kDatetimeUnits.begin(), kDatetimeUnits.end(), inside) == kDatetimeUnits.end()) {
    return fail(ErrorCode::kParse, "unknown datetime unit " + quote_for_message(inside));
  }
  return multiple == 1 ? std::string(inside) : std::to_string(multiple) + std::string(inside);
}

// The header's dict literal. Positions are offsets into `text`, which starts at input offset `base`.
class HeaderLiteral {
 public:
  HeaderLiteral(std::string_view text, uint64_t base) : text_(text), base_(base) {}

  Result<NpyHeader> parse() {
    NpyHeader header;
    bool has_descr = false;
    bool has_fortran_order = false;
    bool has_shape = false;
    skip_spaces();
    if (!consume('{')) return error(ErrorCode::kParse, "header must be a Python dict literal starting with '{'");
    while (true) {
      skip_spaces();
      if (consume('}')) break;
      const size_t key_at = pos_;
      auto key = string_literal("a key");
      if (!key) return fail(key.error());
      skip_spaces();
      if (!consume(':')) return error(ErrorCode::kParse, "expected ':' after key " + quote_for_message(*key));
      skip_spaces();
      bool* seen = nullptr;
      Status value;
      if (*key == "descr") {
        seen = &has_descr;
        value = descr_value(header.descr);
      } else if (*key == "fortran_order") {
        seen = &has_fortran_order;
        value = boolean_value(header.fortran_order);
      } else if (*key == "shape") {
        seen = &has_shape;
        value = shape_value(header.shape);
      } else {
        pos_ = key_at;
        return error(ErrorCode::kParse, "unknown key " + quote_for_message(*key) +
                                            " (the header has exactly descr, fortran_order and shape)");
      }
      if (*seen) {
        pos_ = key_at;
        return error(ErrorCode::kParse, "duplicate key " + quote_for_message(*key));
      }
      if (!value) return fail(value.error());
      *seen = true;
      skip_spaces();
      if (consume(',')) continue;
      if (consume('}')) break;
      return error(ErrorCode::kParse, "expected ',' or '}' after the value of " + quote_for_message(*key));
    }
    if (!has_descr || !has_fortran_order || !has_shape) {
      return error(ErrorCode::kParse, std::string("header lacks the key '") +
                                          (!has_descr ? "descr" : !has_fortran_order ? "fortran_order" : "shape") + "'");
    }
    skip_spaces();
    if (pos_ + 1 != text_.size() || text_[pos_] != '\n') {
      return error(ErrorCode::kParse, "only spaces and one final '\\n' may follow the header's dict");
    }
    return header;
  }

 private:
  tl::unexpected<Error> error(ErrorCode code, std::string message) const {
    return fail(code, "npy header: " + std::move(message), base_ + pos_);
  }
  char peek() const { return pos_ < text_.size() ? text_[pos_] : '\0'; }
  bool consume(char expected) {
    if (peek() != expected) return false;
    ++pos_;
    return true;
  }
  void skip_spaces() {
    while (peek() == ' ') ++pos_;
  }

  // 'text': single quotes, no escapes (no value in a valid header needs one).
  Result<std::string_view> string_literal(std::string_view what) {
    if (!consume('\'')) return error(ErrorCode::kParse, "expected " + std::string(what) + " in single quotes");
    const size_t begin = pos_;
    while (pos_ < text_.size() && text_[pos_] != '\'') {
      if (text_[pos_] == '\\') return error(ErrorCode::kParse, "escape sequences are not accepted in strings");
      ++pos_;
    }
    if (pos_ == text_.size()) return error(ErrorCode::kParse, "unterminated string");
    const std::string_view value = text_.substr(begin, pos_ - begin);
    ++pos_;
    return value;
  }

  Status descr_value(NumpyDescr& descr) {
    if (peek() == '[') return error(ErrorCode::kUnsupported, "structured dtypes (a list descr) are not accepted");
    if (peek() == '(') return error(ErrorCode::kUnsupported, "sub-array dtypes (a tuple descr) are not accepted");
    const size_t value_at = pos_;
    auto text = string_literal("the descr string");
    if (!text) return fail(text.error());
    auto parsed = parse_numpy_descr(*text);
    if (!parsed) {
      pos_ = value_at;
      return error(parsed.error().code, "descr " + quote_for_message(*text) + ": " + parsed.error().message);
    }
    descr = std::move(*parsed);
    return {};
  }

  Status boolean_value(bool& value) {
    const std::string_view rest = text_.substr(pos_);
    for (const auto& [word, meaning] : {std::pair{"True"sv, true}, std::pair{"False"sv, false}}) {
      if (rest.substr(0, word.size()) == word && (rest.size() == word.size() || !is_identifier_char(rest[word.size()]))) {
        pos_ += word.size();
        value = meaning;
        return {};
      }
    }
    return error(ErrorCode::kParse, "fortran_order must be True or False");
  }

  Status shape_value(std::vector<uint64_t>& shape) {
    if (!consume('(')) return error(ErrorCode::kParse, "shape must be a tuple such as (), (3,) or (2, 3)");
    skip_spaces();
    if (consume(')')) return {};
    while (true) {
      auto number = leading_decimal(text_.substr(pos_), kMaxDimension);
      if (!number) return error(ErrorCode::kParse, "shape entries must be decimal integers from 0 to 2^63-1");
      pos_ += number->second;
      if (is_identifier_char(peek())) {
        return error(ErrorCode::kParse, "malformed shape entry (no suffixes, separators or fractions)");
      }
      shape.push_back(number->first);
      skip_spaces();
      if (consume(')')) {
        if (shape.size() == 1) return error(ErrorCode::kParse, "(n) is an integer, not a tuple: a 1-d shape is (n,)");
        return {};
      }
      if (!consume(',')) return error(ErrorCode::kParse, "expected ',' or ')' in shape");
      skip_spaces();
      if (consume(')')) return {};
    }
  }

  std::string_view text_;
  uint64_t base_;
  size_t pos_ = 0;
};

std::string shape_repr(const std::vector<uint64_t>& shape) {
  std::string out = "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i != 0) out += ", ";
    out += std::to_string(shape[i]);
  }
  if (shape.size() == 1) out += ',';
  out += ')';
  return out;
}

uint64_t read_le(std::span<const uint8_t> bytes) {
  uint64_t value = 0;
  for (size_t i = 0; i < bytes.size(); ++i) value |= uint64_t{bytes[i]} << (8 * i);
  return value;
}

}  // namespace

std::string NumpyDescr::str() const {
  std::string out{byte_order, kind};
  out += std::to_string(itemsize);
  if (!datetime_unit.empty()) out += "[" + datetime_unit + "]";
  return out;
}

Result<NumpyDescr> parse_numpy_descr(std::string_view text) {
  if (text.size() < 2 || std::string_view("<>|=").find(text[0]) == std::string_view::npos) {
    return fail(ErrorCode::kParse, "must start with a byte order ('<', '>', '|' or '=') and a kind");
  }
  NumpyDescr descr;
  descr.kind = text[1];
  if (descr.kind == 'O') {
    return fail(ErrorCode::kForbidden, "object arrays hold pickled Python objects, which .npy files may not carry");
  }
  if (std::string_view("USaV").find(descr.kind) != std::string_view::npos) {
    return fail(ErrorCode::kUnsupported, "string, bytes and void dtypes are not accepted, only plain numbers");
  }
  if (std::string_view("biufcMm").find(descr.kind) == std::string_view::npos) {
    return fail(ErrorCode::kUnsupported, "kind " + quote_for_message(text.substr(1, 1)) +
                                             " is not one of the plain numeric kinds b i u f c M m");
  }
  std::string_view rest = text.substr(2);
  auto itemsize = leading_decimal(rest, std::numeric_limits<uint32_t>::max());
  if (!itemsize) return fail(ErrorCode::kParse, "the kind must be followed by the item size in bytes");
  rest.remove_prefix(itemsize->second);
  if (!itemsize_allowed(descr.kind, itemsize->first)) {
    const bool long_double = (descr.kind == 'f' && (itemsize->first == 12 || itemsize->first == 16)) ||
                             (descr.kind == 'c' && (itemsize->first == 24 || itemsize->first == 32));
    return fail(ErrorCode::kUnsupported,
                long_double ? "long double dtypes are not accepted: their layout depends on the platform"
                            : "no plain numeric dtype has kind " + quote_for_message(text.substr(1, 1)) +
                                  " and item size " + std::to_string(itemsize->first));
  }
  descr.itemsize = static_cast<uint32_t>(itemsize->first);
  if (!rest.empty()) {
    if (descr.kind != 'M' && descr.kind != 'm') return fail(ErrorCode::kParse, "unexpected text after the item size");
    auto unit = parse_datetime_unit(rest);
    if (!unit) return fail(unit.error());
    descr.datetime_unit = std::move(*unit);
  }
  descr.byte_order = descr.itemsize == 1 ? '|' : text[0] == '>' ? '>' : '<';
  return descr;
}

Result<uint64_t> npy_data_size(const NpyHeader& header) {
  uint64_t size = header.descr.itemsize;
  for (uint64_t dimension : header.shape) {
    auto product = checked_mul(size, dimension);
    if (!product) return fail(ErrorCode::kParse, "shape " + shape_repr(header.shape) + " describes more bytes than fit in 64 bits");
    size = *product;
  }
  return size;
}

Result<NpyFile> parse_npy_header(const ByteSource& source, const NpyLimits& limits) {
  const uint64_t size = source.size();
  constexpr uint64_t kShortestPrefix = kLengthOffset + 2;
  if (size < kShortestPrefix) {
    return fail(ErrorCode::kParse, "input of " + std::to_string(size) + " bytes is too short for an .npy prefix", 0);
  }
  std::array<uint8_t, kLengthOffset + 4> prefix{};
  const auto prefix_view = std::span<uint8_t>(prefix).first(static_cast<size_t>(std::min<uint64_t>(size, prefix.size())));
  ZG_TRY(source.read_at(0, prefix_view));
  if (!std::equal(kMagic.begin(), kMagic.end(), prefix.begin(),
                  [](char magic, uint8_t byte) { return static_cast<uint8_t>(magic) == byte; })) {
    return fail(ErrorCode::kParse, "not an .npy file: the magic \\x93NUMPY is missing", 0);
  }
  NpyFile file;
  file.major_version = prefix[kVersionOffset];
  const uint8_t minor_version = prefix[kVersionOffset + 1];
  if (file.major_version < 1 || file.major_version > 3 || minor_version != 0) {
    return fail(ErrorCode::kUnsupported, "npy format version " + std::to_string(file.major_version) + "." +
                                             std::to_string(minor_version) + " is not 1.0, 2.0 or 3.0",
                kVersionOffset);
  }
  const size_t length_width = file.major_version == 1 ? 2 : 4;
  const uint64_t header_offset = kLengthOffset + length_width;
  if (size < header_offset) return fail(ErrorCode::kParse, "input ends inside the header length", kLengthOffset);
  const uint64_t header_size = read_le(std::span<const uint8_t>(prefix).subspan(kLengthOffset, length_width));
  if (header_size > limits.max_header_size) {
    return fail(ErrorCode::kLimitExceeded, "npy header of " + std::to_string(header_size) + " bytes exceeds the limit of " +
                                               std::to_string(limits.max_header_size) + " (max_npy_header_size)",
                kLengthOffset);
  }
  if (header_size > size - header_offset) {
    return fail(ErrorCode::kParse, "npy header length " + std::to_string(header_size) + " runs past the end of the input",
                kLengthOffset);
  }
  file.data_offset = header_offset + header_size;
  if (file.data_offset % kMinimumDataAlignment != 0) {
    return fail(ErrorCode::kParse, "npy header length " + std::to_string(header_size) + " puts the data at offset " +
                                       std::to_string(file.data_offset) + ", which is not a multiple of 16",
                kLengthOffset);
  }
  auto header_bytes = source.read_vector(header_offset, static_cast<size_t>(header_size));
  if (!header_bytes) return fail(header_bytes.error());
  const std::string_view text(reinterpret_cast<const char*>(header_bytes->data()), header_bytes->size());
  if (text.empty() || text.back() != '\n') {
    return fail(ErrorCode::kParse, "npy header must end with '\\n'", file.data_offset - (text.empty() ? 0 : 1));
  }
  const auto non_printable = std::find_if(text.begin(), text.end() - 1, [](char c) { return c < 0x20 || c > 0x7e; });
  if (non_printable != text.end() - 1) {
    return fail(ErrorCode::kParse, "npy header may hold only printable ASCII before its final '\\n'",
                header_offset + static_cast<uint64_t>(non_printable - text.begin()));
  }
  auto header = HeaderLiteral(text, header_offset).parse();
  if (!header) return fail(header.error());
  file.header = std::move(*header);
  auto data_size = npy_data_size(file.header);
  if (!data_size) return fail(ErrorCode::kParse, data_size.error().message, header_offset);
  file.data_size = *data_size;
  const uint64_t available = size - file.data_offset;
  if (available != file.data_size) {
    const std::string what = available > file.data_size
                                 ? std::to_string(available - file.data_size) + " bytes follow the array data"
                                 : "the input ends " + std::to_string(file.data_size - available) + " bytes early";
    return fail(ErrorCode::kParse,
                "header describes " + std::to_string(file.data_size) + " bytes of data but " +
                    std::to_string(available) + " follow it: " + what,
                file.data_offset + std::min(available, file.data_size));
  }
  return file;
}

Status write_npy_header(const NpyHeader& header, ByteSink& sink) {
  const std::string descr = header.descr.str();
  auto reparsed = parse_numpy_descr(descr);
  if (!reparsed || *reparsed != header.descr) {
    return fail(ErrorCode::kInvalidArgument, "descr " + quote_for_message(descr) + " is not a normalised plain numeric dtype");
  }
  for (uint64_t dimension : header.shape) {
    if (dimension > kMaxDimension) return fail(ErrorCode::kInvalidArgument, "shape entry " + std::to_string(dimension) + " is 2^63 or more");
  }
  if (auto size = npy_data_size(header); !size) return fail(ErrorCode::kInvalidArgument, size.error().message);

  std::string text = "{'descr': '" + descr + "', 'fortran_order': " + (header.fortran_order ? "True" : "False") +
                     ", 'shape': " + shape_repr(header.shape) + ", }";
  if (!header.shape.empty()) {
    const uint64_t growing_axis = header.fortran_order ? header.shape.back() : header.shape.front();
    text.append(kGrowthAxisMaxDigits - std::to_string(growing_axis).size(), ' ');
  }
  const uint64_t text_with_newline = text.size() + 1;
  size_t length_width = 2;
  auto padding_for = [&](size_t width) {
    return kWriterAlignment - (kLengthOffset + width + text_with_newline) % kWriterAlignment;
  };
  uint64_t header_size = text_with_newline + padding_for(length_width);
  if (header_size > std::numeric_limits<uint16_t>::max()) {
    length_width = 4;
    header_size = text_with_newline + padding_for(length_width);
    if (header_size > std::numeric_limits<uint32_t>::max()) {
      return fail(ErrorCode::kInvalidArgument, "npy header of " + std::to_string(header_size) + " bytes is too large");
    }
  }
  text.append(header_size - text_with_newline, ' ');
  text += '\n';

  std::string prefix(kMagic);
  prefix += static_cast<char>(length_width == 2 ? 1 : 2);
  prefix += '\0';
  for (size_t i = 0; i < length_width; ++i) prefix += static_cast<char>((header_size >> (8 * i)) & 0xff);
  ZG_TRY(sink.write(std::string_view(prefix)));
  return sink.write(std::string_view(text));
}

}  // namespace zoogate::cdr
