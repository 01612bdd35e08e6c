// Untrusted text inside error messages.
//
// Names and tokens taken from hostile input end up in logs and in HTTP error headers, so messages
// carry them escaped (every byte outside printable ASCII as \xHH, backslash doubled) and truncated.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace zoogate::cdr {

inline std::string escape_for_message(std::string_view text, size_t max_bytes = 160) {
  constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  const std::string_view shown = text.substr(0, max_bytes);
  for (char c : shown) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte == '\\') {
      out += "\\\\";
    } else if (byte >= 0x20 && byte < 0x7f) {
      out += c;
    } else {
      out += "\\x";
      out += kHex[byte >> 4];
      out += kHex[byte & 0xf];
    }
  }
  if (shown.size() < text.size()) out += "...";
  return out;
}

// 'text', escaped as above.
inline std::string quote_for_message(std::string_view text) { return "'" + escape_for_message(text) + "'"; }

}  // namespace zoogate::cdr
