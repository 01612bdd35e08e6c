// Pieces of HTTP's field syntax (RFC 9110 section 5.6) shared by the configuration, which accepts
// header names, and the proxy, which reads header values. Pure functions; safe from any thread.
#pragma once

#include <string_view>

namespace zoogate {

// Optional whitespace (OWS) around values and list elements: space and horizontal tab.
inline bool is_ows(char c) { return c == ' ' || c == '\t'; }

// `text` without the optional whitespace at either end.
inline std::string_view trim_ows(std::string_view text) {
  while (!text.empty() && is_ows(text.front())) text.remove_prefix(1);
  while (!text.empty() && is_ows(text.back())) text.remove_suffix(1);
  return text;
}

// A character of a token (tchar): field names, parameter names, methods.
inline bool is_token_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

}  // namespace zoogate
