#include "mtd/layout_variation.h"

#include <algorithm>
#include <array>
#include <string>
#include <string_view>
#include <utility>

#include "mtd/seeded_random.h"
#include "mtd/weight_permutation.h"

namespace zoogate::mtd {
namespace {

// Stems that torch.save gives the folder inside its archive (the file name without extension).
constexpr std::array<std::string_view, 12> kFolderStems = {
    "archive", "model", "pytorch_model", "checkpoint", "weights", "state_dict",
    "ckpt",    "best",  "last",          "export",     "model_final", "snapshot"};

// Record names are numbers below kRecordNameSpread * count: the storage at position p of a seeded
// permutation gets a number in [kRecordNameSpread * p, kRecordNameSpread * (p + 1)), so names are
// distinct without a set, and neither their order nor their values follow the original numbering.
constexpr uint64_t kRecordNameSpread = 4;

// Why windows of the arrival order rather than one shuffle of all: a rebuild that follows a download
// can only hash the front of its output that is complete, so under a full shuffle most of the file is
// hashed after its last byte has arrived, a wait that grows with the file (0.4 s per GiB). With
// windows the hash trails the download by one window at most. The storages arrive in torch.save's
// order of their names in the input.
std::vector<size_t> storage_order(const VariantSeed& seed, const cdr::ValueTree& tree,
                                  const std::vector<cdr::StorageInfo>& storages) {
  std::vector<std::string> input_names;
  for (const cdr::StorageInfo& storage : storages) {
    input_names.push_back(std::get<cdr::StorageRefValue>(tree.at(storage.node)).key);
  }
  const std::vector<size_t> arriving = cdr::torch_save_order(input_names);
  SeededRandom random(seed.sub_seed(SeedPurpose::kRecordOrder));
  std::vector<size_t> order;
  order.reserve(arriving.size());
  for (size_t window_start = 0; window_start < arriving.size(); window_start += kStorageOrderWindow) {
    const auto window = static_cast<uint32_t>(std::min(kStorageOrderWindow, arriving.size() - window_start));
    for (uint32_t offset : random.permutation(window)) order.push_back(arriving[window_start + offset]);
  }
  return order;
}

std::string folder_name(const VariantSeed& seed) {
  SeededRandom random(seed.sub_seed(SeedPurpose::kFolderName));
  std::string_view stem = kFolderStems[random.below(kFolderStems.size())];
  return std::string(stem) + "_" + std::to_string(random.below(10'000));
}

std::vector<std::string> record_names(const VariantSeed& seed, size_t count) {
  SeededRandom random(seed.sub_seed(SeedPurpose::kRecordNames));
  std::vector<uint32_t> slots = random.permutation(static_cast<uint32_t>(count));
  std::vector<std::string> names;
  names.reserve(count);
  for (uint32_t slot : slots) names.push_back(std::to_string(slot * kRecordNameSpread + random.below(kRecordNameSpread)));
  return names;
}

}  // namespace

LayoutVariation::LayoutVariation(VariantSeed seed, bool permute_weights, std::optional<nlohmann::json> model_config)
    : seed_(seed), permute_weights_(permute_weights), model_config_(std::move(model_config)) {}

Result<cdr::LayoutPlan> LayoutVariation::plan(const cdr::ValueTree& tree,
                                              const std::vector<cdr::StorageInfo>& storages) const {
  // Storage counts are bounded by the policy's max_tensor_count, far below 2^32; checked anyway
  // because permutations index with 32 bits.
  if (storages.size() > UINT32_MAX / kRecordNameSpread) {
    return fail(ErrorCode::kLimitExceeded, "too many storages for layout variation");
  }
  cdr::LayoutPlan plan;
  plan.archive_folder = folder_name(seed_);
  plan.storage_keys = record_names(seed_, storages.size());
  plan.storage_order = storage_order(seed_, tree, storages);
  SeededRandom memo_random(seed_.sub_seed(SeedPurpose::kPickleMemo));
  plan.pickle_seed = memo_random.next() | 1;  // never 0, which would mean the canonical memo numbering
  plan.notes.push_back("layout variation: seed id " + seed_.id() + ", archive folder " + plan.archive_folder + ", " +
                       std::to_string(storages.size()) + " storage records renamed and reordered");
  if (permute_weights_) {
    WeightPermutationPlan weights =
        plan_weight_permutations(tree, storages, model_config_ ? &*model_config_ : nullptr, seed_);
    plan.rewrites = std::move(weights.rewrites);
    plan.notes.insert(plan.notes.end(), weights.notes.begin(), weights.notes.end());
  }
  return plan;
}

Result<std::unique_ptr<LayoutVariation>> make_variation(const VariationSettings& settings) {
  auto seed = VariantSeed::derive(settings.secret, settings.scope, settings.artifact_digest, settings.epoch);
  if (!seed) return tl::unexpected(seed.error());
  return std::make_unique<LayoutVariation>(*seed, settings.permute_weights, settings.model_config);
}

}  // namespace zoogate::mtd
