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
std::string to_base64(std::span<const uint8_t> bytes);
std::optional<std::vector<uint8_t>> from_base64(std::string_view text);

}  // namespace zoogate
