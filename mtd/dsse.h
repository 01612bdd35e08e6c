// Signed manifests: a DSSE envelope carrying an in-toto Statement v1 in the OpenSSF model-signing
// (OMS) format, inside a Sigstore bundle, as the `model_signing` tools write and read them.
//
// The statement, serialized as canonical JSON (keys sorted, no whitespace), is:
//   {"_type": "https://in-toto.io/Statement/v1",
//    "subject": [{"name": <artifact name>, "digest": {"sha256": <root digest>}}],
//    "predicateType": "https://model_signing/signature/v1.0",
//    "predicate": {
//      "serialization": {"method": "files", "hash_type": "sha256", "allow_symlinks": true,
//                        "ignore_paths": [".git", ".gitattributes", ".github", ".gitignore"]},
//      "resources": [{"name": <path>, "algorithm": "sha256", "digest": <file sha256>}, ...],
//      "zoogate": {"type": "https://zoogate.dev/manifest/v1", "name": ..., "files": [...]}}}
// `resources` lists every file in path order (component by component), "." standing for a single-file
// artifact as the OMS tools name it; the root digest is the SHA-256 of the resources' raw digests
// concatenated in that order. So an OMS verifier checks every file digest with no knowledge of
// zoogate. zoogate's per-tensor manifest (manifest.h, manifest_to_json) rides in the same predicate as
// the extension field "zoogate": OMS v1.0 verifiers ignore predicate fields they do not know, and one
// signature covers both. `allow_symlinks` is true because Hugging Face snapshot folders are links
// into a blob store.
//
// The envelope's signature is ECDSA P-256 / SHA-256 (DER, base64) over the DSSE pre-authentication
// encoding PAE(payloadType, payload); its keyid is zoogate's key id (signing.h). The bundle
// (mediaType application/vnd.dev.sigstore.bundle.v0.3+json) names the key by the hint the OMS tools
// expect: the SHA-256 hex of the public key's PEM text.
#pragma once

#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "mtd/manifest.h"
#include "mtd/signing.h"

namespace zoogate::mtd {

inline constexpr std::string_view kInTotoPayloadType = "application/vnd.in-toto+json";
inline constexpr std::string_view kStatementType = "https://in-toto.io/Statement/v1";
inline constexpr std::string_view kModelSigningPredicateType = "https://model_signing/signature/v1.0";
inline constexpr std::string_view kZoogateManifestType = "https://zoogate.dev/manifest/v1";
inline constexpr std::string_view kSigstoreBundleMediaType = "application/vnd.dev.sigstore.bundle.v0.3+json";

// Signed manifests above this size are refused unread (a manifest of 100,000 tensors is about 30 MB).
inline constexpr uint64_t kMaxSignedManifestSize = 256ull << 20;

// "DSSEv1" SP len(type) SP type SP len(body) SP body, lengths in ASCII decimal bytes.
std::string pre_authentication_encoding(std::string_view payload_type, std::string_view payload);

// The in-toto statement described above.
nlohmann::json manifest_statement(const ArtifactManifest& manifest);

// The Sigstore bundle JSON text of `manifest` signed with `key`.
Result<std::string> sign_manifest(const ArtifactManifest& manifest, const PrivateKey& key);

struct SignedManifest {
  ArtifactManifest manifest;
  std::string key_id;  // the key whose signature verified
};

// Opens a signed manifest: a Sigstore bundle (as sign_manifest writes) or a bare DSSE envelope. The
// payload is trusted only after a signature over its PAE verifies with `key`; then the statement must
// be an OMS statement whose root digest matches its resources and whose resources match zoogate's
// files. Errors: kIntegrity when no signature verifies, kParse for anything malformed. Never throws.
Result<SignedManifest> open_signed_manifest(std::string_view text, const PublicKey& key);

}  // namespace zoogate::mtd
