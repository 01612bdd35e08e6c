// Python's dict-key and set-item semantics over ValueTree nodes (private to cdr/).
//
// The pickle VM keeps dicts, OrderedDicts and sets duplicate-free as Python would ("last write wins"
// for dicts, "first one stays" for sets), which needs hashing and equality by value: 1 == 1.0 == True,
// NaN never equals another NaN node, tuples compare item by item. Only the key kinds zoogate allows are
// hashable here: none, bool, int, float, str, bytes (not bytearray), GlobalValue, tuples of those.
//
// Hashing and comparing hostile tuples is bounded: tuples are immutable and built from existing
// nodes, so they form a DAG of depth at most max_nesting_depth; walks are iterative and memoized, so
// heavy sharing cannot make them exponential. A KeyOps refers to the tree it was made for, which
// must outlive it; nodes may be appended to the tree meanwhile but existing nodes must not change
// kind. Not thread-safe.
#pragma once

#include <cstdint>
#include <optional>
#include <unordered_map>
#include <vector>

#include "cdr/value.h"

namespace zoogate::cdr {

class KeyOps {
 public:
  explicit KeyOps(const ValueTree& tree) : tree_(tree) {}

  // The hash of `id` as a key, or nullopt when it is not an allowed key kind. Equal keys hash alike.
  std::optional<uint64_t> hash(NodeId id);
  // Python's `a == b` for two nodes that hash() accepted.
  bool equal(NodeId a, NodeId b);

 private:
  std::optional<uint64_t> leaf_hash(const Value& value) const;
  std::optional<uint64_t> tuple_hash(NodeId id);
  bool leaf_equal(const Value& a, const Value& b) const;

  const ValueTree& tree_;
  std::unordered_map<NodeId, std::optional<uint64_t>> tuple_hashes_;  // nullopt: holds a non-key
};

// An open-addressing index from key hash to item position, for one large container. Probing follows
// CPython's dict (i = 5i + 1 + perturb, perturb >>= 5), so that all hash bits matter and integer keys,
// whose hash is their value, keep their cache locality. Lookups call `same(position)` on each candidate
// whose hash matches, so equality stays the caller's. Every examined slot is added to `steps`: the
// caller bounds the total, because crafted colliding keys could otherwise make inserts quadratic.
class KeyIndex {
 public:
  // Returns the position of the key `same` accepts among those filed under `hash`; when there is none,
  // files `position` under `hash` and returns nullopt.
  template <typename Same>
  std::optional<uint32_t> find_or_insert(uint64_t hash, uint32_t position, Same same, uint64_t& steps) {
    if ((used_ + 1) * 2 > slots_.size()) grow();
    uint32_t tag = fold(hash);
    size_t mask = slots_.size() - 1;
    uint32_t perturb = tag;
    for (size_t i = tag & mask;; i = (i * 5 + perturb + 1) & mask) {
      ++steps;
      uint64_t slot = slots_[i];
      if (slot == 0) {
        slots_[i] = pack(tag, position);
        ++used_;
        return std::nullopt;
      }
      auto candidate = static_cast<uint32_t>(slot) - 1;
      if (static_cast<uint32_t>(slot >> 32) == tag && same(candidate)) return candidate;
      perturb >>= kPerturbShift;
    }
  }

 private:
  static constexpr int kPerturbShift = 5;
  // 32 bits of the hash, all 64 contributing; small non-negative integers keep their value.
  static uint32_t fold(uint64_t hash) {
    return static_cast<uint32_t>(hash) ^ (static_cast<uint32_t>(hash >> 32) * 0x9E3779B1u);
  }
  static uint64_t pack(uint32_t tag, uint32_t position) { return (uint64_t{tag} << 32) | (uint64_t{position} + 1); }
  void grow();
  // (folded hash) << 32 | (position + 1); 0 is an empty slot. Size is a power of two, at most half full.
  std::vector<uint64_t> slots_;
  size_t used_ = 0;
};

}  // namespace zoogate::cdr
