// The typed value tree: everything a sanitized pickle can express, and nothing else.
//
// The pickle VM (pickle_vm.h) builds a ValueTree from untrusted bytes; the pickle writer
// (pickle_writer.h) turns a ValueTree into brand-new pickle bytes. Nothing in a tree refers back to
// the input bytes, so no upstream opcode or container byte can survive a parse/write round trip.
//
// Nodes live in an arena (ValueTree::nodes) and refer to each other by NodeId. A node referenced from
// two places (the pickle memo made them the same object) keeps one id, so object identity and storage
// sharing survive the round trip. Only List, Dict, Set, OrderedDict and Namespace can be mutated after
// they are created, so only they can take part in a reference cycle.
//
// Thread safety: a tree is a plain value; concurrent reads are safe, writes need external locking.
#pragma once

#include <cstdint>
#include <optional>
#include <type_traits>
#include <string>
#include <utility>
#include <variant>
#include <vector>

namespace zoogate::cdr {

using NodeId = uint32_t;

struct NoneValue {
  bool operator==(const NoneValue&) const = default;
};

// Arbitrary-precision integer. `small` holds the value when it fits in int64; otherwise `big` holds the
// minimal little-endian two's-complement encoding (the LONG1/LONG4 operand format) and `small` is 0.
struct IntValue {
  int64_t small = 0;
  std::string big;
  bool operator==(const IntValue&) const = default;
};

struct FloatValue {
  double value = 0;
  // Bitwise comparison so that NaN payloads and -0.0 count as preserved only when preserved exactly.
  bool operator==(const FloatValue& other) const;
};

struct StrValue {
  std::string utf8;  // may contain lone surrogates encoded as in Python's "surrogatepass"
  bool operator==(const StrValue&) const = default;
};

struct BytesValue {
  std::string data;
  bool is_bytearray = false;  // BYTEARRAY8 (protocol 5) or builtins.bytearray
  bool operator==(const BytesValue&) const = default;
};

struct TupleValue {
  std::vector<NodeId> items;
};
struct ListValue {
  std::vector<NodeId> items;
};
struct SetValue {
  std::vector<NodeId> items;
  bool frozen = false;
};
// Insertion order is kept; keys are node ids of hashable values (none, bool, int, float, str, bytes,
// tuples of those). Duplicate keys are resolved by the VM (last write wins, as in Python).
struct DictValue {
  std::vector<std::pair<NodeId, NodeId>> items;
};
// collections.OrderedDict, with the optional instance attributes set by BUILD (state_dict()'s
// `_metadata`): `attributes` is a DictValue node id with str keys, or nullopt.
struct OrderedDictValue {
  std::vector<std::pair<NodeId, NodeId>> items;
  std::optional<NodeId> attributes;
};

// PyTorch scalar types that storages can hold, named as in torch.<Name>Storage.
enum class StorageType : uint8_t {
  kFloat, kDouble, kHalf, kBFloat16, kComplexFloat, kComplexDouble,
  kByte, kChar, kShort, kInt, kLong, kBool,
  kQUInt8, kQInt8, kQInt32, kQUInt4x2,
};

// One persistent storage record: the BINPERSID tuple ('storage', torch.<T>Storage, key, location, numel).
// `key` names the record in the archive (archive/data/<key>); numel counts elements, not bytes.
struct StorageRefValue {
  StorageType type = StorageType::kFloat;
  std::string key;
  std::string location;  // "cpu", "cuda:0", ...
  uint64_t numel = 0;
};

// torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
// backward_hooks[, metadata]). The VM has checked that storage_offset + the extent described by size
// and stride fits inside the storage's numel. backward_hooks must be an empty OrderedDict, so it is not
// kept; `rebuild_v1` marks torch._utils._rebuild_tensor (no requires_grad, hooks or metadata).
struct TensorValue {
  NodeId storage = 0;  // a StorageRefValue node, shared by every view of the same storage
  uint64_t storage_offset = 0;
  std::vector<int64_t> sizes;
  std::vector<int64_t> strides;
  bool requires_grad = false;
  bool rebuild_v1 = false;
  std::optional<NodeId> metadata;  // the optional 7th argument of _rebuild_tensor_v2 (a dict)
};

// torch._utils._rebuild_parameter(data, requires_grad, backward_hooks) with an empty hooks dict.
struct ParameterValue {
  NodeId tensor = 0;  // a TensorValue node
  bool requires_grad = true;
};

// A reference to an allowlisted global that is a value in its own right, not a call:
// torch.float32 and the other dtypes, torch.Size, torch.Tensor... `module` and `name` are exact.
struct GlobalValue {
  std::string module;
  std::string name;
  bool operator==(const GlobalValue&) const = default;
};

// torch.Size((d0, d1, ...)).
struct TorchSizeValue {
  std::vector<int64_t> dims;
  bool operator==(const TorchSizeValue&) const = default;
};

// numpy.dtype(descr, False, True) after BUILD; `descr` is a plain numeric array-protocol string such
// as "<f4", "|b1" or "<M8[ns]"; structured and object dtypes are never represented.
struct NumpyDtypeValue {
  std::string descr;
  bool operator==(const NumpyDtypeValue&) const = default;
};

// A numeric numpy.ndarray (numpy.core.multiarray._reconstruct + BUILD, or _frombuffer in protocol 5).
// `data` holds the raw element bytes in the order given by `fortran_order`; its length equals
// product(shape) * itemsize(descr). Object arrays are never represented.
struct NumpyArrayValue {
  NodeId dtype = 0;  // a NumpyDtypeValue node
  std::vector<uint64_t> shape;
  bool fortran_order = false;
  std::string data;
};

// numpy.core.multiarray.scalar(dtype, raw_bytes): a numpy scalar such as numpy.float32(1.5).
struct NumpyScalarValue {
  NodeId dtype = 0;  // a NumpyDtypeValue node
  std::string data;
};

// argparse.Namespace with its attributes (str keys) as set by BUILD.
struct NamespaceValue {
  std::vector<std::pair<NodeId, NodeId>> attributes;
};

// A call of a global that an operator added to the policy on purpose (outside the default allowlist).
// Kept generically so that it can be re-emitted: callable(*args), cls.__new__(cls, *args) for NEWOBJ,
// then an optional BUILD state.
struct OperatorCallValue {
  NodeId callable = 0;  // a GlobalValue node
  NodeId args = 0;      // a TupleValue node
  bool is_newobj = false;
  std::optional<NodeId> build_state;
};

using Value = std::variant<NoneValue, bool, IntValue, FloatValue, StrValue, BytesValue, TupleValue,
                           ListValue, SetValue, DictValue, OrderedDictValue, StorageRefValue, TensorValue,
                           ParameterValue, GlobalValue, TorchSizeValue, NumpyDtypeValue, NumpyArrayValue,
                           NumpyScalarValue, NamespaceValue, OperatorCallValue>;

struct ValueTree {
  std::vector<Value> nodes;
  NodeId root = 0;

  NodeId add(Value value) {
    nodes.push_back(std::move(value));
    return static_cast<NodeId>(nodes.size() - 1);
  }
  const Value& at(NodeId id) const { return nodes.at(id); }
  Value& at(NodeId id) { return nodes.at(id); }
};

// Calls visit(NodeId) for each node that `value` refers to directly, in the order a pickle writes them
// (items in order, dict keys before values, typed nodes' arguments in call order).
template <typename Visitor>
void for_each_child(const Value& value, Visitor&& visit) {
  auto visit_pairs = [&](const std::vector<std::pair<NodeId, NodeId>>& pairs) {
    for (const auto& [key, item] : pairs) {
      visit(key);
      visit(item);
    }
  };
  std::visit(
      [&](const auto& node) {
        using T = std::decay_t<decltype(node)>;
        if constexpr (std::is_same_v<T, TupleValue> || std::is_same_v<T, ListValue> ||
                      std::is_same_v<T, SetValue>) {
          for (NodeId item : node.items) visit(item);
        } else if constexpr (std::is_same_v<T, DictValue>) {
          visit_pairs(node.items);
        } else if constexpr (std::is_same_v<T, OrderedDictValue>) {
          visit_pairs(node.items);
          if (node.attributes) visit(*node.attributes);
        } else if constexpr (std::is_same_v<T, TensorValue>) {
          visit(node.storage);
          if (node.metadata) visit(*node.metadata);
        } else if constexpr (std::is_same_v<T, ParameterValue>) {
          visit(node.tensor);
        } else if constexpr (std::is_same_v<T, NumpyArrayValue> || std::is_same_v<T, NumpyScalarValue>) {
          visit(node.dtype);
        } else if constexpr (std::is_same_v<T, NamespaceValue>) {
          visit_pairs(node.attributes);
        } else if constexpr (std::is_same_v<T, OperatorCallValue>) {
          visit(node.callable);
          visit(node.args);
          if (node.build_state) visit(*node.build_state);
        }
      },
      value);
}

// Every node reachable from the root, each once, in depth-first pre-order (the order in which a
// writer first meets them). Iterative: safe on arbitrarily deep trees.
std::vector<NodeId> reachable_nodes(const ValueTree& tree);

// Structural equality of the values reachable from each tree's root, including the sharing pattern
// (two references to one node on one side must be two references to one node on the other) and
// cycles. Node numbering and unreachable nodes do not matter.
bool structurally_equal(const ValueTree& a, const ValueTree& b);

// True when the tensor's strides are those of a C-contiguous (row-major) array of its sizes; a
// dimension of size 1 may have any stride.
bool is_c_contiguous(const TensorValue& tensor);
// Product of the sizes (1 for a 0-d tensor). The pickle VM has checked that it does not overflow.
uint64_t element_count(const TensorValue& tensor);

// Name of a storage type as in torch.<Name>Storage, its element size in bytes, and the reverse lookup.
const char* storage_type_name(StorageType type);
uint64_t storage_element_size(StorageType type);
std::optional<StorageType> storage_type_from_name(std::string_view name);

}  // namespace zoogate::cdr
