#include "cdr/pickle_writer.h"


#include <algorithm>
#include <array>
#include <bit>
#include <initializer_list>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

#include "cdr/pickle_opcodes.h"
#include "common/checked.h"
#include "common/encoding.h"

// How each node kind is written. "M" marks where the node's memo entry goes when it is referenced
// again; nodes without an explicit M get theirs once they are complete. GLOBALs and strs that the
// writer makes up itself (everything in quotes or after GLOBAL below) are "atoms", see write_atom().
//
//   None, bool, int, float, str  NONE | NEWTRUE/NEWFALSE | BININT1/BININT2/BININT/LONG1/LONG4 |
//                                BINFLOAT | BINUNICODE
//   bytes                        GLOBAL _codecs encode, (latin-1 text, 'latin1') REDUCE
//   bytearray                    GLOBAL builtins bytearray, (latin-1 text, 'latin-1') REDUCE
//   tuple                        EMPTY_TUPLE | items TUPLE1-3 | MARK items TUPLE
//   list                         EMPTY_LIST M, batches of APPEND or MARK items APPENDS
//   dict                         EMPTY_DICT M, batches of SETITEM or MARK keys/values SETITEMS
//   set, frozenset               GLOBAL builtins set|frozenset, ([items],) REDUCE
//   OrderedDict                  GLOBAL collections OrderedDict, () REDUCE M, setitems
//                                [, attributes dict BUILD]
//   storage reference            MARK 'storage' GLOBAL torch <T>Storage, key, location, numel TUPLE
//                                BINPERSID
//   tensor                       GLOBAL torch._utils _rebuild_tensor_v2, (storage, offset, sizes,
//                                strides, requires_grad, OrderedDict()[, metadata]) REDUCE;
//                                rebuild_v1: GLOBAL torch._utils _rebuild_tensor, (storage, offset,
//                                sizes, strides) REDUCE
//   Parameter                    GLOBAL torch._utils _rebuild_parameter, (tensor, requires_grad,
//                                OrderedDict()) REDUCE
//   global                       GLOBAL module name
//   torch.Size                   GLOBAL torch Size, ((dims...),) REDUCE
//   numpy dtype                  GLOBAL numpy dtype, (name, False, True) REDUCE M, state BUILD
//   numpy array                  GLOBAL numpy.core.multiarray _reconstruct, (ndarray, (0,), b'b')
//                                REDUCE M, (1, shape, dtype, fortran_order, data) BUILD;
//                                big-endian: GLOBAL numpy.core.numeric _frombuffer,
//                                (bytearray(data), dtype, shape, 'C'|'F') REDUCE
//   numpy scalar                 GLOBAL numpy.core.multiarray scalar, (dtype, data) REDUCE
//   argparse.Namespace           GLOBAL argparse Namespace, () NEWOBJ M[, attributes dict BUILD]
//   operator call                callable args REDUCE|NEWOBJ M[, state BUILD]

namespace zoogate::cdr {
namespace {

using enum Op;

constexpr uint8_t kProtocol = 2;
constexpr size_t kChunkSize = 64 * 1024;
// Items per APPENDS/SETITEMS, as CPython batches them: keeps the unpickler's stack short.
constexpr uint64_t kBatchSize = 1000;
// With a seed, a memo entry that is never read follows a complete value with this one-in-N chance.
constexpr uint64_t kPaddingOdds = 8;
constexpr uint32_t kNoMemo = std::numeric_limits<uint32_t>::max();
constexpr uint64_t kMaxInt64 = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());

// Names of the Value alternatives, in variant order, for error messages.
constexpr std::array<const char*, std::variant_size_v<Value>> kKindNames = {
    "None",         "bool",        "int",          "float",
    "str",          "bytes",       "tuple",        "list",
    "set",          "dict",        "OrderedDict",  "storage reference",
    "tensor",       "Parameter",   "global",       "torch.Size",
    "numpy dtype",  "numpy array", "numpy scalar", "argparse.Namespace",
    "operator call"};

tl::unexpected<Error> invalid_node(NodeId id, const Value& value, std::string_view problem) {
  return fail(ErrorCode::kInvalidArgument, "pickle writer: node " + std::to_string(id) + " (" +
                                               kKindNames[value.index()] + "): " + std::string(problem));
}

// None, True, False and () are singletons in Python: writing one again gives the same object, so
// they are written out at every reference instead of being memoized.
bool is_python_singleton(const Value& value) {
  if (const auto* tuple = std::get_if<TupleValue>(&value)) return tuple->items.empty();
  return std::holds_alternative<NoneValue>(value) || std::holds_alternative<bool>(value);
}

// True when `last`, the most significant byte of a little-endian two's-complement number, only
// repeats the sign of the byte before it and can be dropped.
bool is_redundant_sign_byte(uint8_t last, uint8_t before_last) {
  return (last == 0x00 && (before_last & 0x80) == 0) || (last == 0xff && (before_last & 0x80) != 0);
}

// What numpy puts in a dtype's pickle, derived from its array-protocol string the way numpy does it.
struct NumpyDtypeForm {
  char byte_order = '|';  // the state's byte order: '<', '>', or '|' where order does not apply
  std::string_view name;  // numpy.dtype's first argument, kind and item size: "f4", "b1", "M8"
  uint64_t itemsize = 0;
  bool is_datetime = false;  // M8/m8 carry (unit, count) metadata in a version-4 state
  std::string_view unit;     // datetime unit, "generic" when the descr names none
  int64_t unit_count = 1;    // "[10ms]" -> 10
};

bool is_numeric_item_size(char kind, uint64_t size) {
  switch (kind) {
    case 'b': return size == 1;
    case 'i':
    case 'u': return size == 1 || size == 2 || size == 4 || size == 8;
    case 'f': return size == 2 || size == 4 || size == 8 || size == 16;
    case 'c': return size == 8 || size == 16 || size == 32;
    case 'm':
    case 'M': return size == 8;
    default: return false;
  }
}

bool is_digit(char c) { return c >= '0' && c <= '9'; }

// Parses a canonical numeric descr, as numpy.dtype(...).str spells it: "<f4", "|b1", ">i2", "<c16",
// "<M8[ns]", "<m8[10s]", "<M8". Anything else (another spelling of the same dtype included) is
// rejected, so that what is written reads back as exactly the same descr.
Result<NumpyDtypeForm> parse_numpy_descr(std::string_view descr) {
  auto invalid = [&](std::string_view problem) {
    return fail(ErrorCode::kInvalidArgument,
                "pickle writer: numpy dtype '" + std::string(descr) + "': " + std::string(problem));
  };
  if (descr.size() < 3) return invalid("too short");
  NumpyDtypeForm form;
  form.byte_order = descr[0];
  const char kind = descr[1];
  size_t size_end = 2;
  while (size_end < descr.size() && is_digit(descr[size_end])) ++size_end;
  const std::string_view size_text = descr.substr(2, size_end - 2);
  if (size_text.empty() || size_text.size() > 2 || size_text[0] == '0') return invalid("bad item size");
  for (char digit : size_text) form.itemsize = form.itemsize * 10 + static_cast<uint64_t>(digit - '0');
  if (!is_numeric_item_size(kind, form.itemsize)) return invalid("not a numeric dtype");
  const bool order_applies = form.itemsize > 1;
  if (order_applies ? form.byte_order != '<' && form.byte_order != '>' : form.byte_order != '|') {
    return invalid("byte order is not spelled as numpy spells it");
  }
  form.name = descr.substr(1, size_end - 1);
  std::string_view rest = descr.substr(size_end);
  if (kind != 'm' && kind != 'M') {
    if (!rest.empty()) return invalid("unexpected text after the item size");
    return form;
  }
  form.is_datetime = true;
  form.unit = "generic";
  if (rest.empty()) return form;
  if (rest.size() < 3 || rest.front() != '[' || rest.back() != ']') return invalid("bad datetime unit");
  rest = rest.substr(1, rest.size() - 2);
  size_t count_end = 0;
  while (count_end < rest.size() && is_digit(rest[count_end])) ++count_end;
  if (count_end > 0) {
    // numpy writes no count for 1 and refuses counts beyond int32.
    if (rest[0] == '0' || count_end > 10) return invalid("bad datetime unit count");
    int64_t count = 0;
    for (size_t i = 0; i < count_end; ++i) count = count * 10 + (rest[i] - '0');
    if (count < 2 || count > std::numeric_limits<int32_t>::max()) return invalid("bad datetime unit count");
    form.unit_count = count;
  }
  form.unit = rest.substr(count_end);
  static constexpr std::array<std::string_view, 13> kUnits = {"Y",  "M",  "W",  "D",  "h",  "m", "s",
                                                              "ms", "us", "ns", "ps", "fs", "as"};
  if (std::find(kUnits.begin(), kUnits.end(), form.unit) == kUnits.end()) return invalid("bad datetime unit");
  return form;
}

// splitmix64 (Steele, Lea and Flood): small, fast and defined bit for bit everywhere, unlike the
// std:: distributions, whose output differs between standard libraries.
uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t next() {
    state_ += 0x9e3779b97f4a7c15ULL;
    return mix64(state_);
  }
  // In [0, bound); the modulo bias is negligible for the small bounds used here.
  uint64_t below(uint64_t bound) { return next() % bound; }

 private:
  uint64_t state_;
};

// Hands out memo indices in the order memo entries are created.
//
// Seed 0 numbers them 0, 1, 2... Any other seed cuts the sequence into blocks of kBlockFill entries
// and gives block b's entries the first kBlockFill slots of a seed-keyed shuffle of the indices
// [b * kBlockSlots, (b + 1) * kBlockSlots): the numbering looks random, yet the largest index stays
// below about twice the number of entries, which matters because CPython's C unpickler sizes its
// memo array by the largest index it sees.
class MemoNumbering {
 public:
  explicit MemoNumbering(uint64_t seed) : seed_(seed) {}

  // kMaxWritableNodes keeps the count, and so the index, far below 2^32 (see count_references()).
  uint32_t next() {
    const uint64_t sequence = count_++;
    if (seed_ == 0) return static_cast<uint32_t>(sequence);
    const uint64_t block = sequence / kBlockFill;
    if (block != shuffled_block_) shuffle(block);
    return static_cast<uint32_t>(block * kBlockSlots + slots_[sequence % kBlockFill]);
  }

 private:
  static constexpr uint64_t kBlockSlots = 512;
  static constexpr uint64_t kBlockFill = 256;

  void shuffle(uint64_t block) {
    SplitMix64 random(mix64(seed_) ^ mix64(block + 1));
    for (uint64_t i = 0; i < kBlockSlots; ++i) slots_[i] = static_cast<uint16_t>(i);
    // The first kBlockFill steps of a Fisher-Yates shuffle: all this block will use.
    for (uint64_t i = 0; i < kBlockFill; ++i) std::swap(slots_[i], slots_[i + random.below(kBlockSlots - i)]);
    shuffled_block_ = block;
  }

  uint64_t seed_;
  uint64_t count_ = 0;
  uint64_t shuffled_block_ = std::numeric_limits<uint64_t>::max();
  std::array<uint16_t, kBlockSlots> slots_{};
};

// Buffers opcode bytes and hands them to the sink in chunks of at most kChunkSize. The first sink
// error is kept and later output dropped, so emitting code need not check every byte; the writer
// polls failed() between tasks.
class Output {
 public:
  explicit Output(ByteSink& sink) : sink_(sink) { buffer_.reserve(kChunkSize); }

  void byte(uint8_t value) {
    buffer_.push_back(value);
    if (buffer_.size() == kChunkSize) flush();
  }
  void byte(Op opcode) { byte(static_cast<uint8_t>(opcode)); }

  void little_endian(uint64_t value, size_t width) {
    for (size_t i = 0; i < width; ++i) byte(static_cast<uint8_t>(value >> (8 * i)));
  }

  // Large payloads go to the sink directly from the caller's memory.
  void bytes(std::string_view data) {
    if (buffer_.size() + data.size() > kChunkSize) flush();
    if (data.size() >= kChunkSize) {
      pass_on(data);
      return;
    }
    buffer_.insert(buffer_.end(), data.begin(), data.end());
  }

  // Writes str(data, 'latin1').encode('utf-8'): each byte becomes the code point of the same value.
  void latin1_as_utf8(std::string_view data) {
    for (char c : data) {
      const auto value = static_cast<uint8_t>(c);
      if (buffer_.size() + 2 > kChunkSize) flush();
      if (value < 0x80) {
        buffer_.push_back(value);
      } else {
        buffer_.push_back(static_cast<uint8_t>(0xc0 | (value >> 6)));
        buffer_.push_back(static_cast<uint8_t>(0x80 | (value & 0x3f)));
      }
    }
  }

  bool failed() const { return !status_; }

  Status finish() {
    flush();
    return status_;
  }

 private:
  void flush() {
    if (buffer_.empty()) return;
    pass_on(std::string_view(reinterpret_cast<const char*>(buffer_.data()), buffer_.size()));
    buffer_.clear();
  }

  void pass_on(std::string_view data) {
    if (status_) status_ = sink_.write(data);
  }

  ByteSink& sink_;
  std::vector<uint8_t> buffer_;
  Status status_;
};

// The writer's work list. Writing a node emits what it can at once and queues the rest as tasks; the
// stack runs them last-in first-out, so a child's tasks all finish before its parent continues.
struct WriteNode {
  NodeId id;
};
struct NodeCreated {  // the node's object is on top of the unpickler's stack: memoize it if needed
  NodeId id;
};
struct WriteOpcode {
  Op opcode;
};
struct WriteInt {
  int64_t value;
};
struct WriteBool {
  bool value;
};
struct WriteIntTuple {
  std::span<const int64_t> values;
};
struct WriteBytes {
  std::string_view data;
  bool is_bytearray;
};
struct WriteEmptyOrderedDict {};  // the backward_hooks argument of tensors and parameters
struct WriteStrAtom {  // a short str the writer itself chooses
  std::string_view text;
};

// How a run of items is opened and closed.
enum class Sequence : uint8_t {
  kTupleItems,  // one run: items TUPLE1-3, or MARK items TUPLE
  kListItems,   // runs of at most kBatchSize: item APPEND, or MARK items APPENDS
  kDictItems,   // runs of at most kBatchSize: key value SETITEM, or MARK keys/values SETITEMS
};

struct WriteItems {
  std::variant<std::span<const NodeId>, std::span<const std::pair<NodeId, NodeId>>> items;
  Sequence sequence;
  uint64_t next = 0;        // the next item to write
  uint64_t batch_end = 0;   // end of the open batch; equal to `next` between batches
  uint64_t batch_size = 0;  // size of the batch that is open or has just been written
};

using Task = std::variant<WriteNode, NodeCreated, WriteOpcode, WriteInt, WriteBool, WriteIntTuple, WriteBytes,
                          WriteEmptyOrderedDict, WriteStrAtom, WriteItems>;

bool batch_opens_with_mark(Sequence sequence, uint64_t size) {
  return sequence == Sequence::kTupleItems ? size > 3 : size > 1;
}

Op batch_closer(Sequence sequence, uint64_t size) {
  switch (sequence) {
    case Sequence::kTupleItems: {
      static constexpr std::array<Op, 4> kSmallTuples = {kEmptyTuple, kTuple1, kTuple2, kTuple3};
      return size < kSmallTuples.size() ? kSmallTuples[size] : kTuple;
    }
    case Sequence::kListItems: return size == 1 ? kAppend : kAppends;
    case Sequence::kDictItems: return size == 1 ? kSetItem : kSetItems;
  }
  return kTuple;  // unreachable: every enumerator is handled above
}

// Collects the tasks that follow the current one, in writing order, and pushes them onto the stack
// in reverse when it goes out of scope, so that they run in the order they were given.
class Schedule {
 public:
  explicit Schedule(std::vector<Task>& tasks) : tasks_(tasks), first_(tasks.size()) {}
  ~Schedule() { std::reverse(tasks_.begin() + static_cast<std::ptrdiff_t>(first_), tasks_.end()); }
  Schedule(const Schedule&) = delete;
  Schedule& operator=(const Schedule&) = delete;

  Schedule& operator<<(const Task& task) {
    tasks_.push_back(task);
    return *this;
  }

 private:
  std::vector<Task>& tasks_;
  size_t first_;
};

class PickleWriter {
 public:
  PickleWriter(const ValueTree& tree, const PickleWriteOptions& options, ByteSink& sink)
      : tree_(tree), options_(options), out_(sink), memo_(options.seed), padding_random_(options.seed) {}

  Status run() {
    ZG_TRY(count_references());
    out_.byte(kProto);
    out_.byte(kProtocol);
    tasks_.push_back(WriteNode{tree_.root});
    while (!tasks_.empty() && !out_.failed()) {
      const Task task = tasks_.back();
      tasks_.pop_back();
      ZG_TRY(std::visit([this](const auto& step) { return run_task(step); }, task));
    }
    // Every seeded layout gets some padding, so that it differs from the unseeded one even for a
    // tree too small to have drawn any.
    if (options_.seed != 0 && !padded_) pad();
    out_.byte(kStop);
    return out_.finish();
  }

 private:
  struct NodeState {
    uint8_t references = 0;  // 0, 1, or 2 for "more than once" (the root's own reference counts;
                             // Python singletons never count more than once)
    bool started = false;    // writing began
    bool created = false;    // the object exists on the unpickler's stack and can be memoized
    uint32_t memo = kNoMemo;
  };

  struct AtomState {
    uint64_t uses = 0;
    uint32_t memo = kNoMemo;
  };

  // Counts the references to every reachable node (a node referenced once needs no memo entry) and
  // checks every link, so that writing can index the arena without further checks. Iterative, like
  // everything here, so hostile nesting cannot overflow the call stack.
  Status count_references() {
    states_.assign(tree_.nodes.size(), NodeState{});
    if (tree_.root >= tree_.nodes.size()) {
      return fail(ErrorCode::kInvalidArgument, "pickle writer: root node id is out of range");
    }
    states_[tree_.root].references = 1;
    std::vector<NodeId> pending = {tree_.root};
    uint64_t reachable = 1;
    while (!pending.empty()) {
      const NodeId id = pending.back();
      pending.pop_back();
      bool out_of_range = false;
      for_each_child(tree_.nodes[id], [&](NodeId child) {
        if (child >= tree_.nodes.size()) {
          out_of_range = true;
          return;
        }
        uint8_t& references = states_[child].references;
        if (references == 0) {
          pending.push_back(child);
          ++reachable;
          references = 1;
        } else if (!is_python_singleton(tree_.nodes[child])) {
          references = 2;
        }
      });
      if (out_of_range) return invalid_node(id, tree_.nodes[id], "refers to a node id out of range");
      ZG_TRY(check_child_kinds(id));
      // Each node adds at most one memo entry for itself, one of padding and one atom, so this bound
      // keeps every memo index within LONG_BINPUT's 32 bits (see MemoNumbering).
      if (reachable > kMaxWritableNodes) {
        return fail(ErrorCode::kLimitExceeded,
                    "pickle writer: tree has more than " + std::to_string(kMaxWritableNodes) + " reachable nodes");
      }
    }
    return {};
  }

  // Children in typed fields must have the kind value.h requires (ids are already in range).
  Status check_child_kinds(NodeId id) {
    const Value& node = tree_.nodes[id];
    auto expect = [&]<typename Kind>(NodeId child, std::string_view field, std::type_identity<Kind>) -> Status {
      if (std::holds_alternative<Kind>(tree_.nodes[child])) return {};
      return invalid_node(id, node, std::string(field) + " refers to a node of the wrong kind");
    };
    if (const auto* dict = std::get_if<OrderedDictValue>(&node); dict && dict->attributes) {
      return expect(*dict->attributes, "attributes", std::type_identity<DictValue>{});
    }
    if (const auto* tensor = std::get_if<TensorValue>(&node)) {
      ZG_TRY(expect(tensor->storage, "storage", std::type_identity<StorageRefValue>{}));
      if (tensor->metadata) return expect(*tensor->metadata, "metadata", std::type_identity<DictValue>{});
    }
    if (const auto* parameter = std::get_if<ParameterValue>(&node)) {
      return expect(parameter->tensor, "tensor", std::type_identity<TensorValue>{});
    }
    if (const auto* array = std::get_if<NumpyArrayValue>(&node)) {
      return expect(array->dtype, "dtype", std::type_identity<NumpyDtypeValue>{});
    }
    if (const auto* scalar = std::get_if<NumpyScalarValue>(&node)) {
      return expect(scalar->dtype, "dtype", std::type_identity<NumpyDtypeValue>{});
    }
    if (const auto* call = std::get_if<OperatorCallValue>(&node)) {
      ZG_TRY(expect(call->callable, "callable", std::type_identity<GlobalValue>{}));
      return expect(call->args, "args", std::type_identity<TupleValue>{});
    }
    return {};
  }

  // --- tasks ---

  Status run_task(const WriteNode& task) {
    NodeState& state = states_[task.id];
    if (state.memo != kNoMemo) {
      write_get(state.memo);
      return {};
    }
    const Value& node = tree_.nodes[task.id];
    if (state.started && !is_python_singleton(node)) {
      if (!state.created) {
        return fail(ErrorCode::kUnsupported, "pickle writer: a reference cycle leads back to node " +
                                                 std::to_string(task.id) + " (" + kKindNames[node.index()] +
                                                 "), which a pickle can only create after its contents");
      }
      return fail(ErrorCode::kInternal,
                  "pickle writer: node " + std::to_string(task.id) + " is referenced again but has no memo entry");
    }
    state.started = true;
    return std::visit([&](const auto& value) { return begin(task.id, value); }, node);
  }

  Status run_task(const NodeCreated& task) {
    created(task.id);
    return {};
  }

  Status run_task(const WriteOpcode& task) {
    out_.byte(task.opcode);
    return {};
  }

  Status run_task(const WriteInt& task) {
    write_int(task.value);
    return {};
  }

  Status run_task(const WriteBool& task) {
    out_.byte(task.value ? kNewTrue : kNewFalse);
    return {};
  }

  Status run_task(const WriteIntTuple& task) {
    write_int_tuple(task.values);
    return {};
  }

  Status run_task(const WriteBytes& task) { return write_bytes(task.data, task.is_bytearray); }

  Status run_task(const WriteStrAtom& task) {
    write_str_atom(task.text);
    return {};
  }

  Status run_task(const WriteEmptyOrderedDict&) {
    write_global_atom("collections", "OrderedDict");
    out_.byte(kEmptyTuple);
    out_.byte(kReduce);
    return {};
  }

  // Writes items until one needs tasks of its own; that one is scheduled ahead of the rest of the
  // sequence, so a container of any size costs one task on the stack, and runs of scalars cost none.
  Status run_task(const WriteItems& task) {
    WriteItems at = task;
    const uint64_t count = std::visit([](auto items) -> uint64_t { return items.size(); }, at.items);
    while (true) {
      if (at.next < at.batch_end) {
        const uint64_t index = at.next++;
        if (const auto* singles = std::get_if<std::span<const NodeId>>(&at.items)) {
          const NodeId item = (*singles)[index];
          if (writes_at_once(item)) {
            ZG_TRY(run_task(WriteNode{item}));
            continue;
          }
          Schedule(tasks_) << WriteNode{item} << at;
          return {};
        }
        const auto& [key, value] = std::get<std::span<const std::pair<NodeId, NodeId>>>(at.items)[index];
        if (!writes_at_once(key)) {
          Schedule(tasks_) << WriteNode{key} << WriteNode{value} << at;
          return {};
        }
        ZG_TRY(run_task(WriteNode{key}));
        if (!writes_at_once(value)) {
          Schedule(tasks_) << WriteNode{value} << at;
          return {};
        }
        ZG_TRY(run_task(WriteNode{value}));
        continue;
      }
      if (at.batch_size > 0) out_.byte(batch_closer(at.sequence, at.batch_size));
      if (at.next == count) return {};
      at.batch_size = at.sequence == Sequence::kTupleItems ? count : std::min(kBatchSize, count - at.next);
      at.batch_end = at.next + at.batch_size;
      if (batch_opens_with_mark(at.sequence, at.batch_size)) out_.byte(kMark);
    }
  }

  // True when writing `id` schedules no further tasks: a memo fetch, or a node without children.
  bool writes_at_once(NodeId id) const {
    if (states_[id].memo != kNoMemo) return true;
    return std::visit(
        [](const auto& value) {
          using T = std::decay_t<decltype(value)>;
          if constexpr (std::is_same_v<T, TupleValue>) return value.items.empty();
          return std::is_same_v<T, NoneValue> || std::is_same_v<T, bool> || std::is_same_v<T, IntValue> ||
                 std::is_same_v<T, FloatValue> || std::is_same_v<T, StrValue> || std::is_same_v<T, BytesValue> ||
                 std::is_same_v<T, GlobalValue> || std::is_same_v<T, TorchSizeValue> ||
                 std::is_same_v<T, StorageRefValue> || std::is_same_v<T, NumpyDtypeValue>;
        },
        tree_.nodes[id]);
  }

  // --- nodes: each begin() writes what it can and schedules the rest ---

  Status begin(NodeId id, const NoneValue&) {
    out_.byte(kNone);
    created(id);
    return {};
  }

  Status begin(NodeId id, bool value) {
    out_.byte(value ? kNewTrue : kNewFalse);
    created(id);
    return {};
  }

  Status begin(NodeId id, const IntValue& value) {
    if (value.big.empty()) {
      write_int(value.small);
    } else {
      ZG_TRY(write_big_int(id, value));
    }
    created(id);
    return {};
  }

  Status begin(NodeId id, const FloatValue& value) {
    out_.byte(kBinFloat);
    const auto bits = std::bit_cast<uint64_t>(value.value);
    for (int shift = 56; shift >= 0; shift -= 8) out_.byte(static_cast<uint8_t>(bits >> shift));
    created(id);
    return {};
  }

  Status begin(NodeId id, const StrValue& value) {
    ZG_TRY(write_str(id, value.utf8));
    created(id);
    return {};
  }

  Status begin(NodeId id, const BytesValue& value) {
    ZG_TRY(write_bytes(value.data, value.is_bytearray));
    created(id);
    return {};
  }

  Status begin(NodeId id, const TupleValue& tuple) {
    if (tuple.items.empty()) {
      out_.byte(kEmptyTuple);
      created(id);
      return {};
    }
    Schedule(tasks_) << WriteItems{std::span<const NodeId>(tuple.items), Sequence::kTupleItems} << NodeCreated{id};
    return {};
  }

  Status begin(NodeId id, const ListValue& list) {
    out_.byte(kEmptyList);
    created(id);
    tasks_.push_back(WriteItems{std::span<const NodeId>(list.items), Sequence::kListItems});
    return {};
  }

  Status begin(NodeId id, const SetValue& set) {
    write_global_atom("builtins", set.frozen ? "frozenset" : "set");
    out_.byte(kEmptyList);
    Schedule(tasks_) << WriteItems{std::span<const NodeId>(set.items), Sequence::kListItems} << WriteOpcode{kTuple1}
                     << WriteOpcode{kReduce} << NodeCreated{id};
    return {};
  }

  Status begin(NodeId id, const DictValue& dict) {
    out_.byte(kEmptyDict);
    created(id);
    tasks_.push_back(WriteItems{std::span<const std::pair<NodeId, NodeId>>(dict.items), Sequence::kDictItems});
    return {};
  }

  // CPython's order: create, memoize, items, then the instance attributes as BUILD state.
  Status begin(NodeId id, const OrderedDictValue& dict) {
    write_global_atom("collections", "OrderedDict");
    out_.byte(kEmptyTuple);
    out_.byte(kReduce);
    created(id);
    Schedule then(tasks_);
    then << WriteItems{std::span<const std::pair<NodeId, NodeId>>(dict.items), Sequence::kDictItems};
    if (dict.attributes) then << WriteNode{*dict.attributes} << WriteOpcode{kBuild};
    return {};
  }

  Status begin(NodeId id, const StorageRefValue& storage) {
    const Value& node = tree_.nodes[id];
    if (options_.persistent_ids != PersistentIdStyle::kTorchArchive) {
      return invalid_node(id, node, "storage references need PersistentIdStyle::kTorchArchive");
    }
    if (storage.numel > kMaxInt64) return invalid_node(id, node, "numel exceeds int64");
    ZG_TRY(check_str(id, storage.location));
    out_.byte(kMark);
    write_str_atom("storage");
    write_global_atom("torch", storage_type_name(storage.type));
    ZG_TRY(write_str(id, storage.key));
    write_str_atom(storage.location);
    write_int(static_cast<int64_t>(storage.numel));
    out_.byte(kTuple);
    out_.byte(kBinPersId);
    created(id);
    return {};
  }

  Status begin(NodeId id, const TensorValue& tensor) {
    const Value& node = tree_.nodes[id];
    if (tensor.sizes.size() != tensor.strides.size())
      return invalid_node(id, node, "sizes and strides differ in length");
    if (tensor.storage_offset > kMaxInt64) return invalid_node(id, node, "storage offset exceeds int64");
    if (tensor.rebuild_v1 && (tensor.requires_grad || tensor.metadata)) {
      return invalid_node(id, node, "_rebuild_tensor takes neither requires_grad nor metadata");
    }
    write_global_atom("torch._utils", tensor.rebuild_v1 ? "_rebuild_tensor" : "_rebuild_tensor_v2");
    out_.byte(kMark);
    Schedule then(tasks_);
    then << WriteNode{tensor.storage} << WriteInt{static_cast<int64_t>(tensor.storage_offset)}
         << WriteIntTuple{tensor.sizes} << WriteIntTuple{tensor.strides};
    if (!tensor.rebuild_v1) {
      then << WriteBool{tensor.requires_grad} << WriteEmptyOrderedDict{};
      if (tensor.metadata) then << WriteNode{*tensor.metadata};
    }
    then << WriteOpcode{kTuple} << WriteOpcode{kReduce} << NodeCreated{id};
    return {};
  }

  Status begin(NodeId id, const ParameterValue& parameter) {
    write_global_atom("torch._utils", "_rebuild_parameter");
    Schedule(tasks_) << WriteNode{parameter.tensor} << WriteBool{parameter.requires_grad} << WriteEmptyOrderedDict{}
                     << WriteOpcode{kTuple3} << WriteOpcode{kReduce} << NodeCreated{id};
    return {};
  }

  // A tree global is a value of its own: it is written each time it is a distinct node (unlike the
  // writer's atoms), so that the parsed tree has the same nodes.
  Status begin(NodeId id, const GlobalValue& global) {
    for (std::string_view part : {std::string_view(global.module), std::string_view(global.name)}) {
      // A newline would end the GLOBAL operand early and let the rest be read as opcodes.
      if (part.empty() || part.find('\n') != std::string_view::npos || !is_valid_utf8(part, false)) {
        return invalid_node(id, tree_.nodes[id], "module and name must be non-empty UTF-8 without newlines");
      }
    }
    out_.byte(kGlobal);
    out_.bytes(global.module);
    out_.byte('\n');
    out_.bytes(global.name);
    out_.byte('\n');
    created(id);
    return {};
  }

  Status begin(NodeId id, const TorchSizeValue& size) {
    write_global_atom("torch", "Size");
    write_int_tuple(std::span<const int64_t>(size.dims));
    out_.byte(kTuple1);
    out_.byte(kReduce);
    created(id);
    return {};
  }

  // numpy.dtype.__reduce__: (dtype, (name, False, True), state), the state being (3, byte order,
  // None, None, None, -1, -1, 0), or version 4 with ({}, (unit, count, 1, 1)) appended for datetimes.
  Status begin(NodeId id, const NumpyDtypeValue& dtype) {
    auto form = parse_numpy_descr(dtype.descr);
    if (!form) return fail(form.error());
    write_global_atom("numpy", "dtype");
    write_str_atom(form->name);
    out_.byte(kNewFalse);
    out_.byte(kNewTrue);
    out_.byte(kTuple3);
    out_.byte(kReduce);
    created(id);
    out_.byte(kMark);
    write_int(form->is_datetime ? 4 : 3);
    write_str_atom(std::string_view(&form->byte_order, 1));
    out_.byte(kNone);
    out_.byte(kNone);
    out_.byte(kNone);
    write_int(-1);
    write_int(-1);
    write_int(0);
    if (form->is_datetime) {
      out_.byte(kEmptyDict);
      out_.byte(kMark);
      ZG_TRY(write_bytes(form->unit, false));
      write_int(form->unit_count);
      write_int(1);
      write_int(1);
      out_.byte(kTuple);
      out_.byte(kTuple2);
    }
    out_.byte(kTuple);
    out_.byte(kBuild);
    return {};
  }

  // numpy.ndarray.__reduce__: (_reconstruct, (ndarray, (0,), b'b'), (1, shape, dtype, fortran, data)).
  Status begin(NodeId id, const NumpyArrayValue& array) {
    const Value& node = tree_.nodes[id];
    ZG_TRY(check_numpy_data(id, array.dtype, array.shape, array.data.size()));
    if (std::any_of(array.shape.begin(), array.shape.end(), [](uint64_t dim) { return dim > kMaxInt64; })) {
      return invalid_node(id, node, "a dimension exceeds int64");
    }
    const auto* dtype = std::get_if<NumpyDtypeValue>(&tree_.nodes[array.dtype]);
    if (dtype && dtype->descr.starts_with('>')) {
      // numpy turns a non-native array restored by _reconstruct into a native one; the protocol-5
      // spelling keeps the byte order, and a bytearray keeps the array writable.
      write_global_atom("numpy.core.numeric", "_frombuffer");
      out_.byte(kMark);
      // Dimensions were checked to fit int64 above, so the signed view of them is exact.
      std::span<const int64_t> shape(reinterpret_cast<const int64_t*>(array.shape.data()), array.shape.size());
      Schedule(tasks_) << WriteBytes{array.data, true} << WriteNode{array.dtype} << WriteIntTuple{shape}
                       << WriteStrAtom{array.fortran_order ? "F" : "C"} << WriteOpcode{kTuple} << WriteOpcode{kReduce}
                       << NodeCreated{id};
      return {};
    }
    write_global_atom("numpy.core.multiarray", "_reconstruct");
    write_global_atom("numpy", "ndarray");
    write_int(0);
    out_.byte(kTuple1);
    ZG_TRY(write_bytes("b", false));
    out_.byte(kTuple3);
    out_.byte(kReduce);
    created(id);
    out_.byte(kMark);
    write_int(1);
    write_int_tuple(std::span<const uint64_t>(array.shape));
    Schedule(tasks_) << WriteNode{array.dtype} << WriteBool{array.fortran_order} << WriteBytes{array.data, false}
                     << WriteOpcode{kTuple} << WriteOpcode{kBuild};
    return {};
  }

  Status begin(NodeId id, const NumpyScalarValue& scalar) {
    ZG_TRY(check_numpy_data(id, scalar.dtype, {}, scalar.data.size()));
    write_global_atom("numpy.core.multiarray", "scalar");
    Schedule(tasks_) << WriteNode{scalar.dtype} << WriteBytes{scalar.data, false} << WriteOpcode{kTuple2}
                     << WriteOpcode{kReduce} << NodeCreated{id};
    return {};
  }

  // copyreg.__reduce_ex__ for protocol 2: cls.__new__(cls) through NEWOBJ, then __dict__ as BUILD
  // state (none when empty).
  Status begin(NodeId id, const NamespaceValue& ns) {
    write_global_atom("argparse", "Namespace");
    out_.byte(kEmptyTuple);
    out_.byte(kNewObj);
    created(id);
    if (ns.attributes.empty()) return {};
    out_.byte(kEmptyDict);
    Schedule(tasks_) << WriteItems{std::span<const std::pair<NodeId, NodeId>>(ns.attributes), Sequence::kDictItems}
                     << WriteOpcode{kBuild};
    return {};
  }

  Status begin(NodeId id, const OperatorCallValue& call) {
    Schedule then(tasks_);
    then << WriteNode{call.callable} << WriteNode{call.args} << WriteOpcode{call.is_newobj ? kNewObj : kReduce}
         << NodeCreated{id};
    if (call.build_state) then << WriteNode{*call.build_state} << WriteOpcode{kBuild};
    return {};
  }

  // --- helpers ---

  // The object just written is complete enough to be referenced: memoize it if it will be, and
  // maybe add padding (the object stays on the stack, so an extra BINPUT of it is harmless).
  void created(NodeId id) {
    NodeState& state = states_[id];
    // A Python singleton written again: it got its chance of padding the first time, which keeps
    // padding to one entry per node at most (see count_references()).
    if (state.created) return;
    state.created = true;
    if (state.references > 1) {
      state.memo = memo_.next();
      write_put(state.memo);
    }
    if (options_.seed != 0 && padding_random_.below(kPaddingOdds) == 0) pad();
  }

  void pad() {
    write_put(memo_.next());
    padded_ = true;
  }

  void write_put(uint32_t index) {
    if (index <= 0xff) {
      out_.byte(kBinPut);
      out_.byte(static_cast<uint8_t>(index));
    } else {
      out_.byte(kLongBinPut);
      out_.little_endian(index, 4);
    }
  }

  void write_get(uint32_t index) {
    if (index <= 0xff) {
      out_.byte(kBinGet);
      out_.byte(static_cast<uint8_t>(index));
    } else {
      out_.byte(kLongBinGet);
      out_.little_endian(index, 4);
    }
  }

  // The shortest of BININT1, BININT2, BININT and LONG1, as CPython chooses.
  void write_int(int64_t value) {
    if (value >= 0 && value <= 0xff) {
      out_.byte(kBinInt1);
      out_.byte(static_cast<uint8_t>(value));
    } else if (value >= 0 && value <= 0xffff) {
      out_.byte(kBinInt2);
      out_.little_endian(static_cast<uint64_t>(value), 2);
    } else if (value >= std::numeric_limits<int32_t>::min() && value <= std::numeric_limits<int32_t>::max()) {
      out_.byte(kBinInt);
      out_.little_endian(static_cast<uint64_t>(value), 4);
    } else {
      std::array<uint8_t, 8> bytes{};
      for (size_t i = 0; i < bytes.size(); ++i)
        bytes[i] = static_cast<uint8_t>(static_cast<uint64_t>(value) >> (8 * i));
      size_t length = bytes.size();
      while (length > 1 && is_redundant_sign_byte(bytes[length - 1], bytes[length - 2])) --length;
      out_.byte(kLong1);
      out_.byte(static_cast<uint8_t>(length));
      for (size_t i = 0; i < length; ++i) out_.byte(bytes[i]);
    }
  }

  Status write_big_int(NodeId id, const IntValue& value) {
    const std::string& big = value.big;
    const size_t length = big.size();
    if (value.small != 0 || length <= 8 ||
        is_redundant_sign_byte(static_cast<uint8_t>(big[length - 1]), static_cast<uint8_t>(big[length - 2]))) {
      return invalid_node(id, tree_.nodes[id], "`big` is not the shortest encoding of an integer beyond int64");
    }
    if (length < 256) {
      out_.byte(kLong1);
      out_.byte(static_cast<uint8_t>(length));
    } else if (length <= static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
      out_.byte(kLong4);  // its length operand is a signed 32-bit integer
      out_.little_endian(length, 4);
    } else {
      return fail(ErrorCode::kUnsupported, "pickle writer: integer of more than 2^31 bytes");
    }
    out_.bytes(big);
    return {};
  }

  template <typename Integer>
  void write_int_tuple(std::span<const Integer> values) {
    if (values.empty()) {
      out_.byte(kEmptyTuple);
      return;
    }
    if (batch_opens_with_mark(Sequence::kTupleItems, values.size())) out_.byte(kMark);
    for (Integer value : values) write_int(static_cast<int64_t>(value));  // callers check the range
    out_.byte(batch_closer(Sequence::kTupleItems, values.size()));
  }

  // Text from the tree must be what BINUNICODE can carry and Python can decode.
  Status check_str(NodeId id, std::string_view text) {
    if (!is_valid_utf8(text, true)) return invalid_node(id, tree_.nodes[id], "text is not valid UTF-8");
    if (text.size() > std::numeric_limits<uint32_t>::max()) {
      return fail(ErrorCode::kUnsupported, "pickle writer: str of more than 4 GiB needs protocol 4");
    }
    return {};
  }

  Status write_str(NodeId id, std::string_view text) {
    ZG_TRY(check_str(id, text));
    out_.byte(kBinUnicode);
    out_.little_endian(text.size(), 4);
    out_.bytes(text);
    return {};
  }

  // Protocol 2 has no bytes opcode that Python 3 reads as bytes; CPython writes
  // _codecs.encode(text, 'latin1') and bytearray(text, 'latin-1'), text being the bytes decoded as
  // latin-1, and so does this.
  Status write_bytes(std::string_view data, bool is_bytearray) {
    if (is_bytearray) {
      write_global_atom("builtins", "bytearray");
    } else {
      write_global_atom("_codecs", "encode");
    }
    const auto high_bytes = static_cast<uint64_t>(
        std::count_if(data.begin(), data.end(), [](char c) { return static_cast<uint8_t>(c) >= 0x80; }));
    const uint64_t text_length = data.size() + high_bytes;
    if (text_length > std::numeric_limits<uint32_t>::max()) {
      return fail(ErrorCode::kUnsupported, "pickle writer: bytes of more than 4 GiB as text need protocol 4");
    }
    out_.byte(kBinUnicode);
    out_.little_endian(text_length, 4);
    out_.latin1_as_utf8(data);
    write_str_atom(is_bytearray ? "latin-1" : "latin1");
    out_.byte(kTuple2);
    out_.byte(kReduce);
    return {};
  }

  // The data of a numpy array or scalar must be exactly the bytes its dtype and shape describe.
  Status check_numpy_data(NodeId id, NodeId dtype, std::span<const uint64_t> shape, uint64_t data_size) {
    auto form = parse_numpy_descr(std::get<NumpyDtypeValue>(tree_.nodes[dtype]).descr);
    if (!form) return fail(form.error());
    std::optional<uint64_t> expected = form->itemsize;
    for (uint64_t dim : shape) {
      if (expected) expected = checked_mul(*expected, dim);
    }
    if (!expected || *expected != data_size) {
      return invalid_node(id, tree_.nodes[id], "data size does not match the dtype and shape");
    }
    return {};
  }

  // Writes a GLOBAL or str that the writer itself makes up (never a tree node). The unpickler consumes
  // these in a REDUCE, BUILD or BINPERSID, so sharing one object between uses changes nothing in the
  // loaded value: the first use spells it out, the second also memoizes it, and later uses fetch it,
  // so an atom used once costs no memo entry and a repeated one costs two bytes.
  void write_atom(std::string encoded) {
    AtomState& atom = atoms_[encoded];
    if (atom.memo != kNoMemo) {
      write_get(atom.memo);
      return;
    }
    out_.bytes(encoded);
    if (++atom.uses == 2) {
      atom.memo = memo_.next();
      write_put(atom.memo);
    }
  }

  void write_global_atom(std::string_view module, std::string_view name) {
    std::string encoded;
    encoded.reserve(module.size() + name.size() + 3);
    encoded.push_back(static_cast<char>(kGlobal));
    encoded.append(module).append(1, '\n').append(name).append(1, '\n');
    write_atom(std::move(encoded));
  }

  // `text` must have passed check_str() (constants, storage locations and dtype names do).
  void write_str_atom(std::string_view text) {
    std::string encoded;
    encoded.reserve(text.size() + 5);
    encoded.push_back(static_cast<char>(kBinUnicode));
    for (size_t i = 0; i < 4; ++i) encoded.push_back(static_cast<char>(static_cast<uint64_t>(text.size()) >> (8 * i)));
    encoded.append(text);
    write_atom(std::move(encoded));
  }

  const ValueTree& tree_;
  const PickleWriteOptions& options_;
  Output out_;
  MemoNumbering memo_;
  SplitMix64 padding_random_;
  bool padded_ = false;
  std::vector<NodeState> states_;
  std::unordered_map<std::string, AtomState> atoms_;
  std::vector<Task> tasks_;
};

}  // namespace

Status write_pickle(const ValueTree& tree, const PickleWriteOptions& options, ByteSink& sink) {
  return PickleWriter(tree, options, sink).run();
}

}  // namespace zoogate::cdr
