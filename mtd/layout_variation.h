// Layout variation: the cdr::LayoutPlanner through which MTD makes each served variant's bytes differ.
//
// From one VariantSeed it chooses the archive folder name (a plausible torch.save-style stem with a
// number, "checkpoint_4821"), the storage record names (distinct numbers, as torch.save writes them,
// drawn from a range four times the storage count), the order in which the storages are written
// (shuffled within windows of storages that arrive one after the other, so that a rebuild following a
// download can hash its output as it goes), the pickle writer's memo seed, and, when enabled,
// function-preserving weight permutations (weight_permutation.h). The loaded model is the same for
// every seed; with weight variation it computes the same function. Each choice draws from its own
// sub-seed, so the same seed always gives the same plan, and hence the same bytes.
//
// Thread safety: a LayoutVariation is immutable after construction; plan() may run on many threads.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cdr/sanitize.h"
#include "common/error.h"
#include "common/sha256.h"
#include "mtd/variant_seed.h"

namespace zoogate::mtd {

// Storages are reordered within windows of this many that arrive one after the other
// (cdr::torch_save_order of their names in the input): each full window has 8! = 40,320 orders (15 bits of variation),
// on top of the record names, which vary over the whole file.
inline constexpr size_t kStorageOrderWindow = 8;

// Everything that decides which variant a client gets, and how far variation goes.
struct VariationSettings {
  std::vector<uint8_t> secret;       // the deployment's variation secret (load_secret), >= kMinSecretBytes
  std::string scope;                 // who is served: user, client certificate, address, or the deployment
  Sha256::Digest artifact_digest{};  // SHA-256 of the upstream file (SanitizeReport::input_sha256)
  uint64_t epoch = 0;
  bool permute_weights = false;      // opt-in per policy: weight variation on top of layout variation
  std::optional<nlohmann::json> model_config;  // the repository's config.json, when it has one
};

class LayoutVariation final : public cdr::LayoutPlanner {
 public:
  LayoutVariation(VariantSeed seed, bool permute_weights, std::optional<nlohmann::json> model_config);

  Result<cdr::LayoutPlan> plan(const cdr::ValueTree& tree,
                               const std::vector<cdr::StorageInfo>& storages) const override;

  // The public name of the seed, for the manifest and for `zoogate trace` (VariantSeed::id).
  std::string seed_id() const { return seed_.id(); }

 private:
  VariantSeed seed_;
  bool permute_weights_;
  std::optional<nlohmann::json> model_config_;
};

// Derives the seed from the settings and returns the planner to put in SanitizeOptions::layout.
// Fails (kInvalidArgument) when the secret is shorter than kMinSecretBytes.
Result<std::unique_ptr<LayoutVariation>> make_variation(const VariationSettings& settings);

}  // namespace zoogate::mtd
