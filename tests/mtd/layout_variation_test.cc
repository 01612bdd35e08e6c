// Layout plans: valid and safe for the engine, the same for the same seed, different for others; and
// the engine writing an archive through one. Loading variants in PyTorch is test_variation.py's job.
#include <algorithm>
#include <set>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "cdr/pickle_writer.h"
#include "cdr/zip_reader.h"
#include "cdr/zip_writer.h"
#include "mtd/layout_variation.h"
#include "tests/mtd/state_dict_builder.h"

namespace zoogate::mtd {
namespace {

using ::testing::Contains;
using ::testing::HasSubstr;
using testing::StateDictBuilder;

VariationSettings settings_for(std::string scope, bool permute_weights = false) {
  VariationSettings settings;
  settings.secret = std::vector<uint8_t>(32, 5);
  settings.scope = std::move(scope);
  settings.artifact_digest.fill(0x42);
  settings.epoch = 3;
  settings.permute_weights = permute_weights;
  return settings;
}

std::unique_ptr<LayoutVariation> variation_for(std::string scope, bool permute_weights = false) {
  auto variation = make_variation(settings_for(std::move(scope), permute_weights));
  EXPECT_TRUE(variation) << variation.error().describe();
  return std::move(*variation);
}

cdr::ValueTree small_model(StateDictBuilder& model, int tensors) {
  for (int i = 0; i < tensors; ++i) model.add("layer" + std::to_string(i) + ".weight", {4, 2});
  return model.tree();
}

bool is_safe_name(const std::string& name) {
  return !name.empty() && name.size() <= 64 && std::all_of(name.begin(), name.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-';
  });
}

TEST(LayoutVariation, PlansAreValidPermutationsWithUniqueSafeNames) {
  StateDictBuilder model;
  const cdr::ValueTree tree = small_model(model, 50);
  const auto storages = StateDictBuilder::storages_of(tree);
  auto plan = variation_for("alice")->plan(tree, storages);
  ASSERT_TRUE(plan) << plan.error().describe();
  EXPECT_TRUE(is_safe_name(plan->archive_folder)) << plan->archive_folder;
  EXPECT_NE(plan->pickle_seed, 0u);
  ASSERT_EQ(plan->storage_order.size(), 50u);
  std::vector<size_t> sorted = plan->storage_order;
  std::sort(sorted.begin(), sorted.end());
  for (size_t i = 0; i < sorted.size(); ++i) ASSERT_EQ(sorted[i], i);
  EXPECT_FALSE(std::is_sorted(plan->storage_order.begin(), plan->storage_order.end()));
  ASSERT_EQ(plan->storage_keys.size(), 50u);
  std::set<std::string> keys(plan->storage_keys.begin(), plan->storage_keys.end());
  EXPECT_EQ(keys.size(), 50u);
  for (const std::string& key : plan->storage_keys) {
    ASSERT_TRUE(std::all_of(key.begin(), key.end(), [](char c) { return c >= '0' && c <= '9'; })) << key;
    EXPECT_LT(std::stoul(key), 200u);  // drawn below four times the storage count
  }
  EXPECT_TRUE(plan->rewrites.empty());  // weight variation is opt-in
  EXPECT_THAT(plan->notes, Contains(HasSubstr("seed id " + variation_for("alice")->seed_id())));
}

TEST(LayoutVariation, SameSeedSamePlanAndOtherSeedsDiffer) {
  StateDictBuilder model;
  const cdr::ValueTree tree = small_model(model, 20);
  const auto storages = StateDictBuilder::storages_of(tree);
  auto first = *variation_for("alice")->plan(tree, storages);
  auto again = *variation_for("alice")->plan(tree, storages);
  EXPECT_EQ(first.archive_folder, again.archive_folder);
  EXPECT_EQ(first.storage_keys, again.storage_keys);
  EXPECT_EQ(first.storage_order, again.storage_order);
  EXPECT_EQ(first.pickle_seed, again.pickle_seed);

  std::set<std::vector<std::string>> keys;
  std::set<std::vector<size_t>> orders;
  std::set<uint64_t> pickle_seeds;
  for (int client = 0; client < 20; ++client) {
    auto plan = *variation_for("client-" + std::to_string(client))->plan(tree, storages);
    keys.insert(plan.storage_keys);
    orders.insert(plan.storage_order);
    pickle_seeds.insert(plan.pickle_seed);
  }
  EXPECT_EQ(keys.size(), 20u);
  EXPECT_EQ(orders.size(), 20u);
  EXPECT_EQ(pickle_seeds.size(), 20u);
}

// A rebuild that follows a download hashes its output front to back, so a storage may only move
// within its window of the arrival order: otherwise the hash would wait for the last byte.
TEST(LayoutVariation, StoragesMoveOnlyWithinTheirWindowOfArrival) {
  StateDictBuilder model;
  const size_t count = 5 * kStorageOrderWindow + 3;  // a short last window too
  const cdr::ValueTree tree = small_model(model, static_cast<int>(count));
  const auto storages = StateDictBuilder::storages_of(tree);
  // The keys ("s" and a node number) arrive in text order, unlike their first references.
  std::vector<std::string> keys;
  for (const cdr::StorageInfo& storage : storages) {
    keys.push_back(std::get<cdr::StorageRefValue>(tree.at(storage.node)).key);
  }
  const std::vector<size_t> arriving = cdr::torch_save_order(keys);
  std::vector<size_t> arrival_of(count);
  for (size_t rank = 0; rank < count; ++rank) arrival_of[arriving[rank]] = rank;
  ASSERT_NE(arrival_of[4], 4u);
  std::set<std::vector<size_t>> first_windows;
  std::set<std::vector<size_t>> last_windows;
  for (int client = 0; client < 20; ++client) {
    auto plan = *variation_for("client-" + std::to_string(client))->plan(tree, storages);
    ASSERT_EQ(plan.storage_order.size(), count);
    for (size_t position = 0; position < count; ++position) {
      const size_t arrival = arrival_of[plan.storage_order[position]];
      EXPECT_EQ(arrival / kStorageOrderWindow, position / kStorageOrderWindow)
          << "position " << position << " holds the storage that arrives " << arrival << "th";
    }
    first_windows.emplace(plan.storage_order.begin(), plan.storage_order.begin() + kStorageOrderWindow);
    last_windows.emplace(plan.storage_order.end() - 3, plan.storage_order.end());
  }
  // The first window is shuffled, and so is the short last one (3! = 6 orders among 20 clients).
  EXPECT_EQ(first_windows.size(), 20u);
  EXPECT_GT(last_windows.size(), 3u);
}

TEST(LayoutVariation, PlainPicklesWithoutStoragesGetAMemoSeedOnly) {
  cdr::ValueTree tree;
  tree.root = tree.add(cdr::ListValue{});
  auto plan = variation_for("alice", /*permute_weights=*/true)->plan(tree, {});
  ASSERT_TRUE(plan);
  EXPECT_NE(plan->pickle_seed, 0u);
  EXPECT_TRUE(plan->storage_keys.empty());
  EXPECT_TRUE(plan->storage_order.empty());
  EXPECT_TRUE(plan->rewrites.empty());
}

TEST(LayoutVariation, RefusesAShortSecret) {
  VariationSettings settings = settings_for("alice");
  settings.secret.resize(kMinSecretBytes - 1);
  auto variation = make_variation(settings);
  ASSERT_FALSE(variation);
  EXPECT_EQ(variation.error().code, ErrorCode::kInvalidArgument);
}

TEST(LayoutVariation, TheEngineWritesThePlannedLayout) {
  StateDictBuilder model;
  const cdr::ValueTree tree = small_model(model, 5);
  MemorySink input;
  {
    cdr::ZipWriter zip(input);
    MemorySink pickle;
    ASSERT_TRUE(cdr::write_pickle(tree, cdr::PickleWriteOptions{}, pickle));
    ASSERT_TRUE(zip.begin_entry("ckpt/data.pkl", pickle.bytes().size()));
    ASSERT_TRUE(zip.write(pickle.bytes()));
    ASSERT_TRUE(zip.end_entry());
    for (const auto& storage : StateDictBuilder::storages_of(tree)) {
      const std::string& key = std::get<cdr::StorageRefValue>(tree.at(storage.node)).key;
      std::vector<uint8_t> bytes(storage.size, static_cast<uint8_t>(storage.node));
      ASSERT_TRUE(zip.begin_entry("ckpt/data/" + key, bytes.size()));
      ASSERT_TRUE(zip.write(bytes));
      ASSERT_TRUE(zip.end_entry());
    }
    ASSERT_TRUE(zip.finish());
  }
  auto variation = variation_for("alice");
  auto plan = *variation->plan(tree, StateDictBuilder::storages_of(tree));
  cdr::SanitizeOptions options;
  options.layout = variation.get();
  MemorySource source(input.bytes());
  MemorySink output;
  cdr::SanitizeReport report = cdr::sanitize(source, cdr::Policy{}, options, output);
  ASSERT_EQ(report.verdict, cdr::Verdict::kClean) << report.error->describe();

  MemorySource written(output.bytes());
  auto directory = cdr::read_zip_directory(written, cdr::ZipLimits{});
  ASSERT_TRUE(directory) << directory.error().describe();
  EXPECT_EQ(directory->top_folder(), plan.archive_folder);
  std::vector<std::string> storage_entries;
  for (const auto& entry : directory->entries()) {
    if (entry.name.starts_with(plan.archive_folder + "/data/")) storage_entries.push_back(entry.name);
  }
  std::vector<std::string> expected;
  for (size_t index : plan.storage_order) expected.push_back(plan.archive_folder + "/data/" + plan.storage_keys[index]);
  EXPECT_EQ(storage_entries, expected);
  EXPECT_THAT(report.notes, Contains(HasSubstr("layout variation: seed id " + variation->seed_id())));
}

}  // namespace
}  // namespace zoogate::mtd
