// Internals of parse_pickle() (private to cdr/): the reader, the machine state and the opcode and
// allowlist handlers, split over pickle_vm.cc (opcodes, stack, memo, containers, result) and
// pickle_calls.cc (GLOBAL resolution, REDUCE/NEWOBJ/BUILD against the allowlist, persistent ids).
//
// Stack items and memo values are node ids. kPoison stands for a disarmed construct: it propagates
// through tuples, calls, BUILD, persistent ids and the memo, and is dropped when it would enter a list,
// dict, set, OrderedDict or Namespace. Nodes flagged kNotValue (callables, call arguments, objects
// still waiting for their BUILD) may be consumed by calls but never enter the output tree.
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "cdr/allowlist.h"
#include "cdr/pickle_keys.h"
#include "cdr/pickle_opcodes.h"
#include "cdr/pickle_vm.h"
#include "common/byte_source.h"
#include "common/error.h"

// Evaluates a Result-returning expression; on error returns it, otherwise moves the value into `lhs`.
#define ZG_ASSIGN_OR_RETURN(lhs, expr) ZG_ASSIGN_OR_RETURN_IMPL(ZG_CONCAT(zg_result_, __LINE__), lhs, expr)
#define ZG_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr)             \
  auto tmp = (expr);                                         \
  if (!tmp) return ::tl::unexpected(std::move(tmp.error())); \
  lhs = std::move(*tmp)
#define ZG_CONCAT(a, b) ZG_CONCAT_IMPL(a, b)
#define ZG_CONCAT_IMPL(a, b) a##b

namespace zoogate::cdr {

inline constexpr NodeId kPoison = 0xFFFFFFFF;      // a disarmed construct
inline constexpr NodeId kNoNode = 0xFFFFFFFE;      // an empty memo slot, an unset cache entry
inline constexpr uint64_t kMaxNodes = 0xFFFFFF00;  // node ids stay clear of the sentinels
inline constexpr size_t kMaxBuiltinArgs = 8;       // no allowlisted callable takes more
inline constexpr size_t kMinMetaSlots = 1024;      // meta_ growth step when not pre-sized

// "BINUNICODE", or "opcode 0xNN" for bytes that are no opcode.
std::string op_name(uint8_t op);
// The protocol that introduced the opcode (0 for unknown bytes).
uint8_t op_protocol(uint8_t op);

// Sequential reads over a ByteSource through a refillable window (the whole input for a
// MemorySource), so that operands never cost a read_at() each. Callers check that the bytes they ask
// for exist (the VM knows the frame and input ends); the reader only reports I/O failures.
class PickleReader {
 public:
  explicit PickleReader(const ByteSource& source);
  uint64_t offset() const { return window_start_ + pos_; }
  size_t buffered() const { return window_.size() - pos_; }
  const uint8_t* data() const { return window_.data() + pos_; }
  void skip(size_t n) { pos_ += n; }
  // Makes the next `n` bytes addressable through data().
  Status ensure(size_t n) { return n <= buffered() ? Status{} : refill(n); }
  // Copies the next `n` bytes to `out`; long runs go straight from the source, not through the window.
  Status read(size_t n, char* out);

 private:
  Status refill(size_t n);
  const ByteSource& source_;
  std::span<const uint8_t> window_;
  size_t pos_ = 0;
  uint64_t window_start_ = 0;
  std::vector<uint8_t> buffer_;
};

// The VM stack (all MARK levels in one array): push_back stays inline, growth is out of line.
class NodeStack {
 public:
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  NodeId& back() { return items_[size_ - 1]; }
  NodeId& operator[](size_t index) { return items_[index]; }
  void push_back(NodeId id) {
    if (size_ == items_.size()) [[unlikely]]
      grow();
    items_[size_++] = id;
  }
  void pop_back() { --size_; }
  // Drops the items from `size` on; never grows the stack.
  void resize(size_t size) { size_ = size; }
  // The items from `first` to the top.
  std::span<const NodeId> from(size_t first) const { return {items_.data() + first, size_ - first}; }

 private:
  static constexpr size_t kInitialSlots = 256;
  void grow() { items_.resize(std::max(kInitialSlots, 2 * items_.size())); }
  std::vector<NodeId> items_;
  size_t size_ = 0;
};

enum NodeFlag : uint8_t {
  kNotValue = 1 << 0,       // may be consumed by a call, never enter the output tree
  kHoldsNotValue = 1 << 1,  // a tuple that held a kNotValue node when it was made
  kAwaitingBuild = 1 << 2,  // numpy array or dtype from its constructor; its BUILD completes it
  kBuilt = 1 << 3,          // BUILD was applied; a second one is refused
};

// Per-node bookkeeping beside ValueTree::nodes (same index).
struct NodeMeta {
  uint32_t depth = 0;                     // container nesting below this node
  GlobalKind global = GlobalKind::kNone;  // what a GlobalValue node stands for
  uint8_t flags = 0;                      // NodeFlag bits
};

// One REDUCE/NEWOBJ/INST/OBJ being checked against the allowlist entry of its callable.
struct CallSite {
  Op op;
  NodeId callable;  // a GlobalValue node
  GlobalKind kind;
  NodeId args;  // a TupleValue node
  std::span<const NodeId> argv;
};

class PickleMachine {
 public:
  PickleMachine(const ByteSource& source, const Policy& policy, const PickleParseOptions& options);
  Result<PickleParse> run();

 private:
  // ---- pickle_vm.cc: input ----
  // One opcode: the frequent, small ones inline, the rest in the op_* helpers below, so that the
  // dispatcher's frame stays small.
  Status execute(uint8_t op);
  Status op_text_number(uint8_t op);
  Status op_long(uint8_t op);
  Status op_string(uint8_t op);
  Status push_operand(uint64_t length, bool is_str, bool is_bytearray);
  Status op_from_mark(uint8_t op);
  Status op_mutate(uint8_t op);
  Status op_text_memo(uint8_t op);
  Status op_global(uint8_t op);
  Status op_call(uint8_t op);
  Status op_persistent_id(uint8_t op);
  Status op_readonly_buffer();
  // Makes the next `n` bytes of the current frame (or input) addressable through reader_.data().
  [[gnu::always_inline]] Status need(uint64_t n) {
    if (n <= end_ - reader_.offset()) [[likely]]
      return reader_.ensure(static_cast<size_t>(n));
    return truncated();
  }
  Status check_available(uint64_t n) { return n <= end_ - reader_.offset() ? Status{} : truncated(); }
  [[gnu::cold]] tl::unexpected<Error> truncated() const;
  // A little-endian unsigned operand of `width` bytes (at most 8).
  [[gnu::always_inline]] Result<uint64_t> read_uint(size_t width) {
    ZG_TRY(need(width));
    uint64_t value = 0;
    for (size_t i = width; i-- > 0;) value = (value << 8) | reader_.data()[i];
    reader_.skip(width);
    return value;
  }
  Result<std::string_view> read_line();
  Result<std::string> read_text_operand(uint64_t length);
  Result<uint64_t> read_length(size_t width, bool is_signed);
  Status enter_frame();

  // ---- pickle_vm.cc: errors and findings ----
  tl::unexpected<Error> op_error(ErrorCode code, std::string reason) const;
  tl::unexpected<Error> parse_error(std::string reason) const { return op_error(ErrorCode::kParse, std::move(reason)); }
  tl::unexpected<Error> limit_error(std::string_view limit, uint64_t value, uint64_t maximum) const;
  // A forbidden construct: with Action::kBlock the kForbidden error, with kDisarm the finding is
  // recorded and kPoison returned for the caller to use in place of the construct.
  Result<NodeId> forbid(FindingKind kind, std::string construct, std::string reason);

  // ---- pickle_vm.cc: nodes, stack, memo ----
  template <typename T>
  [[gnu::always_inline]] NodeId add(T&& value, uint32_t depth = 0, uint8_t flags = 0,
                                    GlobalKind global = GlobalKind::kNone) {
    auto id = static_cast<NodeId>(tree_.nodes.size());
    tree_.nodes.emplace_back(std::in_place_type<std::decay_t<T>>, std::forward<T>(value));
    set_meta(id, NodeMeta{depth, global, flags});
    return id;
  }
  // meta_ runs ahead of the tree in large steps, so that this stays a plain store.
  [[gnu::always_inline]] void set_meta(NodeId id, NodeMeta meta) {
    if (id >= meta_.size()) [[unlikely]]
      meta_.resize(std::max<size_t>(2 * meta_.size(), kMinMetaSlots));
    meta_[id] = meta;
  }
  // Appends a default T built in place and returns it for filling. For the hot node kinds that hold a
  // std::string, this saves moving a temporary (a memcpy call even when the string is empty).
  template <typename T>
  [[gnu::always_inline]] T& add_in_place(NodeId& id, uint32_t depth = 0) {
    id = static_cast<NodeId>(tree_.nodes.size());
    Value& value = tree_.nodes.emplace_back(std::in_place_type<T>);
    set_meta(id, NodeMeta{depth, GlobalKind::kNone, 0});
    return *std::get_if<T>(&value);
  }
  const Value* value_of(NodeId id) const { return id < tree_.nodes.size() ? &tree_.nodes[id] : nullptr; }
  template <typename T>
  const T* get(NodeId id) const {
    const Value* value = value_of(id);
    return value ? std::get_if<T>(value) : nullptr;
  }
  Status check_depth(uint64_t depth) const;
  Result<uint32_t> depth_above(std::span<const NodeId> children) const;
  // Raises the recorded depth of `container` to hold `child`.
  [[gnu::always_inline]] Status deepen(NodeId container, NodeId child) {
    // A container holding itself has no finite depth; only strict nesting is measured.
    if (child == container || meta_[child].depth < meta_[container].depth) return {};
    return deepen_to(container, uint64_t{meta_[child].depth} + 1);
  }
  Status deepen_to(NodeId container, uint64_t depth);
  template <typename T>
  NodeId singleton(NodeId& cache, T value);
  [[gnu::always_inline]] Status push(NodeId id) {
    if (stack_.size() >= limits_.max_stack_depth) [[unlikely]]
      return stack_full();
    stack_.push_back(id);
    return {};
  }
  [[gnu::cold]] tl::unexpected<Error> stack_full() const;
  Result<NodeId> pop();
  Result<NodeId*> top();
  size_t frame_base() const { return marks_.empty() ? 0 : marks_.back(); }
  Result<size_t> pop_mark();
  Result<NodeId> make_tuple(std::span<const NodeId> items);
  Status memo_put(uint64_t index);
  Result<NodeId> memo_get(uint64_t index) const;

  // ---- pickle_vm.cc: containers ----
  // Whether `item` may be stored in a list, dict, set, OrderedDict or Namespace (see admit_slow).
  [[gnu::always_inline]] Result<bool> admit(NodeId item) {
    if (item != kPoison && !(meta_[item].flags & (kNotValue | kHoldsNotValue))) [[likely]]
      return true;
    return admit_slow(item);
  }
  Result<bool> admit_slow(NodeId item);
  Result<bool> key_allowed(NodeId key, std::optional<uint64_t>& hash);
  Status dict_set(NodeId dict, NodeId key, NodeId value);
  Status set_add(NodeId set, NodeId item);
  Status append_items(NodeId list, std::span<const NodeId> items);
  Status set_items(NodeId dict, std::span<const NodeId> pairs);
  Status add_items(NodeId set, std::span<const NodeId> items);
  Status mutate(size_t slot, std::span<const NodeId> items);
  Result<std::optional<uint32_t>> find_key(NodeId owner, uint32_t count, NodeId key, uint64_t hash);
  Result<PickleParse> finish();
  void drop_unreachable();
  std::string describe(NodeId id) const;

  // ---- pickle_calls.cc ----
  Result<NodeId> resolve_global(std::string_view module, std::string_view name);
  Result<NodeId> call(Op op, NodeId callable, NodeId args);
  Result<NodeId> bad_call(const CallSite& site, std::string reason);
  Result<NodeId> call_builtin(const CallSite& site);
  Result<NodeId> rebuild_tensor(const CallSite& site, std::span<const NodeId> argv, bool v1);
  Result<NodeId> rebuild_parameter(const CallSite& site);
  Result<NodeId> rebuild_from_type(const CallSite& site);
  Result<NodeId> ordered_dict(const CallSite& site);
  Result<NodeId> numpy_dtype(const CallSite& site);
  Result<NodeId> numpy_scalar(const CallSite& site);
  Result<NodeId> numpy_frombuffer(const CallSite& site);
  Result<NodeId> make_set(const CallSite& site);
  Result<NodeId> make_bytes(const CallSite& site);
  Result<NodeId> operator_call(const CallSite& site);
  Status build();
  Result<NodeId> build_on(NodeId target, NodeId state);
  // Byte-swaps big-endian numpy data to native order and points `dtype` at a native dtype node.
  void to_native_byte_order(NodeId& dtype, std::string& data);
  Result<NodeId> build_numpy_array(NodeId target, NodeId state);
  Result<NodeId> build_numpy_dtype(NodeId target, NodeId state);
  Result<NodeId> persistent_id(NodeId pid);
  bool is_global(NodeId id, GlobalKind kind) const;
  bool is_empty_ordered_dict(NodeId id) const;
  bool is_complete_dtype(NodeId id) const;
  std::optional<int64_t> small_int(NodeId id) const;
  bool int64_items(NodeId id, std::vector<int64_t>& out) const;
  bool str_keyed_dict(NodeId id) const;

  const ByteSource& source_;
  const Policy& policy_;
  const Limits limits_;  // a copy: one load per check on the hot path
  const PickleParseOptions& options_;
  PickleReader reader_;
  uint64_t end_;  // where the current frame, or else the input, ends
  uint64_t frame_end_ = 0;
  bool in_frame_ = false;
  uint8_t op_ = 0;  // the opcode being executed and its offset, for errors and findings
  uint64_t op_offset_ = 0;
  uint64_t opcode_count_ = 0;
  int protocol_ = 0;  // from PROTO; 0 until one is seen
  bool saw_proto_ = false;
  uint8_t max_op_protocol_ = 0;

  ValueTree tree_;
  std::vector<NodeMeta> meta_;  // indexed by node id; may be longer than tree_.nodes
  NodeStack stack_;
  std::vector<size_t> marks_;  // stack sizes at each open MARK
  // The memo: indices near the number of entries live in a vector, others in a hash map, so memory
  // follows the entries written, never an index the input names.
  std::vector<NodeId> memo_dense_;
  std::unordered_map<uint64_t, NodeId> memo_sparse_;
  uint64_t memo_entries_ = 0;
  // Set by every operation that may leave a node unreferenced (a consumed call, a POP, a finding...);
  // without one, every node is reachable and the final sweep is skipped.
  bool discarded_ = false;
  NodeId none_ = kNoNode, true_ = kNoNode, false_ = kNoNode, empty_tuple_ = kNoNode;
  std::unordered_map<std::string, NodeId> global_nodes_;  // allowed globals, one node each
  std::unordered_set<std::string> globals_seen_keys_;
  std::unordered_map<std::string, NodeId> storages_;  // storage key -> StorageRefValue node
  uint64_t tensor_count_ = 0;
  KeyOps keys_;
  std::unordered_map<NodeId, KeyIndex> key_indexes_;  // large dicts, OrderedDicts and sets
  uint64_t key_lookups_ = 0;                          // indexed lookups, and the slots they examined
  uint64_t key_probe_steps_ = 0;
  std::vector<Finding> findings_;
  std::vector<GlobalName> globals_seen_;
};

}  // namespace zoogate::cdr
