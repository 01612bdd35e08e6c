#include "mtd/dsse.h"

#include <algorithm>

#include "common/encoding.h"

namespace zoogate::mtd {
namespace {

using nlohmann::json;

std::span<const uint8_t> as_bytes(std::string_view text) {
  return {reinterpret_cast<const uint8_t*>(text.data()), text.size()};
}

// The OMS root digest: SHA-256 over the raw digests of the resources, in resource order.
Digest root_digest(const std::vector<Digest>& resource_digests) {
  Sha256 hash;
  for (const auto& digest : resource_digests) hash.update(digest);
  return hash.finish();
}

std::string string_or_empty(const json& object, std::string_view key) {
  auto found = object.find(key);
  return found != object.end() && found->is_string() ? found->get<std::string>() : std::string();
}

struct Envelope {
  std::string payload_type;
  std::string payload;
  std::vector<std::vector<uint8_t>> signatures;
};

Result<Envelope> parse_envelope(std::string_view text) {
  json document = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (document.is_discarded() || !document.is_object()) return fail(ErrorCode::kParse, "not a JSON object");
  // A Sigstore bundle holds the envelope under "dsseEnvelope"; a bare envelope is the document itself.
  auto wrapped = document.find("dsseEnvelope");
  const json& envelope = wrapped != document.end() ? *wrapped : document;
  if (!envelope.is_object()) return fail(ErrorCode::kParse, "dsseEnvelope is not an object");
  Envelope out;
  out.payload_type = string_or_empty(envelope, "payloadType");
  auto payload = from_base64(string_or_empty(envelope, "payload"));
  if (out.payload_type.empty() || !payload || payload->empty()) {
    return fail(ErrorCode::kParse, "not a DSSE envelope (payloadType and base64 payload required)");
  }
  out.payload.assign(payload->begin(), payload->end());
  auto signatures = envelope.find("signatures");
  if (signatures == envelope.end() || !signatures->is_array()) return fail(ErrorCode::kParse, "no signatures");
  for (const auto& signature : *signatures) {
    auto bytes = signature.is_object() ? from_base64(string_or_empty(signature, "sig")) : std::nullopt;
    if (!bytes) return fail(ErrorCode::kParse, "a signature is not base64");
    out.signatures.push_back(std::move(*bytes));
  }
  return out;
}

// Checks the OMS part of a verified statement against zoogate's files and returns them.
Result<ArtifactManifest> manifest_of_statement(const json& statement) {
  if (string_or_empty(statement, "_type") != kStatementType) {
    return fail(ErrorCode::kParse, "not an in-toto Statement v1");
  }
  if (string_or_empty(statement, "predicateType") != kModelSigningPredicateType) {
    return fail(ErrorCode::kParse, "predicateType is not " + std::string(kModelSigningPredicateType));
  }
  auto predicate = statement.find("predicate");
  auto subjects = statement.find("subject");
  if (predicate == statement.end() || !predicate->is_object() || subjects == statement.end() || !subjects->is_array() ||
      subjects->size() != 1 || !(*subjects)[0].is_object()) {
    return fail(ErrorCode::kParse, "the statement needs a predicate and exactly one subject");
  }
  auto zoogate = predicate->find("zoogate");
  if (zoogate == predicate->end() || string_or_empty(*zoogate, "type") != kZoogateManifestType) {
    return fail(ErrorCode::kParse, "the predicate carries no " + std::string(kZoogateManifestType) + " manifest");
  }
  auto manifest = manifest_from_json(*zoogate);
  if (!manifest) return tl::unexpected(manifest.error());

  // The OMS resources and root digest must say exactly what zoogate's files say.
  auto resources = predicate->find("resources");
  if (resources == predicate->end() || !resources->is_array() || resources->size() != manifest->files.size()) {
    return fail(ErrorCode::kParse, "the OMS resources do not list zoogate's files");
  }
  std::vector<Digest> digests;
  for (size_t i = 0; i < manifest->files.size(); ++i) {
    const FileManifest& file = manifest->files[i];
    const json& resource = (*resources)[i];
    if (!resource.is_object() || string_or_empty(resource, "name") != file.path ||
        string_or_empty(resource, "algorithm") != "sha256" ||
        string_or_empty(resource, "digest") != to_hex(file.facts.sha256)) {
      return fail(ErrorCode::kParse,
                  "OMS resource " + std::to_string(i) + " disagrees with zoogate's file " + file.path);
    }
    digests.push_back(file.facts.sha256);
  }
  const json& subject = (*subjects)[0];
  auto subject_digest = subject.find("digest");
  if (subject_digest == subject.end() || !subject_digest->is_object() ||
      string_or_empty(*subject_digest, "sha256") != to_hex(root_digest(digests))) {
    return fail(ErrorCode::kParse, "the subject's root digest does not match the resources");
  }
  return manifest;
}

}  // namespace

std::string pre_authentication_encoding(std::string_view payload_type, std::string_view payload) {
  std::string out = "DSSEv1 " + std::to_string(payload_type.size()) + " ";
  out += payload_type;
  out += " " + std::to_string(payload.size()) + " ";
  out += payload;
  return out;
}

json manifest_statement(const ArtifactManifest& manifest) {
  json resources = json::array();
  std::vector<Digest> digests;
  for (const auto& file : manifest.files) {
    resources.push_back({{"name", file.path}, {"algorithm", "sha256"}, {"digest", to_hex(file.facts.sha256)}});
    digests.push_back(file.facts.sha256);
  }
  json zoogate = manifest_to_json(manifest);
  zoogate["type"] = kZoogateManifestType;
  json serialization = {{"method", "files"},
                        {"hash_type", "sha256"},
                        {"allow_symlinks", true},
                        {"ignore_paths", default_ignored_paths()}};
  json subject = {{"name", manifest.name}, {"digest", {{"sha256", to_hex(root_digest(digests))}}}};
  return {{"_type", kStatementType},
          {"subject", json::array({std::move(subject)})},
          {"predicateType", kModelSigningPredicateType},
          {"predicate",
           {{"serialization", std::move(serialization)},
            {"resources", std::move(resources)},
            {"zoogate", std::move(zoogate)}}}};
}

Result<std::string> sign_manifest(const ArtifactManifest& manifest, const PrivateKey& key) {
  const std::string payload = canonical_json(manifest_statement(manifest));
  auto signature = key.sign(as_bytes(pre_authentication_encoding(kInTotoPayloadType, payload)));
  if (!signature) return tl::unexpected(signature.error());
  const PublicKey& public_key = key.public_key();
  json envelope = {{"payloadType", kInTotoPayloadType},
                   {"payload", to_base64(as_bytes(payload))},
                   {"signatures", json::array({{{"keyid", public_key.key_id()}, {"sig", to_base64(*signature)}}})}};
  json bundle = {{"mediaType", kSigstoreBundleMediaType},
                 {"verificationMaterial",
                  {{"publicKey", {{"hint", to_hex(Sha256::of(public_key.pem()))}}}, {"tlogEntries", json::array()}}},
                 {"dsseEnvelope", std::move(envelope)}};
  return canonical_json(bundle);
}

Result<SignedManifest> open_signed_manifest(std::string_view text, const PublicKey& key) {
  auto envelope = parse_envelope(text);
  if (!envelope) return tl::unexpected(envelope.error().with_context("signed manifest"));
  const std::string signed_bytes = pre_authentication_encoding(envelope->payload_type, envelope->payload);
  const bool verified =
      std::any_of(envelope->signatures.begin(), envelope->signatures.end(),
                  [&](const auto& signature) { return bool(key.verify(as_bytes(signed_bytes), signature)); });
  if (!verified) {
    return fail(ErrorCode::kIntegrity, "no signature of the manifest verifies with key " + key.key_id() +
                                           " (the manifest was changed, or signed by another key)");
  }
  if (envelope->payload_type != kInTotoPayloadType) {
    return fail(ErrorCode::kParse,
                "payloadType is " + envelope->payload_type + ", not " + std::string(kInTotoPayloadType));
  }
  json statement = json::parse(envelope->payload, nullptr, /*allow_exceptions=*/false);
  if (statement.is_discarded() || !statement.is_object()) return fail(ErrorCode::kParse, "the payload is not JSON");
  auto manifest = manifest_of_statement(statement);
  if (!manifest) return tl::unexpected(manifest.error().with_context("signed manifest"));
  return SignedManifest{std::move(*manifest), key.key_id()};
}

}  // namespace zoogate::mtd
