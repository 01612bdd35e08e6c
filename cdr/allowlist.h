// The built-in global allowlist of the pickle VM (private to cdr/).
//
// Maps exact (module, name) pairs to the construct they stand for: PyTorch's weights_only set plus
// numpy array reconstruction and the helpers CPython itself uses to pickle bytes, bytearrays, sets and
// argparse.Namespace. Matching is by exact pair only: no prefixes, no attribute paths such as
// "Tensor.add_", no dunder lookups. The table is immutable and safe to use from several threads.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace zoogate::cdr {

// What a global stands for once matched.
enum class GlobalKind : uint8_t {
  kNone,
  // Plain values: may appear in the output tree as a GlobalValue.
  kStorageType,  // torch.<T>Storage
  kTorchDtype,   // torch.float32, torch.bfloat16, ...
  kTorchTensor,  // torch.Tensor
  kTorchSize,    // torch.Size (also callable: torch.Size((ints...)))
  kParameter,    // torch.nn.parameter.Parameter (also callable: Parameter(tensor[, requires_grad]))
  kOperator,     // a pair from Policy::operator_allowed_globals (never in the built-in table)
  // Callables and call arguments: only ever consumed by a REDUCE/NEWOBJ/INST/OBJ they belong to.
  kOrderedDict,                // collections.OrderedDict
  kRebuildTensor,              // torch._utils._rebuild_tensor
  kRebuildTensorV2,            // torch._utils._rebuild_tensor_v2
  kRebuildParameter,           // torch._utils._rebuild_parameter
  kRebuildParameterWithState,  // torch._utils._rebuild_parameter_with_state
  kRebuildFromTypeV2,          // torch._tensor._rebuild_from_type_v2
  kNumpyReconstruct,           // numpy.core.multiarray._reconstruct (and numpy._core.)
  kNumpyNdarray,               // numpy.ndarray (argument of _reconstruct)
  kNumpyDtype,                 // numpy.dtype
  kNumpyScalar,                // numpy.core.multiarray.scalar (and numpy._core.)
  kNumpyFrombuffer,            // numpy.core.numeric._frombuffer (and numpy._core.)
  kSet,                        // builtins.set
  kFrozenset,                  // builtins.frozenset
  kBytearray,                  // builtins.bytearray
  kBytes,                      // builtins.bytes (protocol < 3 pickles b'' as bytes())
  kCodecsEncode,               // _codecs.encode (protocol < 3 pickles bytes through it)
  kNamespace,                  // argparse.Namespace
  kCopyregReconstructor,       // copyreg._reconstructor (protocol 0/1 objects)
  kObject,                     // builtins.object (argument of copyreg._reconstructor)
};

// The built-in entry for an exact pair, or nullopt. Names are taken as given: the caller applies
// fix_imports_module() first where Python would.
std::optional<GlobalKind> find_builtin(std::string_view module, std::string_view name);

// True for the entries that may stand as values in the output tree (see the enum above).
bool is_plain_value(GlobalKind kind);

// Python's Unpickler renames Python 2 modules for protocols < 3 (fix_imports=True). Only the renames
// that can lead to an allowlisted pair are applied: __builtin__ -> builtins, copy_reg -> copyreg.
// Returns `module` itself when it is not renamed.
std::string_view fix_imports_module(std::string_view module);

}  // namespace zoogate::cdr
