// Text encodings of binary values (digests in reports, headers and manifests).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace zoogate {

std::string to_hex(std::span<const uint8_t> bytes);
std::optional<std::vector<uint8_t>> from_hex(std::string_view hex);
// True when `bytes` is UTF-8 in its shortest form with no code point above U+10FFFF, as RFC 3629 and
// Python's decoder require. With `allow_surrogates`, lone surrogates (U+D800-U+DFFF) encoded as three
// bytes are accepted too, as Python's "surrogatepass" handler does for pickled str.
bool is_valid_utf8(std::string_view bytes, bool allow_surrogates = false);

std::string to_base64(std::span<const uint8_t> bytes);
std::optional<std::vector<uint8_t>> from_base64(std::string_view text);

}  // namespace zoogate
