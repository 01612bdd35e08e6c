#include "cdr/zip_format.h"

#include <limits>

#include <zlib.h>

namespace zoogate::cdr::zip {
namespace {

std::string quoted(std::string_view name) { return "'" + std::string(name) + "'"; }

Status refuse_name(std::string_view name, std::string_view why) {
  return fail(ErrorCode::kForbidden, "entry name " + quoted(name) + " " + std::string(why));
}

std::string ascii_lowercase(std::string_view text) {
  std::string out(text);
  for (char& c : out) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return out;
}

}  // namespace

uint32_t crc32_update(uint32_t crc, std::span<const uint8_t> bytes) {
  // zlib takes a uInt length; feed it in pieces that fit.
  constexpr size_t kMaxPiece = std::numeric_limits<uInt>::max() & ~size_t{0xFFFF};
  uLong value = crc;
  while (!bytes.empty()) {
    size_t piece = bytes.size() < kMaxPiece ? bytes.size() : kMaxPiece;
    value = ::crc32(value, bytes.data(), static_cast<uInt>(piece));
    bytes = bytes.subspan(piece);
  }
  return static_cast<uint32_t>(value);
}

bool is_valid_utf8(std::string_view text) {
  size_t i = 0;
  while (i < text.size()) {
    auto lead = static_cast<uint8_t>(text[i]);
    if (lead < 0x80) {
      ++i;
      continue;
    }
    size_t length = 0;
    uint32_t code_point = 0;
    uint32_t min_code_point = 0;
    if ((lead & 0xE0) == 0xC0) {
      length = 2, code_point = lead & 0x1Fu, min_code_point = 0x80;
    } else if ((lead & 0xF0) == 0xE0) {
      length = 3, code_point = lead & 0x0Fu, min_code_point = 0x800;
    } else if ((lead & 0xF8) == 0xF0) {
      length = 4, code_point = lead & 0x07u, min_code_point = 0x10000;
    } else {
      return false;  // continuation byte without a lead, or a 5/6-byte form
    }
    if (text.size() - i < length) return false;
    for (size_t k = 1; k < length; ++k) {
      auto next = static_cast<uint8_t>(text[i + k]);
      if ((next & 0xC0) != 0x80) return false;
      code_point = (code_point << 6) | (next & 0x3Fu);
    }
    if (code_point < min_code_point || code_point > 0x10FFFF) return false;
    if (code_point >= 0xD800 && code_point <= 0xDFFF) return false;
    i += length;
  }
  return true;
}

Status EntryNames::add(std::string_view name) {
  if (name.empty()) return fail(ErrorCode::kForbidden, "entry name is empty");
  if (!is_valid_utf8(name)) return refuse_name(name, "is not valid UTF-8");
  for (char c : name) {
    auto byte = static_cast<uint8_t>(c);
    if (byte < 0x20 || byte == 0x7F) return refuse_name(name, "contains a control character");
    if (c == '\\') return refuse_name(name, "contains a backslash");
    if (c == ':') return refuse_name(name, "contains ':' (a drive letter or stream name on Windows)");
  }
  if (name.front() == '/') return refuse_name(name, "is an absolute path");
  if (name.back() == '/') return refuse_name(name, "is a directory entry");

  std::string_view first_segment;
  size_t segments = 0;
  size_t start = 0;
  while (start <= name.size()) {
    size_t end = name.find('/', start);
    if (end == std::string_view::npos) end = name.size();
    std::string_view segment = name.substr(start, end - start);
    if (segment.empty()) return refuse_name(name, "has an empty path segment");
    if (segment == "." || segment == "..") return refuse_name(name, "has a '.' or '..' path segment");
    if (segments++ == 0) first_segment = segment;
    start = end + 1;
  }
  if (segments < 2) return refuse_name(name, "is not inside a top-level folder");
  if (top_folder_.empty()) {
    top_folder_ = std::string(first_segment);
  } else if (first_segment != top_folder_) {
    return refuse_name(name, "is in a second top-level folder (the first is " + quoted(top_folder_) + ")");
  }

  auto [existing, inserted] = by_folded_name_.try_emplace(ascii_lowercase(name), name);
  if (!inserted) {
    if (existing->second == name) return refuse_name(name, "appears twice");
    return refuse_name(name, "differs from " + quoted(existing->second) + " only in letter case");
  }
  return {};
}

}  // namespace zoogate::cdr::zip
