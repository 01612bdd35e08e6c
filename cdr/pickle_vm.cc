// The opcode loop of the non-executing pickle VM: input, stack, memo, frames, containers and the
// final tree. Allowlisted calls, BUILD and persistent ids live in pickle_calls.cc.
#include "cdr/pickle_vm.h"

#include <sys/mman.h>

#include <algorithm>
#include <array>
#include <bit>
#include <charconv>
#include <cstring>

#include "cdr/message_text.h"
#include "cdr/pickle_machine.h"
#include "cdr/pickle_text.h"

namespace zoogate::cdr {
namespace {

constexpr uint8_t kHighestProtocol = 5;
constexpr size_t kReadChunk = 64 * 1024;        // window refill size for non-memory sources
constexpr size_t kLineChunk = 4 * 1024;         // minimum window growth while scanning a text line
constexpr uint64_t kDenseMemoSlack = 1024;      // memo indices this far past 2x the entries stay dense
constexpr uint32_t kKeyIndexThreshold = 8;      // containers this small are searched linearly
constexpr uint64_t kProbeStepsPerLookup = 32;   // key index work allowed per lookup, on average...
constexpr uint64_t kProbeStepsSlack = 1 << 20;  // ...plus this much, before the input counts as flooding
// The tree is pre-sized from the input size (small-object pickles run one node per 3 to 12 bytes),
// so that they do not pay for regrowth, which moves every node; reserved pages that are never touched
// cost no memory. Beyond the cap the tree grows as usual.
constexpr uint64_t kBytesPerNodeEstimate = 3;
constexpr size_t kMaxReservedNodes = size_t{4} << 20;
constexpr uintptr_t kHugePageSize = uintptr_t{2} << 20;
constexpr size_t kMaxFindings = 10'000;  // more disarmed constructs than this: refuse the file

// By opcode byte: the name (nullptr for bytes that are no opcode), and separately the protocol, which
// the loop reads for every opcode.
constexpr std::array<const char*, 256> kOpNames = [] {
  std::array<const char*, 256> names{};
  for (const PickleOpcode& info : kPickleOpcodes) names[info.code] = info.name.data();
  return names;
}();
constexpr std::array<uint8_t, 256> kOpProtocols = [] {
  std::array<uint8_t, 256> protocols{};
  for (const PickleOpcode& info : kPickleOpcodes) protocols[info.code] = info.protocol;
  return protocols;
}();

// Asks the kernel to back the whole 2 MiB pages of a large, freshly reserved array with huge pages:
// filling the value tree otherwise spends as much time in page faults as in parsing. A hint only;
// failure changes nothing.
void advise_huge_pages(const void* data, size_t bytes) {
  auto start = reinterpret_cast<uintptr_t>(data);
  uintptr_t begin = (start + kHugePageSize - 1) & ~(kHugePageSize - 1);
  uintptr_t end = (start + bytes) & ~(kHugePageSize - 1);
  if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
}

}  // namespace

std::string op_name(uint8_t op) {
  if (const char* name = kOpNames[op]) return name;
  static constexpr char kHex[] = "0123456789abcdef";
  return std::string("opcode 0x") + kHex[op >> 4] + kHex[op & 0xF];
}

uint8_t op_protocol(uint8_t op) { return kOpProtocols[op]; }

// ---------------------------------------------------------------------------------------------
// PickleReader

PickleReader::PickleReader(const ByteSource& source) : source_(source) {
  // A memory source is its own window: no copies, no refills.
  if (const auto* memory = dynamic_cast<const MemorySource*>(&source)) window_ = memory->bytes();
}

Status PickleReader::refill(size_t n) {
  uint64_t start = offset();
  uint64_t left = source_.size() - start;
  size_t want = static_cast<size_t>(std::min<uint64_t>(std::max(n, kReadChunk), left));
  if (buffer_.size() < want) buffer_.resize(want);
  ZG_TRY(source_.read_at(start, std::span<uint8_t>(buffer_.data(), want)));
  window_ = std::span<const uint8_t>(buffer_.data(), want);
  window_start_ = start;
  pos_ = 0;
  return {};
}

Status PickleReader::read(size_t n, char* out) {
  size_t have = std::min(n, buffered());
  if (have > 0) std::memcpy(out, data(), have);
  skip(have);
  if (have == n) return {};
  uint64_t start = offset();
  ZG_TRY(source_.read_at(start, std::span<uint8_t>(reinterpret_cast<uint8_t*>(out) + have, n - have)));
  window_ = {};
  window_start_ = start + (n - have);
  pos_ = 0;
  return {};
}

// ---------------------------------------------------------------------------------------------
// PickleMachine: setup, errors, findings

PickleMachine::PickleMachine(const ByteSource& source, const Policy& policy, const PickleParseOptions& options)
    : source_(source),
      policy_(policy),
      limits_(policy.limits),
      options_(options),
      reader_(source),
      end_(source.size()),
      keys_(tree_) {}

tl::unexpected<Error> PickleMachine::op_error(ErrorCode code, std::string reason) const {
  return fail(code, op_name(op_) + ": " + reason, op_offset_);
}

tl::unexpected<Error> PickleMachine::limit_error(std::string_view limit, uint64_t value, uint64_t maximum) const {
  return op_error(ErrorCode::kLimitExceeded,
                  std::to_string(value) + " exceeds " + std::string(limit) + " (" + std::to_string(maximum) + ")");
}

Result<NodeId> PickleMachine::forbid(FindingKind kind, std::string construct, std::string reason) {
  discarded_ = true;
  Action action = policy_.action_for(kind);
  if (action == Action::kBlock) {
    return fail(ErrorCode::kForbidden, std::string(to_string(kind)) + ": " + construct + ": " + reason, op_offset_);
  }
  if (findings_.size() >= kMaxFindings)
    return limit_error("the number of findings", findings_.size() + 1, kMaxFindings);
  findings_.push_back(Finding{kind, action, options_.record_name, op_offset_, std::move(construct), std::move(reason)});
  return kPoison;
}

std::string PickleMachine::describe(NodeId id) const {
  const Value* value = value_of(id);
  if (!value) return "disarmed construct";
  return std::visit(
      [&](const auto& node) -> std::string {
        using T = std::decay_t<decltype(node)>;
        if constexpr (std::is_same_v<T, NoneValue>) return "None";
        if constexpr (std::is_same_v<T, bool>) return "bool";
        if constexpr (std::is_same_v<T, IntValue>) return "int";
        if constexpr (std::is_same_v<T, FloatValue>) return "float";
        if constexpr (std::is_same_v<T, StrValue>) return "str";
        if constexpr (std::is_same_v<T, BytesValue>) return node.is_bytearray ? "bytearray" : "bytes";
        if constexpr (std::is_same_v<T, TupleValue>) return "tuple";
        if constexpr (std::is_same_v<T, ListValue>) return "list";
        if constexpr (std::is_same_v<T, SetValue>) return node.frozen ? "frozenset" : "set";
        if constexpr (std::is_same_v<T, DictValue>) return "dict";
        if constexpr (std::is_same_v<T, OrderedDictValue>) return "OrderedDict";
        if constexpr (std::is_same_v<T, StorageRefValue>) return "storage reference";
        if constexpr (std::is_same_v<T, TensorValue>) return "tensor";
        if constexpr (std::is_same_v<T, ParameterValue>) return "parameter";
        if constexpr (std::is_same_v<T, GlobalValue>)
          return "global " + escape_for_message(node.module + "." + node.name);
        if constexpr (std::is_same_v<T, TorchSizeValue>) return "torch.Size";
        if constexpr (std::is_same_v<T, NumpyDtypeValue>) return "numpy dtype";
        if constexpr (std::is_same_v<T, NumpyArrayValue>) return "numpy array";
        if constexpr (std::is_same_v<T, NumpyScalarValue>) return "numpy scalar";
        if constexpr (std::is_same_v<T, NamespaceValue>) return "argparse.Namespace";
        if constexpr (std::is_same_v<T, OperatorCallValue>) return "operator-allowed call";
      },
      *value);
}

// ---------------------------------------------------------------------------------------------
// Input

tl::unexpected<Error> PickleMachine::stack_full() const {
  return limit_error("max_stack_depth", stack_.size() + 1, limits_.max_stack_depth);
}

tl::unexpected<Error> PickleMachine::truncated() const {
  if (in_frame_) return parse_error("operand runs past the end of the FRAME at offset " + std::to_string(frame_end_));
  return parse_error("truncated operand at offset " + std::to_string(reader_.offset()) + ": the input ends at " +
                     std::to_string(source_.size()));
}

Result<uint64_t> PickleMachine::read_length(size_t width, bool is_signed) {
  ZG_ASSIGN_OR_RETURN(uint64_t length, read_uint(width));
  if (is_signed && (length >> (8 * width - 1)) != 0) return parse_error("negative length");
  if (length > limits_.max_string_length) return limit_error("max_string_length", length, limits_.max_string_length);
  return length;
}

Result<std::string> PickleMachine::read_text_operand(uint64_t length) {
  ZG_TRY(check_available(length));
  auto size = static_cast<size_t>(length);
  if (size <= reader_.buffered()) {  // the common case: copy straight out of the window
    std::string out(reinterpret_cast<const char*>(reader_.data()), size);
    reader_.skip(size);
    return out;
  }
  std::string out(size, '\0');
  ZG_TRY(reader_.read(size, out.data()));
  return out;
}

// One protocol-0 text operand up to '\n'. The view is valid until the next read.
Result<std::string_view> PickleMachine::read_line() {
  ZG_TRY(need(1));
  uint64_t available = end_ - reader_.offset();
  uint64_t longest = limits_.max_string_length;
  uint64_t scan_limit = longest == UINT64_MAX ? longest : longest + 1;  // one byte past the longest line
  size_t scanned = 0;
  for (;;) {
    size_t window = static_cast<size_t>(std::min<uint64_t>({reader_.buffered(), available, scan_limit}));
    const uint8_t* start = reader_.data();
    if (const void* newline = std::memchr(start + scanned, '\n', window - scanned)) {
      size_t length = static_cast<size_t>(static_cast<const uint8_t*>(newline) - start);
      reader_.skip(length + 1);
      return std::string_view(reinterpret_cast<const char*>(start), length);
    }
    scanned = window;
    if (scanned > longest) return limit_error("max_string_length", scanned, longest);
    if (scanned == available) {
      if (in_frame_)
        return parse_error("text line runs past the end of the FRAME at offset " + std::to_string(frame_end_));
      return parse_error("text line is not terminated before the end of the input");
    }
    ZG_TRY(
        reader_.ensure(static_cast<size_t>(std::min<uint64_t>(available, std::max(2 * window, window + kLineChunk)))));
  }
}

Status PickleMachine::enter_frame() {
  ZG_ASSIGN_OR_RETURN(uint64_t length, read_uint(sizeof(uint64_t)));
  uint64_t start = reader_.offset();
  if (in_frame_ && start != frame_end_) {
    return parse_error("a new FRAME starts before the current one ends at offset " + std::to_string(frame_end_));
  }
  if (length > source_.size() - start) {
    return parse_error("FRAME of " + std::to_string(length) + " bytes runs past the end of the input");
  }
  in_frame_ = true;
  frame_end_ = start + length;
  end_ = frame_end_;
  return {};
}

// ---------------------------------------------------------------------------------------------
// Nodes, stack, memo

Status PickleMachine::check_depth(uint64_t depth) const {
  if (depth > limits_.max_nesting_depth || depth >= UINT32_MAX) {
    return limit_error("max_nesting_depth", depth, limits_.max_nesting_depth);
  }
  return {};
}

Result<uint32_t> PickleMachine::depth_above(std::span<const NodeId> children) const {
  uint64_t deepest = 0;
  for (NodeId child : children) deepest = std::max<uint64_t>(deepest, meta_[child].depth);
  ZG_TRY(check_depth(deepest + 1));
  return static_cast<uint32_t>(deepest + 1);
}

Status PickleMachine::deepen_to(NodeId container, uint64_t depth) {
  if (depth <= meta_[container].depth) return {};
  ZG_TRY(check_depth(depth));
  meta_[container].depth = static_cast<uint32_t>(depth);
  return {};
}

// None, True, False and () are singletons in Python; sharing their node keeps that identity.
template <typename T>
inline NodeId PickleMachine::singleton(NodeId& cache, T value) {
  if (cache == kNoNode) cache = add(std::move(value));
  return cache;
}

Result<NodeId> PickleMachine::pop() {
  if (stack_.size() <= frame_base()) return parse_error("stack underflow");
  NodeId id = stack_.back();
  stack_.pop_back();
  return id;
}

Result<NodeId*> PickleMachine::top() {
  if (stack_.size() <= frame_base()) return parse_error("stack underflow");
  return &stack_.back();
}

// Closes the innermost MARK; the items above it are stack_[base, size), which the caller reads and
// then truncates.
Result<size_t> PickleMachine::pop_mark() {
  if (marks_.empty()) return parse_error("no MARK to close");
  size_t base = marks_.back();
  marks_.pop_back();
  return base;
}

Result<NodeId> PickleMachine::make_tuple(std::span<const NodeId> items) {
  if (items.empty()) return singleton(empty_tuple_, TupleValue{});
  uint8_t flags = 0;
  uint32_t deepest = 0;
  for (NodeId item : items) {
    if (item == kPoison) return kPoison;
    const NodeMeta& meta = meta_[item];
    if (meta.flags & (kNotValue | kHoldsNotValue)) flags = kHoldsNotValue;
    deepest = std::max(deepest, meta.depth);
  }
  ZG_TRY(check_depth(uint64_t{deepest} + 1));
  return add(TupleValue{std::vector<NodeId>(items.begin(), items.end())}, deepest + 1, flags);
}

Status PickleMachine::memo_put(uint64_t index) {
  if (index > limits_.max_memo_index) return limit_error("max_memo_index", index, limits_.max_memo_index);
  if (stack_.size() <= frame_base()) return parse_error("stack underflow: nothing to memoize");
  NodeId item = stack_.back();
  bool is_new = false;
  if (index < memo_dense_.size() || index <= 2 * memo_entries_ + kDenseMemoSlack) {
    if (index >= memo_dense_.size()) {
      memo_dense_.resize(std::max<size_t>(static_cast<size_t>(index) + 1, 2 * memo_dense_.size()), kNoNode);
    }
    NodeId& slot = memo_dense_[static_cast<size_t>(index)];
    // An index first written while it was out of dense reach lives in the sparse map: move it here.
    is_new = slot == kNoNode && (memo_sparse_.empty() || memo_sparse_.erase(index) == 0);
    slot = item;
  } else {
    auto [it, inserted] = memo_sparse_.try_emplace(index, item);
    if (!inserted) it->second = item;
    is_new = inserted;
  }
  if (is_new && ++memo_entries_ > limits_.max_memo_entries) {
    return limit_error("max_memo_entries", memo_entries_, limits_.max_memo_entries);
  }
  return {};
}

Result<NodeId> PickleMachine::memo_get(uint64_t index) const {
  if (index < memo_dense_.size() && memo_dense_[static_cast<size_t>(index)] != kNoNode) {
    return memo_dense_[static_cast<size_t>(index)];
  }
  if (auto it = memo_sparse_.find(index); it != memo_sparse_.end()) return it->second;
  return parse_error("memo has no entry " + std::to_string(index));
}

// ---------------------------------------------------------------------------------------------
// Containers

// Poison is dropped silently (its finding was recorded where it was made); a callable, call argument
// or unfinished object is a finding of its own.
Result<bool> PickleMachine::admit_slow(NodeId item) {
  if (item == kPoison) return false;
  if (!(meta_[item].flags & (kNotValue | kHoldsNotValue))) return true;
  // Find what the value holds that may not be stored: the item itself or something in its tuples.
  NodeId offender = kNoNode;
  std::vector<NodeId> work{item};
  std::unordered_set<NodeId> visited;
  while (!work.empty() && offender == kNoNode) {
    NodeId id = work.back();
    work.pop_back();
    if (meta_[id].flags & kNotValue) {
      offender = id;
    } else if (meta_[id].flags & kHoldsNotValue) {
      for (NodeId child : std::get<TupleValue>(tree_.nodes[id]).items) {
        if (visited.insert(child).second) work.push_back(child);
      }
    }
  }
  if (offender == kNoNode) return true;  // what the tuple held has since been completed by its BUILD
  std::string construct = op_name(op_) + " of " + describe(offender);
  if (meta_[offender].flags & kAwaitingBuild) {
    ZG_TRY(forbid(FindingKind::kForbiddenBuild, construct, "the object is used before the BUILD that completes it"));
  } else {
    ZG_TRY(forbid(FindingKind::kForbiddenGlobal, construct,
                  "this global may only be called or passed to its call, never kept as a value"));
  }
  return false;
}

// Whether `key` may be a dict key or set item; sets `hash` when it may.
Result<bool> PickleMachine::key_allowed(NodeId key, std::optional<uint64_t>& hash) {
  hash = keys_.hash(key);
  if (hash) return true;
  ZG_TRY(forbid(FindingKind::kForbiddenBuild, op_name(op_) + " with a " + describe(key) + " key",
                "dict keys and set items must be None, bool, int, float, str, bytes, allowlisted globals or "
                "tuples of those"));
  return false;
}

namespace {

NodeId key_at(const Value& owner, uint32_t position) {
  if (const auto* dict = std::get_if<DictValue>(&owner)) return dict->items[position].first;
  if (const auto* ordered = std::get_if<OrderedDictValue>(&owner)) return ordered->items[position].first;
  return std::get<SetValue>(owner).items[position];
}

std::vector<std::pair<NodeId, NodeId>>* dict_items(Value& value) {
  if (auto* dict = std::get_if<DictValue>(&value)) return &dict->items;
  if (auto* ordered = std::get_if<OrderedDictValue>(&value)) return &ordered->items;
  return nullptr;
}

}  // namespace

// Finds `key` among the `count` keys of dict, OrderedDict or set `owner`. When absent, the key is
// registered at position `count`, which the caller fills.
Result<std::optional<uint32_t>> PickleMachine::find_key(NodeId owner, uint32_t count, NodeId key, uint64_t hash) {
  auto same = [&](uint32_t position) { return keys_.equal(key_at(tree_.nodes[owner], position), key); };
  if (count < kKeyIndexThreshold) {
    for (uint32_t position = 0; position < count; ++position) {
      if (same(position)) return position;
    }
    return std::nullopt;
  }
  auto [it, created] = key_indexes_.try_emplace(owner);
  KeyIndex& index = it->second;
  if (created) {
    for (uint32_t position = 0; position < count; ++position) {
      NodeId existing = key_at(tree_.nodes[owner], position);
      index.find_or_insert(
          *keys_.hash(existing), position, [](uint32_t) { return false; }, key_probe_steps_);
      ++key_lookups_;
    }
  }
  std::optional<uint32_t> found = index.find_or_insert(hash, count, same, key_probe_steps_);
  // Well-spread keys take one or two probes each; crafted colliding keys take many more.
  ++key_lookups_;
  if (key_probe_steps_ > kProbeStepsPerLookup * key_lookups_ + kProbeStepsSlack) {
    return op_error(ErrorCode::kLimitExceeded, "dict keys or set items collide far beyond chance (hash flooding)");
  }
  return found;
}

Status PickleMachine::dict_set(NodeId dict, NodeId key, NodeId value) {
  std::optional<uint64_t> hash;
  ZG_ASSIGN_OR_RETURN(bool allowed, key_allowed(key, hash));
  if (!allowed) return {};
  auto& items = *dict_items(tree_.nodes[dict]);
  ZG_ASSIGN_OR_RETURN(std::optional<uint32_t> position,
                      find_key(dict, static_cast<uint32_t>(items.size()), key, *hash));
  if (position) {
    items[*position].second = value;  // Python keeps the first key object and takes the last value
    discarded_ = true;
  } else {
    items.emplace_back(key, value);
  }
  ZG_TRY(deepen(dict, key));
  return deepen(dict, value);
}

Status PickleMachine::set_add(NodeId set, NodeId item) {
  std::optional<uint64_t> hash;
  ZG_ASSIGN_OR_RETURN(bool allowed, key_allowed(item, hash));
  if (!allowed) return {};
  auto& items = std::get<SetValue>(tree_.nodes[set]).items;
  ZG_ASSIGN_OR_RETURN(std::optional<uint32_t> position,
                      find_key(set, static_cast<uint32_t>(items.size()), item, *hash));
  if (position) {
    discarded_ = true;  // the first one stays
    return {};
  }
  items.push_back(item);
  return deepen(set, item);
}

// APPEND/APPENDS/LIST on a list.
Status PickleMachine::append_items(NodeId list, std::span<const NodeId> items) {
  for (NodeId item : items) {
    ZG_ASSIGN_OR_RETURN(bool admitted, admit(item));
    if (!admitted) continue;
    std::get<ListValue>(tree_.nodes[list]).items.push_back(item);
    ZG_TRY(deepen(list, item));
  }
  return {};
}

Status PickleMachine::set_items(NodeId dict, std::span<const NodeId> pairs) {
  for (size_t i = 0; i + 1 < pairs.size(); i += 2) {
    ZG_ASSIGN_OR_RETURN(bool key_admitted, admit(pairs[i]));
    if (!key_admitted) continue;  // the whole pair goes
    ZG_ASSIGN_OR_RETURN(bool value_admitted, admit(pairs[i + 1]));
    if (!value_admitted) continue;
    ZG_TRY(dict_set(dict, pairs[i], pairs[i + 1]));
  }
  return {};
}

Status PickleMachine::add_items(NodeId set, std::span<const NodeId> items) {
  for (NodeId item : items) {
    ZG_ASSIGN_OR_RETURN(bool admitted, admit(item));
    if (admitted) ZG_TRY(set_add(set, item));
  }
  return {};
}

// SETITEM(S)/APPEND(S)/ADDITEMS on the stack item below the popped items (at `slot`): checks that the
// target accepts the operation, then applies it; a refused target becomes poison.
Status PickleMachine::mutate(size_t slot, std::span<const NodeId> items) {
  NodeId target = stack_[slot];
  if (target == kPoison) return {};
  const Value& value = tree_.nodes[target];
  auto op = static_cast<Op>(op_);
  bool accepted = false;
  if (op == Op::kAppend || op == Op::kAppends) {
    accepted = std::holds_alternative<ListValue>(value);
    if (accepted) return append_items(target, items);
  } else if (op == Op::kSetItem || op == Op::kSetItems) {
    accepted = std::holds_alternative<DictValue>(value) || std::holds_alternative<OrderedDictValue>(value);
    if (accepted) return set_items(target, items);
  } else {
    const auto* set = std::get_if<SetValue>(&value);
    accepted = set && !set->frozen;
    if (accepted) return add_items(target, items);
  }
  const char* accepts = op == Op::kAddItems                         ? "sets"
                        : (op == Op::kAppend || op == Op::kAppends) ? "lists"
                                                                    : "dicts and OrderedDicts";
  ZG_ASSIGN_OR_RETURN(stack_[slot], forbid(FindingKind::kForbiddenBuild, op_name(op_) + " on " + describe(target),
                                           std::string("only ") + accepts + " accept it"));
  return {};
}

// ---------------------------------------------------------------------------------------------
// The opcode loop

Result<PickleParse> PickleMachine::run() {
  if (source_.size() > limits_.max_pickle_size) {
    return fail(ErrorCode::kLimitExceeded,
                "pickle of " + std::to_string(source_.size()) + " bytes exceeds max_pickle_size (" +
                    std::to_string(limits_.max_pickle_size) + ")",
                0);
  }
  size_t reserve = static_cast<size_t>(std::min<uint64_t>(source_.size() / kBytesPerNodeEstimate, kMaxReservedNodes));
  tree_.nodes.reserve(reserve);
  meta_.reserve(reserve);  // filled in steps by add(): only what is used gets touched
  advise_huge_pages(tree_.nodes.data(), reserve * sizeof(Value));
  advise_huge_pages(meta_.data(), reserve * sizeof(NodeMeta));
  for (;;) {
    op_offset_ = reader_.offset();
    if (op_offset_ >= end_) [[unlikely]] {
      // At the end of a frame the stream goes on unframed; at the end of the input it must have stopped.
      if (in_frame_) {
        in_frame_ = false;
        end_ = source_.size();
      }
      if (op_offset_ >= end_) return fail(ErrorCode::kParse, "pickle ends without STOP", op_offset_);
    }
    ZG_TRY(reader_.ensure(1));
    op_ = *reader_.data();
    reader_.skip(1);
    if (++opcode_count_ > limits_.max_opcodes) return limit_error("max_opcodes", opcode_count_, limits_.max_opcodes);
    // Each opcode adds at most a few nodes, so this keeps ids below the sentinels.
    if (tree_.nodes.size() >= kMaxNodes)
      return limit_error("the value tree's node count", tree_.nodes.size(), kMaxNodes);
    if (!saw_proto_) max_op_protocol_ = std::max(max_op_protocol_, op_protocol(op_));
    if (op_ == static_cast<uint8_t>(Op::kStop)) return finish();
    ZG_TRY(execute(op_));
  }
}

Status PickleMachine::execute(uint8_t op) {
  switch (static_cast<Op>(op)) {
    case Op::kMark:
      if (marks_.size() >= limits_.max_nesting_depth) {
        return limit_error("max_nesting_depth", marks_.size() + 1, limits_.max_nesting_depth);
      }
      marks_.push_back(stack_.size());
      return {};
    case Op::kPop:
      if (stack_.size() > frame_base()) {
        stack_.pop_back();
        discarded_ = true;
      } else if (!marks_.empty()) {
        marks_.pop_back();  // as in Python: POP on an empty mark frame discards the MARK
      } else {
        return parse_error("stack underflow");
      }
      return {};
    case Op::kPopMark: {
      ZG_ASSIGN_OR_RETURN(size_t base, pop_mark());
      discarded_ = discarded_ || stack_.size() > base;
      stack_.resize(base);
      return {};
    }
    case Op::kDup: {
      ZG_ASSIGN_OR_RETURN(NodeId * item, top());
      return push(*item);
    }
    case Op::kNone:
      return push(singleton(none_, NoneValue{}));
    case Op::kNewTrue:
      return push(singleton(true_, true));
    case Op::kNewFalse:
      return push(singleton(false_, false));
    case Op::kBinInt: {
      ZG_ASSIGN_OR_RETURN(uint64_t raw, read_uint(4));
      NodeId id = kNoNode;
      add_in_place<IntValue>(id).small = static_cast<int32_t>(static_cast<uint32_t>(raw));
      return push(id);
    }
    case Op::kBinInt1:
    case Op::kBinInt2: {
      ZG_ASSIGN_OR_RETURN(uint64_t raw, read_uint(op == static_cast<uint8_t>(Op::kBinInt1) ? 1 : 2));
      NodeId id = kNoNode;
      add_in_place<IntValue>(id).small = static_cast<int64_t>(raw);
      return push(id);
    }
    case Op::kBinFloat: {
      ZG_TRY(need(sizeof(double)));
      uint64_t raw = 0;
      for (size_t i = 0; i < sizeof(double); ++i) raw = (raw << 8) | reader_.data()[i];  // big-endian
      reader_.skip(sizeof(double));
      return push(add(FloatValue{std::bit_cast<double>(raw)}));
    }
    case Op::kEmptyTuple:
      return push(singleton(empty_tuple_, TupleValue{}));
    case Op::kEmptyList:
      return push(add(ListValue{}));
    case Op::kEmptyDict:
      return push(add(DictValue{}));
    case Op::kEmptySet:
      return push(add(SetValue{}));
    case Op::kTuple1:
    case Op::kTuple2:
    case Op::kTuple3: {
      size_t count = op - static_cast<uint8_t>(Op::kTuple1) + 1;
      if (stack_.size() - frame_base() < count) return parse_error("stack underflow");
      size_t base = stack_.size() - count;
      ZG_ASSIGN_OR_RETURN(NodeId tuple, make_tuple(stack_.from(base)));
      stack_.resize(base);
      stack_.push_back(tuple);  // replaces what it consumed: the stack does not grow
      return {};
    }
    case Op::kBinPut:
    case Op::kLongBinPut: {
      ZG_ASSIGN_OR_RETURN(uint64_t index, read_uint(op == static_cast<uint8_t>(Op::kBinPut) ? 1 : 4));
      return memo_put(index);
    }
    case Op::kMemoize:
      return memo_put(memo_entries_);
    case Op::kBinGet:
    case Op::kLongBinGet: {
      ZG_ASSIGN_OR_RETURN(uint64_t index, read_uint(op == static_cast<uint8_t>(Op::kBinGet) ? 1 : 4));
      ZG_ASSIGN_OR_RETURN(NodeId item, memo_get(index));
      return push(item);
    }
    case Op::kProto: {
      ZG_ASSIGN_OR_RETURN(uint64_t protocol, read_uint(1));
      if (protocol > kHighestProtocol) return parse_error("unsupported protocol " + std::to_string(protocol));
      protocol_ = static_cast<int>(protocol);
      saw_proto_ = true;
      return {};
    }
    case Op::kFrame:
      return enter_frame();
    case Op::kInt:
    case Op::kLong:
    case Op::kFloat:
      return op_text_number(op);
    case Op::kLong1:
    case Op::kLong4:
      return op_long(op);
    case Op::kString:
    case Op::kBinString:
    case Op::kShortBinString:
    case Op::kUnicode:
    case Op::kShortBinUnicode:
    case Op::kBinUnicode:
    case Op::kBinUnicode8:
    case Op::kShortBinBytes:
    case Op::kBinBytes:
    case Op::kBinBytes8:
    case Op::kByteArray8:
      return op_string(op);
    case Op::kTuple:
    case Op::kList:
    case Op::kDict:
    case Op::kFrozenSet:
      return op_from_mark(op);
    case Op::kAppend:
    case Op::kSetItem:
    case Op::kAppends:
    case Op::kSetItems:
    case Op::kAddItems:
      return op_mutate(op);
    case Op::kPut:
    case Op::kGet:
      return op_text_memo(op);
    case Op::kGlobal:
    case Op::kInst:
    case Op::kStackGlobal:
    case Op::kObj:
      return op_global(op);
    case Op::kReduce:
    case Op::kNewObj:
    case Op::kNewObjEx:
      return op_call(op);
    case Op::kBuild:
      return build();
    case Op::kPersId:
    case Op::kBinPersId:
      return op_persistent_id(op);
    case Op::kReadOnlyBuffer:
      return op_readonly_buffer();
    case Op::kExt1:
    case Op::kExt2:
    case Op::kExt4:
      return op_error(ErrorCode::kUnsupported, "the extension registry (copyreg codes) is never consulted");
    case Op::kNextBuffer:
      return op_error(ErrorCode::kUnsupported, "out-of-band buffers are not accepted");
    case Op::kStop:
      break;  // run() handles STOP before dispatching
  }
  return parse_error("unknown opcode");
}

Status PickleMachine::op_text_number(uint8_t op) {
  ZG_ASSIGN_OR_RETURN(std::string_view text, read_line());
  if (op == static_cast<uint8_t>(Op::kFloat)) {
    double value = 0;
    auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (error != std::errc() || end != text.data() + text.size() || text.empty()) {
      return parse_error("operand is not a float");
    }
    return push(add(FloatValue{value}));
  }
  if (op == static_cast<uint8_t>(Op::kInt)) {
    if (text == "01") return push(singleton(true_, true));  // protocol 0's booleans
    if (text == "00") return push(singleton(false_, false));
  } else if (text.ends_with('L')) {
    text.remove_suffix(1);  // LONG's Python 2 suffix
  }
  auto value = parse_decimal_int(text, limits_.max_int_bytes);
  if (!value) return op_error(value.error().code, value.error().message);
  return push(add(std::move(*value)));
}

Status PickleMachine::op_long(uint8_t op) {
  bool is_long1 = op == static_cast<uint8_t>(Op::kLong1);
  ZG_ASSIGN_OR_RETURN(uint64_t length, read_uint(is_long1 ? 1 : 4));
  if (!is_long1 && (length >> 31) != 0) return parse_error("negative length");
  if (length > limits_.max_int_bytes) return limit_error("max_int_bytes", length, limits_.max_int_bytes);
  ZG_TRY(need(length));
  IntValue value = int_from_le_bytes(std::span<const uint8_t>(reader_.data(), static_cast<size_t>(length)));
  reader_.skip(static_cast<size_t>(length));
  return push(add(std::move(value)));
}

Status PickleMachine::op_string(uint8_t op) {
  switch (static_cast<Op>(op)) {
    case Op::kString:
    case Op::kBinString:
    case Op::kShortBinString: {
      std::string bytes;
      if (op == static_cast<uint8_t>(Op::kString)) {
        ZG_ASSIGN_OR_RETURN(std::string_view text, read_line());
        auto decoded = decode_string_repr(text);
        if (!decoded) return parse_error(decoded.error().message);
        bytes = std::move(*decoded);
      } else {
        bool is_short = op == static_cast<uint8_t>(Op::kShortBinString);
        ZG_ASSIGN_OR_RETURN(uint64_t length, read_length(is_short ? 1 : 4, !is_short));
        ZG_ASSIGN_OR_RETURN(bytes, read_text_operand(length));
      }
      // A Python 2 str: text when it is UTF-8 (what torch.load's encoding="utf-8" gives), otherwise
      // raw bytes (what encoding="bytes" gives) instead of failing as Python's ASCII default would.
      if (is_valid_utf8(bytes, false)) return push(add(StrValue{std::move(bytes)}));
      return push(add(BytesValue{std::move(bytes), false}));
    }
    case Op::kUnicode: {
      ZG_ASSIGN_OR_RETURN(std::string_view text, read_line());
      auto decoded = decode_raw_unicode_escape(text);
      if (!decoded) return parse_error(decoded.error().message);
      return push(add(StrValue{std::move(*decoded)}));
    }
    case Op::kShortBinUnicode:
    case Op::kBinUnicode:
    case Op::kBinUnicode8: {
      size_t width = op == static_cast<uint8_t>(Op::kShortBinUnicode) ? 1
                     : op == static_cast<uint8_t>(Op::kBinUnicode)    ? 4
                                                                      : 8;
      ZG_ASSIGN_OR_RETURN(uint64_t length, read_length(width, false));
      return push_operand(length, true, false);
    }
    default: {  // SHORT_BINBYTES, BINBYTES, BINBYTES8, BYTEARRAY8
      size_t width = op == static_cast<uint8_t>(Op::kShortBinBytes) ? 1
                     : op == static_cast<uint8_t>(Op::kBinBytes)    ? 4
                                                                    : 8;
      ZG_ASSIGN_OR_RETURN(uint64_t length, read_length(width, false));
      return push_operand(length, false, op == static_cast<uint8_t>(Op::kByteArray8));
    }
  }
}

// A str (UTF-8, surrogates allowed) or bytes operand of `length` bytes as a new node. Buffered
// operands are checked in place and copied once, straight into the node.
Status PickleMachine::push_operand(uint64_t length, bool is_str, bool is_bytearray) {
  std::string owned;
  std::string_view bytes;
  ZG_TRY(check_available(length));
  if (length <= reader_.buffered()) {
    bytes = std::string_view(reinterpret_cast<const char*>(reader_.data()), static_cast<size_t>(length));
  } else {
    ZG_ASSIGN_OR_RETURN(owned, read_text_operand(length));
    bytes = owned;
  }
  if (is_str && !is_valid_utf8(bytes, true)) return parse_error("operand is not valid UTF-8");
  NodeId id = kNoNode;
  std::string* target = nullptr;
  if (is_str) {
    target = &add_in_place<StrValue>(id).utf8;
  } else {
    BytesValue& value = add_in_place<BytesValue>(id);
    value.is_bytearray = is_bytearray;
    target = &value.data;
  }
  if (owned.empty()) {
    target->assign(bytes);
    reader_.skip(bytes.size());
  } else {
    *target = std::move(owned);
  }
  return push(id);
}

// TUPLE, LIST, DICT, FROZENSET: a new object from the items above the innermost MARK.
Status PickleMachine::op_from_mark(uint8_t op) {
  ZG_ASSIGN_OR_RETURN(size_t base, pop_mark());
  std::span<const NodeId> items = stack_.from(base);
  NodeId made = kNoNode;
  switch (static_cast<Op>(op)) {
    case Op::kTuple: {
      ZG_ASSIGN_OR_RETURN(made, make_tuple(items));
      break;
    }
    case Op::kList:
      made = add(ListValue{});
      std::get<ListValue>(tree_.nodes[made]).items.reserve(items.size());
      ZG_TRY(append_items(made, items));
      break;
    case Op::kDict:
      if (items.size() % 2 != 0) return parse_error("odd number of items for keys and values");
      made = add(DictValue{});
      ZG_TRY(set_items(made, items));
      break;
    default:
      made = add(SetValue{{}, true});
      ZG_TRY(add_items(made, items));
      break;
  }
  stack_.resize(base);
  return push(made);
}

// APPEND, SETITEM (items on top of the target) and APPENDS, SETITEMS, ADDITEMS (items above a MARK
// that sits right above the target).
Status PickleMachine::op_mutate(uint8_t op) {
  if (op == static_cast<uint8_t>(Op::kAppend) || op == static_cast<uint8_t>(Op::kSetItem)) {
    size_t count = op == static_cast<uint8_t>(Op::kAppend) ? 1 : 2;
    // The target must lie inside the current mark frame, below its items.
    if (stack_.size() - frame_base() < count + 1) return parse_error("stack underflow");
    size_t base = stack_.size() - count;
    std::array<NodeId, 2> items{};
    std::copy_n(stack_.from(base).begin(), count, items.begin());
    stack_.resize(base);
    return mutate(base - 1, std::span<const NodeId>(items.data(), count));
  }
  ZG_ASSIGN_OR_RETURN(size_t base, pop_mark());
  if (base <= frame_base()) return parse_error("stack underflow: no target below the MARK");
  if (op == static_cast<uint8_t>(Op::kSetItems) && (stack_.size() - base) % 2 != 0) {
    return parse_error("odd number of items for keys and values");
  }
  ZG_TRY(mutate(base - 1, stack_.from(base)));
  stack_.resize(base);
  return {};
}

Status PickleMachine::op_text_memo(uint8_t op) {
  ZG_ASSIGN_OR_RETURN(std::string_view text, read_line());
  uint64_t index = 0;
  auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), index);
  if (error == std::errc::result_out_of_range) return limit_error("max_memo_index", UINT64_MAX, limits_.max_memo_index);
  if (error != std::errc() || end != text.data() + text.size() || text.empty()) {
    return parse_error("memo index is not a decimal number");
  }
  if (op == static_cast<uint8_t>(Op::kPut)) return memo_put(index);
  ZG_ASSIGN_OR_RETURN(NodeId item, memo_get(index));
  return push(item);
}

// GLOBAL and INST name their global in text; STACK_GLOBAL takes it from the stack; INST and OBJ then
// call it with the items above a MARK.
Status PickleMachine::op_global(uint8_t op) {
  if (op == static_cast<uint8_t>(Op::kStackGlobal)) {
    ZG_ASSIGN_OR_RETURN(NodeId name, pop());
    ZG_ASSIGN_OR_RETURN(NodeId module, pop());
    discarded_ = true;
    if (name == kPoison || module == kPoison) return push(kPoison);
    const auto* module_text = get<StrValue>(module);
    const auto* name_text = get<StrValue>(name);
    if (!module_text || !name_text) return parse_error("operands must be two str");
    ZG_ASSIGN_OR_RETURN(NodeId callable, resolve_global(module_text->utf8, name_text->utf8));
    return push(callable);
  }
  NodeId callable = kNoNode;
  if (op != static_cast<uint8_t>(Op::kObj)) {
    ZG_ASSIGN_OR_RETURN(std::string_view module_line, read_line());
    std::string module(module_line);
    ZG_ASSIGN_OR_RETURN(std::string_view name, read_line());
    if (!is_valid_utf8(module, false) || !is_valid_utf8(name, false)) return parse_error("name is not valid UTF-8");
    ZG_ASSIGN_OR_RETURN(callable, resolve_global(module, name));
    if (op == static_cast<uint8_t>(Op::kGlobal)) return push(callable);
  }
  ZG_ASSIGN_OR_RETURN(size_t base, pop_mark());
  size_t first_arg = base;
  if (op == static_cast<uint8_t>(Op::kObj)) {
    if (stack_.size() == base) return parse_error("no class after the MARK");
    callable = stack_[first_arg++];
  }
  ZG_ASSIGN_OR_RETURN(NodeId args, make_tuple(stack_.from(first_arg)));
  stack_.resize(base);
  ZG_ASSIGN_OR_RETURN(NodeId made, call(static_cast<Op>(op), callable, args));
  return push(made);
}

// REDUCE calls the item below its argument tuple in place; NEWOBJ and NEWOBJ_EX pop class and
// arguments (and keyword arguments, which must be empty) and push the new object.
Status PickleMachine::op_call(uint8_t op) {
  if (op == static_cast<uint8_t>(Op::kReduce)) {
    ZG_ASSIGN_OR_RETURN(NodeId args, pop());
    ZG_ASSIGN_OR_RETURN(NodeId * callable, top());
    ZG_ASSIGN_OR_RETURN(NodeId made, call(Op::kReduce, *callable, args));
    stack_.back() = made;
    return {};
  }
  NodeId kwargs = kNoNode;
  if (op == static_cast<uint8_t>(Op::kNewObjEx)) {
    ZG_ASSIGN_OR_RETURN(kwargs, pop());
  }
  ZG_ASSIGN_OR_RETURN(NodeId args, pop());
  ZG_ASSIGN_OR_RETURN(NodeId cls, pop());
  if (kwargs == kPoison) return push(kPoison);
  if (kwargs != kNoNode) {
    const auto* dict = get<DictValue>(kwargs);
    if (!dict || !dict->items.empty()) {
      ZG_ASSIGN_OR_RETURN(NodeId refused, forbid(FindingKind::kForbiddenCall, "NEWOBJ_EX of " + describe(cls),
                                                 "keyword arguments are not accepted"));
      return push(refused);
    }
  }
  ZG_ASSIGN_OR_RETURN(NodeId made, call(static_cast<Op>(op), cls, args));
  return push(made);
}

Status PickleMachine::op_persistent_id(uint8_t op) {
  if (op == static_cast<uint8_t>(Op::kPersId)) {
    ZG_TRY(read_line());
    ZG_ASSIGN_OR_RETURN(NodeId refused, forbid(FindingKind::kForbiddenPersistentId, "PERSID",
                                               "text persistent ids are never storage references"));
    return push(refused);
  }
  ZG_ASSIGN_OR_RETURN(NodeId pid, pop());
  ZG_ASSIGN_OR_RETURN(NodeId storage, persistent_id(pid));
  return push(storage);
}

Status PickleMachine::op_readonly_buffer() {
  ZG_ASSIGN_OR_RETURN(NodeId * item, top());
  if (*item == kPoison) return {};
  const auto* bytes = get<BytesValue>(*item);
  if (!bytes) return parse_error("needs bytes or a bytearray on the stack");
  // A read-only view of a bytearray behaves as bytes for every allowlisted consumer.
  if (bytes->is_bytearray) {
    NodeId copy = add(BytesValue{bytes->data, false});
    stack_.back() = copy;
    discarded_ = true;
  }
  return {};
}

// ---------------------------------------------------------------------------------------------
// Result

Result<PickleParse> PickleMachine::finish() {
  uint64_t end = reader_.offset();
  if (!options_.allow_trailing_bytes && end != source_.size()) {
    return parse_error(std::to_string(source_.size() - end) + " bytes after STOP");
  }
  if (!marks_.empty()) {
    return op_error(ErrorCode::kForbidden, "unsafe root: " + std::to_string(marks_.size()) + " MARK(s) still open");
  }
  if (stack_.empty()) return parse_error("stack underflow: no result");
  NodeId root = stack_.back();
  ZG_ASSIGN_OR_RETURN(bool admitted, admit(root));
  if (!admitted) return op_error(ErrorCode::kForbidden, "unsafe root: the pickle's result was disarmed");
  tree_.root = root;
  if (discarded_ || stack_.size() > 1) drop_unreachable();

  PickleParse parse;
  parse.tree = std::move(tree_);
  parse.findings = std::move(findings_);
  parse.globals_seen = std::move(globals_seen_);
  parse.end_offset = end;
  parse.opcode_count = opcode_count_;
  parse.protocol = saw_proto_ ? protocol_ : std::min<int>(max_op_protocol_, 1);
  return parse;
}

// Clears every node the root cannot reach, so that nothing from a disarmed subtree or an unused
// intermediate (call arguments, memo-only values) survives in the output. Ids stay as they are.
void PickleMachine::drop_unreachable() {
  std::vector<bool> reached(tree_.nodes.size(), false);
  std::vector<NodeId> work{tree_.root};
  reached[tree_.root] = true;
  size_t count = 1;
  while (!work.empty()) {
    NodeId id = work.back();
    work.pop_back();
    for_each_child(tree_.nodes[id], [&](NodeId child) {
      if (!reached[child]) {
        reached[child] = true;
        ++count;
        work.push_back(child);
      }
    });
  }
  if (count == tree_.nodes.size()) return;
  for (NodeId id = 0; id < tree_.nodes.size(); ++id) {
    if (!reached[id]) tree_.nodes[id] = NoneValue{};
  }
}

Result<PickleParse> parse_pickle(const ByteSource& source, const Policy& policy, const PickleParseOptions& options) {
  PickleMachine machine(source, policy, options);
  auto result = machine.run();
  if (!result && !options.record_name.empty()) return fail(result.error().with_context(options.record_name));
  return result;
}

}  // namespace zoogate::cdr
