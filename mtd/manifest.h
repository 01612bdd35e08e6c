// The manifest of a served artifact: what zoogate states about each file it served, in a form that a
// verifier can recompute from the file alone.
//
// For each file: its size and SHA-256; for PyTorch archives every record's digest, every tensor
// (buffers included) with its dtype, shape, stride, offset, storage record and the SHA-256 of its
// elements, and the pickle's structure (globals it names, record names, and a digest of the pickle's
// content that layout variation does not change); for safetensors files every tensor. On top of those
// recomputable facts come an architecture fingerprint and the provenance that only the server knew
// (upstream digest, policy version, verdict and findings, seed id).
//
// Tensor names are the dotted path of keys from the pickle's root ("model.layers.0.mlp.up_proj.weight"):
// dict and OrderedDict keys (str as is, int in decimal, other keys by a short rendering), list and tuple
// indices, namespace attribute names; a Parameter is named like the tensor it wraps. A tensor reached
// by several paths (tied weights) has one entry per path. Should two paths render to the same name,
// the later ones get "#2", "#3"... in walk order, so every name is unique and deterministic.
// Lone surrogates in keys are written as Python escapes ("\udc80") so that names are valid UTF-8.
//
// Pure: no sockets, no YAML, no metrics. Functions are thread-safe on distinct inputs.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cdr/policy.h"
#include "cdr/sanitize.h"
#include "common/byte_source.h"
#include "common/error.h"
#include "common/sha256.h"

namespace zoogate::mtd {

using Digest = Sha256::Digest;

// File formats that a manifest describes beyond their digest.
inline constexpr std::string_view kFormatTorchZip = "torch-zip";
inline constexpr std::string_view kFormatSafetensors = "safetensors";
inline constexpr std::string_view kFormatPlainFile = "file";  // digest and size only

// Above this many bytes, a non-contiguous tensor view is hashed run by run instead of from one read of
// the storage span it covers.
inline constexpr uint64_t kMaxGatherSpan = 64ull << 20;

struct TensorEntry {
  std::string name;
  std::string dtype;  // PyTorch's name ("float32", "bfloat16"), for archives and safetensors alike
  std::vector<int64_t> shape;
  std::vector<int64_t> stride;  // in elements
  // Where the first element lies in its record: in elements of the storage for PyTorch archives, in
  // bytes from the start of the data section for safetensors files.
  uint64_t offset = 0;
  std::string record;  // the archive entry holding the storage ("archive/data/0"); empty for safetensors
  Digest sha256{};     // of the tensor's elements in C (row-major) order
  bool operator==(const TensorEntry&) const = default;
};

// The pickle of a PyTorch archive beyond its tensors' bytes.
struct PickleStructure {
  std::vector<cdr::GlobalName> globals;  // every global the pickle names, sorted, each once
  std::vector<std::string> records;      // the archive's entry names, in archive order
  // SHA-256 of the pickle re-written by zoogate's canonical writer (seed 0) with storages keyed
  // "0", "1"... in first-reference order: any change of keys, values or tensor metadata changes it;
  // memo numbering, padding, record names and order (layout variation) do not.
  Digest canonical_pickle{};
  Digest fingerprint() const;  // over all three fields
  bool operator==(const PickleStructure&) const = default;
};

// Everything that can be recomputed from one file's bytes.
struct FileFacts {
  uint64_t size = 0;
  Digest sha256{};
  std::string format{kFormatPlainFile};
  std::vector<cdr::RecordDigest> records;    // PyTorch archives: every entry, in archive order
  std::vector<TensorEntry> tensors;          // in walk order (safetensors: data order)
  std::optional<PickleStructure> structure;  // PyTorch archives only
  // Why content that looked like a PyTorch archive or a safetensors file could not be described (the
  // file is then a plain file); for messages only, never part of a manifest.
  std::string content_error;
};

// What zoogate knew when it served the file and no file can prove again.
struct Provenance {
  std::optional<Digest> upstream_sha256;  // the file as upstream served it
  std::string policy_version;
  std::string verdict;                                // "clean" or "disarmed"; empty when not sanitized
  nlohmann::json findings = nlohmann::json::array();  // as in the sanitize report's JSON
  std::string seed_id;  // names the variation seed (never the seed or its secret); empty: no variation
};

struct FileManifest {
  // Relative to the artifact root with '/' separators; "." when the artifact is this one file (the
  // name the OpenSSF model-signing tools give a single-file model).
  std::string path;
  FileFacts facts;
  std::optional<Digest> config_sha256;  // the repository's config.json, folded into `architecture`
  Digest architecture{};
  Provenance provenance;
};

struct ArtifactManifest {
  std::string name;                 // the artifact's own file or folder name (informative only)
  std::vector<FileManifest> files;  // in resource order (see compare_resource_paths)
};

// SHA-256 over the tensors' (name, dtype, shape) sorted by name, and config.json's digest when given.
// Unchanged by layout variation (names, dtypes and shapes stay) and by function-preserving weight
// permutation (values move, shapes stay); changed by any change of a name, dtype or shape.
Digest architecture_fingerprint(const std::vector<TensorEntry>& tensors, const std::optional<Digest>& config_sha256);

// Recomputes every fact of a file from its bytes. The content is identified by its bytes: PyTorch
// archives (a zip with <folder>/data.pkl) and safetensors files are described in full, anything else
// by digest. The pickle is parsed by zoogate's VM under `policy` (it never runs anything) and must be
// clean under it. Content that looks like an archive or a safetensors file but does not parse, or
// whose pickle has findings, leaves a plain file with FileFacts::content_error saying why; only read
// errors are errors.
Result<FileFacts> facts_from_file(const ByteSource& file, const cdr::Policy& policy);

// The facts of a file that cdr::sanitize() just wrote with `report`, without hashing again what the
// run already hashed: the file digest and size and the record digests come from the report, tensors
// covering their whole storage contiguously take their record's digest; only the pickle and views
// are read back from `written`. `policy` is the one the sanitize run applied.
Result<FileFacts> facts_from_sanitize(const ByteSource& written, const cdr::SanitizeReport& report,
                                      const cdr::Policy& policy);

// The provenance of a sanitized file. `upstream_sha256` is the file as it arrived (the command line
// passes the input's digest; the proxy the upstream's).
Provenance provenance_of(const cdr::SanitizeReport& report, const cdr::Policy& policy,
                         std::optional<Digest> upstream_sha256, std::string seed_id);

FileManifest make_file_manifest(std::string path, FileFacts facts, std::optional<Digest> config_sha256,
                                Provenance provenance);

// The manifest of the one file that cdr::sanitize() just wrote at `written_path` with `report`, for
// a client that receives it as `name`: its facts (facts_from_sanitize), config.json's digest when the
// repository has one, and its provenance. The command line and the proxy both describe what they
// wrote through this function. Fails for a blocked report (nothing was written).
Result<ArtifactManifest> sanitized_file_manifest(std::string name, const std::string& written_path,
                                                 const cdr::SanitizeReport& report, const cdr::Policy& policy,
                                                 std::optional<Digest> upstream_sha256, std::string seed_id,
                                                 std::optional<Digest> config_sha256);

// Files whose top-level name is one of these are not part of an artifact folder (the OpenSSF
// model-signing tools' default ignore list).
const std::vector<std::string>& default_ignored_paths();

// The regular files of an artifact, as manifest paths: {"."} for a file; for a folder every regular
// file below it (symbolic links to files followed, as in Hugging Face snapshot folders; links to
// folders not), relative, in resource order, minus those under `ignored` (relative paths).
Result<std::vector<std::string>> artifact_files(const std::string& path, const std::vector<std::string>& ignored);

// The on-disk path of a manifest path within the artifact at `root`.
std::string file_in_artifact(const std::string& root, const std::string& manifest_path);

// SHA-256 of config.json at the top of a folder artifact; nullopt for a file or a folder without one.
Result<std::optional<Digest>> artifact_config_sha256(const std::string& path);

// A manifest of a file or folder from its bytes alone (no provenance): for signing a prefetched
// snapshot, and for tests.
Result<ArtifactManifest> manifest_for_path(const std::string& path, const cdr::Policy& policy);

// The identity of an artifact file that manifests are keyed by: the SHA-256 of its bytes (what
// FileFacts::sha256 and the manifest's file digest hold). For `zoogate trace`.
Result<Digest> artifact_sha256(const std::string& path);

// Orders manifest paths as the OpenSSF tools do: component by component ("a/b" before "a-b").
bool compare_resource_paths(const std::string& a, const std::string& b);

// Canonical JSON text, the form in which manifests are hashed and signed: keys sorted (byte order), no
// whitespace, UTF-8 as is (invalid sequences replaced, never thrown).
std::string canonical_json(const nlohmann::json& value);

// zoogate's own part of a signed manifest (see dsse.h), and back. from_json checks every field's type
// and never throws; errors are kParse.
nlohmann::json manifest_to_json(const ArtifactManifest& manifest);
Result<ArtifactManifest> manifest_from_json(const nlohmann::json& json);

}  // namespace zoogate::mtd
