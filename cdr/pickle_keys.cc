#include "cdr/pickle_keys.h"

#include <bit>
#include <cmath>
#include <functional>
#include <set>
#include <string_view>
#include <utility>

#include "cdr/pickle_text.h"

namespace zoogate::cdr {
namespace {

constexpr uint64_t kNanHash = 0x7FF8;  // NaN keys only ever match their own node
constexpr size_t kMinIndexSlots = 16;

// splitmix64's finalizer: spreads bits over the whole word.
uint64_t mix(uint64_t x) {
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

uint64_t hash_text(std::string_view text, uint64_t kind_tag) {
  return mix(std::hash<std::string_view>{}(text) ^ kind_tag);
}

constexpr uint64_t kTagBigInt = 0x1;
constexpr uint64_t kTagFloat = 0x2;
constexpr uint64_t kTagStr = 0x3;
constexpr uint64_t kTagBytes = 0x4;
constexpr uint64_t kTagNone = 0x5;
constexpr uint64_t kTagGlobal = 0x6;
constexpr uint64_t kTagTuple = 0x7;

// As in CPython, a small integer hashes to itself: keys 0, 1, 2... land in neighbouring slots.
uint64_t hash_int(const IntValue& value) {
  return value.big.empty() ? static_cast<uint64_t>(value.small) : hash_text(value.big, kTagBigInt);
}

bool is_numeric(const Value& value) {
  return std::holds_alternative<bool>(value) || std::holds_alternative<IntValue>(value) ||
         std::holds_alternative<FloatValue>(value);
}

// Python's int == int for bool and IntValue operands (True is 1).
bool integer_equal(const Value& a, const Value& b) {
  auto small_of = [](const Value& value, int64_t& small) {
    if (const auto* flag = std::get_if<bool>(&value)) {
      small = *flag ? 1 : 0;
      return true;
    }
    const auto& integer = std::get<IntValue>(value);
    small = integer.small;
    return integer.big.empty();
  };
  int64_t x = 0, y = 0;
  bool x_small = small_of(a, x), y_small = small_of(b, y);
  if (x_small || y_small) return x_small && y_small && x == y;
  return std::get<IntValue>(a).big == std::get<IntValue>(b).big;
}

// Python's float == int: only an integral float can equal an integer, and then exactly.
bool float_equals_integer(double number, const Value& integer) {
  std::optional<IntValue> exact = exact_int_of_double(number);
  if (!exact) return false;
  Value as_value = std::move(*exact);
  return integer_equal(as_value, integer);
}

}  // namespace

std::optional<uint64_t> KeyOps::leaf_hash(const Value& value) const {
  if (const auto* integer = std::get_if<IntValue>(&value)) return hash_int(*integer);  // the common key
  if (std::holds_alternative<NoneValue>(value)) return mix(kTagNone);
  if (const auto* s = std::get_if<StrValue>(&value)) return hash_text(s->utf8, kTagStr);
  if (const auto* b = std::get_if<BytesValue>(&value)) {
    if (b->is_bytearray) return std::nullopt;  // mutable, unhashable in Python
    return hash_text(b->data, kTagBytes);
  }
  if (const auto* g = std::get_if<GlobalValue>(&value)) {
    return mix(hash_text(g->module, kTagGlobal) ^ hash_text(g->name, kTagGlobal));
  }
  if (const auto* f = std::get_if<FloatValue>(&value)) {
    if (std::isnan(f->value)) return mix(kNanHash);
    if (auto integer = exact_int_of_double(f->value)) return hash_int(*integer);
    return mix(std::bit_cast<uint64_t>(f->value) ^ kTagFloat);
  }
  if (const auto* flag = std::get_if<bool>(&value)) return *flag ? 1 : 0;  // as the ints 1 and 0
  return std::nullopt;
}

std::optional<uint64_t> KeyOps::hash(NodeId id) {
  if (id >= tree_.nodes.size()) return std::nullopt;
  const Value& value = tree_.nodes[id];
  if (std::holds_alternative<TupleValue>(value)) return tuple_hash(id);
  return leaf_hash(value);
}

std::optional<uint64_t> KeyOps::tuple_hash(NodeId root) {
  // Post-order over the tuple DAG; each tuple's hash is computed once and cached.
  struct Frame {
    NodeId id;
    size_t next;
  };
  std::vector<Frame> work{{root, 0}};
  while (!work.empty()) {
    Frame& frame = work.back();
    if (tuple_hashes_.contains(frame.id)) {
      work.pop_back();
      continue;
    }
    const auto& items = std::get<TupleValue>(tree_.nodes[frame.id]).items;
    if (frame.next < items.size()) {
      NodeId child = items[frame.next++];
      if (std::holds_alternative<TupleValue>(tree_.nodes[child]) && !tuple_hashes_.contains(child)) {
        work.push_back({child, 0});
      }
      continue;
    }
    std::optional<uint64_t> combined = mix(kTagTuple ^ items.size());
    for (NodeId child : items) {
      const Value& item = tree_.nodes[child];
      std::optional<uint64_t> h = std::holds_alternative<TupleValue>(item) ? tuple_hashes_.at(child) : leaf_hash(item);
      if (!h) {
        combined = std::nullopt;
        break;
      }
      combined = mix(*combined * 31 + *h);
    }
    tuple_hashes_.emplace(frame.id, combined);
    work.pop_back();
  }
  return tuple_hashes_.at(root);
}

bool KeyOps::leaf_equal(const Value& a, const Value& b) const {
  if (is_numeric(a) && is_numeric(b)) {
    const auto* fa = std::get_if<FloatValue>(&a);
    const auto* fb = std::get_if<FloatValue>(&b);
    if (fa && fb) return fa->value == fb->value;  // IEEE: NaN != NaN, -0.0 == 0.0
    if (fa) return float_equals_integer(fa->value, b);
    if (fb) return float_equals_integer(fb->value, a);
    return integer_equal(a, b);
  }
  if (a.index() != b.index()) return false;
  if (std::holds_alternative<NoneValue>(a)) return true;
  if (const auto* s = std::get_if<StrValue>(&a)) return *s == std::get<StrValue>(b);
  if (const auto* bytes = std::get_if<BytesValue>(&a)) return *bytes == std::get<BytesValue>(b);
  if (const auto* g = std::get_if<GlobalValue>(&a)) return *g == std::get<GlobalValue>(b);
  return false;
}

bool KeyOps::equal(NodeId a, NodeId b) {
  if (a == b) return true;  // identity implies equality, as in Python's containers
  bool a_tuple = std::holds_alternative<TupleValue>(tree_.nodes[a]);
  bool b_tuple = std::holds_alternative<TupleValue>(tree_.nodes[b]);
  if (!a_tuple || !b_tuple) return !a_tuple && !b_tuple && leaf_equal(tree_.nodes[a], tree_.nodes[b]);

  // Pairs still to compare; a pair is queued at most once, so shared subtuples are compared once.
  std::vector<std::pair<NodeId, NodeId>> work{{a, b}};
  std::set<std::pair<NodeId, NodeId>> queued;
  while (!work.empty()) {
    auto [x, y] = work.back();
    work.pop_back();
    if (x == y) continue;
    const Value& vx = tree_.nodes[x];
    const Value& vy = tree_.nodes[y];
    const auto* tx = std::get_if<TupleValue>(&vx);
    const auto* ty = std::get_if<TupleValue>(&vy);
    if (!tx || !ty) {
      if (tx || ty || !leaf_equal(vx, vy)) return false;
      continue;
    }
    if (tx->items.size() != ty->items.size()) return false;
    if (hash(x) != hash(y)) return false;
    for (size_t i = 0; i < tx->items.size(); ++i) {
      auto pair = std::make_pair(tx->items[i], ty->items[i]);
      if (queued.insert(pair).second) work.push_back(pair);
    }
  }
  return true;
}

void KeyIndex::grow() {
  std::vector<uint64_t> old = std::move(slots_);
  slots_.assign(std::max(kMinIndexSlots, old.size() * 2), 0);
  size_t mask = slots_.size() - 1;
  for (uint64_t slot : old) {
    if (slot == 0) continue;
    auto tag = static_cast<uint32_t>(slot >> 32);
    uint32_t perturb = tag;
    size_t i = tag & mask;
    while (slots_[i] != 0) {
      perturb >>= kPerturbShift;
      i = (i * 5 + perturb + 1) & mask;
    }
    slots_[i] = slot;
  }
}

}  // namespace zoogate::cdr
