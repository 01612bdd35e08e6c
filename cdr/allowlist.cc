#include "cdr/allowlist.h"

#include <algorithm>
#include <vector>

#include "cdr/pickle_vm.h"
#include "cdr/value.h"

namespace zoogate::cdr {
namespace {

struct Entry {
  std::string_view module;
  std::string_view name;
  GlobalKind kind;
};

// Every dtype name torch defines (str(dtype) without "torch."); torch.save pickles a dtype as
// GLOBAL torch.<name> with these canonical names only, never the aliases (torch.half, torch.long...).
constexpr std::string_view kTorchDtypes[] = {
    "float32",
    "float64",
    "float16",
    "bfloat16",
    "complex32",
    "complex64",
    "complex128",
    "uint8",
    "int8",
    "int16",
    "int32",
    "int64",
    "bool",
    "qint8",
    "quint8",
    "qint32",
    "quint4x2",
    "quint2x4",
    "float8_e4m3fn",
    "float8_e5m2",
    "float8_e4m3fnuz",
    "float8_e5m2fnuz",
    "float8_e8m0fnu",
    "float4_e2m1fn_x2",
    "uint16",
    "uint32",
    "uint64",
    "uint1",
    "uint2",
    "uint3",
    "uint4",
    "uint5",
    "uint6",
    "uint7",
    "int1",
    "int2",
    "int3",
    "int4",
    "int5",
    "int6",
    "int7",
    "bits1x8",
    "bits2x4",
    "bits4x2",
    "bits8",
    "bits16",
};

constexpr Entry kFixedEntries[] = {
    {"torch", "Tensor", GlobalKind::kTorchTensor},
    {"torch", "Size", GlobalKind::kTorchSize},
    {"torch.nn.parameter", "Parameter", GlobalKind::kParameter},
    {"collections", "OrderedDict", GlobalKind::kOrderedDict},
    {"torch._utils", "_rebuild_tensor", GlobalKind::kRebuildTensor},
    {"torch._utils", "_rebuild_tensor_v2", GlobalKind::kRebuildTensorV2},
    {"torch._utils", "_rebuild_parameter", GlobalKind::kRebuildParameter},
    {"torch._utils", "_rebuild_parameter_with_state", GlobalKind::kRebuildParameterWithState},
    {"torch._tensor", "_rebuild_from_type_v2", GlobalKind::kRebuildFromTypeV2},
    {"numpy.core.multiarray", "_reconstruct", GlobalKind::kNumpyReconstruct},
    {"numpy._core.multiarray", "_reconstruct", GlobalKind::kNumpyReconstruct},
    {"numpy", "ndarray", GlobalKind::kNumpyNdarray},
    {"numpy", "dtype", GlobalKind::kNumpyDtype},
    {"numpy.core.multiarray", "scalar", GlobalKind::kNumpyScalar},
    {"numpy._core.multiarray", "scalar", GlobalKind::kNumpyScalar},
    {"numpy.core.numeric", "_frombuffer", GlobalKind::kNumpyFrombuffer},
    {"numpy._core.numeric", "_frombuffer", GlobalKind::kNumpyFrombuffer},
    {"builtins", "set", GlobalKind::kSet},
    {"builtins", "frozenset", GlobalKind::kFrozenset},
    {"builtins", "bytearray", GlobalKind::kBytearray},
    {"builtins", "bytes", GlobalKind::kBytes},
    {"builtins", "object", GlobalKind::kObject},
    {"_codecs", "encode", GlobalKind::kCodecsEncode},
    {"argparse", "Namespace", GlobalKind::kNamespace},
    {"copyreg", "_reconstructor", GlobalKind::kCopyregReconstructor},
};

bool entry_less(const Entry& a, const Entry& b) { return a.module != b.module ? a.module < b.module : a.name < b.name; }

// The fixed entries plus the dtypes, sorted for binary search. Built once, then read-only.
const std::vector<Entry>& table() {
  static const std::vector<Entry> entries = [] {
    std::vector<Entry> all(std::begin(kFixedEntries), std::end(kFixedEntries));
    for (std::string_view dtype : kTorchDtypes) all.push_back({"torch", dtype, GlobalKind::kTorchDtype});
    std::sort(all.begin(), all.end(), entry_less);
    return all;
  }();
  return entries;
}

constexpr std::string_view kStorageSuffix = "Storage";

}  // namespace

std::optional<GlobalKind> find_builtin(std::string_view module, std::string_view name) {
  // torch.<T>Storage for exactly the storage types the value tree can express.
  if (module == "torch" && name.ends_with(kStorageSuffix) && storage_type_from_name(name)) {
    return GlobalKind::kStorageType;
  }
  const auto& entries = table();
  Entry probe{module, name, GlobalKind::kNone};
  auto it = std::lower_bound(entries.begin(), entries.end(), probe, entry_less);
  if (it == entries.end() || it->module != module || it->name != name) return std::nullopt;
  return it->kind;
}

bool is_plain_value(GlobalKind kind) {
  switch (kind) {
    case GlobalKind::kStorageType:
    case GlobalKind::kTorchDtype:
    case GlobalKind::kTorchTensor:
    case GlobalKind::kTorchSize:
    case GlobalKind::kParameter:
    case GlobalKind::kOperator:
      return true;
    default:
      return false;
  }
}

std::string_view fix_imports_module(std::string_view module) {
  if (module == "__builtin__") return "builtins";
  if (module == "copy_reg") return "copyreg";
  return module;
}

bool is_builtin_allowed(const GlobalName& name) { return find_builtin(name.module, name.name).has_value(); }

}  // namespace zoogate::cdr
