// Weight permutation plans on synthetic state dicts: which tensors are rewritten, with which views,
// how heads and groups relate, and every reason a group is left alone. That the rewritten models
// compute the same function is checked in PyTorch by test_variation.py.
#include <map>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "mtd/weight_permutation.h"
#include "tests/mtd/state_dict_builder.h"

namespace zoogate::mtd {
namespace {

using ::testing::AllOf;
using ::testing::Contains;
using ::testing::HasSubstr;
using testing::StateDictBuilder;

VariantSeed test_seed(uint64_t epoch = 1) {
  return *VariantSeed::derive(std::vector<uint8_t>(32, 9), "tests", std::vector<uint8_t>(32, 1), epoch);
}

struct LlamaShape {
  int64_t hidden = 32;
  int64_t heads = 4;
  int64_t key_value_heads = 2;
  int64_t head_dim = 8;
  int64_t intermediate = 64;
  bool biases = false;
};

void add_llama_layer(StateDictBuilder& model, int layer, const LlamaShape& shape) {
  const std::string prefix = "model.layers." + std::to_string(layer) + ".";
  const int64_t q_rows = shape.heads * shape.head_dim;
  const int64_t kv_rows = shape.key_value_heads * shape.head_dim;
  model.add(prefix + "input_layernorm.weight", {shape.hidden});
  model.add(prefix + "self_attn.q_proj.weight", {q_rows, shape.hidden});
  model.add(prefix + "self_attn.k_proj.weight", {kv_rows, shape.hidden});
  model.add(prefix + "self_attn.v_proj.weight", {kv_rows, shape.hidden});
  if (shape.biases) {
    model.add(prefix + "self_attn.q_proj.bias", {q_rows});
    model.add(prefix + "self_attn.k_proj.bias", {kv_rows});
    model.add(prefix + "self_attn.v_proj.bias", {kv_rows});
  }
  model.add(prefix + "self_attn.o_proj.weight", {shape.hidden, q_rows});
  model.add(prefix + "post_attention_layernorm.weight", {shape.hidden});
  model.add(prefix + "mlp.gate_proj.weight", {shape.intermediate, shape.hidden});
  model.add(prefix + "mlp.up_proj.weight", {shape.intermediate, shape.hidden});
  model.add(prefix + "mlp.down_proj.weight", {shape.hidden, shape.intermediate});
}

const nlohmann::json kLlamaConfig = {
    {"model_type", "llama"}, {"num_attention_heads", 4}, {"num_key_value_heads", 2}, {"hidden_size", 32}};

// The plan's rewrites by tensor name (each tensor in these trees has a storage of its own).
struct NamedPlan {
  WeightPermutationPlan plan;
  std::map<std::string, cdr::StorageRewrite> rewrites;
};

NamedPlan plan_for(const cdr::ValueTree& tree, const nlohmann::json* config, const VariantSeed& seed = test_seed()) {
  const auto storages = StateDictBuilder::storages_of(tree);
  NamedPlan named{plan_weight_permutations(tree, storages, config, seed), {}};
  if (named.plan.rewrites.empty()) return named;
  EXPECT_EQ(named.plan.rewrites.size(), storages.size());
  const auto& root = std::get<cdr::OrderedDictValue>(tree.at(tree.root));
  for (const auto& [key, value] : root.items) {
    cdr::NodeId node = value;
    if (const auto* parameter = std::get_if<cdr::ParameterValue>(&tree.at(node))) node = parameter->tensor;
    const cdr::NodeId storage = std::get<cdr::TensorValue>(tree.at(node)).storage;
    for (size_t i = 0; i < storages.size(); ++i) {
      if (storages[i].node == storage && named.plan.rewrites[i]) {
        named.rewrites.emplace(std::get<cdr::StrValue>(tree.at(key)).utf8, *named.plan.rewrites[i]);
      }
    }
  }
  return named;
}

std::vector<uint64_t> dims(std::initializer_list<uint64_t> values) { return values; }

TEST(WeightPermutation, LlamaWithGroupedQueryAttentionMovesWholeGroups) {
  StateDictBuilder model;
  model.add("model.embed_tokens.weight", {100, 32});
  for (int layer = 0; layer < 2; ++layer) add_llama_layer(model, layer, LlamaShape{});
  const auto tree = model.tree();
  const NamedPlan named = plan_for(tree, &kLlamaConfig);

  for (const std::string layer : {"model.layers.0.", "model.layers.1."}) {
    const auto& gate = named.rewrites.at(layer + "mlp.gate_proj.weight");
    const auto& up = named.rewrites.at(layer + "mlp.up_proj.weight");
    const auto& down = named.rewrites.at(layer + "mlp.down_proj.weight");
    EXPECT_EQ(gate.shape, dims({64, 32}));
    EXPECT_EQ(gate.axis, 0u);
    EXPECT_EQ(down.shape, dims({32, 64, 1}));
    EXPECT_EQ(down.axis, 1u);
    EXPECT_EQ(up.source_index, gate.source_index);
    EXPECT_EQ(down.source_index, gate.source_index);

    const auto& q = named.rewrites.at(layer + "self_attn.q_proj.weight");
    const auto& o = named.rewrites.at(layer + "self_attn.o_proj.weight");
    EXPECT_EQ(q.shape, dims({4, 8 * 32}));
    EXPECT_EQ(o.shape, dims({32, 4, 8}));
    EXPECT_EQ(o.axis, 1u);
    EXPECT_EQ(o.source_index, q.source_index);
    // Key/value heads move only when the group order changed; when they do, k and v move together
    // and every query head still reads the key/value head of its own group.
    std::vector<uint32_t> kv_order = {0, 1};
    if (named.rewrites.contains(layer + "self_attn.k_proj.weight")) {
      const auto& k = named.rewrites.at(layer + "self_attn.k_proj.weight");
      EXPECT_EQ(k.shape, dims({2, 8 * 32}));
      EXPECT_EQ(named.rewrites.at(layer + "self_attn.v_proj.weight").source_index, k.source_index);
      kv_order = k.source_index;
    }
    for (uint32_t head = 0; head < 4; ++head) EXPECT_EQ(q.source_index[head] / 2, kv_order[head / 2]);
  }
  EXPECT_NE(named.rewrites.at("model.layers.0.mlp.gate_proj.weight").source_index,
            named.rewrites.at("model.layers.1.mlp.gate_proj.weight").source_index);
  EXPECT_FALSE(named.rewrites.contains("model.embed_tokens.weight"));
  EXPECT_FALSE(named.rewrites.contains("model.layers.0.input_layernorm.weight"));
  EXPECT_THAT(named.plan.notes, Contains(HasSubstr("(Llama/Mistral/Qwen): FFN units permuted in 2 of 2 layers")));
  EXPECT_THAT(named.plan.notes, Contains(HasSubstr("(Llama/Mistral/Qwen): attention heads permuted in 2 of 2 layers")));
}

TEST(WeightPermutation, QwenBiasesFollowTheirHeads) {
  StateDictBuilder model;
  add_llama_layer(model, 0, LlamaShape{.biases = true});
  const NamedPlan named = plan_for(model.tree(), &kLlamaConfig);
  const auto& q = named.rewrites.at("model.layers.0.self_attn.q_proj.weight");
  const auto& q_bias = named.rewrites.at("model.layers.0.self_attn.q_proj.bias");
  EXPECT_EQ(q_bias.shape, dims({4, 8}));
  EXPECT_EQ(q_bias.source_index, q.source_index);
}

TEST(WeightPermutation, WithoutConfigOnlyFfnUnitsMoveAndTheNotesSayWhy) {
  StateDictBuilder model;
  add_llama_layer(model, 0, LlamaShape{});
  const NamedPlan named = plan_for(model.tree(), nullptr);
  EXPECT_TRUE(named.rewrites.contains("model.layers.0.mlp.up_proj.weight"));
  EXPECT_FALSE(named.rewrites.contains("model.layers.0.self_attn.q_proj.weight"));
  EXPECT_THAT(named.plan.notes,
              Contains(AllOf(HasSubstr("attention heads left as is in 1 layers (first model.layers.0.)"),
                             HasSubstr("unknown without config.json"))));
}

TEST(WeightPermutation, PerHeadNormsGiveTheHeadSizeWithoutConfig) {
  StateDictBuilder model;
  add_llama_layer(model, 0, LlamaShape{});
  model.add("model.layers.0.self_attn.q_norm.weight", {8});
  model.add("model.layers.0.self_attn.k_norm.weight", {8});
  const NamedPlan named = plan_for(model.tree(), nullptr);
  EXPECT_EQ(named.rewrites.at("model.layers.0.self_attn.q_proj.weight").shape, dims({4, 8 * 32}));
  EXPECT_FALSE(named.rewrites.contains("model.layers.0.self_attn.q_norm.weight"));
}

TEST(WeightPermutation, NormsOverAllHeadsAreNotPerHead) {
  // OLMo-2 normalizes q over all heads at once: its q_norm has one weight per query row, which a
  // head permutation would have to move too. The layer's attention is left alone.
  StateDictBuilder model;
  add_llama_layer(model, 0, LlamaShape{});
  model.add("model.layers.0.self_attn.q_norm.weight", {32});
  model.add("model.layers.0.self_attn.k_norm.weight", {16});
  const NamedPlan named = plan_for(model.tree(), &kLlamaConfig);
  EXPECT_FALSE(named.rewrites.contains("model.layers.0.self_attn.q_proj.weight"));
  EXPECT_THAT(named.plan.notes, Contains(HasSubstr("self_attn.q_norm.weight is not shared by all heads")));
}

TEST(WeightPermutation, LeavesAGroupAloneWhenATensorSharesItsStorage) {
  StateDictBuilder model;
  add_llama_layer(model, 0, LlamaShape{});
  // Layer 1's gate and up projections are views of one storage.
  const std::string prefix = "model.layers.1.";
  model.add(prefix + "self_attn.q_proj.weight", {32, 32});
  model.add(prefix + "self_attn.k_proj.weight", {16, 32});
  model.add(prefix + "self_attn.v_proj.weight", {16, 32});
  cdr::NodeId o_proj = model.add(prefix + "self_attn.o_proj.weight", {32, 32});
  cdr::NodeId fused = model.add(prefix + "mlp.gate_proj.weight", {64, 32});
  model.add_view(prefix + "mlp.up_proj.weight", fused, {64, 32}, {32, 1}, 0);
  model.add(prefix + "mlp.down_proj.weight", {32, 64});
  // Layer 1's o_proj is also tied to a name outside the layer.
  model.add_alias("tied.o_proj", o_proj);
  const NamedPlan named = plan_for(model.tree(), &kLlamaConfig);
  EXPECT_TRUE(named.rewrites.contains("model.layers.0.mlp.gate_proj.weight"));
  EXPECT_TRUE(named.rewrites.contains("model.layers.0.self_attn.q_proj.weight"));
  EXPECT_FALSE(named.rewrites.contains("model.layers.1.mlp.gate_proj.weight"));
  EXPECT_FALSE(named.rewrites.contains("model.layers.1.mlp.down_proj.weight"));
  EXPECT_FALSE(named.rewrites.contains("model.layers.1.self_attn.q_proj.weight"));
  EXPECT_THAT(named.plan.notes, Contains(HasSubstr("FFN units left as is in 1 layers (first model.layers.1.): "
                                                   "mlp.gate_proj.weight shares its storage with another tensor")));
  EXPECT_THAT(named.plan.notes, Contains(HasSubstr("attention heads left as is in 1 layers (first model.layers.1.): "
                                                   "self_attn.o_proj.weight shares its storage")));
}

TEST(WeightPermutation, LeavesAGroupAloneWhenATensorIsAViewOrNotFloat) {
  StateDictBuilder model;
  add_llama_layer(model, 0, LlamaShape{});
  const std::string prefix = "model.layers.1.";
  model.add(prefix + "mlp.gate_proj.weight", {64, 32}, cdr::StorageType::kChar);
  model.add(prefix + "mlp.up_proj.weight", {64, 32});
  model.add(prefix + "mlp.down_proj.weight", {32, 64});
  // Layer 2's down projection is stored transposed; layer 3's is a part of a larger storage.
  for (int layer : {2, 3}) {
    const std::string other = "model.layers." + std::to_string(layer) + ".";
    model.add(other + "mlp.gate_proj.weight", {64, 32});
    model.add(other + "mlp.up_proj.weight", {64, 32});
  }
  model.add_over_storage("model.layers.2.mlp.down_proj.weight", {32, 64}, {1, 32}, 0, 32 * 64);
  model.add_over_storage("model.layers.3.mlp.down_proj.weight", {32, 64}, {64, 1}, 64, 32 * 64 + 64);
  const NamedPlan named = plan_for(model.tree(), &kLlamaConfig);
  EXPECT_TRUE(named.rewrites.contains("model.layers.0.mlp.up_proj.weight"));
  for (const char* layer : {"1", "2", "3"}) {
    EXPECT_FALSE(named.rewrites.contains(std::string("model.layers.") + layer + ".mlp.up_proj.weight"));
  }
  EXPECT_THAT(named.plan.notes, Contains(HasSubstr("mlp.gate_proj.weight is not a floating-point tensor")));
  EXPECT_THAT(named.plan.notes, Contains(HasSubstr("FFN units left as is in 2 layers (first model.layers.2.): "
                                                   "mlp.down_proj.weight does not cover its storage contiguously")));
}

TEST(WeightPermutation, TensorsItDoesNotKnowInTheNamespaceStopTheGroup) {
  StateDictBuilder model;
  add_llama_layer(model, 0, LlamaShape{});
  model.add("model.layers.0.mlp.down_proj.weight_scale", {32});
  const NamedPlan named = plan_for(model.tree(), &kLlamaConfig);
  EXPECT_FALSE(named.rewrites.contains("model.layers.0.mlp.up_proj.weight"));
  EXPECT_TRUE(named.rewrites.contains("model.layers.0.self_attn.q_proj.weight"));
  EXPECT_THAT(named.plan.notes, Contains(HasSubstr("unexpected tensor mlp.down_proj.weight_scale")));
}

TEST(WeightPermutation, ConfigThatContradictsTheWeightsIsNotTrusted) {
  StateDictBuilder model;
  add_llama_layer(model, 0, LlamaShape{});
  const nlohmann::json wrong = {{"num_attention_heads", 4}, {"hidden_size", 64}};
  const NamedPlan named = plan_for(model.tree(), &wrong);
  EXPECT_FALSE(named.rewrites.contains("model.layers.0.self_attn.q_proj.weight"));
  EXPECT_THAT(named.plan.notes, Contains(HasSubstr("hidden size 64 does not match the weights' 32")));
  // Wrong head counts show as shape mismatches.
  const nlohmann::json wrong_heads = {{"num_attention_heads", 8}, {"num_key_value_heads", 2}};
  const NamedPlan by_shape = plan_for(model.tree(), &wrong_heads);
  EXPECT_FALSE(by_shape.rewrites.contains("model.layers.0.self_attn.q_proj.weight"));
  EXPECT_THAT(by_shape.plan.notes, Contains(HasSubstr("self_attn.k_proj.weight has shape [16, 32], expected [8, 32]")));
}

TEST(WeightPermutation, Gpt2FusedAttentionAndConv1DWeights) {
  StateDictBuilder model;
  for (int layer = 0; layer < 2; ++layer) {
    const std::string prefix = "transformer.h." + std::to_string(layer) + ".";
    model.add(prefix + "attn.c_attn.weight", {32, 96});
    model.add(prefix + "attn.c_attn.bias", {96});
    model.add(prefix + "attn.c_proj.weight", {32, 32});
    model.add(prefix + "attn.c_proj.bias", {32});
    model.add(prefix + "attn.bias", {1, 1, 16, 16});
    model.add(prefix + "mlp.c_fc.weight", {32, 128});
    model.add(prefix + "mlp.c_fc.bias", {128});
    model.add(prefix + "mlp.c_proj.weight", {128, 32});
    model.add(prefix + "mlp.c_proj.bias", {32});
  }
  const nlohmann::json config = {{"model_type", "gpt2"}, {"n_head", 4}, {"n_embd", 32}};
  const NamedPlan named = plan_for(model.tree(), &config);
  const auto& c_attn = named.rewrites.at("transformer.h.0.attn.c_attn.weight");
  EXPECT_EQ(c_attn.shape, dims({32, 3, 4, 8}));
  EXPECT_EQ(c_attn.axis, 2u);
  const auto& c_attn_bias = named.rewrites.at("transformer.h.0.attn.c_attn.bias");
  EXPECT_EQ(c_attn_bias.shape, dims({3, 4, 8}));
  EXPECT_EQ(c_attn_bias.axis, 1u);
  EXPECT_EQ(c_attn_bias.source_index, c_attn.source_index);
  EXPECT_EQ(named.rewrites.at("transformer.h.0.attn.c_proj.weight").shape, dims({4, 8 * 32}));
  const auto& c_fc = named.rewrites.at("transformer.h.0.mlp.c_fc.weight");
  EXPECT_EQ(c_fc.shape, dims({32, 128, 1}));
  EXPECT_EQ(c_fc.axis, 1u);
  EXPECT_EQ(named.rewrites.at("transformer.h.0.mlp.c_proj.weight").shape, dims({128, 32}));
  EXPECT_FALSE(named.rewrites.contains("transformer.h.0.attn.bias"));
  EXPECT_FALSE(named.rewrites.contains("transformer.h.0.mlp.c_proj.bias"));
  EXPECT_THAT(named.plan.notes, Contains(HasSubstr("(GPT-2): attention heads permuted in 2 of 2 layers")));
}

TEST(WeightPermutation, Gpt2NamesWithLinearWeightsAreNotGpt2) {
  // GPT-Neo reuses mlp.c_fc/c_proj with nn.Linear weights ([out, in]) and has no fused c_attn.
  StateDictBuilder model;
  model.add("transformer.h.0.attn.attention.q_proj.weight", {32, 32});
  model.add("transformer.h.0.mlp.c_fc.weight", {128, 32});
  model.add("transformer.h.0.mlp.c_proj.weight", {32, 128});
  const NamedPlan named = plan_for(model.tree(), nullptr);
  EXPECT_TRUE(named.plan.rewrites.empty());
  EXPECT_THAT(named.plan.notes, Contains(HasSubstr("FFN units left as is in 1 layers (first transformer.h.0.): "
                                                   "no attn.c_attn.weight")));
}

TEST(WeightPermutation, BertRowsAndColumns) {
  StateDictBuilder model;
  const std::string prefix = "bert.encoder.layer.0.";
  for (const char* part : {"query", "key", "value"}) {
    model.add(prefix + "attention.self." + part + ".weight", {32, 32});
    model.add(prefix + "attention.self." + part + ".bias", {32});
  }
  model.add(prefix + "attention.output.dense.weight", {32, 32});
  model.add(prefix + "attention.output.dense.bias", {32});
  model.add(prefix + "attention.output.LayerNorm.weight", {32});
  model.add(prefix + "intermediate.dense.weight", {64, 32});
  model.add(prefix + "intermediate.dense.bias", {64});
  model.add(prefix + "output.dense.weight", {32, 64});
  model.add(prefix + "output.dense.bias", {32});
  model.add(prefix + "output.LayerNorm.weight", {32});
  const nlohmann::json config = {{"model_type", "bert"}, {"num_attention_heads", 4}, {"hidden_size", 32}};
  const NamedPlan named = plan_for(model.tree(), &config);
  EXPECT_EQ(named.rewrites.at(prefix + "attention.self.key.weight").shape, dims({4, 8 * 32}));
  EXPECT_EQ(named.rewrites.at(prefix + "attention.self.key.bias").shape, dims({4, 8}));
  EXPECT_EQ(named.rewrites.at(prefix + "attention.output.dense.weight").shape, dims({32, 4, 8}));
  EXPECT_EQ(named.rewrites.at(prefix + "intermediate.dense.weight").shape, dims({64, 32}));
  EXPECT_EQ(named.rewrites.at(prefix + "output.dense.weight").shape, dims({32, 64, 1}));
  EXPECT_FALSE(named.rewrites.contains(prefix + "output.dense.bias"));
  EXPECT_FALSE(named.rewrites.contains(prefix + "attention.output.LayerNorm.weight"));
}

TEST(WeightPermutation, UnknownArchitecturesGetLayoutVariationOnly) {
  StateDictBuilder model;
  model.add("conv1.weight", {16, 3, 3, 3});
  model.add("fc.weight", {10, 16});
  const NamedPlan named = plan_for(model.tree(), nullptr);
  EXPECT_TRUE(named.plan.rewrites.empty());
  EXPECT_THAT(named.plan.notes, Contains(HasSubstr("layout variation only")));
}

TEST(WeightPermutation, SameSeedSamePlanAndOtherSeedsDiffer) {
  StateDictBuilder model;
  add_llama_layer(model, 0, LlamaShape{});
  const auto tree = model.tree();
  const auto first = plan_for(tree, &kLlamaConfig, test_seed(1));
  const auto again = plan_for(tree, &kLlamaConfig, test_seed(1));
  const auto other = plan_for(tree, &kLlamaConfig, test_seed(2));
  const std::string up = "model.layers.0.mlp.up_proj.weight";
  EXPECT_EQ(first.rewrites.at(up).source_index, again.rewrites.at(up).source_index);
  EXPECT_NE(first.rewrites.at(up).source_index, other.rewrites.at(up).source_index);
}

}  // namespace
}  // namespace zoogate::mtd
