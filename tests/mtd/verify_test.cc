// Verification: an untouched artifact verifies, and every kind of tampering is detected and named
// down to the tensor and the field.
#include "mtd/verify.h"

#include <algorithm>
#include <map>

#include <gtest/gtest.h>

#include "common/encoding.h"
#include "mtd/dsse.h"
#include "tests/mtd/integrity_support.h"

namespace zoogate::mtd {
namespace {

using testing::archive_of;
using testing::Bytes;
using testing::entry_named;
using testing::new_key;
using testing::sanitize_bytes;
using testing::Sanitized;
using testing::TemporaryFolder;
using testing::StateDictBuilder;

// Changes to the reference model. Storage contents follow the builder's node numbering, which none
// of these changes shifts for the tensors they leave alone.
struct Tweak {
  std::map<std::string, std::string> renamed;
  std::string dropped;
  bool added = false;
  std::string half_precision;
  std::map<std::string, std::vector<int64_t>> reshaped;
  bool extra_key = false;  // a non-tensor entry at the root: a pickle-level change only
};

const std::vector<std::pair<std::string, std::vector<int64_t>>> kTensors = {{"model.embed.weight", {4, 3}},
                                                                            {"model.layers.0.weight", {3, 3}},
                                                                            {"model.layers.0.bias", {3}},
                                                                            {"model.layers.1.weight", {3, 3}},
                                                                            {"lm_head.weight", {2, 3}}};

cdr::ValueTree model(const Tweak& tweak = {}) {
  StateDictBuilder builder;
  for (const auto& [name, shape] : kTensors) {
    auto renamed = tweak.renamed.find(name);
    auto reshaped = tweak.reshaped.find(name);
    builder.add(renamed == tweak.renamed.end() ? name : renamed->second,
                reshaped == tweak.reshaped.end() ? shape : reshaped->second,
                name == tweak.half_precision ? cdr::StorageType::kHalf : cdr::StorageType::kFloat);
  }
  if (tweak.added) builder.add("model.layers.2.weight", {3, 3});
  cdr::ValueTree tree = builder.tree();
  auto& root = std::get<cdr::OrderedDictValue>(tree.at(tree.root));
  std::erase_if(root.items,
                [&](const auto& item) { return std::get<cdr::StrValue>(tree.at(item.first)).utf8 == tweak.dropped; });
  if (tweak.extra_key) root.items.emplace_back(tree.add(cdr::StrValue{"epoch"}), tree.add(cdr::IntValue{3, ""}));
  return tree;
}

class VerifyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    original_ = sanitize_bytes(archive_of(model()));
    path_ = folder_.write("model.pt", original_.output);
    signed_file_ = testing::sanitized_file_manifest(original_);
    auto signed_manifest = sign_manifest(ArtifactManifest{"model.pt", {signed_file_}}, key_);
    ASSERT_TRUE(signed_manifest) << signed_manifest.error().describe();
    signed_manifest_ = *signed_manifest;
  }

  VerifyOutcome verify(const std::string& signed_manifest) {
    auto outcome = verify_artifact(path_, signed_manifest, key_.public_key());
    EXPECT_TRUE(outcome) << outcome.error().describe();
    return outcome ? *outcome : VerifyOutcome{};
  }
  VerifyOutcome verify() { return verify(signed_manifest_); }

  // Replaces the served file by zoogate's rebuild of the model with `change` applied.
  template <typename Change>
  void serve_instead(Change change) {
    Tweak tweak;
    change(tweak);
    folder_.write("model.pt", sanitize_bytes(archive_of(model(tweak))).output);
  }

  void flip_bit(uint64_t offset) {
    Bytes changed = original_.output;
    changed[static_cast<size_t>(offset)] ^= 0x10;
    folder_.write("model.pt", changed);
  }

  const TensorEntry& signed_tensor(const std::string& name) const {
    auto found = std::find_if(signed_file_.facts.tensors.begin(), signed_file_.facts.tensors.end(),
                              [&](const TensorEntry& tensor) { return tensor.name == name; });
    EXPECT_NE(found, signed_file_.facts.tensors.end()) << name;
    return *found;
  }

  TemporaryFolder folder_;
  PrivateKey key_ = new_key();
  Sanitized original_;
  std::string path_;
  std::string signed_manifest_;
  FileManifest signed_file_;
};

bool names(const VerifyOutcome& outcome, const std::string& item, const std::string& field) {
  return std::any_of(outcome.differences.begin(), outcome.differences.end(), [&](const Difference& difference) {
    return difference.item == item && difference.field == field;
  });
}

std::string all_of(const VerifyOutcome& outcome) {
  std::string text;
  for (const auto& difference : outcome.differences) text += difference.describe() + "\n";
  return text;
}

std::vector<std::string> changed_tensors(const VerifyOutcome& outcome) {
  std::vector<std::string> items;
  for (const auto& difference : outcome.differences) {
    if (difference.item.starts_with("tensor ")) items.push_back(difference.item.substr(7) + ":" + difference.field);
  }
  return items;
}

TEST_F(VerifyTest, UntouchedFileIsIntact) {
  VerifyOutcome outcome = verify();
  EXPECT_TRUE(outcome.intact()) << all_of(outcome);
  EXPECT_EQ(outcome.key_id, key_.public_key().key_id());
  ASSERT_TRUE(outcome.manifest);
  EXPECT_EQ(outcome.manifest->files[0].facts.tensors.size(), kTensors.size());
}

TEST_F(VerifyTest, OneFlippedBitNamesTheTensorItLandedIn) {
  struct Case {
    std::string tensor;
    bool last_byte;
  };
  for (const Case& flip :
       {Case{"model.embed.weight", false}, Case{"model.embed.weight", true}, Case{"model.layers.0.bias", false},
        Case{"model.layers.1.weight", true}, Case{"lm_head.weight", false}, Case{"lm_head.weight", true}}) {
    const TensorEntry& tensor = signed_tensor(flip.tensor);
    cdr::ZipEntry record = entry_named(original_.output, tensor.record);
    flip_bit(record.data_offset + (flip.last_byte ? record.size - 1 : 0));
    VerifyOutcome outcome = verify();
    EXPECT_FALSE(outcome.intact());
    EXPECT_TRUE(names(outcome, "file", "sha256")) << all_of(outcome);
    EXPECT_TRUE(names(outcome, "record " + tensor.record, "sha256")) << all_of(outcome);
    EXPECT_EQ(changed_tensors(outcome), std::vector<std::string>{flip.tensor + ":sha256"}) << all_of(outcome);
  }
}

TEST_F(VerifyTest, RenamedAddedAndRemovedTensorsAreNamed) {
  serve_instead([](Tweak& t) { t.renamed = {{"model.layers.1.weight", "model.layers.1.weight_evil"}}; });
  VerifyOutcome renamed = verify();
  EXPECT_EQ(changed_tensors(renamed), std::vector<std::string>{"model.layers.1.weight:renamed"}) << all_of(renamed);
  auto difference = std::find_if(renamed.differences.begin(), renamed.differences.end(),
                                 [](const Difference& d) { return d.field == "renamed"; });
  ASSERT_NE(difference, renamed.differences.end());
  EXPECT_EQ(difference->found, "model.layers.1.weight_evil");

  serve_instead([](Tweak& t) { t.added = true; });
  VerifyOutcome added = verify();
  EXPECT_EQ(changed_tensors(added), std::vector<std::string>{"model.layers.2.weight:extra"}) << all_of(added);
  EXPECT_TRUE(names(added, "record archive/data/5", "extra")) << all_of(added);

  serve_instead([](Tweak& t) { t.dropped = "model.layers.0.bias"; });
  VerifyOutcome removed = verify();
  // The rebuild numbers storages afresh, so later tensors moved to other records; their bytes did not change.
  EXPECT_EQ(changed_tensors(removed), (std::vector<std::string>{"model.layers.1.weight:record", "lm_head.weight:record",
                                                                "model.layers.0.bias:missing"}))
      << all_of(removed);
  EXPECT_TRUE(names(removed, "architecture", "fingerprint"));
}

TEST_F(VerifyTest, DtypeAndShapeChangesAreNamed) {
  serve_instead([](Tweak& t) { t.half_precision = "model.layers.0.weight"; });
  VerifyOutcome retyped = verify();
  EXPECT_TRUE(names(retyped, "tensor model.layers.0.weight", "dtype")) << all_of(retyped);
  EXPECT_TRUE(names(retyped, "tensor model.layers.0.weight", "sha256")) << all_of(retyped);
  EXPECT_TRUE(names(retyped, "architecture", "fingerprint"));

  // Same bytes, read as another shape: only the metadata differs.
  serve_instead([](Tweak& t) { t.reshaped = {{"model.embed.weight", {3, 4}}}; });
  VerifyOutcome reshaped = verify();
  EXPECT_EQ(changed_tensors(reshaped),
            (std::vector<std::string>{"model.embed.weight:shape", "model.embed.weight:stride"}))
      << all_of(reshaped);
  EXPECT_TRUE(names(reshaped, "structure", "canonical_pickle"));
  EXPECT_TRUE(names(reshaped, "architecture", "fingerprint"));
}

TEST_F(VerifyTest, PickleLevelChangeKeepsEveryTensorButNotTheStructure) {
  serve_instead([](Tweak& t) { t.extra_key = true; });
  VerifyOutcome outcome = verify();
  EXPECT_FALSE(outcome.intact());
  EXPECT_TRUE(changed_tensors(outcome).empty()) << all_of(outcome);
  EXPECT_TRUE(names(outcome, "file", "sha256"));
  EXPECT_TRUE(names(outcome, "record archive/data.pkl", "sha256"));
  EXPECT_TRUE(names(outcome, "structure", "canonical_pickle"));
  EXPECT_TRUE(names(outcome, "structure", "fingerprint"));
  EXPECT_FALSE(names(outcome, "architecture", "fingerprint"));
}

TEST_F(VerifyTest, AGlobalAddedByTamperingIsNamed) {
  cdr::ValueTree tree = model();
  auto& root = std::get<cdr::OrderedDictValue>(tree.at(tree.root));
  root.items.emplace_back(tree.add(cdr::StrValue{"hook"}), tree.add(cdr::GlobalValue{"os", "system"}));
  folder_.write("model.pt", archive_of(tree));  // written by the attacker, not by zoogate
  VerifyOutcome outcome = verify();
  auto format = std::find_if(outcome.differences.begin(), outcome.differences.end(),
                             [](const Difference& d) { return d.item == "file" && d.field == "format"; });
  ASSERT_NE(format, outcome.differences.end()) << all_of(outcome);
  EXPECT_EQ(format->expected, "torch-zip");
  EXPECT_NE(format->found.find("os.system"), std::string::npos) << format->found;

  // A global the built-in allowlist knows is a structure difference of a still readable file.
  tree = model();
  auto& same_root = std::get<cdr::OrderedDictValue>(tree.at(tree.root));
  same_root.items.emplace_back(tree.add(cdr::StrValue{"dtype"}), tree.add(cdr::GlobalValue{"torch", "float16"}));
  folder_.write("model.pt", sanitize_bytes(archive_of(tree)).output);
  outcome = verify();
  auto globals = std::find_if(outcome.differences.begin(), outcome.differences.end(),
                              [](const Difference& d) { return d.item == "structure" && d.field == "globals"; });
  ASSERT_NE(globals, outcome.differences.end()) << all_of(outcome);
  EXPECT_EQ(globals->found, "+torch.float16");
  EXPECT_TRUE(changed_tensors(outcome).empty()) << all_of(outcome);
}

TEST_F(VerifyTest, EditedManifestAndOtherKeysFailTheSignature) {
  nlohmann::json bundle = nlohmann::json::parse(signed_manifest_);
  auto payload = from_base64(bundle["dsseEnvelope"]["payload"].get<std::string>());
  std::string statement(payload->begin(), payload->end());
  const std::string digest = to_hex(signed_tensor("lm_head.weight").sha256);
  statement.replace(statement.find(digest), digest.size(), std::string(64, '0'));
  bundle["dsseEnvelope"]["payload"] =
      to_base64(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(statement.data()), statement.size()));
  VerifyOutcome edited = verify(bundle.dump());
  ASSERT_EQ(edited.differences.size(), 1u) << all_of(edited);
  EXPECT_EQ(edited.differences[0].item, "manifest");
  EXPECT_EQ(edited.differences[0].field, "signature");
  EXPECT_FALSE(edited.manifest);

  auto other = sign_manifest(ArtifactManifest{"model.pt", {signed_file_}}, new_key());
  ASSERT_TRUE(other);
  VerifyOutcome foreign = verify(*other);
  ASSERT_EQ(foreign.differences.size(), 1u);
  EXPECT_EQ(foreign.differences[0].field, "signature");
  EXPECT_NE(foreign.differences[0].describe().find(key_.public_key().key_id()), std::string::npos);

  VerifyOutcome garbage = verify("{not json");
  ASSERT_EQ(garbage.differences.size(), 1u);
  EXPECT_EQ(garbage.differences[0].field, "malformed");
}

TEST_F(VerifyTest, UnreadableArtifactIsAnErrorNotAVerdict) {
  auto outcome = verify_artifact(folder_.file("gone.pt"), signed_manifest_, key_.public_key());
  ASSERT_FALSE(outcome);
  EXPECT_EQ(outcome.error().code, ErrorCode::kNotFound);
}

TEST(VerifyFolder, EachFileIsCheckedAndMissingOrExtraFilesAreNamed) {
  TemporaryFolder folder;
  PrivateKey key = new_key();
  folder.write("snapshot/model.pt", sanitize_bytes(archive_of(model())).output);
  folder.write("snapshot/config.json", R"({"model_type": "llama"})");
  folder.write("snapshot/tokenizer/vocab.txt", "a\nb\n");
  folder.write("snapshot/.gitattributes", "*.pt filter=lfs");
  const std::string root = folder.file("snapshot");
  auto manifest = manifest_for_path(root, cdr::Policy{});
  ASSERT_TRUE(manifest) << manifest.error().describe();
  auto signed_manifest = sign_manifest(*manifest, key);
  ASSERT_TRUE(signed_manifest);
  // The signed manifest kept inside the folder is not part of it.
  folder.write("snapshot/model.sig", *signed_manifest);
  auto check = [&] {
    auto outcome = verify_artifact(root, *signed_manifest, key.public_key(), VerifyOptions{{"model.sig"}});
    EXPECT_TRUE(outcome) << outcome.error().describe();
    return outcome ? *outcome : VerifyOutcome{};
  };
  VerifyOutcome intact = check();
  EXPECT_TRUE(intact.intact()) << all_of(intact);

  folder.write("snapshot/config.json", R"({"model_type": "llama", "auto_map": "evil.Model"})");
  VerifyOutcome config_changed = check();
  EXPECT_TRUE(std::any_of(config_changed.differences.begin(), config_changed.differences.end(),
                          [](const Difference& d) { return d.file == "config.json" && d.field == "sha256"; }))
      << all_of(config_changed);
  EXPECT_TRUE(std::any_of(config_changed.differences.begin(), config_changed.differences.end(),
                          [](const Difference& d) { return d.file == "model.pt" && d.item == "architecture"; }))
      << all_of(config_changed);
  folder.write("snapshot/config.json", R"({"model_type": "llama"})");

  std::filesystem::remove(folder.path() / "snapshot/tokenizer/vocab.txt");
  folder.write("snapshot/extra.py", "import os");
  VerifyOutcome changed = check();
  EXPECT_EQ(
      changed.differences,
      (std::vector<Difference>{
          Difference{"tokenizer/vocab.txt", "file", "missing", to_hex(Sha256::of(std::string_view("a\nb\n"))), ""},
          Difference{"extra.py", "file", "extra", "", to_hex(Sha256::of(std::string_view("import os")))}}));
  EXPECT_EQ(changed.differences[0].describe(),
            "tokenizer/vocab.txt: file: missing (signed " + to_hex(Sha256::of(std::string_view("a\nb\n"))) + ")");
}

}  // namespace
}  // namespace zoogate::mtd
