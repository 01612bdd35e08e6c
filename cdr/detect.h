// Identification of an input by its bytes, never by its name.
//
// identify_content() reads at most kDetectionWindow bytes from the start of an input and says which
// format they prove, so that the caller can route the input to the matching strict parser, or block it.
// It is a routing decision, not a validation: a kPickle, kZip, kNpy or kSafetensors answer still has to
// pass that format's parser. Every test is anchored at offset 0 (offset 257 for tar), so a known
// signature behind a prefix (a self-extracting archive, a polyglot) is kUnknown, and kUnknown is blocked.
//
// The tests are mutually exclusive where it matters: npy, zip and the compressed formats have fixed
// magic bytes, none of which starts a valid pickle; a safetensors file starts with its header length,
// whose low byte would have to be PROTO (0x80) and whose next bytes opcodes for it to pass as a pickle.
//
// Pure and thread-safe: no state, no I/O besides ByteSource::read_at.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "common/byte_source.h"
#include "common/error.h"

namespace zoogate::cdr {

enum class ContentKind {
  kPickle,       // a pickle stream: PROTO, or a protocol 0/1 opcode, followed by well-formed opcodes
  kTorchLegacy,  // PyTorch's legacy stacked pickles: the first pickle is only the legacy magic number
  kZip,          // a ZIP local file header at offset 0: PyTorch or TorchScript archive, or .npz
  kTorchTar,     // PyTorch's oldest checkpoint format: a tar of sys_info, pickle, storages, tensors
  kNpy,          // a NumPy .npy array
  kSafetensors,  // a safetensors file
  // Recognised only so that the block can name them.
  kTar,
  kGzip,
  kBzip2,
  kXz,
  kZstd,
  kLz4,
  kSevenZip,
  kRar,
  kGguf,
  kHdf5,
  kUnknown,
};

// A short, stable name for reports and headers: "pickle", "torch-legacy", "zip", "7z", ...
std::string_view to_string(ContentKind kind);

struct Detection {
  ContentKind kind = ContentKind::kUnknown;
  // For kPickle and kTorchLegacy: the PROTO operand when the stream starts with PROTO; otherwise the
  // highest protocol among the opcodes that identification read (0 or 1 for a genuine old pickle).
  std::optional<uint8_t> pickle_protocol;
  // What proved the kind ("PROTO 2 at offset 0, then 4 well-formed opcodes"); for kUnknown, what the
  // bytes looked like, in words a user can act on.
  std::string reason;
};

// The most bytes identify_content() reads.
inline constexpr uint64_t kDetectionWindow = 4096;

// Fails only when the source cannot be read; an unrecognised input is a kUnknown Detection.
Result<Detection> identify_content(const ByteSource& source);

}  // namespace zoogate::cdr
