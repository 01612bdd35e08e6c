// The CDR engine end to end on archives built in the test: what it rebuilds, and every container rule
// it enforces above the individual parsers (entries accounted for, storages present and sized right,
// TorchScript, byte order, unknown content). Real files from PyTorch are covered by
// tests/integration; here each rule gets a minimal, exact case.
#include <algorithm>
#include <map>
#include <mutex>
#include <numeric>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "cdr/npy.h"
#include "cdr/pickle_vm.h"
#include "cdr/pickle_writer.h"
#include "cdr/safetensors.h"
#include "cdr/sanitize.h"
#include "cdr/zip_format.h"
#include "cdr/zip_reader.h"
#include "cdr/zip_writer.h"
#include "common/sha256.h"
#include "tests/cdr/python_runner.h"

namespace zoogate::cdr {
namespace {

using Bytes = std::vector<uint8_t>;

Bytes bytes_of(std::string_view text) { return Bytes(text.begin(), text.end()); }

// What a Python script printed as hex.
Bytes from_hex(const std::string& hex) {
  Bytes out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<uint8_t>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  }
  return out;
}

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

// Runs the engine on a finished file, and again as the proxy runs it on a download still arriving
// (input_arrives_in_order, into a random-access sink), which must give the same: verdict and error
// code, and for a rebuilt file the same bytes and records.
Outcome run(const Bytes& input, const Policy& policy = Policy{}, SanitizeOptions options = {}) {
  MemorySource source(input);
  Outcome result;
  {
    MemorySink sink;
    result.report = sanitize(source, policy, options, sink);
    result.output = sink.take();
  }
  options.input_arrives_in_order = true;
  MemorySink arriving_sink;
  SanitizeReport arriving = sanitize(source, policy, options, arriving_sink);
  EXPECT_EQ(arriving.verdict, result.report.verdict) << (arriving.error ? arriving.error->describe() : "");
  if (arriving.error && result.report.error) {
    EXPECT_EQ(arriving.error->code, result.report.error->code);
  }
  if (result.report.verdict != Verdict::kBlocked) {
    EXPECT_EQ(arriving_sink.bytes(), result.output) << "the arriving rebuild wrote other bytes";
    EXPECT_EQ(arriving.output_sha256, result.report.output_sha256);
    EXPECT_EQ(arriving.output_size, result.report.output_size);
    EXPECT_EQ(arriving.findings.size(), result.report.findings.size());
    EXPECT_EQ(arriving.records.size(), result.report.records.size());
    for (size_t i = 0; i < std::min(arriving.records.size(), result.report.records.size()); ++i) {
      EXPECT_EQ(arriving.records[i].name, result.report.records[i].name);
      EXPECT_EQ(arriving.records[i].sha256, result.report.records[i].sha256) << arriving.records[i].name;
    }
  }
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

// A state dict of tensors of 4 floats, each over its own storage, named by `keys` in first-reference
// order (torch.save's are "0", "1", ...), and its entries in torch.save's order for PyTorch 2 (pickle,
// byteorder, storages, version).
ValueTree multi_storage_tree(const std::vector<std::string>& keys) {
  ValueTree tree;
  OrderedDictValue dict;
  for (size_t i = 0; i < keys.size(); ++i) {
    NodeId storage = tree.add(StorageRefValue{StorageType::kFloat, keys[i], "cpu", 4});
    NodeId tensor = tree.add(TensorValue{storage, 0, {4}, {1}, false, false, std::nullopt});
    dict.items.emplace_back(tree.add(StrValue{"t" + std::to_string(i)}), tensor);
  }
  tree.root = tree.add(std::move(dict));
  return tree;
}

std::vector<std::string> torch_save_keys(size_t count) {
  std::vector<std::string> keys;
  for (size_t i = 0; i < count; ++i) keys.push_back(std::to_string(i));
  return keys;
}

std::vector<std::pair<std::string, Bytes>> multi_storage_entries(const std::vector<std::string>& keys) {
  std::vector<std::pair<std::string, Bytes>> entries = {{"ckpt/data.pkl", pickle_of(multi_storage_tree(keys))},
                                                        {"ckpt/byteorder", bytes_of("little")}};
  std::vector<size_t> by_key(keys.size());
  std::iota(by_key.begin(), by_key.end(), size_t{0});
  // As torch.save writes the records: sorted by key as text.
  std::sort(by_key.begin(), by_key.end(), [&keys](size_t a, size_t b) { return keys[a] < keys[b]; });
  for (size_t i : by_key) {
    Bytes storage = kStorage;
    storage[0] = static_cast<uint8_t>(i + 1);
    entries.emplace_back("ckpt/data/" + keys[i], storage);
  }
  entries.emplace_back("ckpt/version", bytes_of("3\n"));
  return entries;
}

std::vector<std::pair<std::string, Bytes>> multi_storage_entries(size_t count) {
  return multi_storage_entries(torch_save_keys(count));
}

// Writes the storages in reverse order, as a layout variation may: the arriving rebuild then fills the
// output back to front.
class ReversingPlanner final : public LayoutPlanner {
 public:
  Result<LayoutPlan> plan(const ValueTree&, const std::vector<StorageInfo>& storages) const override {
    LayoutPlan plan;
    for (size_t i = storages.size(); i-- > 0;) plan.storage_order.push_back(i);
    return plan;
  }
};

// Remembers every read, to show in what order the engine consumed its input.
class RecordingSource final : public ByteSource {
 public:
  explicit RecordingSource(const Bytes& bytes) : bytes_(bytes) {}
  uint64_t size() const override { return bytes_.size(); }
  Status read_at(uint64_t offset, std::span<uint8_t> out) const override {
    std::lock_guard lock(mutex_);
    reads_.emplace_back(offset, out.size());
    return MemorySource(bytes_).read_at(offset, out);
  }
  std::vector<std::pair<uint64_t, size_t>> reads() const {
    std::lock_guard lock(mutex_);
    return reads_;
  }

 private:
  const Bytes& bytes_;
  mutable std::mutex mutex_;
  mutable std::vector<std::pair<uint64_t, size_t>> reads_;
};

// Remembers where each write went, to show in what order the engine assembled its output.
class RecordingSink final : public RandomAccessSink {
 public:
  uint64_t position() const override { return sink_.position(); }
  Status write_at(uint64_t offset, std::span<const uint8_t> bytes) override {
    write_offsets_.push_back(offset);
    return sink_.write_at(offset, bytes);
  }
  Status read_back(uint64_t offset, std::span<uint8_t> out) override { return sink_.read_back(offset, out); }
  const std::vector<uint64_t>& write_offsets() const { return write_offsets_; }
  const Bytes& bytes() const { return sink_.bytes(); }

 private:
  Status write_bytes(std::span<const uint8_t> bytes) override {
    write_offsets_.push_back(sink_.position());
    return sink_.write(bytes);
  }
  MemorySink sink_;
  std::vector<uint64_t> write_offsets_;
};

TEST(Sanitize, TorchSaveOrderSortsNamesAsText) {
  EXPECT_EQ(torch_save_order({"0", "1", "2", "10", "11", "3"}), (std::vector<size_t>{0, 1, 3, 4, 2, 5}));
  EXPECT_EQ(torch_save_order({"b", "a", "\xc3\xa9", "z"}), (std::vector<size_t>{1, 0, 3, 2}));  // "é" after "z"
  EXPECT_TRUE(torch_save_order({}).empty());
}

// torch.save writes its records sorted by key as text (0, 1, 10, 11, 2, ...). The canonical layout
// keeps that order, so a download arriving in it is rebuilt front to back, and the rebuilt file's
// digest keeps up with the download instead of waiting for its last byte.
TEST(Sanitize, RebuildsAnArrivingTorchSaveArchiveFrontToBack) {
  const Bytes input = archive(multi_storage_entries(12));
  RecordingSink sink;
  SanitizeOptions options;
  options.input_arrives_in_order = true;
  options.known_input_sha256 = Sha256::of(input);
  SanitizeReport report = sanitize(MemorySource(input), Policy{}, options, sink);
  ASSERT_EQ(report.verdict, Verdict::kClean) << report.error->describe();
  EXPECT_TRUE(std::is_sorted(sink.write_offsets().begin(), sink.write_offsets().end()));
  MemorySource output(sink.bytes());
  auto directory = read_zip_directory(output, ZipLimits{});
  ASSERT_TRUE(directory) << directory.error().describe();
  std::vector<std::string> storages;
  for (const ZipEntry& entry : directory->entries()) {
    if (entry.name.starts_with("archive/data/")) storages.push_back(entry.name.substr(13));
  }
  EXPECT_EQ(storages, (std::vector<std::string>{"0", "1", "10", "11", "2", "3", "4", "5", "6", "7", "8", "9"}));
  EXPECT_EQ(run(input, Policy{}, SanitizeOptions{}).output, sink.bytes());  // the finished file's rebuild
}

// The canonical layout depends on what the file holds, not on the names its writer gave the records:
// whatever they were, the rebuilt file rebuilds to itself.
TEST(Sanitize, TheCanonicalLayoutDoesNotFollowTheInputsRecordNames) {
  const std::vector<std::string> keys = {"b", "a", "10", "9", "z0", "c"};
  const Outcome first = run(archive(multi_storage_entries(keys)));
  ASSERT_EQ(first.report.verdict, Verdict::kClean) << first.report.error->describe();
  const Outcome second = run(first.output);
  ASSERT_EQ(second.report.verdict, Verdict::kClean) << second.report.error->describe();
  EXPECT_EQ(second.output, first.output);
  EXPECT_EQ(first.output, run(archive(multi_storage_entries(torch_save_keys(keys.size())))).output);
}

// Sanitizes `input` as an arriving download, and returns the reads it made.
std::vector<std::pair<uint64_t, size_t>> arriving_reads(const Bytes& input, const LayoutPlanner* planner) {
  RecordingSource source(input);
  SanitizeOptions options;
  options.layout = planner;
  options.input_arrives_in_order = true;
  options.known_input_sha256 = Sha256::of(input);  // no second reader
  MemorySink sink;
  SanitizeReport report = sanitize(source, Policy{}, options, sink);
  EXPECT_EQ(report.verdict, Verdict::kClean) << report.error->describe();
  return source.reads();
}

// A download is rebuilt while it arrives: every storage is copied before the engine reads anything of
// the central directory at the end, whether the writer put sizes in the local headers (Python's
// zipfile) or in data descriptors (torch.save, ZipWriter). The result is the finished file's.
TEST(Sanitize, RebuildsAnArrivingArchiveBeforeItsCentralDirectory) {
  const auto entries = multi_storage_entries(4);
  const Bytes descriptors = archive(entries);
  std::map<std::string, std::string> files;
  std::string names;
  for (const auto& [name, data] : entries) {
    std::string flat = name;
    std::replace(flat.begin(), flat.end(), '/', '_');
    files[flat] = std::string(data.begin(), data.end());
    names += name + " ";
  }
  files["names"] = names;
  auto zipfile_run = testing::run_python(R"(
import sys, zipfile
folder = sys.argv[1]
with zipfile.ZipFile(folder + "/out.zip", "w") as z:
    for name in open(folder + "/names").read().split():
        z.writestr(name, open(folder + "/" + name.replace("/", "_"), "rb").read())
sys.stdout.write(open(folder + "/out.zip", "rb").read().hex())
)", files);
  ASSERT_EQ(zipfile_run.exit_code, 0) << zipfile_run.output;
  const Bytes sizes_in_headers = from_hex(zipfile_run.output);
  ReversingPlanner reversing;
  for (const Bytes* input : {&descriptors, &sizes_in_headers}) {
    MemorySource source(*input);
    auto directory = read_zip_directory(source, ZipLimits{});
    ASSERT_TRUE(directory) << directory.error().describe();
    // The end record (small archives: no zip64, no comment) says where the central directory starts.
    const uint64_t directory_offset = zip::load_u32(&(*input)[input->size() - zip::kEndOfCentralDirSize + 16]);
    for (const LayoutPlanner* planner : {static_cast<const LayoutPlanner*>(nullptr),
                                         static_cast<const LayoutPlanner*>(&reversing)}) {
      const auto reads = arriving_reads(*input, planner);
      // Content detection and the pickle parser read ahead from the front; the directory's reads are
      // the first that start inside it.
      auto first_directory_read = std::find_if(reads.begin(), reads.end(), [&](const auto& read) {
        return read.first >= directory_offset;
      });
      ASSERT_NE(first_directory_read, reads.end());
      for (const ZipEntry& entry : directory->entries()) {
        if (!entry.name.starts_with("ckpt/data/")) continue;
        auto copied = std::find_if(reads.begin(), first_directory_read, [&](const auto& read) {
          return read.first == entry.data_offset && read.second == entry.size;
        });
        EXPECT_NE(copied, first_directory_read) << entry.name << " was not copied before the central directory";
      }
      SanitizeOptions options;
      options.layout = planner;
      Outcome result = run(*input, Policy{}, options);  // compares with the finished file's rebuild
      ASSERT_EQ(result.report.verdict, Verdict::kClean);
    }
  }
}

// The walk that follows an arriving archive reads local headers the central directory has not yet
// confirmed. Here a metadata record's content holds a decoy: a data descriptor that makes the record
// look empty, then a local header for storage ckpt/data/0 over other bytes. The walk copies the decoy;
// the directory then names the real record, which replaces it, so the output is the finished file's.
TEST(Sanitize, AnArrivingRecordTheDirectoryDoesNotConfirmIsCopiedAgain) {
  Bytes decoy;
  zip::append_u32(decoy, zip::kDataDescriptorSignature);
  zip::append_u32(decoy, 0);  // CRC of nothing
  zip::append_u32(decoy, 0);
  zip::append_u32(decoy, 0);
  const std::string storage_name = "ckpt/data/0";
  zip::append_u32(decoy, zip::kLocalHeaderSignature);
  zip::append_u16(decoy, zip::kVersionDefault);
  zip::append_u16(decoy, 0);  // no flags: sizes in the header
  zip::append_u16(decoy, zip::kMethodStored);
  zip::append_u32(decoy, 0);  // time and date
  zip::append_u32(decoy, 0x12345678);
  zip::append_u32(decoy, static_cast<uint32_t>(kStorage.size()));
  zip::append_u32(decoy, static_cast<uint32_t>(kStorage.size()));
  zip::append_u16(decoy, static_cast<uint16_t>(storage_name.size()));
  zip::append_u16(decoy, 0);
  zip::append_bytes(decoy, storage_name);
  ASSERT_LE(decoy.size(), 64u) << "a metadata record holds at most 64 bytes";

  auto entries = multi_storage_entries(1);
  entries.insert(entries.begin() + 1, {"ckpt/.data/serialization_id", decoy});
  const Bytes input = archive(entries);
  MemorySource source(input);
  auto directory = read_zip_directory(source, ZipLimits{});
  ASSERT_TRUE(directory) << directory.error().describe();
  const ZipEntry* decoy_record = directory->find("ckpt/.data/serialization_id");
  const uint64_t decoy_data = decoy_record->data_offset + decoy.size();  // where the decoy header's data starts

  const auto reads = arriving_reads(input, nullptr);
  EXPECT_TRUE(std::any_of(reads.begin(), reads.end(), [&](const auto& read) {
    return read.first == decoy_data && read.second == kStorage.size();
  })) << "the walk did not follow the decoy, so this test shows nothing";
  Outcome result = run(input);  // compares with the finished file's rebuild
  ASSERT_EQ(result.report.verdict, Verdict::kClean) << result.report.error->describe();
  EXPECT_EQ(result.report.records[2].name, "archive/data/0");
  Bytes real_storage = kStorage;
  real_storage[0] = 1;
  EXPECT_EQ(result.report.records[2].sha256, Sha256::of(real_storage));
}

// `input` with the signature of its first entry's data descriptor removed (APPNOTE allows descriptors
// without one), and the offsets after it moved back. Not zip64.
Bytes without_first_descriptor_signature(const Bytes& input) {
  MemorySource source(input);
  auto directory = read_zip_directory(source, ZipLimits{});
  EXPECT_TRUE(directory) << directory.error().describe();
  const ZipEntry& first = directory->entries().front();
  const uint64_t signature = first.data_offset + first.size;
  EXPECT_EQ(zip::load_u32(&input[signature]), zip::kDataDescriptorSignature);
  Bytes out(input.begin(), input.begin() + static_cast<ptrdiff_t>(signature));
  out.insert(out.end(), input.begin() + static_cast<ptrdiff_t>(signature + 4), input.end());
  auto move_back = [&](size_t field) {
    uint32_t value = zip::load_u32(&out[field]) - 4;
    for (size_t i = 0; i < 4; ++i) out[field + i] = static_cast<uint8_t>(value >> (8 * i));
  };
  const size_t end_record = out.size() - zip::kEndOfCentralDirSize;
  size_t central = zip::load_u32(&out[end_record + 16]) - 4;
  move_back(end_record + 16);
  for (size_t i = 0; i < directory->entries().size(); ++i) {
    if (zip::load_u32(&out[central + zip::kCentralLocalHeaderOffset]) > signature) {
      move_back(central + zip::kCentralLocalHeaderOffset);
    }
    central += zip::kCentralHeaderSize + zip::load_u16(&out[central + zip::kCentralNameLength]) +
               zip::load_u16(&out[central + zip::kCentralExtraLength]) +
               zip::load_u16(&out[central + zip::kCentralCommentLength]);
  }
  return out;
}

// The walk follows only signed data descriptors (torch.save's). When data.pkl's has none, the walk
// gives up after parsing the pickle, and the directory's path rebuilds the file: the pickle's
// findings are reported once, as on a finished file.
TEST(Sanitize, AnArchiveTheWalkCannotFollowIsRebuiltFromItsDirectory) {
  auto entries = checkpoint_entries(state_dict_tree({GlobalValue{"os", "system"}}));
  const Bytes input = without_first_descriptor_signature(archive(entries));
  Outcome result = run(input);  // compares with the finished file's rebuild, findings included
  ASSERT_EQ(result.report.verdict, Verdict::kDisarmed) << result.report.error->describe();
  EXPECT_EQ(result.report.findings.size(), 1u);
}

// A data.pkl with bytes after its STOP opcode is refused whether or not the archive is still arriving
// (the arriving walk reads the pickle up to STOP; the directory then states a longer record).
TEST(Sanitize, BlocksBytesAfterThePickleInAnArrivingArchive) {
  auto entries = multi_storage_entries(2);
  entries[0].second.push_back('N');
  Outcome result = run(archive(entries));
  ASSERT_EQ(result.report.verdict, Verdict::kBlocked);
  EXPECT_EQ(result.report.error->code, ErrorCode::kParse) << result.report.error->describe();
}

// The legacy format, as Debian's PyTorch writes it, becomes a current archive; a byte appended after
// the last storage, or a storage cut short, blocks it.
// A legacy checkpoint from Debian's PyTorch: "w" (6 floats), "i" (2 int64) and a view of "w".
Bytes legacy_checkpoint() {
  auto python = testing::run_python(R"(
import sys, torch
state = {"w": torch.arange(6.0).reshape(2, 3), "i": torch.tensor([7, 8], dtype=torch.int64)}
state["v"] = state["w"][:, 1:]
torch.save(state, sys.argv[1] + "/legacy.pt", _use_new_zipfile_serialization=False)
sys.stdout.write(open(sys.argv[1] + "/legacy.pt", "rb").read().hex())
)");
  EXPECT_EQ(python.exit_code, 0) << python.output;
  return from_hex(python.output);
}

TEST(Sanitize, RebuildsLegacyFilesAndRefusesTamperedOnes) {
  const Bytes legacy = legacy_checkpoint();
  ASSERT_FALSE(legacy.empty());
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

// A legacy download still arriving is rebuilt storage by storage: the first storage is copied before
// the second one's element count is read (a finished file has all counts checked first).
TEST(Sanitize, RebuildsAnArrivingLegacyFileStorageByStorage) {
  const Bytes legacy = legacy_checkpoint();
  ASSERT_FALSE(legacy.empty());
  const auto reads = arriving_reads(legacy, nullptr);
  // The element counts are 8-byte reads of 6 ("w") and 2 ("i"); a storage's bytes follow its count.
  std::vector<size_t> count_reads;
  for (size_t i = 0; i < reads.size(); ++i) {
    const auto [offset, length] = reads[i];
    if (length != 8) continue;
    const uint64_t value = zip::load_u64(&legacy[offset]);
    if (value == 6 || value == 2) count_reads.push_back(i);
  }
  ASSERT_EQ(count_reads.size(), 2u);
  const uint64_t first_data = reads[count_reads[0]].first + 8;
  auto first_copy = std::find_if(reads.begin(), reads.end(), [&](const auto& read) {
    return read.first == first_data && read.second > 8;
  });
  ASSERT_NE(first_copy, reads.end());
  EXPECT_LT(static_cast<size_t>(first_copy - reads.begin()), count_reads[1]);
}

}  // namespace
}  // namespace zoogate::cdr

