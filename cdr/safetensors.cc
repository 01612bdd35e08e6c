#include "cdr/safetensors.h"

#include <algorithm>
#include <array>
#include <iterator>
#include <numeric>
#include <set>
#include <tuple>
#include <unordered_set>

#include <nlohmann/json.hpp>

#include "cdr/message_text.h"
#include "common/checked.h"
#include "common/encoding.h"

namespace zoogate::cdr {
namespace {

constexpr uint64_t kLengthFieldSize = 8;
constexpr std::string_view kReservedMetadataKey = "__metadata__";
constexpr uint64_t kHeaderAlignment = 8;
constexpr size_t kCopyChunk = 1 << 20;

struct DtypeInfo {
  SafetensorsDtype dtype;
  std::string_view name;
  uint32_t bits;
};

// Indexed by SafetensorsDtype.
constexpr std::array kDtypes = {
    DtypeInfo{SafetensorsDtype::kBool, "BOOL", 8},       DtypeInfo{SafetensorsDtype::kF4, "F4", 4},
    DtypeInfo{SafetensorsDtype::kF6E2M3, "F6_E2M3", 6},  DtypeInfo{SafetensorsDtype::kF6E3M2, "F6_E3M2", 6},
    DtypeInfo{SafetensorsDtype::kU8, "U8", 8},           DtypeInfo{SafetensorsDtype::kI8, "I8", 8},
    DtypeInfo{SafetensorsDtype::kF8E5M2, "F8_E5M2", 8},  DtypeInfo{SafetensorsDtype::kF8E4M3, "F8_E4M3", 8},
    DtypeInfo{SafetensorsDtype::kF8E8M0, "F8_E8M0", 8},  DtypeInfo{SafetensorsDtype::kI16, "I16", 16},
    DtypeInfo{SafetensorsDtype::kU16, "U16", 16},        DtypeInfo{SafetensorsDtype::kF16, "F16", 16},
    DtypeInfo{SafetensorsDtype::kBF16, "BF16", 16},      DtypeInfo{SafetensorsDtype::kI32, "I32", 32},
    DtypeInfo{SafetensorsDtype::kU32, "U32", 32},        DtypeInfo{SafetensorsDtype::kF32, "F32", 32},
    DtypeInfo{SafetensorsDtype::kC64, "C64", 64},        DtypeInfo{SafetensorsDtype::kF64, "F64", 64},
    DtypeInfo{SafetensorsDtype::kI64, "I64", 64},        DtypeInfo{SafetensorsDtype::kU64, "U64", 64},
};

const DtypeInfo& info_of(SafetensorsDtype dtype) { return kDtypes[static_cast<size_t>(dtype)]; }

// ---- Parsing -----------------------------------------------------------------------------------

// An input iterator over the header text that records how far the JSON lexer has read: nlohmann's
// SAX events carry no position, and refusals should say where in the file they are.
class TrackedCursor {
 public:
  using iterator_category = std::input_iterator_tag;
  using value_type = char;
  using difference_type = std::ptrdiff_t;
  using pointer = const char*;
  using reference = const char&;

  TrackedCursor(const char* at, const char** furthest) : at_(at), furthest_(furthest) {}
  reference operator*() const { return *at_; }
  TrackedCursor& operator++() {
    ++at_;
    *furthest_ = at_;
    return *this;
  }
  TrackedCursor operator++(int) {
    TrackedCursor before = *this;
    ++*this;
    return before;
  }
  bool operator==(const TrackedCursor& other) const { return at_ == other.at_; }

 private:
  const char* at_;
  const char** furthest_;
};

struct PendingTensor {
  SafetensorsTensorInfo info;
  uint64_t input_offset = 0;  // where the tensor's key ends in the input, for later refusals
  bool has_dtype = false;
  bool has_shape = false;
  bool has_offsets = false;
  size_t offsets_seen = 0;
};

// Builds the header from nlohmann's SAX events, accepting exactly the shape the format allows and
// stopping at the first event that does not fit. Values arrive in document order, so every check
// that needs only one tensor happens while its object is open.
class HeaderBuilder {
 public:
  using json = nlohmann::json;

  HeaderBuilder(const char* text_begin, const char* const* furthest, uint64_t text_offset,
                const SafetensorsLimits& limits)
      : text_begin_(text_begin), furthest_(furthest), text_offset_(text_offset), limits_(limits) {}

  bool null() {
    if (expect_ == Expect::kMetadataValue) {  // the reference reads a null "__metadata__" as absent
      expect_ = Expect::kRootKey;
      return true;
    }
    return unexpected();
  }
  bool boolean(bool) { return unexpected(); }
  bool number_integer(json::number_integer_t) { return unexpected(); }
  bool number_float(json::number_float_t, const json::string_t&) { return unexpected(); }
  bool binary(json::binary_t&) { return unexpected(); }

  bool number_unsigned(json::number_unsigned_t value) {
    if (expect_ == Expect::kShapeItem) {
      current().info.shape.push_back(value);
      return true;
    }
    if (expect_ == Expect::kOffsetsItem) {
      PendingTensor& tensor = current();
      if (tensor.offsets_seen == 2) return refuse(ErrorCode::kParse, tensor_context() + "data_offsets has more than two entries");
      (tensor.offsets_seen == 0 ? tensor.info.begin : tensor.info.end) = value;
      ++tensor.offsets_seen;
      return true;
    }
    return unexpected();
  }

  bool string(json::string_t& value) {
    if (expect_ == Expect::kMetadataString) {
      header_.metadata.emplace(std::move(metadata_key_), std::move(value));
      expect_ = Expect::kMetadataKey;
      return true;
    }
    if (expect_ == Expect::kDtype) {
      const auto dtype = safetensors_dtype_from_name(value);
      if (!dtype) return refuse(ErrorCode::kUnsupported, tensor_context() + "unknown dtype " + quote_for_message(value));
      current().info.dtype = *dtype;
      expect_ = Expect::kTensorField;
      return true;
    }
    return unexpected();
  }

  bool start_object(std::size_t) {
    switch (expect_) {
      case Expect::kRootObject: expect_ = Expect::kRootKey; return true;
      case Expect::kMetadataValue: expect_ = Expect::kMetadataKey; return true;
      case Expect::kTensorObject: expect_ = Expect::kTensorField; return true;
      default: return unexpected();
    }
  }

  bool key(json::string_t& key) {
    switch (expect_) {
      case Expect::kRootKey: return root_key(std::move(key));
      case Expect::kMetadataKey:
        if (header_.metadata.count(key) != 0) {
          return refuse(ErrorCode::kParse, "duplicate key " + quote_for_message(key) + " in \"__metadata__\"");
        }
        metadata_key_ = std::move(key);
        expect_ = Expect::kMetadataString;
        return true;
      case Expect::kTensorField: return tensor_field(key);
      default: return unexpected();
    }
  }

  bool end_object() {
    switch (expect_) {
      case Expect::kRootKey: expect_ = Expect::kDone; return true;
      case Expect::kMetadataKey: expect_ = Expect::kRootKey; return true;
      case Expect::kTensorField: return finish_tensor();
      default: return unexpected();
    }
  }

  bool start_array(std::size_t) {
    if (expect_ == Expect::kShapeArray) {
      expect_ = Expect::kShapeItem;
      return true;
    }
    if (expect_ == Expect::kOffsetsArray) {
      expect_ = Expect::kOffsetsItem;
      return true;
    }
    return unexpected();
  }

  bool end_array() {
    if (expect_ == Expect::kShapeItem) {
      expect_ = Expect::kTensorField;
      return true;
    }
    if (expect_ == Expect::kOffsetsItem) {
      if (current().offsets_seen != 2) return refuse(ErrorCode::kParse, tensor_context() + "data_offsets needs two entries");
      expect_ = Expect::kTensorField;
      return true;
    }
    return unexpected();
  }

  bool parse_error(std::size_t position, const std::string&, const json::exception& exception) {
    // what() reads "[json.exception.parse_error.101] parse error at line 1, column 7: ..."
    std::string_view text = exception.what();
    if (const size_t tag_end = text.find("] "); tag_end != std::string_view::npos) text.remove_prefix(tag_end + 2);
    error_ = Error{ErrorCode::kParse, "header is not valid JSON: " + escape_for_message(text, 400),
                   text_offset_ + (position > 0 ? position - 1 : 0)};
    return false;
  }

  // After a successful SAX run: the tensors in data order, checked for contiguity.
  Result<SafetensorsHeader> finish(uint64_t header_size) {
    if (expect_ != Expect::kDone) return fail(ErrorCode::kInternal, "safetensors header parser stopped early", text_offset_);
    std::sort(pending_.begin(), pending_.end(), [](const PendingTensor& a, const PendingTensor& b) {
      return std::tie(a.info.begin, a.info.end, a.info.name) < std::tie(b.info.begin, b.info.end, b.info.name);
    });
    uint64_t covered = 0;
    for (PendingTensor& tensor : pending_) {
      if (tensor.info.begin != covered) {
        const std::string what = tensor.info.begin > covered ? "a gap" : "an overlap";
        return fail(ErrorCode::kParse,
                    "tensor " + quote_for_message(tensor.info.name) + " starts at data offset " +
                        std::to_string(tensor.info.begin) + " but the tensors before it end at " +
                        std::to_string(covered) + " (" + what + " in the data section)",
                    tensor.input_offset);
      }
      covered = tensor.info.end;
      header_.tensors.push_back(std::move(tensor.info));
    }
    header_.header_size = header_size;
    return std::move(header_);
  }

  Error take_error() { return std::move(error_); }

 private:
  enum class Expect {
    kRootObject, kRootKey, kMetadataValue, kMetadataKey, kMetadataString, kTensorObject, kTensorField,
    kDtype, kShapeArray, kShapeItem, kOffsetsArray, kOffsetsItem, kDone,
  };

  uint64_t input_offset() const { return text_offset_ + static_cast<uint64_t>(*furthest_ - text_begin_); }
  PendingTensor& current() { return pending_.back(); }
  std::string tensor_context() { return "tensor " + quote_for_message(current().info.name) + ": "; }

  bool refuse(ErrorCode code, std::string message) {
    error_ = Error{code, std::move(message), input_offset()};
    return false;
  }

  // Any event the current state does not expect: says what was expected there.
  bool unexpected() {
    switch (expect_) {
      case Expect::kRootObject: return refuse(ErrorCode::kParse, "header must be a JSON object");
      case Expect::kMetadataValue:
      case Expect::kMetadataString:
        return refuse(ErrorCode::kParse, "\"__metadata__\" must be an object whose values are strings");
      case Expect::kTensorObject:
        return refuse(ErrorCode::kParse, tensor_context() + "must be an object with dtype, shape and data_offsets");
      case Expect::kDtype: return refuse(ErrorCode::kParse, tensor_context() + "dtype must be a string");
      case Expect::kShapeArray:
      case Expect::kShapeItem:
        return refuse(ErrorCode::kParse, tensor_context() + "shape must be an array of non-negative integers");
      case Expect::kOffsetsArray:
      case Expect::kOffsetsItem:
        return refuse(ErrorCode::kParse, tensor_context() + "data_offsets must be [begin, end] of non-negative integers");
      default: return refuse(ErrorCode::kParse, "unexpected JSON value in the header");
    }
  }

  bool root_key(std::string&& key) {
    if (!root_keys_.insert(key).second) return refuse(ErrorCode::kParse, "duplicate key " + quote_for_message(key));
    if (key == kReservedMetadataKey) {
      expect_ = Expect::kMetadataValue;
      return true;
    }
    if (pending_.size() >= limits_.max_tensor_count) {
      return refuse(ErrorCode::kLimitExceeded, "header declares more than " + std::to_string(limits_.max_tensor_count) +
                                                   " tensors (max_tensor_count)");
    }
    PendingTensor tensor;
    tensor.info.name = std::move(key);
    tensor.input_offset = input_offset();
    pending_.push_back(std::move(tensor));
    expect_ = Expect::kTensorObject;
    return true;
  }

  bool tensor_field(const std::string& field) {
    PendingTensor& tensor = current();
    bool* seen = nullptr;
    Expect next = Expect::kDone;
    if (field == "dtype") {
      seen = &tensor.has_dtype;
      next = Expect::kDtype;
    } else if (field == "shape") {
      seen = &tensor.has_shape;
      next = Expect::kShapeArray;
    } else if (field == "data_offsets") {
      seen = &tensor.has_offsets;
      next = Expect::kOffsetsArray;
    } else {
      return refuse(ErrorCode::kParse, tensor_context() + "unknown field " + quote_for_message(field) +
                                           " (a tensor has exactly dtype, shape and data_offsets)");
    }
    if (*seen) return refuse(ErrorCode::kParse, tensor_context() + "duplicate key " + quote_for_message(field));
    *seen = true;
    expect_ = next;
    return true;
  }

  bool finish_tensor() {
    const PendingTensor& tensor = current();
    if (!tensor.has_dtype || !tensor.has_shape || !tensor.has_offsets) {
      return refuse(ErrorCode::kParse, tensor_context() + "missing " +
                                           (!tensor.has_dtype ? "dtype" : !tensor.has_shape ? "shape" : "data_offsets"));
    }
    const SafetensorsTensorInfo& info = tensor.info;
    if (info.end < info.begin) {
      return refuse(ErrorCode::kParse, tensor_context() + "data_offsets end " + std::to_string(info.end) +
                                           " is before begin " + std::to_string(info.begin));
    }
    auto expected = safetensors_byte_size(info.dtype, info.shape);
    if (!expected) return refuse(ErrorCode::kParse, tensor_context() + expected.error().message);
    if (info.end - info.begin != *expected) {
      return refuse(ErrorCode::kParse, tensor_context() + "data_offsets span " + std::to_string(info.end - info.begin) +
                                           " bytes but " + std::string(safetensors_dtype_name(info.dtype)) +
                                           " with this shape needs " + std::to_string(*expected));
    }
    expect_ = Expect::kRootKey;
    return true;
  }

  const char* text_begin_;
  const char* const* furthest_;
  uint64_t text_offset_;
  const SafetensorsLimits& limits_;
  Expect expect_ = Expect::kRootObject;
  std::unordered_set<std::string> root_keys_;
  std::string metadata_key_;
  std::vector<PendingTensor> pending_;
  SafetensorsHeader header_;
  Error error_;
};

// ---- Writing -----------------------------------------------------------------------------------

// JSON string literal, escaped like serde_json: quote, backslash and control characters only.
void append_json_string(std::string& out, std::string_view text) {
  constexpr char kHex[] = "0123456789abcdef";
  out += '"';
  for (char c : text) {
    const auto byte = static_cast<uint8_t>(c);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (byte < 0x20) {
          out += "\\u00";
          out += kHex[byte >> 4];
          out += kHex[byte & 0xf];
        } else {
          out += c;
        }
    }
  }
  out += '"';
}

void append_uint_array(std::string& out, const std::vector<uint64_t>& values) {
  out += '[';
  for (size_t i = 0; i < values.size(); ++i) {
    if (i != 0) out += ',';
    out += std::to_string(values[i]);
  }
  out += ']';
}

Status copy_range(const ByteSource& source, uint64_t offset, uint64_t length, ByteSink& sink) {
  std::vector<uint8_t> buffer(static_cast<size_t>(std::min<uint64_t>(length, kCopyChunk)));
  while (length > 0) {
    const auto chunk = std::span<uint8_t>(buffer).first(static_cast<size_t>(std::min<uint64_t>(length, buffer.size())));
    ZG_TRY(source.read_at(offset, chunk));
    ZG_TRY(sink.write(std::span<const uint8_t>(chunk)));
    offset += chunk.size();
    length -= chunk.size();
  }
  return {};
}

Status invalid(std::string message) { return fail(ErrorCode::kInvalidArgument, std::move(message)); }

}  // namespace

std::string_view safetensors_dtype_name(SafetensorsDtype dtype) { return info_of(dtype).name; }

std::optional<SafetensorsDtype> safetensors_dtype_from_name(std::string_view name) {
  for (const DtypeInfo& info : kDtypes) {
    if (info.name == name) return info.dtype;
  }
  return std::nullopt;
}

uint32_t safetensors_dtype_bits(SafetensorsDtype dtype) { return info_of(dtype).bits; }

Result<uint64_t> safetensors_byte_size(SafetensorsDtype dtype, const std::vector<uint64_t>& shape) {
  uint64_t elements = 1;
  for (uint64_t dimension : shape) {
    auto product = checked_mul(elements, dimension);
    if (!product) return fail(ErrorCode::kParse, "shape has more elements than fit in 64 bits");
    elements = *product;
  }
  auto bits = checked_mul(elements, safetensors_dtype_bits(dtype));
  if (!bits) return fail(ErrorCode::kParse, "shape needs more bytes than fit in 64 bits");
  if (*bits % 8 != 0) {
    return fail(ErrorCode::kParse, std::to_string(elements) + " elements of " + std::string(safetensors_dtype_name(dtype)) +
                                       " do not fill whole bytes");
  }
  return *bits / 8;
}

Result<SafetensorsHeader> parse_safetensors_header(const ByteSource& source, const SafetensorsLimits& limits) {
  const uint64_t size = source.size();
  if (size < kLengthFieldSize) {
    return fail(ErrorCode::kParse, "input of " + std::to_string(size) + " bytes is too short for the 8-byte header length", 0);
  }
  std::array<uint8_t, kLengthFieldSize> length_field{};
  ZG_TRY(source.read_at(0, length_field));
  uint64_t header_size = 0;
  for (size_t i = 0; i < kLengthFieldSize; ++i) header_size |= uint64_t{length_field[i]} << (8 * i);
  if (header_size > limits.max_header_size) {
    return fail(ErrorCode::kLimitExceeded, "header of " + std::to_string(header_size) + " bytes exceeds the limit of " +
                                               std::to_string(limits.max_header_size) + " (max_safetensors_header_size)",
                0);
  }
  if (header_size > size - kLengthFieldSize) {
    return fail(ErrorCode::kParse, "header length " + std::to_string(header_size) + " runs past the end of the input (" +
                                       std::to_string(size) + " bytes)",
                0);
  }
  auto header_bytes = source.read_vector(kLengthFieldSize, static_cast<size_t>(header_size));
  if (!header_bytes) return fail(header_bytes.error());
  const auto* text = reinterpret_cast<const char*>(header_bytes->data());
  if (header_size == 0 || text[0] != '{') {
    return fail(ErrorCode::kParse, "header must begin with '{'", kLengthFieldSize);
  }

  const char* furthest = text;
  HeaderBuilder builder(text, &furthest, kLengthFieldSize, limits);
  const bool parsed = nlohmann::json::sax_parse(TrackedCursor(text, &furthest), TrackedCursor(text + header_size, &furthest),
                                                &builder, nlohmann::json::input_format_t::json, /*strict=*/true,
                                                /*ignore_comments=*/false);
  if (!parsed) return fail(builder.take_error());
  auto header = builder.finish(header_size);
  if (!header) return header;

  const uint64_t data_size = header->data_size();
  const uint64_t available = size - header->data_offset();
  if (data_size != available) {
    const std::string what = data_size < available
                                 ? std::to_string(available - data_size) + " bytes follow the last tensor"
                                 : "the input ends " + std::to_string(data_size - available) + " bytes early";
    return fail(ErrorCode::kParse,
                "tensors cover " + std::to_string(data_size) + " bytes of data but the data section holds " +
                    std::to_string(available) + ": " + what,
                header->data_offset() + std::min(data_size, available));
  }
  return header;
}

Status write_safetensors(const std::vector<SafetensorsTensorSpec>& tensors, const SafetensorsMetadata& metadata,
                         ByteSink& sink) {
  std::set<std::string_view> names;
  std::vector<uint64_t> byte_sizes;
  byte_sizes.reserve(tensors.size());
  for (const SafetensorsTensorSpec& tensor : tensors) {
    const std::string quoted = quote_for_message(tensor.name);
    if (!is_valid_utf8(tensor.name)) return invalid("tensor name " + quoted + " is not valid UTF-8");
    if (tensor.name == kReservedMetadataKey) return invalid("a tensor cannot be named \"__metadata__\"");
    if (!names.insert(tensor.name).second) return invalid("two tensors are named " + quoted);
    if (tensor.source == nullptr) return invalid("tensor " + quoted + " has no source");
    auto byte_size = safetensors_byte_size(tensor.dtype, tensor.shape);
    if (!byte_size) return invalid("tensor " + quoted + ": " + byte_size.error().message);
    if (!range_fits(tensor.source_offset, *byte_size, tensor.source->size())) {
      return invalid("tensor " + quoted + ": its " + std::to_string(*byte_size) + " bytes at " +
                     std::to_string(tensor.source_offset) + " lie outside its source");
    }
    byte_sizes.push_back(*byte_size);
  }
  for (const auto& [key, value] : metadata) {
    if (!is_valid_utf8(key) || !is_valid_utf8(value)) {
      return invalid("metadata entry " + quote_for_message(key) + " is not valid UTF-8");
    }
  }

  std::vector<size_t> order(tensors.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::sort(order.begin(), order.end(), [&tensors](size_t a, size_t b) {
    if (tensors[a].dtype != tensors[b].dtype) return tensors[a].dtype > tensors[b].dtype;
    return tensors[a].name < tensors[b].name;
  });

  std::string header = "{";
  if (!metadata.empty()) {
    append_json_string(header, kReservedMetadataKey);
    header += ":{";
    bool first = true;
    for (const auto& [key, value] : metadata) {
      if (!first) header += ',';
      first = false;
      append_json_string(header, key);
      header += ':';
      append_json_string(header, value);
    }
    header += '}';
  }
  uint64_t data_end = 0;
  for (size_t index : order) {
    const SafetensorsTensorSpec& tensor = tensors[index];
    const uint64_t begin = data_end;
    auto end = checked_add(begin, byte_sizes[index]);
    if (!end) return invalid("tensors hold more bytes than fit in 64 bits");
    data_end = *end;
    if (header.size() > 1) header += ',';
    append_json_string(header, tensor.name);
    header += ":{\"dtype\":";
    append_json_string(header, safetensors_dtype_name(tensor.dtype));
    header += ",\"shape\":";
    append_uint_array(header, tensor.shape);
    header += ",\"data_offsets\":";
    append_uint_array(header, {begin, data_end});
    header += '}';
  }
  header += '}';
  header.append((kHeaderAlignment - header.size() % kHeaderAlignment) % kHeaderAlignment, ' ');
  if (header.size() > kSafetensorsReferenceMaxHeaderSize) {
    return invalid("header of " + std::to_string(header.size()) + " bytes exceeds the " +
                   std::to_string(kSafetensorsReferenceMaxHeaderSize) + " bytes safetensors can read");
  }

  std::array<uint8_t, kLengthFieldSize> length_field{};
  for (size_t i = 0; i < kLengthFieldSize; ++i) length_field[i] = static_cast<uint8_t>(uint64_t{header.size()} >> (8 * i));
  ZG_TRY(sink.write(std::span<const uint8_t>(length_field)));
  ZG_TRY(sink.write(std::string_view(header)));
  for (size_t index : order) {
    ZG_TRY(copy_range(*tensors[index].source, tensors[index].source_offset, byte_sizes[index], sink));
  }
  return {};
}

}  // namespace zoogate::cdr
