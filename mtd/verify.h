// Verification of a served artifact (a file, or a downloaded snapshot folder) against its signed
// manifest.
//
// verify_artifact() first checks the manifest's signature with the caller's public key; only a
// manifest that verifies is trusted. It then recomputes every file's facts from the bytes on disk
// (manifest.h: file digest and size, records, every tensor, the pickle structure, the architecture
// fingerprint) and names every difference, down to the tensor and the field:
//   - files: missing from or extra in a folder; size, sha256 or format changed;
//   - records of a PyTorch archive: missing, extra, size or sha256 changed;
//   - tensors: missing, extra, renamed (a missing tensor whose bytes, dtype and shape reappear under a
//     new name), or dtype, shape, stride, offset, record or sha256 changed;
//   - structure: globals added or removed, record names changed, canonical pickle changed (a new dict
//     key, a changed non-tensor value), fingerprint;
//   - architecture fingerprint.
// A pickle-level change that keeps every tensor shows up as structure and file-digest differences
// while all tensor entries still match.
//
// The pickle is parsed by zoogate's non-executing VM with the built-in allowlist plus exactly the
// globals the signed manifest lists, so a global added by tampering is both a structure difference and
// never more than a name to the verifier.
//
// Pure: no sockets, no YAML, no metrics; reads the artifact through the file system only.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.h"
#include "mtd/manifest.h"
#include "mtd/signing.h"

namespace zoogate::mtd {

struct Difference {
  std::string file;  // the file's manifest path; empty for the signed manifest itself
  std::string item;  // "manifest", "file", "record <name>", "tensor <name>", "structure", "architecture"
  // "signature", "malformed", "missing", "extra", "renamed", "size", "sha256", "format", "dtype",
  // "shape", "stride", "offset", "record", "globals", "records", "canonical_pickle", "fingerprint"
  std::string field;
  std::string expected;  // what the signed manifest says (empty when it says nothing, as for "extra")
  std::string found;     // what the artifact holds (empty when it holds nothing, as for "missing")
  bool operator==(const Difference&) const = default;

  // "weights/model.pt: tensor fc.weight: sha256 (signed 1f2e..., found 3a4b...)" (no path for a
  // single-file artifact); "manifest: signature: <why>" for the manifest itself.
  std::string describe() const;
};

struct VerifyOutcome {
  std::string key_id;                        // the key that signed, once the signature verified
  std::optional<ArtifactManifest> manifest;  // the signed manifest, once the signature verified
  std::vector<Difference> differences;
  bool intact() const { return differences.empty(); }
};

struct VerifyOptions {
  // Paths relative to a folder artifact that are not part of it, besides default_ignored_paths(): the
  // signed manifest itself when it is kept inside the folder, say.
  std::vector<std::string> ignored_paths;
};

// Errors are only for what says nothing about the artifact's integrity: `path` missing or unreadable.
// A manifest that is malformed or does not verify with `key` is a difference ("manifest", "malformed"
// or "signature"), reported alone since nothing in it can be trusted.
Result<VerifyOutcome> verify_artifact(const std::string& path, std::string_view signed_manifest, const PublicKey& key,
                                      const VerifyOptions& options = {});

}  // namespace zoogate::mtd
