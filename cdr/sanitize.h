// Content disarm and reconstruction of one model file: the CDR engine's entry point.
//
// sanitize() identifies the input by its bytes, parses every part of it with zoogate's own strict
// parsers (pickle VM, zip reader, legacy reader, npy and safetensors headers), keeps only what the
// policy's allowlist can express and writes a brand-new file of the same kind to `output`: pickles are
// re-emitted by the canonical writer, containers are rebuilt from scratch, and tensor storages are
// streamed across as plain bytes (hashed on the way, never held whole in memory).
//
// On a blocked verdict the sink has received partial bytes that the caller must discard (an
// AtomicFileSink that is not committed does exactly that). Pure: no sockets, no YAML, no metrics;
// safe to run concurrently on different inputs.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "cdr/policy.h"
#include "cdr/value.h"
#include "common/byte_sink.h"
#include "common/byte_source.h"
#include "common/error.h"
#include "common/sha256.h"

namespace zoogate::cdr {

enum class Verdict { kClean, kDisarmed, kBlocked };
std::string_view to_string(Verdict verdict);

enum class OutputFormat {
  kNative,       // the input's own kind (legacy PyTorch files become current PyTorch zips)
  kSafetensors,  // tensors only, for checkpoints whose content safetensors can express
};

// One storage of a parsed PyTorch checkpoint, as a LayoutPlanner sees it.
struct StorageInfo {
  NodeId node = 0;        // its StorageRefValue in the tree
  StorageType type = StorageType::kFloat;
  uint64_t numel = 0;
  uint64_t size = 0;      // bytes
};

// The order in which torch.save writes storage records named `names` (one per storage), as indices
// into `names`: sorted by name as text ("0", "1", "10", "11", ..., "2"), archive and legacy format
// alike. Applied to the input's record names, it is the order a file torch.save wrote arrives in: a
// rebuild that follows a download writes its output front to back only if it keeps to it. Other
// producers' files are rebuilt all the same, with more of the work after their last byte.
std::vector<size_t> torch_save_order(const std::vector<std::string>& names);

// A function-preserving rewrite of one storage's bytes: the storage is viewed as a C-contiguous array
// of `shape`, and slice j along `axis` of the output is slice source_index[j] of the input
// (source_index is a permutation of 0..shape[axis]-1). Memory use is one slice of the outer axes.
struct StorageRewrite {
  std::vector<uint64_t> shape;
  size_t axis = 0;
  std::vector<uint32_t> source_index;
};

// How a PyTorch checkpoint is laid out when it is written again. Every field's default gives the
// canonical layout.
struct LayoutPlan {
  std::string archive_folder = "archive";
  uint64_t pickle_seed = 0;                  // PickleWriteOptions::seed
  std::vector<size_t> storage_order;         // write order as indices into the storages; empty: by record name
                                             // as text, as torch.save writes them (torch_save_order)
  std::vector<std::string> storage_keys;     // record name of each storage (by index); empty: "0", "1", ...
  std::vector<std::optional<StorageRewrite>> rewrites;  // by storage index; empty: none
  std::vector<std::string> notes;            // what the plan did, for the report
};

// MTD's hook into the engine: sees the parsed, validated checkpoint and returns its layout. Called
// once per sanitize(), before anything is written; must be thread-safe if shared between threads.
class LayoutPlanner {
 public:
  virtual ~LayoutPlanner() = default;
  // `storages` are in first-reference order. May edit non-structural facts of the tree (nothing that
  // the tensors' meaning depends on); returns an Error to block the file.
  virtual Result<LayoutPlan> plan(const ValueTree& tree, const std::vector<StorageInfo>& storages) const = 0;
};

struct SanitizeOptions {
  OutputFormat format = OutputFormat::kNative;
  // Layout of rebuilt PyTorch archives; null gives the canonical layout. Not owned.
  const LayoutPlanner* layout = nullptr;
  // The input's SHA-256 when the caller has already computed it (to key a variant, or while
  // receiving the file): reported as is instead of hashing the input once more.
  std::optional<Sha256::Digest> known_input_sha256;
  // The input is still arriving, front to back (a download being spooled, read through a source whose
  // reads wait for the bytes). With a RandomAccessSink output, a PyTorch checkpoint is then rebuilt as
  // its storages arrive, each written where the layout puts it, instead of after the last byte (an
  // archive's central directory, at the end, confirms what its local headers said); the result is the
  // same bytes and the same verdict either way.
  bool input_arrives_in_order = false;
};

// One record of the written file: a tensor storage, a pickle, or a metadata record.
struct RecordDigest {
  std::string name;
  uint64_t size = 0;
  Sha256::Digest sha256{};
};

struct SanitizeReport {
  Verdict verdict = Verdict::kBlocked;
  std::string container;                 // what the input turned out to be ("torch-zip", "pickle", ...)
  std::vector<GlobalName> globals;       // every global the input named, allowed or not
  std::vector<Finding> findings;         // what was disarmed (and, when blocked by policy, why)
  std::vector<std::string> notes;        // what the conversion dropped or changed, in words
  std::optional<Error> error;            // set exactly when the verdict is blocked
  uint64_t input_size = 0;
  Sha256::Digest input_sha256{};
  std::string output_format;             // empty when nothing was written
  uint64_t output_size = 0;
  Sha256::Digest output_sha256{};
  std::vector<RecordDigest> records;     // in output order
  double parse_seconds = 0;
  double write_seconds = 0;
};

SanitizeReport sanitize(const ByteSource& input, const Policy& policy, const SanitizeOptions& options,
                        ByteSink& output);
// The same, into output that can be assembled out of order (see input_arrives_in_order).
SanitizeReport sanitize(const ByteSource& input, const Policy& policy, const SanitizeOptions& options,
                        RandomAccessSink& output);

}  // namespace zoogate::cdr
