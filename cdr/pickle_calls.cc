// GLOBAL resolution, calls (REDUCE/NEWOBJ/INST/OBJ), BUILD and persistent ids of the pickle VM,
// each checked against what its allowlist entry declares. Nothing is imported or called: every
// accepted construct becomes a typed node, everything else a finding.
#include <algorithm>
#include <array>

#include "cdr/message_text.h"
#include "cdr/pickle_machine.h"
#include "cdr/pickle_text.h"
#include "common/checked.h"

namespace zoogate::cdr {
namespace {

// A plain numeric numpy type string as numpy's dtype.__reduce__ writes it (kind letter + item size).
struct NumpyType {
  std::string_view typestr;
  uint64_t itemsize;
  bool datetime;  // M8/m8: the BUILD state carries a time unit
};

constexpr NumpyType kNumpyTypes[] = {
    {"b1", 1, false},   {"i1", 1, false}, {"u1", 1, false},   {"i2", 2, false},   {"u2", 2, false}, {"i4", 4, false},
    {"u4", 4, false},   {"i8", 8, false}, {"u8", 8, false},   {"f2", 2, false},   {"f4", 4, false}, {"f8", 8, false},
    {"f16", 16, false}, {"c8", 8, false}, {"c16", 16, false}, {"c32", 32, false}, {"M8", 8, true},  {"m8", 8, true},
};

constexpr std::string_view kDatetimeUnits[] = {"Y",  "M",  "W",  "D",  "h",  "m",  "s",
                                               "ms", "us", "ns", "ps", "fs", "as", "generic"};

// numpy's dtype BUILD state: (version, byteorder, subarray, names, fields, elsize, alignment, flags
// [, metadata]). Version 3 has 8 items; datetime types use version 4 with a 9th item.
constexpr int64_t kDtypeStateVersion = 3;
constexpr int64_t kDatetimeDtypeStateVersion = 4;
constexpr size_t kDtypeStateItems = 8;
constexpr int64_t kArrayStateVersion = 1;  // ndarray BUILD: (1, shape, dtype, is_fortran, data)

const NumpyType* find_numpy_type(std::string_view typestr) {
  for (const auto& type : kNumpyTypes) {
    if (type.typestr == typestr) return &type;
  }
  return nullptr;
}

// Item size of a finished descr such as "<f4", "|b1" or "<M8[ns]" (always one the VM built).
uint64_t numpy_itemsize(std::string_view descr) {
  std::string_view typestr = descr.substr(1, descr.find('[') - 1);
  const NumpyType* type = find_numpy_type(typestr);
  return type ? type->itemsize : 0;
}

bool is_latin1_name(std::string_view encoding) { return encoding == "latin1" || encoding == "latin-1"; }

std::string global_key(std::string_view module, std::string_view name) {
  return std::to_string(module.size()) + ':' + std::string(module) + std::string(name);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Small argument checks

bool PickleMachine::is_global(NodeId id, GlobalKind kind) const {
  return get<GlobalValue>(id) && meta_[id].global == kind;
}

bool PickleMachine::is_empty_ordered_dict(NodeId id) const {
  const auto* dict = get<OrderedDictValue>(id);
  return dict && dict->items.empty() && !dict->attributes;
}

bool PickleMachine::is_complete_dtype(NodeId id) const {
  return get<NumpyDtypeValue>(id) && !(meta_[id].flags & kAwaitingBuild);
}

std::optional<int64_t> PickleMachine::small_int(NodeId id) const {
  const auto* value = get<IntValue>(id);
  if (!value || !value->big.empty()) return std::nullopt;
  return value->small;
}

// A tuple (or torch.Size) of int64 values, into `out`.
bool PickleMachine::int64_items(NodeId id, std::vector<int64_t>& out) const {
  if (const auto* size = get<TorchSizeValue>(id)) {
    out = size->dims;
    return true;
  }
  const auto* tuple = get<TupleValue>(id);
  if (!tuple) return false;
  out.clear();
  out.reserve(tuple->items.size());
  for (NodeId item : tuple->items) {
    std::optional<int64_t> value = small_int(item);
    if (!value) return false;
    out.push_back(*value);
  }
  return true;
}

bool PickleMachine::str_keyed_dict(NodeId id) const {
  const auto* dict = get<DictValue>(id);
  return dict && std::all_of(dict->items.begin(), dict->items.end(),
                             [&](const auto& item) { return get<StrValue>(item.first) != nullptr; });
}

// ---------------------------------------------------------------------------------------------
// GLOBAL, STACK_GLOBAL, INST

Result<NodeId> PickleMachine::resolve_global(std::string_view module, std::string_view name) {
  if (globals_seen_keys_.insert(global_key(module, name)).second) {
    globals_seen_.push_back(GlobalName{std::string(module), std::string(name)});
  }
  std::string_view resolved = protocol_ < 3 ? fix_imports_module(module) : module;
  std::string key = global_key(resolved, name);
  if (auto it = global_nodes_.find(key); it != global_nodes_.end()) return it->second;

  GlobalKind kind = find_builtin(resolved, name).value_or(GlobalKind::kNone);
  if (kind == GlobalKind::kNone) {
    bool operator_allowed =
        std::any_of(policy_.operator_allowed_globals.begin(), policy_.operator_allowed_globals.end(),
                    [&](const GlobalName& allowed) { return allowed.module == resolved && allowed.name == name; });
    if (operator_allowed) kind = GlobalKind::kOperator;
  }
  if (kind == GlobalKind::kNone) {
    return forbid(FindingKind::kForbiddenGlobal,
                  op_name(op_) + " " + escape_for_message(module) + "." + escape_for_message(name),
                  "the (module, name) pair is not in the allowlist");
  }
  // Python resolves a global to one object, so every mention shares one node.
  NodeId id = add(GlobalValue{std::string(resolved), std::string(name)}, 0, is_plain_value(kind) ? 0 : kNotValue, kind);
  global_nodes_.emplace(std::move(key), id);
  return id;
}

// ---------------------------------------------------------------------------------------------
// Calls

Result<NodeId> PickleMachine::call(Op op, NodeId callable, NodeId args) {
  discarded_ = true;  // the callable and its arguments are consumed
  if (callable == kPoison || args == kPoison) return kPoison;
  const auto* global = get<GlobalValue>(callable);
  if (!global) {
    return forbid(FindingKind::kForbiddenCall, op_name(op_) + " of " + describe(callable),
                  "only allowlisted globals may be called");
  }
  const auto* tuple = get<TupleValue>(args);
  std::array<NodeId, kMaxBuiltinArgs> argv{};
  size_t argc = tuple ? std::min(tuple->items.size(), kMaxBuiltinArgs) : 0;
  if (tuple) std::copy_n(tuple->items.begin(), argc, argv.begin());
  CallSite site{op, callable, meta_[callable].global, args, std::span<const NodeId>(argv.data(), argc)};
  if (!tuple) return bad_call(site, "the arguments are a " + describe(args) + ", not a tuple");
  if (site.kind == GlobalKind::kOperator) return operator_call(site);
  if (tuple->items.size() > kMaxBuiltinArgs) return bad_call(site, "too many arguments");
  return call_builtin(site);
}

Result<NodeId> PickleMachine::bad_call(const CallSite& site, std::string reason) {
  const auto& global = std::get<GlobalValue>(tree_.nodes[site.callable]);
  return forbid(FindingKind::kForbiddenCall,
                op_name(static_cast<uint8_t>(site.op)) + " " + escape_for_message(global.module) + "." +
                    escape_for_message(global.name),
                std::move(reason));
}

Result<NodeId> PickleMachine::call_builtin(const CallSite& site) {
  bool is_new = site.op == Op::kNewObj || site.op == Op::kNewObjEx;
  const auto& argv = site.argv;
  switch (site.kind) {
    case GlobalKind::kOrderedDict:
      return ordered_dict(site);
    case GlobalKind::kParameter:
    case GlobalKind::kRebuildParameter:
    case GlobalKind::kRebuildParameterWithState:
      return rebuild_parameter(site);
    case GlobalKind::kNamespace:
      // argparse.Namespace() through NEWOBJ (protocol 2+) or a call; attributes come from BUILD.
      if (!argv.empty()) return bad_call(site, "expects no arguments (attributes come from BUILD)");
      return add(NamespaceValue{});
    default:
      break;
  }
  // The remaining entries are functions or classes that pickles only ever call.
  if (is_new) return bad_call(site, "is not constructed with NEWOBJ");
  switch (site.kind) {
    case GlobalKind::kRebuildTensor:
      return rebuild_tensor(site, argv, true);
    case GlobalKind::kRebuildTensorV2:
      return rebuild_tensor(site, argv, false);
    case GlobalKind::kRebuildFromTypeV2:
      return rebuild_from_type(site);
    case GlobalKind::kTorchSize: {
      std::vector<int64_t> dims;
      if (argv.size() != 1 || !get<TupleValue>(argv[0]) || !int64_items(argv[0], dims)) {
        return bad_call(site, "expects one tuple of ints");
      }
      return add(TorchSizeValue{std::move(dims)});
    }
    case GlobalKind::kNumpyReconstruct: {
      // numpy.core.multiarray._reconstruct(numpy.ndarray, (0,), b'b'): an empty array that BUILD fills.
      const auto* shape = argv.size() == 3 ? get<TupleValue>(argv[1]) : nullptr;
      const auto* type_code = argv.size() == 3 ? get<BytesValue>(argv[2]) : nullptr;
      if (!shape || !is_global(argv[0], GlobalKind::kNumpyNdarray) || shape->items.size() != 1 ||
          small_int(shape->items[0]) != 0 || !type_code || type_code->is_bytearray || type_code->data != "b") {
        return bad_call(site, "expects (numpy.ndarray, (0,), b'b')");
      }
      return add(NumpyArrayValue{}, 0, kNotValue | kAwaitingBuild);
    }
    case GlobalKind::kNumpyDtype:
      return numpy_dtype(site);
    case GlobalKind::kNumpyScalar:
      return numpy_scalar(site);
    case GlobalKind::kNumpyFrombuffer:
      return numpy_frombuffer(site);
    case GlobalKind::kSet:
    case GlobalKind::kFrozenset:
      return make_set(site);
    case GlobalKind::kBytes:
    case GlobalKind::kBytearray:
    case GlobalKind::kCodecsEncode:
      return make_bytes(site);
    case GlobalKind::kCopyregReconstructor:
      // copyreg._reconstructor(argparse.Namespace, object, None): protocol 0/1's object.__new__.
      if (argv.size() != 3 || !is_global(argv[0], GlobalKind::kNamespace) || !is_global(argv[1], GlobalKind::kObject) ||
          !get<NoneValue>(argv[2])) {
        return bad_call(site, "expects (argparse.Namespace, builtins.object, None)");
      }
      return add(NamespaceValue{});
    default:
      return bad_call(site, "is not callable (it may only be a value or an argument)");
  }
}

Result<NodeId> PickleMachine::rebuild_tensor(const CallSite& site, std::span<const NodeId> argv, bool v1) {
  // _rebuild_tensor(storage, offset, size, stride) or
  // _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, backward_hooks[, metadata]).
  constexpr size_t kV1Args = 4, kV2Args = 6, kV2ArgsWithMetadata = 7;
  if (v1 ? argv.size() != kV1Args : argv.size() != kV2Args && argv.size() != kV2ArgsWithMetadata) {
    return bad_call(site, v1 ? "expects 4 arguments" : "expects 6 or 7 arguments");
  }
  const auto* storage = get<StorageRefValue>(argv[0]);
  if (!storage) return bad_call(site, "argument 1 must be a storage reference (BINPERSID)");
  std::optional<int64_t> offset = small_int(argv[1]);
  if (!offset || *offset < 0) return bad_call(site, "argument 2 (storage offset) must be a non-negative int");
  std::vector<int64_t> sizes, strides;
  if (!int64_items(argv[2], sizes)) return bad_call(site, "argument 3 (size) must be a tuple of ints or a torch.Size");
  if (!get<TupleValue>(argv[3]) || !int64_items(argv[3], strides)) {
    return bad_call(site, "argument 4 (stride) must be a tuple of ints");
  }
  if (sizes.size() != strides.size()) return bad_call(site, "size and stride differ in length");
  bool requires_grad = false;
  std::optional<NodeId> metadata;
  if (!v1) {
    const bool* grad = get<bool>(argv[4]);
    if (!grad) return bad_call(site, "argument 5 (requires_grad) must be a bool");
    requires_grad = *grad;
    if (!is_empty_ordered_dict(argv[5]))
      return bad_call(site, "argument 6 (backward hooks) must be an empty OrderedDict");
    if (argv.size() == kV2ArgsWithMetadata && !get<NoneValue>(argv[6])) {
      if (!get<DictValue>(argv[6])) return bad_call(site, "argument 7 (metadata) must be a dict or None");
      metadata = argv[6];
    }
  }

  // Every element the view can address must lie inside the storage: offset + sum((size-1)*stride)
  // < numel. An empty view addresses nothing, but its offset must still be within the storage.
  bool empty = std::any_of(sizes.begin(), sizes.end(), [](int64_t size) { return size == 0; });
  bool negative = std::any_of(sizes.begin(), sizes.end(), [](int64_t v) { return v < 0; }) ||
                  std::any_of(strides.begin(), strides.end(), [](int64_t v) { return v < 0; });
  if (negative) return bad_call(site, "sizes and strides must be non-negative");
  std::optional<uint64_t> last = static_cast<uint64_t>(*offset);
  if (!empty) {
    for (size_t i = 0; i < sizes.size() && last; ++i) {
      auto reach = checked_mul(static_cast<uint64_t>(sizes[i] - 1), static_cast<uint64_t>(strides[i]));
      last = reach ? checked_add(*last, *reach) : std::nullopt;
    }
  }
  bool fits = last && (empty ? *last <= storage->numel : *last < storage->numel);
  if (!fits) {
    return bad_call(site,
                    "the view reaches past the end of its storage of " + std::to_string(storage->numel) + " elements");
  }
  if (++tensor_count_ > limits_.max_tensor_count) {
    return limit_error("max_tensor_count", tensor_count_, limits_.max_tensor_count);
  }
  uint32_t depth = 1;
  if (metadata) {
    ZG_ASSIGN_OR_RETURN(depth, depth_above(std::span<const NodeId>(&*metadata, 1)));
  }
  return add(TensorValue{argv[0], static_cast<uint64_t>(*offset), std::move(sizes), std::move(strides), requires_grad,
                         v1, metadata},
             depth);
}

Result<NodeId> PickleMachine::rebuild_parameter(const CallSite& site) {
  // _rebuild_parameter(tensor, requires_grad, hooks), _rebuild_parameter_with_state(tensor,
  // requires_grad, hooks, state), Parameter(tensor[, requires_grad]).
  const auto& argv = site.argv;
  bool is_class = site.kind == GlobalKind::kParameter;
  bool with_state = site.kind == GlobalKind::kRebuildParameterWithState;
  bool count_ok = is_class ? (argv.size() == 1 || argv.size() == 2) : argv.size() == (with_state ? 4u : 3u);
  if (!count_ok) return bad_call(site, "wrong number of arguments");
  if (!get<TensorValue>(argv[0])) return bad_call(site, "argument 1 must be a tensor");
  bool requires_grad = true;
  if (argv.size() >= 2) {
    const bool* grad = get<bool>(argv[1]);
    if (!grad) return bad_call(site, "argument 2 (requires_grad) must be a bool");
    requires_grad = *grad;
  }
  if (!is_class && !is_empty_ordered_dict(argv[2])) {
    return bad_call(site, "argument 3 (backward hooks) must be an empty OrderedDict");
  }
  if (with_state) {
    const auto* state = get<DictValue>(argv[3]);
    if (!get<NoneValue>(argv[3]) && !(state && state->items.empty())) {
      return bad_call(site, "argument 4 (state) must be None or an empty dict");
    }
  }
  ZG_ASSIGN_OR_RETURN(uint32_t depth, depth_above(argv.first(1)));
  return add(ParameterValue{argv[0], requires_grad}, depth);
}

Result<NodeId> PickleMachine::rebuild_from_type(const CallSite& site) {
  // torch._tensor._rebuild_from_type_v2(func, new_type, args, state), as Tensor.__reduce_ex__ writes
  // it for tensors with Python state or a subclass: only the plain forms are accepted.
  const auto& argv = site.argv;
  if (argv.size() != 4) return bad_call(site, "expects 4 arguments");
  if (!is_global(argv[0], GlobalKind::kRebuildTensorV2)) {
    return bad_call(site, "argument 1 must be torch._utils._rebuild_tensor_v2");
  }
  bool parameter = is_global(argv[1], GlobalKind::kParameter);
  if (!parameter && !is_global(argv[1], GlobalKind::kTorchTensor)) {
    return bad_call(site, "argument 2 must be torch.Tensor or torch.nn.parameter.Parameter");
  }
  const auto* args = get<TupleValue>(argv[2]);
  if (!args || args->items.size() > kMaxBuiltinArgs) return bad_call(site, "argument 3 must be the rebuild arguments");
  const auto* state = get<DictValue>(argv[3]);
  if (!get<NoneValue>(argv[3]) && !(state && state->items.empty())) {
    return bad_call(site, "argument 4 (state) must be None or an empty dict");
  }
  std::array<NodeId, kMaxBuiltinArgs> inner{};
  std::copy(args->items.begin(), args->items.end(), inner.begin());
  ZG_ASSIGN_OR_RETURN(NodeId tensor,
                      rebuild_tensor(site, std::span<const NodeId>(inner.data(), args->items.size()), false));
  if (!parameter || tensor == kPoison) return tensor;
  bool requires_grad = std::get<TensorValue>(tree_.nodes[tensor]).requires_grad;
  return add(ParameterValue{tensor, requires_grad}, meta_[tensor].depth + 1);
}

Result<NodeId> PickleMachine::ordered_dict(const CallSite& site) {
  // OrderedDict() or OrderedDict([(key, value), ...]); items usually follow through SETITEMS.
  const auto& argv = site.argv;
  bool is_new = site.op == Op::kNewObj || site.op == Op::kNewObjEx;
  const auto* pairs = argv.size() == 1 && !is_new ? get<ListValue>(argv[0]) : nullptr;
  if (!argv.empty() && !pairs) return bad_call(site, "expects no arguments or one list of (key, value) tuples");
  std::vector<NodeId> items = pairs ? pairs->items : std::vector<NodeId>{};
  for (NodeId item : items) {
    const auto* pair = get<TupleValue>(item);
    if (!pair || pair->items.size() != 2) return bad_call(site, "the list must hold (key, value) tuples");
    if (!keys_.hash(pair->items[0])) return bad_call(site, "a key is not hashable");
  }
  NodeId dict = add(OrderedDictValue{});
  for (NodeId item : items) {
    const auto& pair = std::get<TupleValue>(tree_.nodes[item]).items;
    ZG_TRY(dict_set(dict, pair[0], pair[1]));
  }
  return dict;
}

Result<NodeId> PickleMachine::numpy_dtype(const CallSite& site) {
  // numpy.dtype(typestr, align=False, copy=True); the byte order arrives with BUILD.
  const auto& argv = site.argv;
  const auto* typestr = argv.size() == 3 ? get<StrValue>(argv[0]) : nullptr;
  auto flag_is = [&](NodeId id, bool expected) {
    const bool* flag = get<bool>(id);
    return flag ? *flag == expected : small_int(id) == (expected ? 1 : 0);
  };
  if (!typestr || !flag_is(argv[1], false) || !flag_is(argv[2], true)) {
    return bad_call(site, "expects (type string, False, True)");
  }
  if (!find_numpy_type(typestr->utf8)) {
    return bad_call(site, "dtype '" + escape_for_message(typestr->utf8) +
                              "' is not a plain bool, integer, float, complex, datetime or timedelta type");
  }
  return add(NumpyDtypeValue{typestr->utf8}, 0, kNotValue | kAwaitingBuild);
}

Result<NodeId> PickleMachine::numpy_scalar(const CallSite& site) {
  // numpy.core.multiarray.scalar(dtype, raw bytes of one element).
  const auto& argv = site.argv;
  const auto* data = argv.size() == 2 ? get<BytesValue>(argv[1]) : nullptr;
  if (!data || data->is_bytearray || !is_complete_dtype(argv[0])) return bad_call(site, "expects (dtype, bytes)");
  const auto& dtype = std::get<NumpyDtypeValue>(tree_.nodes[argv[0]]);
  if (data->data.size() != numpy_itemsize(dtype.descr)) {
    return bad_call(site, "the data is not one element of dtype " + dtype.descr);
  }
  NumpyScalarValue scalar{argv[0], data->data};
  to_native_byte_order(scalar.dtype, scalar.data);
  return add(std::move(scalar), 1);
}

void PickleMachine::to_native_byte_order(NodeId& dtype, std::string& data) {
  // numpy restores big-endian scalars, and arrays through _reconstruct, in native (little-endian)
  // order: the tree holds what numpy returns, so that the rewritten file loads the same.
  const std::string descr = std::get<NumpyDtypeValue>(tree_.nodes[dtype]).descr;  // a copy: add() may move nodes
  if (!descr.starts_with('>')) return;
  const uint64_t itemsize = numpy_itemsize(descr);
  // A complex number is two floats, each swapped on its own.
  const uint64_t unit = descr[1] == 'c' ? itemsize / 2 : itemsize;
  for (uint64_t start = 0; start + unit <= data.size(); start += unit) {
    std::reverse(data.begin() + static_cast<std::ptrdiff_t>(start),
                 data.begin() + static_cast<std::ptrdiff_t>(start + unit));
  }
  dtype = add(NumpyDtypeValue{"<" + descr.substr(1)}, 1);
}

Result<NodeId> PickleMachine::numpy_frombuffer(const CallSite& site) {
  // numpy.core.numeric._frombuffer(buffer, dtype, shape, order): protocol 5's in-band arrays.
  const auto& argv = site.argv;
  const auto* data = argv.size() == 4 ? get<BytesValue>(argv[0]) : nullptr;
  const auto* order = argv.size() == 4 ? get<StrValue>(argv[3]) : nullptr;
  std::vector<int64_t> dims;
  if (!data || !is_complete_dtype(argv[1]) || !get<TupleValue>(argv[2]) || !int64_items(argv[2], dims) || !order ||
      (order->utf8 != "C" && order->utf8 != "F")) {
    return bad_call(site, "expects (bytes, dtype, shape tuple, 'C' or 'F')");
  }
  const auto& dtype = std::get<NumpyDtypeValue>(tree_.nodes[argv[1]]);
  std::optional<uint64_t> length = numpy_itemsize(dtype.descr);
  std::vector<uint64_t> shape;
  for (int64_t dim : dims) {
    if (dim < 0) return bad_call(site, "the shape has a negative dimension");
    shape.push_back(static_cast<uint64_t>(dim));
    length = length ? checked_mul(*length, static_cast<uint64_t>(dim)) : std::nullopt;
  }
  if (!length || *length != data->data.size()) return bad_call(site, "the data length does not match shape and dtype");
  return add(NumpyArrayValue{argv[1], std::move(shape), order->utf8 == "F", data->data}, 1);
}

Result<NodeId> PickleMachine::make_set(const CallSite& site) {
  // set([items]) / frozenset([items]), as CPython pickles them before protocol 4.
  const auto* list = site.argv.size() == 1 ? get<ListValue>(site.argv[0]) : nullptr;
  if (!list) return bad_call(site, "expects one list");
  std::vector<NodeId> items = list->items;
  for (NodeId item : items) {
    if (!keys_.hash(item)) return bad_call(site, "an item is not hashable");
  }
  NodeId set = add(SetValue{{}, site.kind == GlobalKind::kFrozenset});
  for (NodeId item : items) ZG_TRY(set_add(set, item));
  return set;
}

Result<NodeId> PickleMachine::make_bytes(const CallSite& site) {
  // bytes() and _codecs.encode(text, 'latin1') are how protocols 0-2 carry bytes; bytearray() takes
  // nothing, bytes, or (text, 'latin-1').
  const auto& argv = site.argv;
  bool array = site.kind == GlobalKind::kBytearray;
  if (argv.empty() && site.kind != GlobalKind::kCodecsEncode) return add(BytesValue{{}, array});
  if (array && argv.size() == 1) {
    const auto* bytes = get<BytesValue>(argv[0]);
    if (bytes && !bytes->is_bytearray) return add(BytesValue{bytes->data, true});
  }
  if (site.kind != GlobalKind::kBytes && argv.size() == 2) {
    const auto* text = get<StrValue>(argv[0]);
    const auto* encoding = get<StrValue>(argv[1]);
    if (text && encoding && is_latin1_name(encoding->utf8)) {
      std::optional<std::string> bytes = utf8_to_latin1(text->utf8);
      if (!bytes) return bad_call(site, "the text is not Latin-1");
      return add(BytesValue{std::move(*bytes), array});
    }
  }
  return bad_call(site, site.kind == GlobalKind::kBytes       ? "expects no arguments"
                        : site.kind == GlobalKind::kBytearray ? "expects (), (bytes,) or (str, 'latin-1')"
                                                              : "expects (str, 'latin1')");
}

Result<NodeId> PickleMachine::operator_call(const CallSite& site) {
  // A pair the operator allowed on purpose: kept as a generic call so the writer can re-emit it.
  ZG_ASSIGN_OR_RETURN(bool admitted, admit(site.args));
  if (!admitted) return kPoison;
  ZG_ASSIGN_OR_RETURN(uint32_t depth, depth_above(std::span<const NodeId>(&site.args, 1)));
  bool is_new = site.op == Op::kNewObj || site.op == Op::kNewObjEx;
  return add(OperatorCallValue{site.callable, site.args, is_new, std::nullopt}, depth);
}

// ---------------------------------------------------------------------------------------------
// BUILD

Status PickleMachine::build() {
  discarded_ = true;  // the state is consumed (copied, or checked and dropped)
  ZG_ASSIGN_OR_RETURN(NodeId state, pop());
  ZG_ASSIGN_OR_RETURN(NodeId * target, top());
  if (*target == kPoison) return {};
  ZG_ASSIGN_OR_RETURN(NodeId built, build_on(*target, state));
  stack_.back() = built;
  return {};
}

// Applies BUILD's state to `target`; returns the target, or poison when the BUILD was refused.
Result<NodeId> PickleMachine::build_on(NodeId target, NodeId state) {
  if (state == kPoison) return kPoison;
  const Value& value = tree_.nodes[target];
  uint8_t flags = meta_[target].flags;
  std::string construct = "BUILD on " + describe(target);
  if (flags & kAwaitingBuild) {
    return std::holds_alternative<NumpyArrayValue>(value) ? build_numpy_array(target, state)
                                                          : build_numpy_dtype(target, state);
  }
  bool buildable = std::holds_alternative<OrderedDictValue>(value) || std::holds_alternative<NamespaceValue>(value) ||
                   std::holds_alternative<OperatorCallValue>(value);
  if (!buildable) {
    return forbid(FindingKind::kForbiddenBuild, construct,
                  "BUILD is only accepted on OrderedDict, argparse.Namespace, numpy arrays and dtypes, and "
                  "operator-allowed calls");
  }
  if (flags & kBuilt) return forbid(FindingKind::kForbiddenBuild, construct, "the object was already built once");
  if (std::holds_alternative<OperatorCallValue>(value)) {
    ZG_ASSIGN_OR_RETURN(bool admitted, admit(state));
    if (!admitted) return kPoison;
    std::get<OperatorCallValue>(tree_.nodes[target]).build_state = state;
  } else {
    // OrderedDict (state_dict's _metadata) and Namespace take instance attributes: a dict, str keys.
    if (!str_keyed_dict(state)) {
      return forbid(FindingKind::kForbiddenBuild, construct, "the state must be a dict with str keys");
    }
    if (std::holds_alternative<OrderedDictValue>(tree_.nodes[target])) {
      // Python copies the state into __dict__, so later changes to the state dict do not show.
      DictValue copy{std::get<DictValue>(tree_.nodes[state]).items};
      NodeId attributes = add(std::move(copy), meta_[state].depth);
      std::get<OrderedDictValue>(tree_.nodes[target]).attributes = attributes;
    } else {
      std::get<NamespaceValue>(tree_.nodes[target]).attributes = std::get<DictValue>(tree_.nodes[state]).items;
    }
  }
  ZG_TRY(deepen(target, state));
  meta_[target].flags |= kBuilt;
  return target;
}

Result<NodeId> PickleMachine::build_numpy_array(NodeId target, NodeId state) {
  // ndarray.__setstate__((1, shape, dtype, is_fortran, raw bytes)) after _reconstruct.
  constexpr size_t kStateItems = 5;
  const auto* tuple = get<TupleValue>(state);
  const std::string construct = "BUILD on numpy array";
  if (!tuple || tuple->items.size() != kStateItems || small_int(tuple->items[0]) != kArrayStateVersion) {
    return forbid(FindingKind::kForbiddenBuild, construct, "the state must be (1, shape, dtype, is_fortran, bytes)");
  }
  const auto& items = tuple->items;
  std::vector<int64_t> dims;
  const bool* fortran = get<bool>(items[3]);
  const auto* data = get<BytesValue>(items[4]);
  if (!get<TupleValue>(items[1]) || !int64_items(items[1], dims) || !is_complete_dtype(items[2]) || !fortran || !data ||
      data->is_bytearray) {
    return forbid(FindingKind::kForbiddenBuild, construct,
                  "the state must be (1, shape tuple, numeric dtype, bool, bytes); object arrays are refused");
  }
  const auto& dtype = std::get<NumpyDtypeValue>(tree_.nodes[items[2]]);
  std::optional<uint64_t> length = numpy_itemsize(dtype.descr);
  std::vector<uint64_t> shape;
  for (int64_t dim : dims) {
    if (dim < 0) return forbid(FindingKind::kForbiddenBuild, construct, "the shape has a negative dimension");
    shape.push_back(static_cast<uint64_t>(dim));
    length = length ? checked_mul(*length, static_cast<uint64_t>(dim)) : std::nullopt;
  }
  if (!length || *length != data->data.size()) {
    return forbid(FindingKind::kForbiddenBuild, construct, "the data length does not match shape and dtype");
  }
  NumpyArrayValue array{items[2], std::move(shape), *fortran, data->data};
  to_native_byte_order(array.dtype, array.data);
  tree_.nodes[target] = std::move(array);
  meta_[target] = NodeMeta{1, GlobalKind::kNone, kBuilt};
  return target;
}

Result<NodeId> PickleMachine::build_numpy_dtype(NodeId target, NodeId state) {
  // dtype.__setstate__((3, byteorder, None, None, None, -1, -1, 0)), or version 4 with a 9th item
  // ({}, (unit, count, 1, 1)) for datetime64/timedelta64.
  const std::string construct = "BUILD on numpy dtype";
  auto refuse = [&](std::string reason) { return forbid(FindingKind::kForbiddenBuild, construct, std::move(reason)); };
  const std::string typestr = std::get<NumpyDtypeValue>(tree_.nodes[target]).descr;
  const NumpyType* type = find_numpy_type(typestr);
  const auto* tuple = get<TupleValue>(state);
  size_t expected = type->datetime ? kDtypeStateItems + 1 : kDtypeStateItems;
  int64_t version = type->datetime ? kDatetimeDtypeStateVersion : kDtypeStateVersion;
  if (!tuple || tuple->items.size() != expected || small_int(tuple->items[0]) != version) {
    return refuse("the state is not that of a plain numeric dtype");
  }
  const auto& items = tuple->items;
  const auto* byteorder = get<StrValue>(items[1]);
  bool byteorder_ok =
      byteorder && (type->itemsize == 1 ? byteorder->utf8 == "|" : byteorder->utf8 == "<" || byteorder->utf8 == ">");
  bool plain = get<NoneValue>(items[2]) && get<NoneValue>(items[3]) && get<NoneValue>(items[4]) &&
               small_int(items[5]) == -1 && small_int(items[6]) == -1 && small_int(items[7]) == 0;
  if (!byteorder_ok || !plain) {
    return refuse("subarrays, fields, flags and unusual byte orders are refused (structured or object dtype)");
  }
  std::string descr = byteorder->utf8 + typestr;
  if (type->datetime) {
    const auto* metadata = get<TupleValue>(items[8]);
    const auto* user = metadata && metadata->items.size() == 2 ? get<DictValue>(metadata->items[0]) : nullptr;
    const auto* unit = metadata && metadata->items.size() == 2 ? get<TupleValue>(metadata->items[1]) : nullptr;
    const auto* name = unit && unit->items.size() == 4 ? get<BytesValue>(unit->items[0]) : nullptr;
    std::optional<int64_t> count = name ? small_int(unit->items[1]) : std::nullopt;
    bool unit_ok =
        user && user->items.empty() && name && !name->is_bytearray &&
        std::find(std::begin(kDatetimeUnits), std::end(kDatetimeUnits), name->data) != std::end(kDatetimeUnits) &&
        count && *count >= 1 && *count <= INT32_MAX && small_int(unit->items[2]) == 1 && small_int(unit->items[3]) == 1;
    if (!unit_ok) return refuse("the datetime unit must be ({}, (unit, count, 1, 1))");
    if (name->data != "generic")
      descr += "[" + (*count == 1 ? std::string() : std::to_string(*count)) + name->data + "]";
  }
  std::get<NumpyDtypeValue>(tree_.nodes[target]).descr = std::move(descr);
  meta_[target].flags = kBuilt;
  return target;
}

// ---------------------------------------------------------------------------------------------
// Persistent ids

Result<NodeId> PickleMachine::persistent_id(NodeId pid) {
  discarded_ = true;  // the id tuple is consumed
  if (pid == kPoison) return kPoison;
  const std::string construct = "BINPERSID of " + describe(pid);
  if (options_.persistent_ids == PersistentIdMode::kNone) {
    return forbid(FindingKind::kForbiddenPersistentId, construct,
                  "persistent ids are only accepted inside PyTorch archives");
  }
  // ('storage', torch.<T>Storage, key, location, numel), plus a None view slot in the legacy format.
  bool legacy = options_.persistent_ids == PersistentIdMode::kTorchLegacy;
  constexpr size_t kArchiveItems = 5;
  const auto* tuple = get<TupleValue>(pid);
  std::span<const NodeId> items = tuple ? std::span<const NodeId>(tuple->items) : std::span<const NodeId>();
  bool shape_ok = tuple && items.size() == kArchiveItems + (legacy ? 1 : 0);
  const auto* tag = shape_ok ? get<StrValue>(items[0]) : nullptr;
  const auto* key = shape_ok ? get<StrValue>(items[2]) : nullptr;
  const auto* location = shape_ok ? get<StrValue>(items[3]) : nullptr;
  std::optional<int64_t> numel = shape_ok ? small_int(items[4]) : std::nullopt;
  bool valid = tag && tag->utf8 == "storage" && is_global(items[1], GlobalKind::kStorageType) && key && location &&
               numel && *numel >= 0 && (!legacy || get<NoneValue>(items[5]));
  if (!valid) {
    return forbid(FindingKind::kForbiddenPersistentId, construct,
                  legacy ? "expected ('storage', torch.<T>Storage, key, location, numel, None)"
                         : "expected ('storage', torch.<T>Storage, key, location, numel)");
  }
  StorageRefValue ref{*storage_type_from_name(std::get<GlobalValue>(tree_.nodes[items[1]]).name), key->utf8,
                      location->utf8, static_cast<uint64_t>(*numel)};
  // torch caches storages by key: every reference to a key is the same storage object.
  auto [it, inserted] = storages_.try_emplace(ref.key, kNoNode);
  if (!inserted) {
    const auto& existing = std::get<StorageRefValue>(tree_.nodes[it->second]);
    if (existing.type != ref.type || existing.location != ref.location || existing.numel != ref.numel) {
      return forbid(FindingKind::kForbiddenPersistentId, "BINPERSID storage '" + escape_for_message(ref.key) + "'",
                    "another reference to this storage key disagrees on type, location or size");
    }
    return it->second;
  }
  it->second = add(std::move(ref));
  return it->second;
}

}  // namespace zoogate::cdr
