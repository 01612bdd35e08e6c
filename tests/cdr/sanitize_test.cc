// The CDR engine end to end on archives built in the test: what it rebuilds, and every container rule
// it enforces above the individual parsers (entries accounted for, storages present and sized right,
// TorchScript, byte order, unknown content). Real files from PyTorch are covered by
// tests/integration; here each rule gets a minimal, exact case.
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "cdr/npy.h"
#include "cdr/pickle_vm.h"
#include "cdr/pickle_writer.h"
#include "cdr/safetensors.h"
#include "cdr/sanitize.h"
#include "cdr/zip_reader.h"
#include "cdr/zip_writer.h"
#include "common/sha256.h"
#include "tests/cdr/python_runner.h"

namespace zoogate::cdr {
namespace {

using Bytes = std::vector<uint8_t>;

Bytes bytes_of(std::string_view text) { return Bytes(text.begin(), text.end()); }

// state_dict-like tree: OrderedDict{"w": 2x2 float tensor over storage "7", "wt": its transpose,
// `extra_key`: `extra_value` when given}.
struct TreeOptions {
  std::optional<GlobalValue> extra_value;
  uint64_t numel = 4;
};

ValueTree state_dict_tree(const TreeOptions& options = {}) {
  ValueTree tree;
  NodeId storage = tree.add(StorageRefValue{StorageType::kFloat, "7", "cpu", options.numel});
  NodeId w = tree.add(TensorValue{storage, 0, {2, 2}, {2, 1}, false, false, std::nullopt});
  NodeId wt = tree.add(TensorValue{storage, 0, {2, 2}, {1, 2}, false, false, std::nullopt});
  OrderedDictValue dict;
  dict.items = {{tree.add(StrValue{"w"}), w}, {tree.add(StrValue{"wt"}), wt}};
  if (options.extra_value) dict.items.emplace_back(tree.add(StrValue{"hook"}), tree.add(*options.extra_value));
  tree.root = tree.add(std::move(dict));
  return tree;
}

Bytes pickle_of(const ValueTree& tree) {
  MemorySink sink;
  EXPECT_TRUE(write_pickle(tree, PickleWriteOptions{}, sink));
  return sink.take();
}

const Bytes kStorage = {0, 0, 128, 63, 0, 0, 0, 64, 0, 0, 64, 64, 0, 0, 128, 64};  // 1.0f 2.0f 3.0f 4.0f

Bytes archive(const std::vector<std::pair<std::string, Bytes>>& entries) {
  MemorySink sink;
  ZipWriter zip(sink);
  for (const auto& [name, data] : entries) {
    EXPECT_TRUE(zip.begin_entry(name, data.size()));
    EXPECT_TRUE(zip.write(data));
    EXPECT_TRUE(zip.end_entry());
  }
  EXPECT_TRUE(zip.finish());
  return sink.take();
}

std::vector<std::pair<std::string, Bytes>> checkpoint_entries(const ValueTree& tree) {
  return {{"ckpt/data.pkl", pickle_of(tree)}, {"ckpt/data/7", kStorage}, {"ckpt/version", bytes_of("3\n")}};
}

struct Outcome {
  SanitizeReport report;
  Bytes output;
};

Outcome run(const Bytes& input, const Policy& policy = Policy{}, SanitizeOptions options = {}) {
  MemorySource source(input);
  MemorySink sink;
  Outcome result;
  result.report = sanitize(source, policy, options, sink);
  result.output = sink.take();
  return result;
}

void expect_blocked(const Outcome& result, ErrorCode code, std::string_view message_part) {
  ASSERT_EQ(result.report.verdict, Verdict::kBlocked);
  ASSERT_TRUE(result.report.error);
  EXPECT_EQ(result.report.error->code, code) << result.report.error->describe();
  EXPECT_NE(result.report.error->message.find(message_part), std::string::npos) << result.report.error->describe();
  EXPECT_TRUE(result.report.output_format.empty());
  EXPECT_TRUE(result.report.records.empty());
}

TEST(Sanitize, RebuildsACleanArchiveWithFreshNamesAndDigests) {
  Bytes input = archive(checkpoint_entries(state_dict_tree()));
  Outcome result = run(input);
  ASSERT_EQ(result.report.verdict, Verdict::kClean) << result.report.error->describe();
  EXPECT_EQ(result.report.container, "torch-zip");
  EXPECT_EQ(result.report.output_format, "torch-zip");
  EXPECT_EQ(result.report.input_sha256, Sha256::of(input));
  EXPECT_EQ(result.report.output_sha256, Sha256::of(result.output));
  EXPECT_EQ(result.report.output_size, result.output.size());

  MemorySource output(result.output);
  auto directory = read_zip_directory(output, ZipLimits{});
  ASSERT_TRUE(directory) << directory.error().describe();
  EXPECT_EQ(directory->top_folder(), "archive");
  std::vector<std::string> names;
  for (const auto& entry : directory->entries()) names.push_back(entry.name);
  EXPECT_EQ(names, (std::vector<std::string>{"archive/data.pkl", "archive/byteorder", "archive/data/0",
                                             "archive/version"}));
  ASSERT_EQ(result.report.records.size(), 4u);
  EXPECT_EQ(result.report.records[2].name, "archive/data/0");
  EXPECT_EQ(result.report.records[2].sha256, Sha256::of(kStorage));
  // The two views still share one storage, renamed to the canonical key.
  MemorySource pickle_source(std::span(result.output).subspan(directory->entries()[0].data_offset,
                                                               directory->entries()[0].size));
  auto parsed = parse_pickle(pickle_source, Policy{}, PickleParseOptions{PersistentIdMode::kTorchArchive, "", false});
  ASSERT_TRUE(parsed);
  ValueTree expected = state_dict_tree();
  for (auto& node : expected.nodes) {
    if (auto* storage = std::get_if<StorageRefValue>(&node)) storage->key = "0";
  }
  EXPECT_TRUE(structurally_equal(parsed->tree, expected));
}

TEST(Sanitize, IsAFixpointOnItsOwnOutput) {
  Outcome first = run(archive(checkpoint_entries(state_dict_tree())));
  ASSERT_EQ(first.report.verdict, Verdict::kClean);
  Outcome second = run(first.output);
  ASSERT_EQ(second.report.verdict, Verdict::kClean);
  EXPECT_EQ(second.output, first.output);
}

TEST(Sanitize, DisarmsAForbiddenGlobalAndKeepsTheTensors) {
  Bytes input = archive(checkpoint_entries(state_dict_tree({GlobalValue{"os", "system"}})));
  Outcome result = run(input);
  ASSERT_EQ(result.report.verdict, Verdict::kDisarmed);
  ASSERT_EQ(result.report.findings.size(), 1u);
  EXPECT_EQ(result.report.findings[0].construct.find("os.system") != std::string::npos, true);
  EXPECT_EQ(result.report.findings[0].record, "ckpt/data.pkl");
  // The rebuilt file is exactly what a checkpoint without the hook gives.
  Outcome clean = run(archive(checkpoint_entries(state_dict_tree())));
  EXPECT_EQ(result.output, clean.output);
}

TEST(Sanitize, BlocksAForbiddenGlobalWhenThePolicySaysSo) {
  Policy policy;
  policy.forbidden_global = Action::kBlock;
  expect_blocked(run(archive(checkpoint_entries(state_dict_tree({GlobalValue{"os", "system"}}))), policy),
                 ErrorCode::kForbidden, "os.system");
}

TEST(Sanitize, BlocksAnEntryThatIsNeitherPickleNorStorageNorMetadata) {
  auto entries = checkpoint_entries(state_dict_tree());
  entries.emplace_back("ckpt/extra.pkl", bytes_of("\x80\x02N."));
  expect_blocked(run(archive(entries)), ErrorCode::kForbidden, "ckpt/extra.pkl");
}

TEST(Sanitize, BlocksAnUnreferencedStorageRecord) {
  auto entries = checkpoint_entries(state_dict_tree());
  entries.emplace_back("ckpt/data/8", kStorage);
  expect_blocked(run(archive(entries)), ErrorCode::kForbidden, "ckpt/data/8");
}

TEST(Sanitize, BlocksAMissingStorageRecord) {
  auto entries = checkpoint_entries(state_dict_tree());
  entries.erase(entries.begin() + 1);
  expect_blocked(run(archive(entries)), ErrorCode::kParse, "missing");
}

TEST(Sanitize, BlocksAStorageWhoseSizeDisagreesWithItsElementCount) {
  TreeOptions options;
  options.numel = 5;  // 20 bytes expected, 16 present
  expect_blocked(run(archive(checkpoint_entries(state_dict_tree(options)))), ErrorCode::kParse, "need 20");
}

TEST(Sanitize, BlocksTorchScriptArchives) {
  auto entries = checkpoint_entries(state_dict_tree());
  entries.emplace_back("ckpt/code/__torch__.py", bytes_of("def forward(self): pass\n"));
  Outcome result = run(archive(entries));
  expect_blocked(result, ErrorCode::kUnsupported, "TorchScript");
  EXPECT_EQ(result.report.container, "torchscript");
}

TEST(Sanitize, BlocksBigEndianArchives) {
  auto entries = checkpoint_entries(state_dict_tree());
  entries.emplace_back("ckpt/byteorder", bytes_of("big"));
  expect_blocked(run(archive(entries)), ErrorCode::kUnsupported, "little-endian");
}

TEST(Sanitize, BlocksAZipWithoutAPickle) {
  expect_blocked(run(archive({{"ckpt/weights.bin", kStorage}})), ErrorCode::kUnsupported, "data.pkl");
}

TEST(Sanitize, BlocksContentItDoesNotKnowWhateverItsName) {
  Outcome result = run(bytes_of("GGUF\x03\x00\x00\x00 not a pickle"));
  expect_blocked(result, ErrorCode::kUnsupported, "not a model format");
  Outcome seven_zip = run(bytes_of("7z\xbc\xaf\x27\x1c\x00\x04 payload"));
  expect_blocked(seven_zip, ErrorCode::kUnsupported, "not a model format");
  EXPECT_EQ(seven_zip.report.container, "7z");
}

TEST(Sanitize, ConvertsToSafetensorsAndSaysWhatItChanged) {
  SanitizeOptions options;
  options.format = OutputFormat::kSafetensors;
  Outcome result = run(archive(checkpoint_entries(state_dict_tree())), Policy{}, options);
  ASSERT_EQ(result.report.verdict, Verdict::kClean) << result.report.error->describe();
  EXPECT_EQ(result.report.output_format, "safetensors");
  ASSERT_EQ(result.report.notes.size(), 1u);
  EXPECT_NE(result.report.notes[0].find("shared its storage"), std::string::npos);

  MemorySource output(result.output);
  auto header = parse_safetensors_header(output, SafetensorsLimits{});
  ASSERT_TRUE(header) << header.error().describe();
  ASSERT_EQ(header->tensors.size(), 2u);
  // "wt" is the transpose: its contiguous bytes are 1 3 2 4.
  const auto& transposed = header->tensors[0].name == "wt" ? header->tensors[0] : header->tensors[1];
  auto data = output.read_vector(header->data_offset() + transposed.begin, 16);
  ASSERT_TRUE(data);
  Bytes expected = {0, 0, 128, 63, 0, 0, 64, 64, 0, 0, 0, 64, 0, 0, 128, 64};
  EXPECT_EQ(*data, expected);
}

Bytes npy_of(const Bytes& data) {
  NpyHeader header;
  header.descr = NumpyDescr{'<', 'f', 4, ""};
  header.shape = {data.size() / 4};
  MemorySink sink;
  EXPECT_TRUE(write_npy_header(header, sink));
  EXPECT_TRUE(sink.write(std::span<const uint8_t>(data)));
  return sink.take();
}

TEST(Sanitize, RebuildsNpzArchivesMemberByMember) {
  Outcome result = run(archive({{"weights.npy", npy_of(kStorage)}, {"bias.npy", npy_of({0, 0, 0, 0})}}));
  ASSERT_EQ(result.report.verdict, Verdict::kClean) << result.report.error->describe();
  EXPECT_EQ(result.report.container, "npz");
  ASSERT_EQ(result.report.records.size(), 2u);
  EXPECT_EQ(result.report.records[0].name, "weights.npy");
  EXPECT_EQ(result.report.records[0].sha256, Sha256::of(npy_of(kStorage)));
}

TEST(Sanitize, BlocksNpzMembersThatAreNotPlainArrays) {
  expect_blocked(run(archive({{"weights.npy", npy_of(kStorage)}, {"payload.pkl", bytes_of("\x80\x02N.")}})),
                 ErrorCode::kForbidden, "payload.pkl");
  expect_blocked(run(archive({{"weights.npy", bytes_of("\x80\x02N.")}})), ErrorCode::kParse, "weights.npy");
}

// The legacy format, as Debian's PyTorch writes it, becomes a current archive; a byte appended after
// the last storage, or a storage cut short, blocks it.
TEST(Sanitize, RebuildsLegacyFilesAndRefusesTamperedOnes) {
  auto python = testing::run_python(R"(
import sys, torch
state = {"w": torch.arange(6.0).reshape(2, 3), "i": torch.tensor([7, 8], dtype=torch.int64)}
state["v"] = state["w"][:, 1:]
torch.save(state, sys.argv[1] + "/legacy.pt", _use_new_zipfile_serialization=False)
sys.stdout.write(open(sys.argv[1] + "/legacy.pt", "rb").read().hex())
)");
  ASSERT_EQ(python.exit_code, 0) << python.output;
  Bytes legacy;
  for (size_t i = 0; i + 1 < python.output.size(); i += 2) {
    legacy.push_back(static_cast<uint8_t>(std::stoi(python.output.substr(i, 2), nullptr, 16)));
  }
  Outcome result = run(legacy);
  ASSERT_EQ(result.report.verdict, Verdict::kClean) << result.report.error->describe();
  EXPECT_EQ(result.report.container, "torch-legacy");
  EXPECT_EQ(result.report.output_format, "torch-zip");

  Bytes appended = legacy;
  appended.push_back(0);
  expect_blocked(run(appended), ErrorCode::kParse, "after the last legacy storage");
  Bytes truncated(legacy.begin(), legacy.end() - 1);
  expect_blocked(run(truncated), ErrorCode::kParse, "truncated");
}

}  // namespace
}  // namespace zoogate::cdr
