#include "mtd/variant_seed.h"

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include <fcntl.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <unistd.h>

#include "common/byte_sink.h"
#include "common/encoding.h"
#include "common/sha256.h"

namespace zoogate::mtd {
namespace {

constexpr std::string_view kSeedLabel = "zoogate-mtd-seed-v1";
constexpr std::string_view kSeedIdLabel = "zoogate-mtd-seed-id-v1";

std::span<const uint8_t> as_bytes(std::string_view text) {
  return {reinterpret_cast<const uint8_t*>(text.data()), text.size()};
}

// Appends one part of an HMAC message as an 8-byte big-endian length followed by the bytes, which
// makes the concatenation of parts unambiguous.
void append_part(std::vector<uint8_t>& message, std::span<const uint8_t> part) {
  const uint64_t length = part.size();
  for (int shift = 56; shift >= 0; shift -= 8) message.push_back(static_cast<uint8_t>(length >> shift));
  message.insert(message.end(), part.begin(), part.end());
}

VariantSeed::Bytes hmac_sha256(std::span<const uint8_t> key, std::span<const uint8_t> message) {
  VariantSeed::Bytes out{};
  unsigned int length = 0;
  // HMAC-SHA256 fails only when OpenSSL cannot allocate or find SHA-256: no input can cause that, and
  // the process cannot do its job without it (as in common/sha256.cc).
  if (HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), message.data(), message.size(), out.data(),
           &length) == nullptr ||
      length != out.size()) {
    std::abort();
  }
  return out;
}

std::string_view purpose_label(SeedPurpose purpose) {
  switch (purpose) {
    case SeedPurpose::kFolderName: return "folder-name";
    case SeedPurpose::kRecordOrder: return "record-order";
    case SeedPurpose::kRecordNames: return "record-names";
    case SeedPurpose::kPickleMemo: return "pickle-memo";
    case SeedPurpose::kWeightPermutation: return "weight-permutation";
  }
  std::abort();  // every enumerator is listed above
}

}  // namespace

Result<VariantSeed> VariantSeed::derive(std::span<const uint8_t> secret, std::string_view scope,
                                        std::span<const uint8_t> artifact_digest, uint64_t epoch) {
  if (secret.size() < kMinSecretBytes) {
    return fail(ErrorCode::kInvalidArgument, "the variation secret has " + std::to_string(secret.size()) +
                                                 " bytes; it needs at least " + std::to_string(kMinSecretBytes));
  }
  uint8_t epoch_bytes[8];
  for (int i = 0; i < 8; ++i) epoch_bytes[i] = static_cast<uint8_t>(epoch >> (56 - 8 * i));
  std::vector<uint8_t> message;
  append_part(message, as_bytes(kSeedLabel));
  append_part(message, as_bytes(scope));
  append_part(message, artifact_digest);
  append_part(message, epoch_bytes);
  return VariantSeed(hmac_sha256(secret, message));
}

VariantSeed::Bytes VariantSeed::sub_seed(SeedPurpose purpose, std::string_view detail) const {
  std::vector<uint8_t> message;
  append_part(message, as_bytes(purpose_label(purpose)));
  append_part(message, as_bytes(detail));
  return hmac_sha256(bytes_, message);
}

std::string VariantSeed::id() const {
  Sha256 hash;
  hash.update(kSeedIdLabel);
  hash.update(bytes_);
  Sha256::Digest digest = hash.finish();
  return to_hex(std::span<const uint8_t>(digest).first(8));
}

Result<std::vector<uint8_t>> load_secret(const std::string& path) {
  auto content = read_small_file(path, kMaxSecretBytes);
  if (!content) return tl::unexpected(content.error());
  if (content->size() < kMinSecretBytes) {
    return fail(ErrorCode::kInvalidArgument, "variation secret " + path + " has " +
                                                 std::to_string(content->size()) + " bytes; it needs at least " +
                                                 std::to_string(kMinSecretBytes));
  }
  return std::vector<uint8_t>(content->begin(), content->end());
}

Status create_secret_file(const std::string& path) {
  std::array<uint8_t, kMinSecretBytes> secret{};
  std::array<uint8_t, 8> suffix{};
  if (RAND_bytes(secret.data(), static_cast<int>(secret.size())) != 1 ||
      RAND_bytes(suffix.data(), static_cast<int>(suffix.size())) != 1) {
    return fail(ErrorCode::kInternal, "OpenSSL's random generator failed");
  }
  // Written under a temporary name, then hard-linked to `path`: link(2) publishes the complete file
  // in one step and, unlike rename(2), fails instead of replacing a file that is already there.
  const std::string temp_path = path + ".tmp-" + to_hex(suffix);
  const int fd = ::open(temp_path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return fail(ErrorCode::kIo, "cannot create " + temp_path + ": " + std::strerror(errno));
  Status status;
  size_t done = 0;
  while (status && done < secret.size()) {
    const ssize_t written = ::write(fd, secret.data() + done, secret.size() - done);
    if (written < 0 && errno != EINTR) status = fail(ErrorCode::kIo, "write to " + temp_path + " failed: " + std::strerror(errno));
    if (written > 0) done += static_cast<size_t>(written);
  }
  if (status && ::fsync(fd) != 0) status = fail(ErrorCode::kIo, "fsync of " + temp_path + " failed: " + std::strerror(errno));
  ::close(fd);
  if (status && ::link(temp_path.c_str(), path.c_str()) != 0) {
    status = errno == EEXIST ? fail(ErrorCode::kInvalidArgument, path + " already exists; a secret is never replaced")
                             : fail(ErrorCode::kIo, "cannot create " + path + ": " + std::strerror(errno));
  }
  ::unlink(temp_path.c_str());
  OPENSSL_cleanse(secret.data(), secret.size());
  return status;
}

}  // namespace zoogate::mtd
