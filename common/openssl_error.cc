#include "common/openssl_error.h"

#include <array>

#include <openssl/err.h>

namespace zoogate {

std::string openssl_reason() {
  const unsigned long code = ERR_peek_last_error();
  std::string reason = "unknown OpenSSL error";
  if (code != 0) {
    std::array<char, 256> text{};
    ERR_error_string_n(code, text.data(), text.size());
    reason = text.data();
  }
  ERR_clear_error();
  return reason;
}

}  // namespace zoogate
