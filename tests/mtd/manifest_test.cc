// Manifests: what they record about a file, that the sanitize-time and the from-file computations
// agree, tensor naming, view digests, fingerprints, folders and the JSON form.
#include "mtd/manifest.h"

#include <functional>

#include <gtest/gtest.h>

#include "common/encoding.h"
#include "mtd/layout_variation.h"
#include "tests/mtd/integrity_support.h"

namespace zoogate::mtd {
namespace {

using testing::archive_of;
using testing::Bytes;
using testing::entry_named;
using testing::sanitize_bytes;
using testing::Sanitized;
using testing::TemporaryFolder;
using testing::StateDictBuilder;

// Plain tensors, a transposed view and a row slice of one storage, a tied weight and a float16 buffer.
cdr::ValueTree mixed_state_dict() {
  StateDictBuilder builder;
  cdr::NodeId embed = builder.add("model.embed_tokens.weight", {5, 4});
  builder.add("model.layers.0.mlp.up_proj.weight", {6, 4});
  cdr::NodeId base = builder.add("model.layers.0.attn.qkv", {3, 4});
  builder.add_view("model.layers.0.attn.qkv_t", base, {4, 3}, {1, 4});
  builder.add_view("model.layers.0.attn.k", base, {1, 4}, {4, 1}, 4);
  builder.add_alias("lm_head.weight", embed);
  builder.add("model.norm.running_mean", {4}, cdr::StorageType::kHalf);
  return builder.tree();
}

FileFacts facts_of_file(const Bytes& file, const cdr::Policy& policy = {}) {
  MemorySource source(file);
  auto facts = facts_from_file(source, policy);
  EXPECT_TRUE(facts) << facts.error().describe();
  return facts ? *facts : FileFacts{};
}

const TensorEntry& tensor_named(const FileFacts& facts, const std::string& name) {
  for (const auto& tensor : facts.tensors) {
    if (tensor.name == name) return tensor;
  }
  ADD_FAILURE() << "no tensor " << name;
  static const TensorEntry none;
  return none;
}

std::vector<std::string> names_of(const FileFacts& facts) {
  std::vector<std::string> names;
  for (const auto& tensor : facts.tensors) names.push_back(tensor.name);
  return names;
}

TEST(Manifest, SanitizeTimeFactsEqualFactsRecomputedFromTheFile) {
  Sanitized sanitized = sanitize_bytes(archive_of(mixed_state_dict()));
  MemorySource written(sanitized.output);
  auto at_sanitize = facts_from_sanitize(written, sanitized.report, cdr::Policy{});
  ASSERT_TRUE(at_sanitize) << at_sanitize.error().describe();
  FileFacts from_file = facts_of_file(sanitized.output);

  EXPECT_EQ(at_sanitize->format, kFormatTorchZip);
  EXPECT_EQ(from_file.format, kFormatTorchZip);
  EXPECT_EQ(at_sanitize->size, sanitized.output.size());
  EXPECT_EQ(at_sanitize->sha256, Sha256::of(sanitized.output));
  EXPECT_EQ(from_file.sha256, at_sanitize->sha256);
  EXPECT_EQ(from_file.size, at_sanitize->size);
  ASSERT_EQ(from_file.records.size(), at_sanitize->records.size());
  for (size_t i = 0; i < from_file.records.size(); ++i) {
    EXPECT_EQ(from_file.records[i].name, at_sanitize->records[i].name);
    EXPECT_EQ(from_file.records[i].sha256, at_sanitize->records[i].sha256) << from_file.records[i].name;
  }
  EXPECT_EQ(from_file.tensors, at_sanitize->tensors);
  EXPECT_EQ(from_file.structure, at_sanitize->structure);
  EXPECT_EQ(names_of(from_file),
            (std::vector<std::string>{"model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight",
                                      "model.layers.0.attn.qkv", "model.layers.0.attn.qkv_t", "model.layers.0.attn.k",
                                      "lm_head.weight", "model.norm.running_mean"}));
}

TEST(Manifest, TensorEntriesRecordDtypeShapeStrideOffsetAndRecord) {
  Sanitized sanitized = sanitize_bytes(archive_of(mixed_state_dict()));
  FileFacts facts = facts_of_file(sanitized.output);
  const TensorEntry& key_rows = tensor_named(facts, "model.layers.0.attn.k");
  EXPECT_EQ(key_rows.dtype, "float32");
  EXPECT_EQ(key_rows.shape, (std::vector<int64_t>{1, 4}));
  EXPECT_EQ(key_rows.stride, (std::vector<int64_t>{4, 1}));
  EXPECT_EQ(key_rows.offset, 4u);
  EXPECT_EQ(key_rows.record, tensor_named(facts, "model.layers.0.attn.qkv").record);
  const TensorEntry& buffer = tensor_named(facts, "model.norm.running_mean");
  EXPECT_EQ(buffer.dtype, "float16");
  // Tied weights: one entry per name, the same record and bytes.
  const TensorEntry& head = tensor_named(facts, "lm_head.weight");
  const TensorEntry& embed = tensor_named(facts, "model.embed_tokens.weight");
  EXPECT_EQ(head.record, embed.record);
  EXPECT_EQ(head.sha256, embed.sha256);
  // A tensor covering its storage has the record's digest.
  for (const auto& record : facts.records) {
    if (record.name == embed.record) {
      EXPECT_EQ(record.sha256, embed.sha256);
    }
  }
}

TEST(Manifest, ViewDigestsCoverExactlyTheViewsElementsInCOrder) {
  Sanitized sanitized = sanitize_bytes(archive_of(mixed_state_dict()));
  FileFacts facts = facts_of_file(sanitized.output);
  const TensorEntry& base = tensor_named(facts, "model.layers.0.attn.qkv");
  cdr::ZipEntry record = entry_named(sanitized.output, base.record);
  ASSERT_EQ(record.size, 48u);
  auto element = [&](size_t index) {
    return std::span<const uint8_t>(sanitized.output).subspan(static_cast<size_t>(record.data_offset) + index * 4, 4);
  };
  Sha256 transposed;  // 4x3 view with strides (1, 4): element (i, j) is storage element i + 4j
  for (size_t i = 0; i < 4; ++i) {
    for (size_t j = 0; j < 3; ++j) transposed.update(element(i + 4 * j));
  }
  EXPECT_EQ(tensor_named(facts, "model.layers.0.attn.qkv_t").sha256, transposed.finish());
  Sha256 middle_row;
  for (size_t j = 4; j < 8; ++j) middle_row.update(element(j));
  EXPECT_EQ(tensor_named(facts, "model.layers.0.attn.k").sha256, middle_row.finish());
}

TEST(Manifest, NamesFollowNestedKeysListIndicesAndStayUnique) {
  StateDictBuilder builder;
  cdr::NodeId weight = builder.add("weight", {2});
  cdr::ValueTree tree = builder.tree();
  cdr::NodeId inner = tree.root;
  // {"state_dict": <OrderedDict weight>, "layers": [weight, weight], "epoch": 3, "a.b": weight,
  //  "a": {"b": weight}, 7: weight, "a.b#2": weight}
  cdr::DictValue a;
  a.items = {{tree.add(cdr::StrValue{"b"}), weight}};
  cdr::ListValue layers;
  layers.items = {weight, weight};
  cdr::DictValue root;
  root.items = {{tree.add(cdr::StrValue{"state_dict"}), inner},
                {tree.add(cdr::StrValue{"layers"}), tree.add(std::move(layers))},
                {tree.add(cdr::StrValue{"epoch"}), tree.add(cdr::IntValue{3, ""})},
                {tree.add(cdr::StrValue{"a.b"}), weight},
                {tree.add(cdr::StrValue{"a"}), tree.add(std::move(a))},
                {tree.add(cdr::IntValue{7, ""}), weight},
                {tree.add(cdr::StrValue{"a.b#2"}), weight}};
  tree.root = tree.add(std::move(root));
  Sanitized sanitized = sanitize_bytes(archive_of(tree));
  FileFacts facts = facts_of_file(sanitized.output);
  EXPECT_EQ(names_of(facts),
            (std::vector<std::string>{"state_dict.weight", "layers.0", "layers.1", "a.b", "a.b#2", "7", "a.b#2#2"}));
}

TEST(Manifest, ArchitectureFingerprintSurvivesLayoutVariationAndWeightPermutation) {
  StateDictBuilder builder;
  for (int layer = 0; layer < 2; ++layer) {
    const std::string prefix = "model.layers." + std::to_string(layer) + ".mlp.";
    builder.add(prefix + "gate_proj.weight", {8, 4});
    builder.add(prefix + "up_proj.weight", {8, 4});
    builder.add(prefix + "down_proj.weight", {4, 8});
  }
  builder.add("model.norm.weight", {4});
  const Bytes input = archive_of(builder.tree());
  Sanitized canonical = sanitize_bytes(input);
  FileFacts canonical_facts = facts_of_file(canonical.output);
  const Digest canonical_architecture = architecture_fingerprint(canonical_facts.tensors, std::nullopt);

  for (const char* scope : {"alice", "bob"}) {
    VariationSettings settings;
    settings.secret.assign(kMinSecretBytes, 0x5a);
    settings.scope = scope;
    settings.artifact_digest = Sha256::of(input);
    settings.permute_weights = true;
    auto variation = make_variation(settings);
    ASSERT_TRUE(variation) << variation.error().describe();
    cdr::SanitizeOptions options;
    options.layout = variation->get();
    Sanitized variant = sanitize_bytes(input, options);
    ASSERT_NE(variant.output, canonical.output);
    FileFacts facts = facts_of_file(variant.output);
    EXPECT_EQ(architecture_fingerprint(facts.tensors, std::nullopt), canonical_architecture) << scope;
    EXPECT_EQ(facts.structure->canonical_pickle, canonical_facts.structure->canonical_pickle) << scope;
    EXPECT_NE(facts.structure->records, canonical_facts.structure->records) << scope;
    EXPECT_NE(tensor_named(facts, "model.layers.0.mlp.up_proj.weight").sha256,
              tensor_named(canonical_facts, "model.layers.0.mlp.up_proj.weight").sha256)
        << "weights were permuted";
  }
}

TEST(Manifest, ArchitectureFingerprintChangesWithNamesDtypesShapesAndConfig) {
  const std::vector<TensorEntry> base = {{"b", "float32", {4, 2}, {2, 1}, 0, "r1", {}},
                                         {"a", "float32", {3}, {1}, 0, "r0", {}}};
  const Digest reference = architecture_fingerprint(base, std::nullopt);
  std::vector<TensorEntry> reordered = {base[1], base[0]};
  reordered[0].sha256[0] = 1;  // values, records, strides and order do not count
  reordered[0].record = "other";
  EXPECT_EQ(architecture_fingerprint(reordered, std::nullopt), reference);

  std::vector<TensorEntry> reshaped = base;
  reshaped[0].shape = {2, 4};
  EXPECT_NE(architecture_fingerprint(reshaped, std::nullopt), reference);
  std::vector<TensorEntry> retyped = base;
  retyped[1].dtype = "float16";
  EXPECT_NE(architecture_fingerprint(retyped, std::nullopt), reference);
  std::vector<TensorEntry> renamed = base;
  renamed[1].name = "c";
  EXPECT_NE(architecture_fingerprint(renamed, std::nullopt), reference);
  EXPECT_NE(architecture_fingerprint(base, Sha256::of(std::string_view("{}"))), reference);
}

TEST(Manifest, SafetensorsOutputKeepsTheArchitectureFingerprintAndTensorDigests) {
  StateDictBuilder builder;
  builder.add("encoder.weight", {3, 4});
  builder.add("encoder.bias", {3});
  builder.add("scale", {2}, cdr::StorageType::kBFloat16);
  const Bytes input = archive_of(builder.tree());
  FileFacts torch_facts = facts_of_file(sanitize_bytes(input).output);
  cdr::SanitizeOptions options;
  options.format = cdr::OutputFormat::kSafetensors;
  Sanitized converted = sanitize_bytes(input, options);
  MemorySource written(converted.output);
  auto facts = facts_from_sanitize(written, converted.report, cdr::Policy{});
  ASSERT_TRUE(facts) << facts.error().describe();
  EXPECT_EQ(facts->format, kFormatSafetensors);
  EXPECT_EQ(facts->sha256, Sha256::of(converted.output));
  EXPECT_FALSE(facts->structure);
  const TensorEntry& weight = tensor_named(*facts, "encoder.weight");
  EXPECT_EQ(weight.dtype, "float32");
  EXPECT_EQ(weight.stride, (std::vector<int64_t>{4, 1}));
  EXPECT_EQ(weight.sha256, tensor_named(torch_facts, "encoder.weight").sha256);
  EXPECT_EQ(tensor_named(*facts, "scale").dtype, "bfloat16");
  EXPECT_EQ(architecture_fingerprint(facts->tensors, std::nullopt),
            architecture_fingerprint(torch_facts.tensors, std::nullopt));
  EXPECT_EQ(facts_of_file(converted.output).tensors, facts->tensors);
}

TEST(Manifest, OtherFilesAreDescribedByDigestAndBrokenArchivesSayWhy) {
  const std::string config = R"({"model_type": "llama"})";
  FileFacts plain = facts_of_file(Bytes(config.begin(), config.end()));
  EXPECT_EQ(plain.format, kFormatPlainFile);
  EXPECT_EQ(plain.sha256, Sha256::of(config));
  EXPECT_TRUE(plain.content_error.empty());

  Bytes broken = sanitize_bytes(archive_of(mixed_state_dict())).output;
  cdr::ZipEntry pickle = entry_named(broken, "archive/data.pkl");
  broken[static_cast<size_t>(pickle.data_offset) + 3] ^= 0x40;  // the CRC no longer matches
  FileFacts facts = facts_of_file(broken);
  EXPECT_EQ(facts.format, kFormatPlainFile);
  EXPECT_NE(facts.content_error.find("data.pkl"), std::string::npos) << facts.content_error;
  EXPECT_TRUE(facts.tensors.empty());
}

TEST(Manifest, FactsFromSanitizeRefusesAFileTheReportDoesNotDescribe) {
  Sanitized sanitized = sanitize_bytes(archive_of(mixed_state_dict()));
  Bytes other = sanitized.output;
  other.push_back(0);
  MemorySource source(other);
  auto facts = facts_from_sanitize(source, sanitized.report, cdr::Policy{});
  ASSERT_FALSE(facts);
  EXPECT_EQ(facts.error().code, ErrorCode::kInvalidArgument);
}

TEST(Manifest, FolderFilesComeInResourceOrderWithoutGitMetadata) {
  TemporaryFolder folder;
  folder.write("artifact/a-b", "1");
  folder.write("artifact/a/b", "2");
  folder.write("artifact/config.json", "{}");
  folder.write("artifact/.gitattributes", "*.bin lfs");
  folder.write("artifact/.git/HEAD", "ref");
  folder.write("blobs/weights", "3");
  std::filesystem::create_symlink(folder.path() / "blobs/weights", folder.path() / "artifact/model.bin");
  const std::string root = folder.file("artifact");

  auto files = artifact_files(root, default_ignored_paths());
  ASSERT_TRUE(files) << files.error().describe();
  EXPECT_EQ(*files, (std::vector<std::string>{"a/b", "a-b", "config.json", "model.bin"}));
  auto single = artifact_files(folder.file("blobs/weights"), default_ignored_paths());
  ASSERT_TRUE(single);
  EXPECT_EQ(*single, std::vector<std::string>{"."});
  auto missing = artifact_files(folder.file("nothing"), {});
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code, ErrorCode::kNotFound);

  auto manifest = manifest_for_path(root, cdr::Policy{});
  ASSERT_TRUE(manifest) << manifest.error().describe();
  EXPECT_EQ(manifest->name, "artifact");
  ASSERT_EQ(manifest->files.size(), 4u);
  EXPECT_EQ(manifest->files[3].facts.sha256, Sha256::of(std::string_view("3")));
  for (const auto& file : manifest->files) EXPECT_EQ(file.config_sha256, Sha256::of(std::string_view("{}")));
  auto digest = artifact_sha256(folder.file("artifact/model.bin"));
  ASSERT_TRUE(digest);
  EXPECT_EQ(*digest, Sha256::of(std::string_view("3")));
}

TEST(Manifest, JsonRoundTripKeepsEveryField) {
  Sanitized sanitized = sanitize_bytes(archive_of(mixed_state_dict()));
  ArtifactManifest manifest{"model.pt", {testing::sanitized_file_manifest(sanitized)}};
  manifest.files[0].config_sha256 = Sha256::of(std::string_view("{}"));
  const nlohmann::json json = manifest_to_json(manifest);
  auto parsed = manifest_from_json(nlohmann::json::parse(canonical_json(json)));
  ASSERT_TRUE(parsed) << parsed.error().describe();
  EXPECT_EQ(canonical_json(manifest_to_json(*parsed)), canonical_json(json));
  const FileManifest& file = parsed->files[0];
  EXPECT_EQ(file.facts.tensors, manifest.files[0].facts.tensors);
  EXPECT_EQ(file.facts.structure, manifest.files[0].facts.structure);
  EXPECT_EQ(file.provenance.upstream_sha256, sanitized.report.input_sha256);
  EXPECT_EQ(file.provenance.verdict, "clean");
  EXPECT_EQ(file.provenance.seed_id, "seed-1");
  EXPECT_EQ(file.provenance.policy_version, cdr::Policy{}.version);
}

TEST(Manifest, JsonWithAMissingOrMistypedFieldIsAParseError) {
  Sanitized sanitized = sanitize_bytes(archive_of(mixed_state_dict()));
  const nlohmann::json good = manifest_to_json(ArtifactManifest{"m", {testing::sanitized_file_manifest(sanitized)}});
  const std::vector<std::function<void(nlohmann::json&)>> breakages = {
      [](nlohmann::json& j) { j["files"][0].erase("sha256"); },
      [](nlohmann::json& j) { j["files"][0]["size"] = -1; },
      [](nlohmann::json& j) { j["files"][0]["tensors"][0]["shape"] = "4x4"; },
      [](nlohmann::json& j) { j["files"][0]["tensors"][0]["sha256"] = "abcd"; },
      [](nlohmann::json& j) { j["files"][0]["structure"]["globals"][0] = "torch.FloatStorage"; },
      [](nlohmann::json& j) { j["files"].push_back(j["files"][0]); },
      [](nlohmann::json& j) { j["files"] = nlohmann::json::object(); },
      [](nlohmann::json& j) { j = nlohmann::json::array(); },
  };
  for (size_t i = 0; i < breakages.size(); ++i) {
    nlohmann::json broken = good;
    breakages[i](broken);
    auto parsed = manifest_from_json(broken);
    ASSERT_FALSE(parsed) << "breakage " << i;
    EXPECT_EQ(parsed.error().code, ErrorCode::kParse) << "breakage " << i;
  }
}

}  // namespace
}  // namespace zoogate::mtd
