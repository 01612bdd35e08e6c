// SHA-256 through OpenSSL's EVP interface (which uses the SHA-NI instructions where the CPU has them).
//
// A Sha256 object hashes one stream; it is not thread-safe. Moving is allowed, copying is not.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "common/error.h"

namespace zoogate {

class ByteSource;

class Sha256 {
 public:
  using Digest = std::array<uint8_t, 32>;

  Sha256();
  ~Sha256();
  Sha256(Sha256&&) noexcept;
  Sha256& operator=(Sha256&&) noexcept;

  void update(std::span<const uint8_t> bytes);
  void update(std::string_view text) {
    update(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(text.data()), text.size()));
  }
  // Returns the digest and resets the object for a new stream.
  Digest finish();

  static Digest of(std::span<const uint8_t> bytes);
  static Digest of(std::string_view text);
  // Streams [offset, offset + length) of a source through the hash in bounded chunks.
  static Result<Digest> of_range(const ByteSource& source, uint64_t offset, uint64_t length);

 private:
  struct Context;
  std::unique_ptr<Context> context_;
};

}  // namespace zoogate
