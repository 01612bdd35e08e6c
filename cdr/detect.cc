#include "cdr/detect.h"

#include <algorithm>
#include <array>
#include <span>
#include <vector>

#include "cdr/message_text.h"
#include "cdr/pickle_opcodes.h"
#include "common/encoding.h"

namespace zoogate::cdr {
namespace {

using Bytes = std::span<const uint8_t>;
using namespace std::string_view_literals;

bool has_prefix_at(Bytes head, size_t offset, std::string_view magic) {
  if (offset > head.size() || head.size() - offset < magic.size()) return false;
  return std::equal(magic.begin(), magic.end(), head.begin() + static_cast<std::ptrdiff_t>(offset),
                    [](char expected, uint8_t actual) { return static_cast<uint8_t>(expected) == actual; });
}

uint64_t read_le(Bytes bytes, size_t offset, size_t width) {
  uint64_t value = 0;
  for (size_t i = 0; i < width; ++i) value |= uint64_t{bytes[offset + i]} << (8 * i);
  return value;
}

std::string hex_prefix(Bytes head, size_t count) { return to_hex(head.first(std::min(count, head.size()))); }

Detection found(ContentKind kind, std::string reason) { return Detection{kind, std::nullopt, std::move(reason)}; }

// ---- Formats with a fixed signature at offset 0 -------------------------------------------------

struct Signature {
  ContentKind kind;
  std::string_view magic;
  std::string_view what;
};

// zip's own variants come first so that their reason names them.
constexpr std::array kSignatures = {
    Signature{ContentKind::kNpy, "\x93NUMPY"sv, "NumPy .npy magic"},
    Signature{ContentKind::kZip, "PK\x03\x04"sv, "ZIP local file header"},
    Signature{ContentKind::kSevenZip, "7z\xBC\xAF\x27\x1C"sv, "7-Zip signature"},
    Signature{ContentKind::kGzip, "\x1F\x8B\x08"sv, "gzip member header (deflate)"},
    Signature{ContentKind::kXz, "\xFD" "7zXZ\x00"sv, "xz stream header"},
    Signature{ContentKind::kZstd, "\x28\xB5\x2F\xFD"sv, "Zstandard frame magic"},
    Signature{ContentKind::kLz4, "\x04\x22\x4D\x18"sv, "LZ4 frame magic"},
    Signature{ContentKind::kRar, "Rar!\x1A\x07\x00"sv, "RAR 4 signature"},
    Signature{ContentKind::kRar, "Rar!\x1A\x07\x01\x00"sv, "RAR 5 signature"},
    Signature{ContentKind::kGguf, "GGUF"sv, "GGUF magic (llama.cpp model)"},
    Signature{ContentKind::kHdf5, "\x89HDF\r\n\x1A\n"sv, "HDF5 signature (Keras .h5)"},
};

// ZIP records other than a local file header at offset 0: valid ZIP structures, but not an archive
// zoogate reads from the front.
constexpr std::array kZipVariants = {
    Signature{ContentKind::kUnknown, "PK\x05\x06"sv, "an empty ZIP archive (end-of-central-directory record only)"},
    Signature{ContentKind::kUnknown, "PK\x07\x08"sv, "a split or spanned ZIP archive"},
    Signature{ContentKind::kUnknown, "PK\x01\x02"sv, "a ZIP central directory without local headers"},
    Signature{ContentKind::kUnknown, "PK\x06\x06"sv, "a ZIP64 end-of-central-directory record"},
};

std::optional<Detection> detect_signature(Bytes head) {
  for (const Signature& signature : kSignatures) {
    if (has_prefix_at(head, 0, signature.magic)) return found(signature.kind, std::string(signature.what) + " at offset 0");
  }
  for (const Signature& variant : kZipVariants) {
    if (has_prefix_at(head, 0, variant.magic)) return found(ContentKind::kUnknown, "input is " + std::string(variant.what));
  }
  // bzip2: "BZh", the block size digit, then the first block's or the end-of-stream magic.
  if (has_prefix_at(head, 0, "BZh") && head.size() >= 10 && head[3] >= '1' && head[3] <= '9' &&
      (has_prefix_at(head, 4, "\x31\x41\x59\x26\x53\x59"sv) || has_prefix_at(head, 4, "\x17\x72\x45\x38\x50\x90"sv))) {
    return found(ContentKind::kBzip2, "bzip2 stream header at offset 0");
  }
  return std::nullopt;
}

// ---- tar ---------------------------------------------------------------------------------------

constexpr size_t kTarBlock = 512;
constexpr size_t kTarMagicOffset = 257;
constexpr size_t kTarChecksumOffset = 148;
constexpr size_t kTarChecksumWidth = 8;

// The header checksum is the sum of the header bytes with the checksum field read as spaces; tar
// implementations have stored both the unsigned and the signed sum.
bool tar_checksum_matches(Bytes header) {
  uint64_t stored = 0;
  size_t i = kTarChecksumOffset;
  const size_t end = kTarChecksumOffset + kTarChecksumWidth;
  while (i < end && header[i] == ' ') ++i;
  size_t digits = 0;
  for (; i < end && header[i] >= '0' && header[i] <= '7'; ++i, ++digits) stored = stored * 8 + (header[i] - '0');
  if (digits == 0) return false;
  for (; i < end; ++i) {
    if (header[i] != ' ' && header[i] != '\0') return false;
  }
  uint64_t unsigned_sum = 0;
  int64_t signed_sum = 0;
  for (size_t j = 0; j < kTarBlock; ++j) {
    const bool in_field = j >= kTarChecksumOffset && j < end;
    const uint8_t byte = in_field ? uint8_t{' '} : header[j];
    unsigned_sum += byte;
    signed_sum += static_cast<int8_t>(byte);
  }
  return stored == unsigned_sum || static_cast<int64_t>(stored) == signed_sum;
}

std::optional<Detection> detect_tar(Bytes head) {
  const bool posix = has_prefix_at(head, kTarMagicOffset, "ustar\x00" "00"sv);
  const bool gnu = has_prefix_at(head, kTarMagicOffset, "ustar  \x00"sv);
  if (!posix && !gnu) return std::nullopt;
  if (head.size() < kTarBlock) return found(ContentKind::kUnknown, "input has a tar magic at offset 257 but ends inside the header");
  Bytes header = head.first(kTarBlock);
  if (!tar_checksum_matches(header)) {
    return found(ContentKind::kUnknown, "input has a tar magic at offset 257 but its header checksum is wrong");
  }
  const auto name_end = std::find(header.begin(), header.begin() + 100, uint8_t{0});
  const std::string first_member(header.begin(), name_end);
  // PyTorch's legacy tar writer stores these four members and nothing else.
  for (std::string_view torch_member : {"sys_info"sv, "pickle"sv, "storages"sv, "tensors"sv}) {
    if (first_member == torch_member) {
      return found(ContentKind::kTorchTar, "tar archive whose first member is " + quote_for_message(first_member) +
                                               " (PyTorch's legacy tar checkpoint)");
    }
  }
  return found(ContentKind::kTar, "tar archive (ustar header at offset 0, first member " + quote_for_message(first_member) + ")");
}

// ---- safetensors -------------------------------------------------------------------------------

bool is_json_space(uint8_t byte) { return byte == ' ' || byte == '\t' || byte == '\n' || byte == '\r'; }

// An 8-byte little-endian header length N, then a header that opens a JSON object ('{' after optional
// spaces, then a key or '}'). The full rules are parse_safetensors_header's.
std::optional<Detection> detect_safetensors(Bytes head, uint64_t size) {
  constexpr size_t kLengthBytes = 8;
  size_t pos = kLengthBytes;
  while (pos < head.size() && head[pos] == ' ') ++pos;
  if (pos >= head.size() || head[pos] != '{') return std::nullopt;
  ++pos;
  while (pos < head.size() && is_json_space(head[pos])) ++pos;
  if (pos < head.size() && head[pos] != '"' && head[pos] != '}') return std::nullopt;
  const uint64_t header_length = read_le(head, 0, kLengthBytes);
  if (header_length < 2) return std::nullopt;
  if (header_length > size - kLengthBytes) {
    return found(ContentKind::kUnknown, "input looks like a safetensors file, but its header length " +
                                            std::to_string(header_length) + " exceeds the " +
                                            std::to_string(size - kLengthBytes) + " bytes after it");
  }
  return found(ContentKind::kSafetensors,
               "safetensors header of " + std::to_string(header_length) + " bytes opening a JSON object at offset 8");
}

// ---- pickle ------------------------------------------------------------------------------------


constexpr uint8_t kProto = static_cast<uint8_t>(Op::kProto);
constexpr uint8_t kFrame = static_cast<uint8_t>(Op::kFrame);
constexpr uint8_t kStop = static_cast<uint8_t>(Op::kStop);
constexpr uint8_t kHighestPickleProtocol = 5;


const PickleOpcode* find_opcode(uint8_t code) {
  for (const PickleOpcode& opcode : kPickleOpcodes) {
    if (opcode.code == code) return &opcode;
  }
  return nullptr;
}

// Opcodes that can begin a pickle without PROTO: the protocol 0/1 opcodes that push a value or a mark
// and pop nothing (LIST, DICT, TUPLE and the like pop to a mark, so no valid stream starts with them).
constexpr std::string_view kProtocol01StartOpcodes = "(]})NILFSVcPGJKMTUX";

bool is_digit(uint8_t byte) { return byte >= '0' && byte <= '9'; }
bool is_name_char(uint8_t byte) {
  return is_digit(byte) || (byte >= 'A' && byte <= 'Z') || (byte >= 'a' && byte <= 'z') || byte == '_' || byte == '.';
}

bool is_decimal(Bytes line, bool allow_sign, bool allow_long_suffix) {
  size_t i = 0;
  if (allow_sign && i < line.size() && line[i] == '-') ++i;
  if (allow_long_suffix && !line.empty() && line.back() == 'L') line = line.first(line.size() - 1);
  if (i >= line.size()) return false;
  return std::all_of(line.begin() + static_cast<std::ptrdiff_t>(i), line.end(), is_digit);
}

bool line_is_well_formed(PickleOperand operand, Bytes line) {
  switch (operand) {
    case PickleOperand::kIntLine: return is_decimal(line, true, false);
    case PickleOperand::kLongLine: return is_decimal(line, true, true);
    case PickleOperand::kMemoLine: return is_decimal(line, false, false);
    case PickleOperand::kFloatLine:
      return !line.empty() && std::all_of(line.begin(), line.end(), [](uint8_t b) {
        return is_digit(b) || b == '+' || b == '-' || b == '.' || (b >= 'A' && b <= 'Z') || (b >= 'a' && b <= 'z');
      });
    case PickleOperand::kQuotedLine:
      return line.size() >= 2 && (line[0] == '\'' || line[0] == '"') && line.back() == line[0];
    case PickleOperand::kPrintableLine:
      return std::all_of(line.begin(), line.end(), [](uint8_t b) { return b >= 0x20 && b < 0x7f; });
    case PickleOperand::kNameLines: return !line.empty() && std::all_of(line.begin(), line.end(), is_name_char);
    case PickleOperand::kAnyLine: return true;
    default: return false;
  }
}

// What a look at the first opcodes of a would-be pickle found.
struct PickleScan {
  bool well_formed = true;
  std::string problem;         // set when !well_formed
  size_t opcodes = 0;          // complete opcodes read
  bool window_exhausted = false;  // stopped because the next bytes lie past the detection window
  uint8_t highest_protocol = 0;
};

constexpr size_t kMaxScannedOpcodes = 64;

// Walks opcodes from offset 0 until STOP, kMaxScannedOpcodes, or the end of the window, checking that
// each is a known opcode with a well-formed operand. No stack is simulated: this proves the bytes are
// shaped like a pickle, and the pickle VM decides everything else.
PickleScan scan_pickle_opcodes(Bytes head, uint64_t size) {
  PickleScan scan;
  auto malformed = [&scan](size_t offset, std::string what) {
    scan.well_formed = false;
    scan.problem = std::move(what) + " at offset " + std::to_string(offset);
    return scan;
  };
  // True when [offset, offset + length) is inside the window. Otherwise sets `beyond_input` when the
  // range is not inside the input either, or window_exhausted when it is (the window ends first).
  auto visible = [&](uint64_t offset, uint64_t length, bool& beyond_input) {
    beyond_input = length > size - offset;
    if (beyond_input) return false;
    if (length <= head.size() - offset) return true;
    scan.window_exhausted = true;
    return false;
  };
  size_t pos = 0;
  while (scan.opcodes < kMaxScannedOpcodes && pos < head.size()) {
    const size_t opcode_offset = pos;
    const PickleOpcode* opcode = find_opcode(head[pos]);
    if (opcode == nullptr) return malformed(pos, "byte 0x" + hex_prefix(head.subspan(pos), 1) + " is no pickle opcode");
    ++pos;
    bool beyond_input = false;
    size_t fixed = 0;
    size_t length_width = 0;
    switch (opcode->operand) {
      case PickleOperand::kNone: break;
      case PickleOperand::kFixed1: fixed = 1; break;
      case PickleOperand::kFixed2: fixed = 2; break;
      case PickleOperand::kFixed4: fixed = 4; break;
      case PickleOperand::kFixed8: fixed = 8; break;
      case PickleOperand::kLength1: length_width = 1; break;
      case PickleOperand::kLength4: length_width = 4; break;
      case PickleOperand::kLength8: length_width = 8; break;
      default: {
        const int lines = opcode->operand == PickleOperand::kNameLines ? 2 : 1;
        for (int line = 0; line < lines; ++line) {
          const auto newline = std::find(head.begin() + static_cast<std::ptrdiff_t>(pos), head.end(), uint8_t{'\n'});
          if (newline == head.end()) return malformed(opcode_offset, std::string(opcode->name) + " line without '\\n'");
          const size_t line_end = static_cast<size_t>(newline - head.begin());
          if (!line_is_well_formed(opcode->operand, head.subspan(pos, line_end - pos))) {
            return malformed(opcode_offset, "malformed " + std::string(opcode->name) + " operand");
          }
          pos = line_end + 1;
        }
      }
    }
    if (fixed != 0) {
      if (!visible(pos, fixed, beyond_input)) {
        if (beyond_input) return malformed(opcode_offset, std::string(opcode->name) + " operand past the end");
        break;
      }
      pos += fixed;
    }
    if (length_width != 0) {
      if (!visible(pos, length_width, beyond_input)) {
        if (beyond_input) return malformed(opcode_offset, std::string(opcode->name) + " length past the end");
        break;
      }
      const uint64_t length = read_le(head, pos, length_width);
      pos += length_width;
      if (!visible(pos, length, beyond_input)) {
        if (beyond_input) return malformed(opcode_offset, std::string(opcode->name) + " data past the end");
        break;
      }
      pos += static_cast<size_t>(length);
    }
    ++scan.opcodes;
    scan.highest_protocol = std::max(scan.highest_protocol, opcode->protocol);
    if (opcode->code == kStop) break;
  }
  if (pos >= head.size() && head.size() < size) scan.window_exhausted = true;
  if (scan.opcodes < 2 && !scan.window_exhausted) return malformed(pos, "stream ends after " + std::to_string(scan.opcodes) + " opcode(s)");
  return scan;
}

// PyTorch's legacy serialization starts with a pickle of the magic number 0x1950a86a20f9469cfc6c:
// LONG1 after PROTO (and FRAME from protocol 4), or a LONG line in protocols 0 and 1.
bool is_torch_legacy_magic(Bytes head, bool has_proto) {
  constexpr std::string_view kMagicLong1 = "\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19."sv;
  constexpr std::string_view kMagicLongLine = "L119547037146038801333356L\n."sv;
  if (!has_proto) return has_prefix_at(head, 0, kMagicLongLine);
  size_t pos = 2;
  if (pos < head.size() && head[pos] == kFrame) pos += 9;
  return has_prefix_at(head, pos, kMagicLong1);
}

std::optional<Detection> detect_pickle(Bytes head, uint64_t size) {
  const bool has_proto = head[0] == kProto;
  if (has_proto) {
    if (head.size() < 2) return std::nullopt;
    if (head[1] > kHighestPickleProtocol) {
      return found(ContentKind::kUnknown, "input starts with a pickle PROTO opcode naming protocol " +
                                              std::to_string(head[1]) + "; Python knows protocols 0 to 5");
    }
  } else if (kProtocol01StartOpcodes.find(static_cast<char>(head[0])) == std::string_view::npos) {
    return std::nullopt;
  }
  const PickleScan scan = scan_pickle_opcodes(head, size);
  if (!scan.well_formed) {
    if (!has_proto) return std::nullopt;  // a stray letter, most likely text: reported as unknown
    return found(ContentKind::kUnknown, "input starts with pickle PROTO " + std::to_string(head[1]) +
                                            " but is not a pickle: " + scan.problem);
  }
  const uint8_t protocol = has_proto ? head[1] : scan.highest_protocol;
  const std::string how = has_proto ? "PROTO " + std::to_string(protocol) + " at offset 0"
                                    : "protocol " + std::to_string(protocol) + " opcodes from offset 0 (no PROTO)";
  const std::string seen = ", then " + std::to_string(scan.opcodes) + " well-formed opcodes" +
                           (scan.window_exhausted ? " up to the detection window" : "");
  if (is_torch_legacy_magic(head, has_proto)) {
    return Detection{ContentKind::kTorchLegacy, protocol,
                     "PyTorch legacy checkpoint: the first pickle (" + how + ") is the legacy magic number"};
  }
  return Detection{ContentKind::kPickle, protocol, "pickle: " + how + seen};
}

// ---- what is left ------------------------------------------------------------------------------

Detection describe_unknown(Bytes head) {
  if (head.empty()) return found(ContentKind::kUnknown, "input is empty");
  constexpr std::string_view kLocalHeader = "PK\x03\x04"sv;
  for (size_t offset = 1; offset + kLocalHeader.size() <= head.size(); ++offset) {
    if (has_prefix_at(head, offset, kLocalHeader)) {
      return found(ContentKind::kUnknown, "ZIP local header at offset " + std::to_string(offset) + " behind " +
                                              std::to_string(offset) +
                                              " bytes of other data (self-extracting or polyglot file); "
                                              "an archive must start at offset 0");
    }
  }
  const bool text = std::all_of(head.begin(), head.end(), [](uint8_t b) {
    return (b >= 0x20 && b < 0x7f) || b == '\n' || b == '\r' || b == '\t' || b >= 0x80;
  });
  if (text) return found(ContentKind::kUnknown, "input looks like text, not a model file format zoogate knows");
  return found(ContentKind::kUnknown, "no known model file signature; input starts with 0x" + hex_prefix(head, 8));
}

}  // namespace

std::string_view to_string(ContentKind kind) {
  switch (kind) {
    case ContentKind::kPickle: return "pickle";
    case ContentKind::kTorchLegacy: return "torch-legacy";
    case ContentKind::kZip: return "zip";
    case ContentKind::kTorchTar: return "torch-tar";
    case ContentKind::kNpy: return "npy";
    case ContentKind::kSafetensors: return "safetensors";
    case ContentKind::kTar: return "tar";
    case ContentKind::kGzip: return "gzip";
    case ContentKind::kBzip2: return "bzip2";
    case ContentKind::kXz: return "xz";
    case ContentKind::kZstd: return "zstd";
    case ContentKind::kLz4: return "lz4";
    case ContentKind::kSevenZip: return "7z";
    case ContentKind::kRar: return "rar";
    case ContentKind::kGguf: return "gguf";
    case ContentKind::kHdf5: return "hdf5";
    case ContentKind::kUnknown: return "unknown";
  }
  return "unknown";
}

Result<Detection> identify_content(const ByteSource& source) {
  const uint64_t size = source.size();
  auto window = source.read_vector(0, static_cast<size_t>(std::min(size, kDetectionWindow)));
  if (!window) return fail(window.error());
  const Bytes head(*window);
  if (head.empty()) return describe_unknown(head);
  if (auto detection = detect_signature(head)) return *detection;
  if (auto detection = detect_tar(head)) return *detection;
  if (auto detection = detect_safetensors(head, size)) return *detection;
  if (auto detection = detect_pickle(head, size)) return *detection;
  return describe_unknown(head);
}

}  // namespace zoogate::cdr
