#include "mtd/weight_permutation.h"

#include <algorithm>
#include <deque>
#include <limits>
#include <map>
#include <set>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <variant>

#include "common/checked.h"
#include "mtd/seeded_random.h"

namespace zoogate::mtd {
namespace {

using cdr::NodeId;
using cdr::StorageInfo;
using cdr::StorageRewrite;
using cdr::TensorValue;
using cdr::ValueTree;

// Where the permuted units sit in a tensor. `units` units of `block` elements each span `units * block`
// elements of one dimension; `width` is the model dimension on the other side.
enum class Placement {
  kRows,          // [units*block, width]: nn.Linear output features, Conv1D input features
  kColumns,       // [width, units*block]
  kVector,        // [units*block]: a bias
  kFusedColumns,  // [width, 3*units*block]: GPT-2's q|k|v columns, the same permutation in each third
  kFusedVector,   // [3*units*block]
};

// Which permutation a tensor follows.
enum class Units { kHidden, kQueryHeads, kKeyValueHeads };

struct PermutedTensor {
  std::string_view suffix;  // after the layer prefix
  Placement placement;
  Units units;
  bool required;
};

// A tensor that may sit in a group's namespace without being permuted, because it does not depend
// on the order of the units (output biases, causal-mask buffers, RoPE frequencies, per-head norms).
struct UntouchedTensor {
  std::string_view suffix;
  bool must_be_head_sized;  // only when shaped [head_dim], shared by every head
};

// One layer's feed-forward network or attention block.
struct GroupSpec {
  std::string_view what;                     // for notes: "FFN units", "attention heads"
  std::vector<std::string_view> namespaces;  // every tensor under these must be listed below
  std::vector<PermutedTensor> permuted;      // the first is required and fixes the dimensions
  std::vector<UntouchedTensor> untouched;
  std::vector<std::string_view> signature;   // tensors the layer must have for the family to apply
  std::vector<std::string_view> head_size_hints;  // 1-D per-head weights whose length is head_dim
};

struct FamilySpec {
  std::string_view name;
  GroupSpec ffn;
  GroupSpec attention;
  bool grouped_query = false;  // num_key_value_heads and head_dim apply
};

const FamilySpec& gpt2_family() {
  static const FamilySpec spec{
      "GPT-2",
      {"FFN units",
       {"mlp."},
       {{"mlp.c_fc.weight", Placement::kColumns, Units::kHidden, true},
        {"mlp.c_fc.bias", Placement::kVector, Units::kHidden, true},
        {"mlp.c_proj.weight", Placement::kRows, Units::kHidden, true}},
       {{"mlp.c_proj.bias", false}},
       // Conv1D stores weights as [in, out]; the fused c_attn is what tells GPT-2 from models that
       // reuse the c_fc/c_proj names with nn.Linear weights (GPT-Neo).
       {"attn.c_attn.weight"},
       {}},
      {"attention heads",
       {"attn."},
       {{"attn.c_attn.weight", Placement::kFusedColumns, Units::kQueryHeads, true},
        {"attn.c_attn.bias", Placement::kFusedVector, Units::kQueryHeads, false},
        {"attn.c_proj.weight", Placement::kRows, Units::kQueryHeads, true}},
       {{"attn.c_proj.bias", false}, {"attn.bias", false}, {"attn.masked_bias", false}},
       {},
       {}},
      false};
  return spec;
}

const FamilySpec& bert_family() {
  static const FamilySpec spec{
      "BERT",
      {"FFN units",
       {"intermediate.", "output.dense."},
       {{"intermediate.dense.weight", Placement::kRows, Units::kHidden, true},
        {"intermediate.dense.bias", Placement::kVector, Units::kHidden, false},
        {"output.dense.weight", Placement::kColumns, Units::kHidden, true}},
       {{"output.dense.bias", false}},
       {},
       {}},
      {"attention heads",
       {"attention.self.", "attention.output.dense."},
       {{"attention.self.query.weight", Placement::kRows, Units::kQueryHeads, true},
        {"attention.self.query.bias", Placement::kVector, Units::kQueryHeads, false},
        {"attention.self.key.weight", Placement::kRows, Units::kQueryHeads, true},
        {"attention.self.key.bias", Placement::kVector, Units::kQueryHeads, false},
        {"attention.self.value.weight", Placement::kRows, Units::kQueryHeads, true},
        {"attention.self.value.bias", Placement::kVector, Units::kQueryHeads, false},
        {"attention.output.dense.weight", Placement::kColumns, Units::kQueryHeads, true}},
       {{"attention.output.dense.bias", false}},
       {},
       {}},
      false};
  return spec;
}

const FamilySpec& llama_family() {
  static const FamilySpec spec{
      "Llama/Mistral/Qwen",
      {"FFN units",
       {"mlp."},
       {{"mlp.gate_proj.weight", Placement::kRows, Units::kHidden, true},
        {"mlp.gate_proj.bias", Placement::kVector, Units::kHidden, false},
        {"mlp.up_proj.weight", Placement::kRows, Units::kHidden, true},
        {"mlp.up_proj.bias", Placement::kVector, Units::kHidden, false},
        {"mlp.down_proj.weight", Placement::kColumns, Units::kHidden, true}},
       {{"mlp.down_proj.bias", false}},
       {},
       {}},
      {"attention heads",
       {"self_attn."},
       {{"self_attn.q_proj.weight", Placement::kRows, Units::kQueryHeads, true},
        {"self_attn.q_proj.bias", Placement::kVector, Units::kQueryHeads, false},
        {"self_attn.k_proj.weight", Placement::kRows, Units::kKeyValueHeads, true},
        {"self_attn.k_proj.bias", Placement::kVector, Units::kKeyValueHeads, false},
        {"self_attn.v_proj.weight", Placement::kRows, Units::kKeyValueHeads, true},
        {"self_attn.v_proj.bias", Placement::kVector, Units::kKeyValueHeads, false},
        {"self_attn.o_proj.weight", Placement::kColumns, Units::kQueryHeads, true}},
       {{"self_attn.o_proj.bias", false},
        {"self_attn.rotary_emb.inv_freq", false},
        {"self_attn.q_norm.weight", true},
        {"self_attn.k_norm.weight", true}},
       {},
       {"self_attn.q_norm.weight", "self_attn.k_norm.weight"}},
      true};
  return spec;
}

// A tensor of the checkpoint, named by its keys joined with dots.
struct NamedTensor {
  std::string name;
  const TensorValue* tensor = nullptr;
  std::optional<size_t> storage_index;  // into `storages`
  bool sole_user = false;               // no other tensor, view or parameter refers to its storage
};

// One transformer layer: its tensors by the name that follows the layer prefix.
struct Layer {
  const FamilySpec* family = nullptr;
  std::map<std::string, const NamedTensor*, std::less<>> tensors;
  const NamedTensor* find(std::string_view suffix) const {
    auto found = tensors.find(suffix);
    return found == tensors.end() ? nullptr : found->second;
  }
};

std::optional<NodeId> storage_of(const ValueTree& tree, NodeId node) {
  if (const auto* parameter = std::get_if<cdr::ParameterValue>(&tree.at(node))) node = parameter->tensor;
  if (const auto* tensor = std::get_if<TensorValue>(&tree.at(node))) return tensor->storage;
  return std::nullopt;
}

// Every tensor reachable through nested dicts with str keys, with whether it is its storage's only user.
std::vector<NamedTensor> collect_named_tensors(const ValueTree& tree, const std::vector<StorageInfo>& storages) {
  // References to tensors over each storage, counted per edge of the tree: a tensor reached from two
  // places, two views of one storage, or a tensor both bare and wrapped in a parameter all count twice.
  std::unordered_map<NodeId, uint32_t> references;
  for (NodeId id : cdr::reachable_nodes(tree)) {
    const cdr::Value& value = tree.at(id);
    if (std::holds_alternative<cdr::ParameterValue>(value)) continue;  // counted where the parameter is used
    cdr::for_each_child(value, [&](NodeId child) {
      if (auto storage = storage_of(tree, child)) ++references[*storage];
    });
  }
  std::unordered_map<NodeId, size_t> storage_index;
  for (size_t i = 0; i < storages.size(); ++i) storage_index.emplace(storages[i].node, i);

  std::vector<NamedTensor> tensors;
  auto items_of = [&](NodeId id) -> const std::vector<std::pair<NodeId, NodeId>>* {
    if (const auto* dict = std::get_if<cdr::DictValue>(&tree.at(id))) return &dict->items;
    if (const auto* ordered = std::get_if<cdr::OrderedDictValue>(&tree.at(id))) return &ordered->items;
    return nullptr;
  };
  std::deque<std::pair<NodeId, std::string>> pending = {{tree.root, ""}};
  std::unordered_set<NodeId> visited = {tree.root};  // dicts can be shared or form cycles
  while (!pending.empty()) {
    auto [id, prefix] = std::move(pending.front());
    pending.pop_front();
    const auto* items = items_of(id);
    if (!items) continue;
    for (const auto& [key_node, value_node] : *items) {
      const auto* key = std::get_if<cdr::StrValue>(&tree.at(key_node));
      if (!key) continue;
      std::string name = prefix.empty() ? key->utf8 : prefix + "." + key->utf8;
      NodeId node = value_node;
      if (const auto* parameter = std::get_if<cdr::ParameterValue>(&tree.at(node))) node = parameter->tensor;
      if (const auto* tensor = std::get_if<TensorValue>(&tree.at(node))) {
        NamedTensor named{std::move(name), tensor, std::nullopt, references[tensor->storage] == 1};
        if (auto index = storage_index.find(tensor->storage); index != storage_index.end()) {
          named.storage_index = index->second;
        }
        tensors.push_back(std::move(named));
      } else if (items_of(node) && visited.insert(node).second) {
        pending.emplace_back(node, std::move(name));
      }
    }
  }
  return tensors;
}

bool is_decimal(std::string_view text) {
  return !text.empty() && text.size() <= 9 &&
         std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// The layer a tensor name belongs to: the family whose naming it follows and the length of the layer
// prefix ("model.layers.3." in "model.layers.3.mlp.up_proj.weight"). The leftmost match wins.
std::optional<std::pair<const FamilySpec*, size_t>> match_layer(std::string_view name) {
  std::string_view previous;
  size_t start = 0;
  while (start < name.size()) {
    size_t dot = name.find('.', start);
    if (dot == std::string_view::npos) break;
    std::string_view part = name.substr(start, dot - start);
    size_t next_dot = name.find('.', dot + 1);
    if (next_dot != std::string_view::npos && is_decimal(name.substr(dot + 1, next_dot - dot - 1))) {
      const FamilySpec* family = nullptr;
      if (part == "h") family = &gpt2_family();
      if (part == "layers") family = &llama_family();
      if (part == "layer" && previous == "encoder") family = &bert_family();
      if (family) return std::pair{family, next_dot + 1};
    }
    previous = part;
    start = dot + 1;
  }
  return std::nullopt;
}

// Counts from config.json that attention needs, when it states them as positive integers.
struct ModelConfig {
  bool present = false;
  std::optional<uint64_t> heads;
  std::optional<uint64_t> key_value_heads;
  std::optional<uint64_t> head_dim;
  std::optional<uint64_t> hidden_size;
};

ModelConfig read_model_config(const nlohmann::json* json) {
  ModelConfig config;
  if (!json || !json->is_object()) return config;
  config.present = true;
  auto count = [&](std::initializer_list<const char*> keys) -> std::optional<uint64_t> {
    for (const char* key : keys) {
      auto found = json->find(key);
      // Parsed JSON holds non-negative integers as unsigned, JSON built in code as signed.
      if (found != json->end() && found->is_number_integer() && found->get<int64_t>() > 0) {
        return static_cast<uint64_t>(found->get<int64_t>());
      }
    }
    return std::nullopt;
  };
  config.heads = count({"num_attention_heads", "n_head"});
  config.key_value_heads = count({"num_key_value_heads"});
  config.head_dim = count({"head_dim"});
  config.hidden_size = count({"hidden_size", "n_embd"});
  return config;
}

struct HeadLayout {
  uint64_t heads = 0;
  uint64_t key_value_heads = 0;
  uint64_t head_dim = 0;
};

// Expected sizes of a tensor and the view whose one-axis gather applies the permutation.
struct TensorView {
  std::vector<uint64_t> sizes;
  std::vector<uint64_t> view;
  size_t axis = 0;
};

std::optional<TensorView> view_for(Placement placement, uint64_t units, uint64_t block, uint64_t width) {
  auto span = checked_mul(units, block);
  auto block_width = checked_mul(block, width);
  auto fused = span ? checked_mul(*span, 3) : std::nullopt;
  if (!span || !block_width || !fused) return std::nullopt;
  switch (placement) {
    case Placement::kRows: return TensorView{{*span, width}, {units, *block_width}, 0};
    case Placement::kColumns: return TensorView{{width, *span}, {width, units, block}, 1};
    case Placement::kVector: return TensorView{{*span}, {units, block}, 0};
    case Placement::kFusedColumns: return TensorView{{width, *fused}, {width, 3, units, block}, 2};
    case Placement::kFusedVector: return TensorView{{*fused}, {3, units, block}, 1};
  }
  return std::nullopt;
}

std::string shape_text(const std::vector<uint64_t>& sizes) {
  std::string text = "[";
  for (size_t i = 0; i < sizes.size(); ++i) text += (i ? ", " : "") + std::to_string(sizes[i]);
  return text + "]";
}

std::vector<uint64_t> sizes_of(const TensorValue& tensor) {
  return std::vector<uint64_t>(tensor.sizes.begin(), tensor.sizes.end());
}

bool is_float(cdr::StorageType type) {
  return type == cdr::StorageType::kFloat || type == cdr::StorageType::kDouble ||
         type == cdr::StorageType::kHalf || type == cdr::StorageType::kBFloat16;
}

// True when the tensor's elements are exactly its storage's, in row-major order: storage offset 0,
// the strides of a C-contiguous array (a dimension of size 1 may have any stride), and as many
// elements as the storage holds. Only then is a rewrite of the storage a rewrite of the tensor.
bool covers_storage_in_c_order(const TensorValue& tensor, const StorageInfo& storage) {
  return tensor.storage_offset == 0 && cdr::is_c_contiguous(tensor) && cdr::element_count(tensor) == storage.numel;
}

// Why a tensor cannot be rewritten through its storage with `expected_sizes`, or nullopt if it can.
std::optional<std::string> rewrite_obstacle(const NamedTensor& tensor, const std::vector<uint64_t>& expected_sizes,
                                            const std::vector<StorageInfo>& storages) {
  if (sizes_of(*tensor.tensor) != expected_sizes) {
    return "has shape " + shape_text(sizes_of(*tensor.tensor)) + ", expected " + shape_text(expected_sizes);
  }
  if (!tensor.storage_index) return std::string("has no storage record");
  const StorageInfo& storage = storages[*tensor.storage_index];
  if (!is_float(storage.type)) return std::string("is not a floating-point tensor");
  if (!tensor.sole_user) return std::string("shares its storage with another tensor");
  if (!covers_storage_in_c_order(*tensor.tensor, storage)) {
    return std::string("does not cover its storage contiguously");
  }
  return std::nullopt;
}

bool is_identity(const std::vector<uint32_t>& order) {
  for (size_t i = 0; i < order.size(); ++i) {
    if (order[i] != i) return false;
  }
  return true;
}

// A permutation of `size` >= 2 units that is not the identity, so that the group's bytes change.
std::vector<uint32_t> draw_hidden_permutation(SeededRandom& random, uint32_t size) {
  while (true) {
    auto order = random.permutation(size);
    if (!is_identity(order)) return order;
  }
}

struct HeadPermutation {
  std::vector<uint32_t> query;      // source query head of each output query head
  std::vector<uint32_t> key_value;  // source key/value head of each output key/value head
};

// Key/value groups move whole; query heads follow their group and are also shuffled within it. Query
// head h reads key/value head h / group_size, so that relation holds in the output as well.
HeadPermutation draw_head_permutation(SeededRandom& random, uint32_t key_value_heads, uint32_t group_size) {
  while (true) {
    HeadPermutation permutation;
    permutation.key_value = random.permutation(key_value_heads);
    for (uint32_t group : permutation.key_value) {
      for (uint32_t head : random.permutation(group_size)) permutation.query.push_back(group * group_size + head);
    }
    if (!is_identity(permutation.query)) return permutation;
  }
}

// The rewrites of one group, or why it was left alone.
struct GroupOutcome {
  bool applies = false;  // the group's first tensor exists in this layer
  std::vector<std::pair<size_t, StorageRewrite>> rewrites;
  std::string obstacle;  // empty when permuted
};

class GroupPlanner {
 public:
  GroupPlanner(const FamilySpec& family, const GroupSpec& group, const Layer& layer, std::string_view prefix,
               const std::vector<StorageInfo>& storages, const ModelConfig& config, const VariantSeed& seed)
      : family_(family), group_(group), layer_(layer), prefix_(prefix), storages_(storages), config_(config),
        seed_(seed) {}

  GroupOutcome plan() {
    GroupOutcome outcome;
    const NamedTensor* first = layer_.find(group_.permuted.front().suffix);
    if (!first) {
      outcome.obstacle = "no " + std::string(group_.permuted.front().suffix);
      return outcome;
    }
    outcome.applies = true;
    if (auto obstacle = check_names()) {
      outcome.obstacle = *obstacle;
      return outcome;
    }
    const auto& first_sizes = first->tensor->sizes;
    const Placement first_placement = group_.permuted.front().placement;
    if (first_sizes.size() != 2) {
      outcome.obstacle = std::string(group_.permuted.front().suffix) + " is not a matrix";
      return outcome;
    }
    const auto width = static_cast<uint64_t>(first_placement == Placement::kRows ? first_sizes[1] : first_sizes[0]);
    if (width == 0) {
      outcome.obstacle = std::string(group_.permuted.front().suffix) + " is empty";
      return outcome;
    }
    const bool hidden = group_.permuted.front().units == Units::kHidden;
    if (hidden) {
      const auto units = static_cast<uint64_t>(first_placement == Placement::kRows ? first_sizes[0] : first_sizes[1]);
      if (units < 2 || units > std::numeric_limits<uint32_t>::max()) {
        outcome.obstacle = "cannot permute " + std::to_string(units) + " units";
        return outcome;
      }
      SeededRandom random(seed_.sub_seed(SeedPurpose::kWeightPermutation, std::string(prefix_) + "ffn"));
      hidden_order_ = draw_hidden_permutation(random, static_cast<uint32_t>(units));
    } else {
      auto layout = resolve_heads(*first, width);
      if (auto* obstacle = std::get_if<std::string>(&layout)) {
        outcome.obstacle = *obstacle;
        return outcome;
      }
      layout_ = std::get<HeadLayout>(layout);
      SeededRandom random(seed_.sub_seed(SeedPurpose::kWeightPermutation, std::string(prefix_) + "attention"));
      heads_ = draw_head_permutation(random, static_cast<uint32_t>(layout_.key_value_heads),
                                     static_cast<uint32_t>(layout_.heads / layout_.key_value_heads));
    }
    for (const PermutedTensor& spec : group_.permuted) {
      const NamedTensor* tensor = layer_.find(spec.suffix);
      if (!tensor) {
        if (!spec.required) continue;
        outcome.obstacle = "no " + std::string(spec.suffix);
        return outcome;
      }
      const std::vector<uint32_t>& order = order_for(spec.units);
      auto view = view_for(spec.placement, order.size(), hidden ? 1 : layout_.head_dim, width);
      if (!view) {
        outcome.obstacle = std::string(spec.suffix) + " has an impossible shape";
        return outcome;
      }
      if (auto obstacle = rewrite_obstacle(*tensor, view->sizes, storages_)) {
        outcome.obstacle = std::string(spec.suffix) + " " + *obstacle;
        return outcome;
      }
      // The key/value order may be the identity (a single group, or a draw that moved query heads only
      // within their groups): those tensors keep their bytes.
      if (is_identity(order)) continue;
      outcome.rewrites.emplace_back(*tensor->storage_index, StorageRewrite{view->view, view->axis, order});
    }
    for (const UntouchedTensor& spec : group_.untouched) {
      const NamedTensor* tensor = layer_.find(spec.suffix);
      if (tensor && spec.must_be_head_sized && sizes_of(*tensor->tensor) != std::vector<uint64_t>{layout_.head_dim}) {
        outcome.obstacle = std::string(spec.suffix) + " is not shared by all heads";
        outcome.rewrites.clear();
        return outcome;
      }
    }
    return outcome;
  }

 private:
  const std::vector<uint32_t>& order_for(Units units) const {
    switch (units) {
      case Units::kHidden: return hidden_order_;
      case Units::kQueryHeads: return heads_.query;
      case Units::kKeyValueHeads: return heads_.key_value;
    }
    return hidden_order_;
  }

  // The layer has the family's signature, and no tensor in the group's namespaces that it does not know.
  std::optional<std::string> check_names() const {
    for (std::string_view required : group_.signature) {
      if (!layer_.find(required)) return "no " + std::string(required);
    }
    for (const auto& entry : layer_.tensors) {
      const std::string& suffix = entry.first;
      const bool in_namespace = std::any_of(group_.namespaces.begin(), group_.namespaces.end(),
                                            [&](std::string_view name) { return suffix.starts_with(name); });
      if (!in_namespace) continue;
      const bool known =
          std::any_of(group_.permuted.begin(), group_.permuted.end(), [&](const auto& spec) { return spec.suffix == suffix; }) ||
          std::any_of(group_.untouched.begin(), group_.untouched.end(), [&](const auto& spec) { return spec.suffix == suffix; });
      if (!known) return "unexpected tensor " + suffix;
    }
    return std::nullopt;
  }

  // The head counts from config.json, or else from per-head norm weights; checked against `width`.
  std::variant<HeadLayout, std::string> resolve_heads(const NamedTensor& first, uint64_t width) const {
    HeadLayout layout;
    if (config_.heads) {
      if (config_.hidden_size && *config_.hidden_size != width) {
        return "config.json's hidden size " + std::to_string(*config_.hidden_size) + " does not match the weights' " +
               std::to_string(width);
      }
      layout.heads = *config_.heads;
      layout.key_value_heads = family_.grouped_query ? config_.key_value_heads.value_or(layout.heads) : layout.heads;
      if (family_.grouped_query && config_.head_dim) {
        layout.head_dim = *config_.head_dim;
      } else if (width % layout.heads == 0) {
        layout.head_dim = width / layout.heads;
      } else {
        return "the hidden size " + std::to_string(width) + " is not a multiple of " + std::to_string(layout.heads) +
               " heads";
      }
    } else if (auto from_norms = heads_from_norms(first)) {
      layout = *from_norms;
    } else {
      return config_.present ? "config.json does not give the number of attention heads"
                             : "the number of attention heads is unknown without config.json";
    }
    if (layout.heads < 2 || layout.heads > std::numeric_limits<uint32_t>::max() || layout.head_dim == 0 ||
        layout.heads % layout.key_value_heads != 0) {
      return std::to_string(layout.heads) + " attention heads over " + std::to_string(layout.key_value_heads) +
             " key/value heads cannot be permuted";
    }
    return layout;
  }

  // Per-head q/k norm weights of one length d give head_dim = d; the projections' rows then give the
  // head counts. Used only when every number divides exactly.
  std::optional<HeadLayout> heads_from_norms(const NamedTensor& first) const {
    if (group_.head_size_hints.empty()) return std::nullopt;
    std::optional<uint64_t> head_dim;
    for (std::string_view hint : group_.head_size_hints) {
      const NamedTensor* norm = layer_.find(hint);
      if (!norm || norm->tensor->sizes.size() != 1) return std::nullopt;
      const auto length = static_cast<uint64_t>(norm->tensor->sizes[0]);
      if (length == 0 || (head_dim && *head_dim != length)) return std::nullopt;
      head_dim = length;
    }
    const NamedTensor* key_value = nullptr;
    for (const PermutedTensor& spec : group_.permuted) {
      if (spec.units == Units::kKeyValueHeads && spec.placement == Placement::kRows) key_value = layer_.find(spec.suffix);
      if (key_value) break;
    }
    if (!key_value || key_value->tensor->sizes.size() != 2) return std::nullopt;
    const auto query_rows = static_cast<uint64_t>(first.tensor->sizes[0]);
    const auto key_value_rows = static_cast<uint64_t>(key_value->tensor->sizes[0]);
    if (query_rows % *head_dim != 0 || key_value_rows % *head_dim != 0 || key_value_rows == 0) return std::nullopt;
    return HeadLayout{query_rows / *head_dim, key_value_rows / *head_dim, *head_dim};
  }

  const FamilySpec& family_;
  const GroupSpec& group_;
  const Layer& layer_;
  std::string_view prefix_;
  const std::vector<StorageInfo>& storages_;
  const ModelConfig& config_;
  const VariantSeed& seed_;
  HeadLayout layout_;
  std::vector<uint32_t> hidden_order_;
  HeadPermutation heads_;
};

// What happened to one kind of group across the layers of one family, for the notes.
struct GroupTally {
  size_t layers = 0;
  size_t permuted = 0;
  std::map<std::string, std::pair<size_t, std::string>> left_alone;  // reason -> (layers, first prefix)
};

}  // namespace

WeightPermutationPlan plan_weight_permutations(const ValueTree& tree, const std::vector<StorageInfo>& storages,
                                               const nlohmann::json* model_config, const VariantSeed& seed) {
  WeightPermutationPlan plan;
  const std::vector<NamedTensor> tensors = collect_named_tensors(tree, storages);
  std::map<std::string, Layer, std::less<>> layers;  // by prefix
  for (const NamedTensor& tensor : tensors) {
    auto match = match_layer(tensor.name);
    if (!match) continue;
    Layer& layer = layers[tensor.name.substr(0, match->second)];
    layer.family = match->first;
    layer.tensors.emplace(tensor.name.substr(match->second), &tensor);
  }
  const ModelConfig config = read_model_config(model_config);
  if (model_config && !config.present) plan.notes.push_back("weight variation: config.json is not a JSON object; ignored");

  std::vector<std::optional<StorageRewrite>> rewrites(storages.size());
  bool rewritten = false;
  // Tallies by family name then group ("FFN units" / "attention heads"), in a stable order for notes.
  std::map<std::pair<std::string_view, std::string_view>, GroupTally> tallies;
  // A family counts as present when some layer named like it has the first tensor of a group; names
  // alone ("h.0.") prove nothing.
  std::set<std::string_view> family_seen;
  for (const auto& [prefix, layer] : layers) {
    for (const GroupSpec* group : {&layer.family->ffn, &layer.family->attention}) {
      GroupOutcome outcome = GroupPlanner(*layer.family, *group, layer, prefix, storages, config, seed).plan();
      GroupTally& tally = tallies[{layer.family->name, group->what}];
      tally.layers += 1;
      if (outcome.applies) family_seen.insert(layer.family->name);
      if (!outcome.obstacle.empty()) {
        auto [entry, first] = tally.left_alone.try_emplace(outcome.obstacle, 0, prefix);
        entry->second.first += 1;
        continue;
      }
      tally.permuted += 1;
      for (auto& [index, rewrite] : outcome.rewrites) {
        rewrites[index] = std::move(rewrite);
        rewritten = true;
      }
    }
  }
  if (family_seen.empty()) {
    plan.notes.push_back(
        "weight variation: no GPT-2, BERT or Llama/Mistral/Qwen layers recognized; layout variation only");
    return plan;
  }
  for (const auto& [key, tally] : tallies) {
    const auto& [family, what] = key;
    if (!family_seen.contains(family)) continue;
    plan.notes.push_back("weight variation (" + std::string(family) + "): " + std::string(what) + " permuted in " +
                         std::to_string(tally.permuted) + " of " + std::to_string(tally.layers) + " layers");
    for (const auto& [reason, where] : tally.left_alone) {
      plan.notes.push_back("weight variation (" + std::string(family) + "): " + std::string(what) +
                           " left as is in " + std::to_string(where.first) + " layers (first " + where.second +
                           "): " + reason);
    }
  }
  if (rewritten) plan.rewrites = std::move(rewrites);
  return plan;
}

}  // namespace zoogate::mtd
