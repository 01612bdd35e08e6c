// Builds state-dict value trees for planner tests: an OrderedDict of named tensors, each over a float
// storage of its own unless it is added as a view of another tensor's storage.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "cdr/sanitize.h"
#include "cdr/value.h"

namespace zoogate::mtd::testing {

class StateDictBuilder {
 public:
  // A contiguous tensor over a new storage of exactly its size; returns the tensor's node.
  cdr::NodeId add(const std::string& name, const std::vector<int64_t>& sizes,
                  cdr::StorageType type = cdr::StorageType::kFloat) {
    uint64_t numel = 1;
    for (int64_t size : sizes) numel *= static_cast<uint64_t>(size);
    cdr::NodeId storage = tree_.add(cdr::StorageRefValue{type, "s" + std::to_string(tree_.nodes.size()), "cpu", numel});
    return add_tensor(name, cdr::TensorValue{storage, 0, sizes, contiguous_strides(sizes), false, false, {}});
  }

  // A tensor with any layout over a new storage of `storage_numel` elements.
  cdr::NodeId add_over_storage(const std::string& name, const std::vector<int64_t>& sizes,
                               const std::vector<int64_t>& strides, uint64_t offset, uint64_t storage_numel) {
    cdr::NodeId storage =
        tree_.add(cdr::StorageRefValue{cdr::StorageType::kFloat, "s" + std::to_string(tree_.nodes.size()), "cpu",
                                       storage_numel});
    return add_tensor(name, cdr::TensorValue{storage, offset, sizes, strides, false, false, {}});
  }

  // A tensor over the storage of `of` (a node returned by add).
  cdr::NodeId add_view(const std::string& name, cdr::NodeId of, const std::vector<int64_t>& sizes,
                       const std::vector<int64_t>& strides, uint64_t offset = 0) {
    cdr::NodeId storage = std::get<cdr::TensorValue>(tree_.at(of)).storage;
    return add_tensor(name, cdr::TensorValue{storage, offset, sizes, strides, false, false, {}});
  }

  // The same tensor object under a second name (tied weights).
  void add_alias(const std::string& name, cdr::NodeId of) {
    items_.emplace_back(tree_.add(cdr::StrValue{name}), of);
  }

  cdr::ValueTree tree() const {
    cdr::ValueTree tree = tree_;
    cdr::OrderedDictValue root;
    root.items = items_;
    tree.root = tree.add(std::move(root));
    return tree;
  }

  // The storages in first-reference order, as the engine hands them to a planner.
  static std::vector<cdr::StorageInfo> storages_of(const cdr::ValueTree& tree) {
    std::vector<cdr::StorageInfo> storages;
    for (cdr::NodeId id : cdr::reachable_nodes(tree)) {
      if (const auto* storage = std::get_if<cdr::StorageRefValue>(&tree.at(id))) {
        storages.push_back(cdr::StorageInfo{id, storage->type, storage->numel,
                                            storage->numel * cdr::storage_element_size(storage->type)});
      }
    }
    return storages;
  }

 private:
  static std::vector<int64_t> contiguous_strides(const std::vector<int64_t>& sizes) {
    std::vector<int64_t> strides(sizes.size());
    int64_t stride = 1;
    for (size_t dim = sizes.size(); dim-- > 0;) {
      strides[dim] = stride;
      stride *= sizes[dim];
    }
    return strides;
  }

  cdr::NodeId add_tensor(const std::string& name, cdr::TensorValue tensor) {
    cdr::NodeId node = tree_.add(cdr::ParameterValue{tree_.add(std::move(tensor)), true});
    items_.emplace_back(tree_.add(cdr::StrValue{name}), node);
    return std::get<cdr::ParameterValue>(tree_.at(node)).tensor;
  }

  cdr::ValueTree tree_;
  std::vector<std::pair<cdr::NodeId, cdr::NodeId>> items_;
};

}  // namespace zoogate::mtd::testing
