// Fuzzes what signed manifests parse: the Sigstore bundle / DSSE envelope (read before any signature
// is checked), the statement and zoogate's manifest JSON (read after it: the input is also signed
// here with a fixed test key, so those checks are reached), and the description of arbitrary files
// (PyTorch archives: tensor naming and view hashing on top of the CDR parsers).
//
// Invariants checked beyond "no crash, no leak, no sanitizer report":
//   - a file's facts are self-consistent: every tensor's record is one of the file's records;
//   - a manifest's JSON form reads back to the same JSON (manifest_to_json / manifest_from_json);
//   - a statement that opens after signing has the OMS resources and root digest that zoogate would
//     write for its manifest.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "common/byte_source.h"
#include "common/encoding.h"
#include "mtd/dsse.h"
#include "mtd/manifest.h"
#include "mtd/signing.h"

namespace {

using zoogate::mtd::canonical_json;

// A throwaway key for this fuzz target only.
constexpr std::string_view kFuzzKey =
    "-----BEGIN PRIVATE KEY-----\n"
    "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgVAz/CarpjeDGC88p\n"
    "TI4PAuwMyb5pH6txZUH9XRWyojuhRANCAAQIfOsZ9y4nvN2FHZwx9Spoo2KwZzNn\n"
    "ilBl5UxjSEHrnNXx7AWWE53wCibQCR/uM4+ZbZY9Jt0jepy9wgNSccA/\n"
    "-----END PRIVATE KEY-----\n";

zoogate::cdr::Policy fuzz_policy() {
  zoogate::cdr::Policy policy;
  // Small limits keep each run fast; they are still far above what the seeds need.
  policy.limits.max_opcodes = 200'000;
  policy.limits.max_string_length = 1 << 20;
  policy.limits.max_tensor_count = 10'000;
  policy.limits.max_entry_size = 1 << 24;
  return policy;
}

void require(bool condition) {
  if (!condition) std::abort();
}

void check_json_round_trip(const zoogate::mtd::ArtifactManifest& manifest) {
  const nlohmann::json json = zoogate::mtd::manifest_to_json(manifest);
  auto again = zoogate::mtd::manifest_from_json(json);
  require(again.has_value());
  require(canonical_json(zoogate::mtd::manifest_to_json(*again)) == canonical_json(json));
}

void fuzz_file_facts(std::span<const uint8_t> bytes, const zoogate::cdr::Policy& policy) {
  zoogate::MemorySource source(bytes);
  auto facts = zoogate::mtd::facts_from_file(source, policy);
  require(facts.has_value());  // memory cannot fail to read
  for (const auto& tensor : facts->tensors) {
    if (facts->format != zoogate::mtd::kFormatTorchZip) break;
    require(std::any_of(facts->records.begin(), facts->records.end(),
                        [&](const auto& record) { return record.name == tensor.record; }));
  }
  check_json_round_trip(zoogate::mtd::ArtifactManifest{
      "fuzz", {zoogate::mtd::make_file_manifest(".", std::move(*facts), std::nullopt, {})}});
}

void fuzz_signed_statement(std::string_view text, const zoogate::mtd::PrivateKey& key) {
  const std::string encoded = zoogate::mtd::pre_authentication_encoding(zoogate::mtd::kInTotoPayloadType, text);
  auto signature = key.sign(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(encoded.data()), encoded.size()));
  require(signature.has_value());
  nlohmann::json envelope = {{"payloadType", zoogate::mtd::kInTotoPayloadType},
                             {"payload", zoogate::to_base64(std::span<const uint8_t>(
                                             reinterpret_cast<const uint8_t*>(text.data()), text.size()))},
                             {"signatures", nlohmann::json::array({{{"sig", zoogate::to_base64(*signature)}}})}};
  auto opened = zoogate::mtd::open_signed_manifest(canonical_json(envelope), key.public_key());
  if (!opened) return;
  check_json_round_trip(opened->manifest);
  // The OMS part must say what zoogate's files say: rebuilding it from the manifest gives the same.
  nlohmann::json statement = nlohmann::json::parse(text, nullptr, false);
  const nlohmann::json rebuilt = zoogate::mtd::manifest_statement(opened->manifest);
  const nlohmann::json& resources = statement["predicate"]["resources"];
  require(resources.size() == rebuilt["predicate"]["resources"].size());
  for (size_t i = 0; i < resources.size(); ++i) {
    for (const char* field : {"name", "digest"}) {
      require(resources[i][field] == rebuilt["predicate"]["resources"][i][field]);
    }
  }
  require(statement["subject"][0]["digest"]["sha256"] == rebuilt["subject"][0]["digest"]["sha256"]);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const zoogate::cdr::Policy policy = fuzz_policy();
  static const zoogate::mtd::PrivateKey key = *zoogate::mtd::PrivateKey::from_pem(kFuzzKey);
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  (void)zoogate::mtd::open_signed_manifest(text, key.public_key());
  fuzz_signed_statement(text, key);
  fuzz_file_facts(std::span<const uint8_t>(data, size), policy);
  return 0;
}
