// Feeds arbitrary bytes to the pickle VM under the default policy, once per persistent-id mode. It
// must refuse with an Error whose offset lies inside the input, or return a tree in which every node
// the root reaches is a well-formed allowlisted value. Disarming and blocking must agree: a stream
// that parses cleanly when disarming parses to the same tree when blocking, and a stream with
// findings is refused when blocking. Never a crash, leak, hang or trap.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "cdr/allowlist.h"
#include "cdr/pickle_vm.h"

namespace {

using namespace zoogate::cdr;

// The checks a consumer of the tree relies on, for one reachable node.
bool well_formed(const ValueTree& tree, const Value& value) {
  auto kind_of = [&](NodeId id) -> const Value* { return id < tree.nodes.size() ? &tree.nodes[id] : nullptr; };
  if (const auto* global = std::get_if<GlobalValue>(&value)) {
    auto kind = find_builtin(global->module, global->name);
    return kind && is_plain_value(*kind);  // the policy adds no operator pairs here
  }
  if (const auto* tensor = std::get_if<TensorValue>(&value)) {
    const Value* storage = kind_of(tensor->storage);
    if (!storage || !std::holds_alternative<StorageRefValue>(*storage)) return false;
    return tensor->sizes.size() == tensor->strides.size();
  }
  if (const auto* parameter = std::get_if<ParameterValue>(&value)) {
    const Value* tensor = kind_of(parameter->tensor);
    return tensor && std::holds_alternative<TensorValue>(*tensor);
  }
  if (const auto* array = std::get_if<NumpyArrayValue>(&value)) {
    const Value* dtype = kind_of(array->dtype);
    return dtype && std::holds_alternative<NumpyDtypeValue>(*dtype);
  }
  if (const auto* scalar = std::get_if<NumpyScalarValue>(&value)) {
    const Value* dtype = kind_of(scalar->dtype);
    return dtype && std::holds_alternative<NumpyDtypeValue>(*dtype);
  }
  if (const auto* dtype = std::get_if<NumpyDtypeValue>(&value)) {
    // Always finished by its BUILD: a byte order first.
    return !dtype->descr.empty() && (dtype->descr[0] == '<' || dtype->descr[0] == '>' || dtype->descr[0] == '|');
  }
  return !std::holds_alternative<OperatorCallValue>(value);
}

// Every reachable node is well formed, and every other node has been blanked to None, so that a
// consumer scanning all nodes sees nothing the pickle discarded or the VM disarmed.
bool tree_is_safe(const ValueTree& tree) {
  if (tree.root >= tree.nodes.size()) return false;
  bool children_valid = true;
  std::vector<bool> reached(tree.nodes.size(), false);
  for (NodeId id : reachable_nodes(tree)) {
    reached[id] = true;
    for_each_child(tree.nodes[id], [&](NodeId child) { children_valid = children_valid && child < tree.nodes.size(); });
    if (!well_formed(tree, tree.nodes[id])) return false;
  }
  for (NodeId id = 0; id < tree.nodes.size(); ++id) {
    if (!reached[id] && !std::holds_alternative<NoneValue>(tree.nodes[id])) return false;
  }
  return children_valid;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  zoogate::MemorySource source(std::span<const uint8_t>(data, size));
  const Policy disarm;
  Policy block;
  block.forbidden_global = block.forbidden_call = block.forbidden_build = Action::kBlock;
  for (PersistentIdMode mode :
       {PersistentIdMode::kNone, PersistentIdMode::kTorchArchive, PersistentIdMode::kTorchLegacy}) {
    PickleParseOptions options;
    options.persistent_ids = mode;
    options.allow_trailing_bytes = mode == PersistentIdMode::kTorchLegacy;  // as the legacy reader uses it
    auto parsed = parse_pickle(source, disarm, options);
    if (!parsed) {
      if (!parsed.error().offset || *parsed.error().offset > size) __builtin_trap();
      continue;
    }
    if (parsed->end_offset > size || (!options.allow_trailing_bytes && parsed->end_offset != size)) __builtin_trap();
    if (!tree_is_safe(parsed->tree)) __builtin_trap();
    for (const Finding& finding : parsed->findings) {
      if (finding.offset >= size || finding.action != Action::kDisarm) __builtin_trap();
    }
    auto blocked = parse_pickle(source, block, options);
    if (parsed->findings.empty()) {
      if (!blocked || !structurally_equal(blocked->tree, parsed->tree)) __builtin_trap();
    } else if (blocked || blocked.error().code != zoogate::ErrorCode::kForbidden) {
      __builtin_trap();
    }
  }
  return 0;
}
