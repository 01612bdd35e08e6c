#include "common/sha256.h"

#include <algorithm>
#include <cstdlib>
#include <vector>

#include <openssl/evp.h>

#include "common/byte_source.h"

namespace zoogate {

struct Sha256::Context {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  ~Context() { EVP_MD_CTX_free(ctx); }
};

namespace {
// Allocation or initialisation failure of a digest context means the process cannot do its job at
// all; it is not something input can trigger, so it aborts rather than threading an error everywhere.
void must(int ok) {
  if (ok != 1) std::abort();
}
}  // namespace

Sha256::Sha256() : context_(std::make_unique<Context>()) {
  if (context_->ctx == nullptr) std::abort();
  must(EVP_DigestInit_ex(context_->ctx, EVP_sha256(), nullptr));
}

Sha256::~Sha256() = default;
Sha256::Sha256(Sha256&&) noexcept = default;
Sha256& Sha256::operator=(Sha256&&) noexcept = default;

void Sha256::update(std::span<const uint8_t> bytes) {
  must(EVP_DigestUpdate(context_->ctx, bytes.data(), bytes.size()));
}

Sha256::Digest Sha256::finish() {
  Digest digest{};
  unsigned int length = 0;
  must(EVP_DigestFinal_ex(context_->ctx, digest.data(), &length));
  must(EVP_DigestInit_ex(context_->ctx, EVP_sha256(), nullptr));
  return digest;
}

Sha256::Digest Sha256::of(std::span<const uint8_t> bytes) {
  Sha256 hash;
  hash.update(bytes);
  return hash.finish();
}

Sha256::Digest Sha256::of(std::string_view text) {
  Sha256 hash;
  hash.update(text);
  return hash.finish();
}

Result<Sha256::Digest> Sha256::of_range(const ByteSource& source, uint64_t offset, uint64_t length) {
  constexpr uint64_t kChunk = 1 << 20;
  std::vector<uint8_t> buffer(static_cast<size_t>(std::min(length, kChunk)));
  Sha256 hash;
  while (length > 0) {
    size_t take = static_cast<size_t>(std::min<uint64_t>(length, buffer.size()));
    ZG_TRY(source.read_at(offset, std::span(buffer.data(), take)));
    hash.update(std::span<const uint8_t>(buffer.data(), take));
    offset += take;
    length -= take;
  }
  return hash.finish();
}

}  // namespace zoogate
