// Weight variation: function-preserving permutations of feed-forward hidden units and attention heads.
//
// Within one transformer layer, the hidden units of the feed-forward network can be put in any order
// as long as the weights that produce them (rows of the up projection) and the weights that consume
// them (columns of the down projection) move together; likewise whole attention heads, as long as the
// query, key, value and output projections move together. The model computes the same function up to
// float rounding, but its weight bytes differ per variant.
//
// Recognized layer layouts (tensor names as Hugging Face transformers saves them, found anywhere in
// nested dicts of the checkpoint, so "model.", "state_dict." or "module." prefixes are fine):
//   GPT-2   h.N.mlp.c_fc/c_proj (Conv1D: weight is [in, out]), h.N.attn.c_attn (fused q|k|v) and
//           h.N.attn.c_proj;
//   BERT    encoder.layer.N.intermediate.dense/output.dense and encoder.layer.N.attention.self.
//           {query,key,value}/attention.output.dense;
//   Llama, Mistral, Qwen  layers.N.mlp.{gate,up,down}_proj and layers.N.self_attn.{q,k,v,o}_proj
//           (biases too), with grouped-query attention: whole key/value groups move with their query
//           heads, and query heads also move within their group. RoPE acts inside a head, so moving
//           whole heads preserves it.
// A group of tensors (one layer's FFN, or its attention) is rewritten only when every tensor in it is
// the sole user of its storage, covers it fully in C order, has a float type and the expected shape,
// and no tensor the group does not know sits in its namespace (a new architecture that reuses the
// names with extra weights is left alone). Anything else leaves that group untouched and says why in
// the notes. Attention heads need the head count: from config.json (num_attention_heads / n_head,
// num_key_value_heads, head_dim, hidden_size / n_embd, checked against the shapes), or, without it,
// from per-head q_norm/k_norm weights (Qwen3) that state the head size; otherwise only FFN units move.
//
// Each group draws its permutation from its own stream, keyed by the seed and the layer's name, so a
// variant does not depend on which other groups could be permuted. A drawn permutation is never the
// identity, so every permuted group changes bytes.
//
// Pure and thread-safe: a function of its arguments.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cdr/sanitize.h"
#include "cdr/value.h"
#include "mtd/variant_seed.h"

namespace zoogate::mtd {

struct WeightPermutationPlan {
  // One slot per storage (by index into `storages`), or empty when nothing is permuted.
  std::vector<std::optional<cdr::StorageRewrite>> rewrites;
  std::vector<std::string> notes;  // what was permuted, what was left alone and why
};

// `model_config` is the repository's parsed config.json, or null when there is none.
WeightPermutationPlan plan_weight_permutations(const cdr::ValueTree& tree,
                                               const std::vector<cdr::StorageInfo>& storages,
                                               const nlohmann::json* model_config, const VariantSeed& seed);

}  // namespace zoogate::mtd
