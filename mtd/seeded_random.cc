#include "mtd/seeded_random.h"

#include <cstdlib>
#include <numeric>
#include <utility>

#include <openssl/evp.h>

namespace zoogate::mtd {

struct SeededRandom::Cipher {
  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  ~Cipher() { EVP_CIPHER_CTX_free(ctx); }
};

namespace {
// A cipher context that cannot be created or keyed means OpenSSL itself is unusable: no input can
// cause it, so it aborts (as common/sha256.cc does) instead of making every draw fallible.
void must(int ok) {
  if (ok != 1) std::abort();
}
}  // namespace

SeededRandom::SeededRandom(const std::array<uint8_t, 32>& key) : cipher_(std::make_unique<Cipher>()) {
  if (cipher_->ctx == nullptr) std::abort();
  // The key is used for this one stream only, so an all-zero counter and nonce are safe.
  const std::array<uint8_t, 16> counter_and_nonce{};
  must(EVP_EncryptInit_ex(cipher_->ctx, EVP_chacha20(), nullptr, key.data(), counter_and_nonce.data()));
  used_ = block_.size();
}

SeededRandom::~SeededRandom() = default;
SeededRandom::SeededRandom(SeededRandom&&) noexcept = default;
SeededRandom& SeededRandom::operator=(SeededRandom&&) noexcept = default;

void SeededRandom::refill() {
  // Encrypting zeros yields the keystream itself.
  const std::array<uint8_t, sizeof block_> zeros{};
  int length = 0;
  must(EVP_EncryptUpdate(cipher_->ctx, block_.data(), &length, zeros.data(), static_cast<int>(zeros.size())));
  if (length != static_cast<int>(block_.size())) std::abort();
  used_ = 0;
}

uint64_t SeededRandom::next() {
  if (used_ + 8 > block_.size()) refill();
  uint64_t value = 0;
  for (int i = 7; i >= 0; --i) value = value << 8 | block_[used_ + static_cast<size_t>(i)];
  used_ += 8;
  return value;
}

uint64_t SeededRandom::below(uint64_t bound) {
  // Values under 2^64 mod bound would make the low results more likely; they are drawn again.
  const uint64_t threshold = (0 - bound) % bound;
  while (true) {
    const uint64_t value = next();
    if (value >= threshold) return value % bound;
  }
}

std::vector<uint32_t> SeededRandom::permutation(uint32_t size) {
  std::vector<uint32_t> order(size);
  std::iota(order.begin(), order.end(), 0u);
  for (uint32_t i = size; i > 1; --i) std::swap(order[i - 1], order[below(i)]);
  return order;
}

}  // namespace zoogate::mtd
