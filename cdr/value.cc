#include "cdr/value.h"

#include <array>
#include <cstring>
#include <unordered_map>

namespace zoogate::cdr {

bool FloatValue::operator==(const FloatValue& other) const {
  return std::memcmp(&value, &other.value, sizeof value) == 0;
}

namespace {

struct StorageTypeInfo {
  StorageType type;
  const char* name;
  uint64_t element_size;
};

constexpr std::array<StorageTypeInfo, 16> kStorageTypes = {{
    {StorageType::kFloat, "FloatStorage", 4},
    {StorageType::kDouble, "DoubleStorage", 8},
    {StorageType::kHalf, "HalfStorage", 2},
    {StorageType::kBFloat16, "BFloat16Storage", 2},
    {StorageType::kComplexFloat, "ComplexFloatStorage", 8},
    {StorageType::kComplexDouble, "ComplexDoubleStorage", 16},
    {StorageType::kByte, "ByteStorage", 1},
    {StorageType::kChar, "CharStorage", 1},
    {StorageType::kShort, "ShortStorage", 2},
    {StorageType::kInt, "IntStorage", 4},
    {StorageType::kLong, "LongStorage", 8},
    {StorageType::kBool, "BoolStorage", 1},
    {StorageType::kQUInt8, "QUInt8Storage", 1},
    {StorageType::kQInt8, "QInt8Storage", 1},
    {StorageType::kQInt32, "QInt32Storage", 4},
    {StorageType::kQUInt4x2, "QUInt4x2Storage", 1},
}};

const StorageTypeInfo& info(StorageType type) {
  for (const auto& entry : kStorageTypes) {
    if (entry.type == type) return entry;
  }
  return kStorageTypes[0];  // unreachable: every enumerator is in the table
}

// Walks both trees in lockstep, keeping a bijection between node ids so that sharing and cycles have
// to match exactly. Iterative, so hostile nesting cannot overflow the call stack.
class Comparer {
 public:
  Comparer(const ValueTree& a, const ValueTree& b) : a_(a), b_(b) {}

  bool run() {
    if (!pair(a_.root, b_.root)) return false;
    while (!pending_.empty()) {
      auto [x, y] = pending_.back();
      pending_.pop_back();
      if (!compare(x, y)) return false;
    }
    return true;
  }

 private:
  // Records x<->y; a first meeting queues the pair for a content comparison.
  bool pair(NodeId x, NodeId y) {
    if (x >= a_.nodes.size() || y >= b_.nodes.size()) return false;
    auto ax = a_to_b_.find(x);
    auto by = b_to_a_.find(y);
    if (ax != a_to_b_.end() || by != b_to_a_.end()) {
      return ax != a_to_b_.end() && by != b_to_a_.end() && ax->second == y && by->second == x;
    }
    a_to_b_.emplace(x, y);
    b_to_a_.emplace(y, x);
    pending_.emplace_back(x, y);
    return true;
  }

  bool pair_items(const std::vector<NodeId>& x, const std::vector<NodeId>& y) {
    if (x.size() != y.size()) return false;
    for (size_t i = 0; i < x.size(); ++i) {
      if (!pair(x[i], y[i])) return false;
    }
    return true;
  }

  bool pair_items(const std::vector<std::pair<NodeId, NodeId>>& x,
                  const std::vector<std::pair<NodeId, NodeId>>& y) {
    if (x.size() != y.size()) return false;
    for (size_t i = 0; i < x.size(); ++i) {
      if (!pair(x[i].first, y[i].first) || !pair(x[i].second, y[i].second)) return false;
    }
    return true;
  }

  bool pair_optional(const std::optional<NodeId>& x, const std::optional<NodeId>& y) {
    if (x.has_value() != y.has_value()) return false;
    return !x || pair(*x, *y);
  }

  bool compare(NodeId x, NodeId y) {
    const Value& vx = a_.nodes[x];
    const Value& vy = b_.nodes[y];
    if (vx.index() != vy.index()) return false;
    return std::visit(
        [&](const auto& left) -> bool {
          using T = std::decay_t<decltype(left)>;
          const T& right = std::get<T>(vy);
          if constexpr (std::is_same_v<T, TupleValue> || std::is_same_v<T, ListValue>) {
            return pair_items(left.items, right.items);
          } else if constexpr (std::is_same_v<T, SetValue>) {
            return left.frozen == right.frozen && pair_items(left.items, right.items);
          } else if constexpr (std::is_same_v<T, DictValue>) {
            return pair_items(left.items, right.items);
          } else if constexpr (std::is_same_v<T, OrderedDictValue>) {
            return pair_items(left.items, right.items) && pair_optional(left.attributes, right.attributes);
          } else if constexpr (std::is_same_v<T, StorageRefValue>) {
            return left.type == right.type && left.key == right.key && left.location == right.location &&
                   left.numel == right.numel;
          } else if constexpr (std::is_same_v<T, TensorValue>) {
            return left.storage_offset == right.storage_offset && left.sizes == right.sizes &&
                   left.strides == right.strides && left.requires_grad == right.requires_grad &&
                   left.rebuild_v1 == right.rebuild_v1 && pair(left.storage, right.storage) &&
                   pair_optional(left.metadata, right.metadata);
          } else if constexpr (std::is_same_v<T, ParameterValue>) {
            return left.requires_grad == right.requires_grad && pair(left.tensor, right.tensor);
          } else if constexpr (std::is_same_v<T, NumpyArrayValue>) {
            return left.shape == right.shape && left.fortran_order == right.fortran_order &&
                   left.data == right.data && pair(left.dtype, right.dtype);
          } else if constexpr (std::is_same_v<T, NumpyScalarValue>) {
            return left.data == right.data && pair(left.dtype, right.dtype);
          } else if constexpr (std::is_same_v<T, NamespaceValue>) {
            return pair_items(left.attributes, right.attributes);
          } else if constexpr (std::is_same_v<T, OperatorCallValue>) {
            return left.is_newobj == right.is_newobj && pair(left.callable, right.callable) &&
                   pair(left.args, right.args) && pair_optional(left.build_state, right.build_state);
          } else {
            return left == right;  // leaf values
          }
        },
        vx);
  }

  const ValueTree& a_;
  const ValueTree& b_;
  std::unordered_map<NodeId, NodeId> a_to_b_;
  std::unordered_map<NodeId, NodeId> b_to_a_;
  std::vector<std::pair<NodeId, NodeId>> pending_;
};

}  // namespace

bool structurally_equal(const ValueTree& a, const ValueTree& b) { return Comparer(a, b).run(); }

std::vector<NodeId> reachable_nodes(const ValueTree& tree) {
  std::vector<NodeId> order;
  if (tree.nodes.empty()) return order;
  std::vector<bool> seen(tree.nodes.size(), false);
  std::vector<NodeId> pending = {tree.root};
  std::vector<NodeId> children;
  while (!pending.empty()) {
    NodeId id = pending.back();
    pending.pop_back();
    if (id >= tree.nodes.size() || seen[id]) continue;
    seen[id] = true;
    order.push_back(id);
    children.clear();
    for_each_child(tree.nodes[id], [&](NodeId child) { children.push_back(child); });
    pending.insert(pending.end(), children.rbegin(), children.rend());  // first child is visited first
  }
  return order;
}

bool is_c_contiguous(const TensorValue& tensor) {
  int64_t expected = 1;
  for (size_t dim = tensor.sizes.size(); dim-- > 0;) {
    if (tensor.sizes[dim] != 1 && tensor.strides[dim] != expected) return false;
    expected *= tensor.sizes[dim];
  }
  return true;
}

uint64_t element_count(const TensorValue& tensor) {
  uint64_t count = 1;
  for (int64_t size : tensor.sizes) count *= static_cast<uint64_t>(size);
  return count;
}

const char* storage_type_name(StorageType type) { return info(type).name; }

uint64_t storage_element_size(StorageType type) { return info(type).element_size; }

std::optional<StorageType> storage_type_from_name(std::string_view name) {
  for (const auto& entry : kStorageTypes) {
    if (name == entry.name) return entry.type;
  }
  return std::nullopt;
}

}  // namespace zoogate::cdr
