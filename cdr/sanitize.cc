#include "cdr/sanitize.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <cstring>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <map>
#include <numeric>
#include <set>
#include <unordered_map>
#include <utility>

#include "cdr/detect.h"
#include "cdr/npy.h"
#include "cdr/pickle_vm.h"
#include "cdr/pickle_writer.h"
#include "cdr/safetensors.h"
#include "cdr/zip_reader.h"
#include "cdr/zip_writer.h"
#include "common/async_sha256.h"
#include "common/checked.h"

namespace zoogate::cdr {

std::string_view to_string(Verdict verdict) {
  switch (verdict) {
    case Verdict::kClean: return "clean";
    case Verdict::kDisarmed: return "disarmed";
    case Verdict::kBlocked: return "blocked";
  }
  return "blocked";
}

namespace {

// Records are copied in chunks of this size: large enough for full disk and hash speed, small enough
// that memory does not depend on the size of a tensor.
constexpr size_t kCopyChunk = 1 << 20;

// PyTorch's legacy format starts with this number, pickled on its own.
constexpr std::string_view kLegacyMagicLittleEndian = "\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19";
constexpr int64_t kLegacyProtocolVersion = 1001;

// The records a PyTorch archive may hold besides data.pkl and the storages it references. Their
// content is regenerated, never copied.
const std::set<std::string, std::less<>> kTorchMetadataRecords = {
    "version", ".data/version", "byteorder", ".data/serialization_id", ".format_version",
    ".storage_alignment"};

// Metadata records are regenerated and must be tiny: their content is a version number or a flag.
constexpr uint64_t kMaxMetadataRecordSize = 64;
// What a rebuilt archive's metadata records hold, as torch.save writes them.
constexpr std::string_view kByteorderRecord = "little";
constexpr std::string_view kVersionRecord = "3\n";

// Entry names that only TorchScript archives have.
bool is_torchscript_entry(std::string_view relative_name) {
  return relative_name == "constants.pkl" || relative_name.starts_with("code/") ||
         relative_name.starts_with("constants/") || relative_name.starts_with("extra/") ||
         relative_name == "bytecode.pkl";
}

std::span<const uint8_t> as_bytes(std::string_view text) {
  return {reinterpret_cast<const uint8_t*>(text.data()), text.size()};
}

class Stopwatch {
 public:
  double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }

 private:
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

// Adapts the open entry of a ZipWriter to the ByteSink interface.
class ZipEntrySink final : public ByteSink {
 public:
  explicit ZipEntrySink(ZipWriter& zip) : zip_(zip) {}
  uint64_t position() const override { return written_; }

 private:
  Status write_bytes(std::span<const uint8_t> bytes) override {
    written_ += bytes.size();
    return zip_.write(bytes);
  }
  ZipWriter& zip_;
  uint64_t written_ = 0;
};

// Where the bytes of one storage record come from in the input.
struct RecordSource {
  const ZipEntry* entry = nullptr;  // a zip entry, streamed (and CRC-checked) through ZipEntryStream
  uint64_t offset = 0;              // otherwise [offset, offset + size) of the input
  uint64_t size = 0;
};

// Reads a record's bytes front to back, from a zip entry (CRC-checked when the last byte has been
// read) or from a range of the input (CRC computed when `compute_crc`, for a caller to check).
class RecordReader {
 public:
  static Result<RecordReader> open(const ByteSource& input, const RecordSource& source, bool compute_crc = false) {
    RecordReader reader(input, source);
    reader.compute_crc_ = compute_crc;
    if (source.entry) {
      auto stream = ZipEntryStream::open(input, *source.entry);
      if (!stream) return tl::unexpected(stream.error());
      reader.stream_.emplace(std::move(*stream));
    }
    return reader;
  }

  // Fills a prefix of `out`; 0 at the end of the record.
  Result<size_t> read(std::span<uint8_t> out) {
    if (stream_) return stream_->read(out);
    size_t take = static_cast<size_t>(std::min<uint64_t>(out.size(), source_.size - done_));
    ZG_TRY(input_.read_at(source_.offset + done_, out.first(take)));
    if (compute_crc_) crc_ = zip::crc32_update(crc_, out.first(take));
    done_ += take;
    return take;
  }

  // CRC-32 of the bytes read so far: verified against the entry's for a zip entry, computed on request
  // for a range.
  uint32_t crc32() const { return stream_ ? stream_->crc32() : crc_; }

  Status read_exact(std::span<uint8_t> out) {
    while (!out.empty()) {
      auto got = read(out);
      if (!got) return tl::unexpected(got.error());
      if (*got == 0) return fail(ErrorCode::kParse, "record ends early");
      out = out.subspan(*got);
    }
    return {};
  }

 private:
  RecordReader(const ByteSource& input, const RecordSource& source) : input_(input), source_(source) {}
  const ByteSource& input_;
  RecordSource source_;
  std::optional<ZipEntryStream> stream_;
  uint64_t done_ = 0;
  bool compute_crc_ = false;
  uint32_t crc_ = 0;
};

// Where a rebuilt PyTorch archive's bytes go, by offset in the archive: front to back through the
// hashing sink, or, when storages are copied as the input delivers them, anywhere in a random-access
// sink whose content is hashed by reading it back once it is complete.
class ArchiveOutput {
 public:
  ArchiveOutput(HashingSink& in_order, RandomAccessSink* out_of_order)
      : in_order_(&in_order), out_of_order_(out_of_order), base_(in_order.position()) {}

  Status put(uint64_t offset, std::span<const uint8_t> bytes) {
    if (out_of_order_) return out_of_order_->write_at(base_ + offset, bytes);
    if (in_order_->position() != base_ + offset) {
      return fail(ErrorCode::kInternal, "archive record written out of order", offset);
    }
    return in_order_->write(bytes);
  }
  RandomAccessSink* out_of_order() const { return out_of_order_; }
  // Bytes of an out-of-order archive already written.
  Status read_back(uint64_t offset, std::span<uint8_t> out) const {
    if (!out_of_order_) return fail(ErrorCode::kInternal, "read back of an archive written in order", offset);
    return out_of_order_->read_back(base_ + offset, out);
  }

 private:
  HashingSink* in_order_;
  RandomAccessSink* out_of_order_;  // null: in order
  uint64_t base_;                   // where the archive starts in the sink
};

// The SHA-256 of an archive assembled out of order, taken front to back as far as the archive is
// complete, so that much of it is hashed while later records still arrive. It reads back what it
// hashes into a HashingSink, which hashes on a worker thread.
class AssembledDigest {
 public:
  // Hashes the archive's bytes from where the digest stands up to `end`; they must all be written.
  Status extend_to(const ArchiveOutput& output, uint64_t end) {
    while (hashing_.position() < end) {
      const uint64_t at = hashing_.position();
      const std::span<uint8_t> chunk(buffer_.data(), static_cast<size_t>(std::min<uint64_t>(buffer_.size(), end - at)));
      ZG_TRY(output.read_back(at, chunk));
      ZG_TRY(hashing_.write(chunk));
    }
    return {};
  }
  // The digest of the bytes hashed; the digest then starts over from the archive's first byte.
  Sha256::Digest finish() {
    discarded_ = DiscardSink();
    return hashing_.finish();
  }

 private:
  std::vector<uint8_t> buffer_ = std::vector<uint8_t>(kCopyChunk);
  DiscardSink discarded_;  // counts the bytes hashed
  HashingSink hashing_{discarded_};
};

// The data of one archive entry, put at its planned offset as it is written, with the CRC-32 of what
// passed when asked for.
class EntryDataSink final : public ByteSink {
 public:
  EntryDataSink(ArchiveOutput& output, uint64_t offset, bool compute_crc)
      : output_(output), offset_(offset), compute_crc_(compute_crc) {}
  uint64_t position() const override { return written_; }
  uint32_t crc32() const { return crc_; }

 private:
  Status write_bytes(std::span<const uint8_t> bytes) override {
    if (compute_crc_) crc_ = zip::crc32_update(crc_, bytes);
    ZG_TRY(output_.put(offset_ + written_, bytes));
    written_ += bytes.size();
    return {};
  }
  ArchiveOutput& output_;
  uint64_t offset_;
  bool compute_crc_;
  uint32_t crc_ = 0;
  uint64_t written_ = 0;
};

// One storage of a PyTorch checkpoint: the StorageRefValue node that names it and its bytes.
struct StorageRecord {
  NodeId node = 0;
  RecordSource source;
};

// A parsed PyTorch checkpoint (archive or legacy), ready to be written again.
struct TorchCheckpoint {
  PickleParse pickle;
  std::vector<StorageRecord> storages;  // in first-reference order
};

// A PyTorch archive being written: its plan and layout, fixed before any storage is copied so that
// storages can be copied in any order, and what has been written so far.
struct ArchiveRebuild {
  ArchiveOutput output;
  LayoutPlan plan;
  ZipLayout layout;                      // data.pkl, byteorder, the storages in plan order, version
  std::vector<size_t> entry_of_storage;  // layout entry of each storage
  std::vector<uint32_t> crcs;            // by layout entry
  std::vector<Sha256::Digest> digests;   // by layout entry
  std::vector<bool> written;             // by layout entry: header, data and descriptor are in place
  // By storage: where its bytes were copied from and their CRC-32 (unset: not copied yet).
  struct Copied {
    RecordSource source;
    uint32_t crc32 = 0;
  };
  std::vector<std::optional<Copied>> copied;
  // Out of order only: the digest of the complete front of the archive, which covers the entries
  // before `entries_hashed`.
  std::unique_ptr<AssembledDigest> digest;
  size_t entries_hashed = 0;
};

// A PyTorch archive rebuilt while its input still arrives: data.pkl read from the first local record,
// before the central directory, and the storages copied as their records arrive. Everything taken
// from local headers is confirmed against the central directory at the end.
struct ArrivingArchive {
  std::string prefix;           // "<top folder>/"
  uint64_t pickle_offset = 0;   // data.pkl's data in the input
  uint64_t pickle_size = 0;
  uint32_t pickle_crc = 0;
  uint64_t next_record = 0;     // where the record after data.pkl starts
  TorchCheckpoint checkpoint;
  std::vector<std::string> storage_names;  // the input's record name of each storage
  std::optional<ArchiveRebuild> rebuild;
};

// The engine's working state for one input: the report it fills and the policy it applies.
class Sanitizer {
 public:
  // `random_output`, when given, is the sink run() writes to, seen as random-access.
  Sanitizer(const ByteSource& input, const Policy& policy, const SanitizeOptions& options, SanitizeReport& report,
            RandomAccessSink* random_output)
      : input_(input), policy_(policy), options_(options), report_(report), random_output_(random_output) {}

  Status run(ByteSink& output);

 private:
  Status sanitize_zip(HashingSink& output);
  // `arriving`: the archive was rebuilt while it arrived, to be confirmed and completed; else null.
  Status sanitize_torch_archive(const ZipDirectory& directory, HashingSink& output, ArrivingArchive* arriving);
  // The storages of an archive's pickle, each with its expected size; returns their record names.
  Result<std::vector<std::string>> collect_archive_storages(TorchCheckpoint& checkpoint, const std::string& prefix);
  // Points each storage at its directory entry and checks that every entry is accounted for.
  Status check_archive_entries(const ZipDirectory& directory, const std::string& prefix,
                               const std::vector<std::string>& storage_names, TorchCheckpoint& checkpoint);
  // data.pkl from the first local record, when the input starts with one the walk can follow.
  std::optional<ArrivingArchive> read_leading_pickle();
  // Copies the storages whose local records arrive after data.pkl.
  Status copy_arriving_storages(ArrivingArchive& archive);
  Status sanitize_legacy(HashingSink& output);
  Status sanitize_plain_pickle(HashingSink& output);
  Status sanitize_npy(HashingSink& output);
  Status sanitize_npz(const ZipDirectory& directory, HashingSink& output);
  Status sanitize_safetensors(HashingSink& output);

  // Parses one pickle and, when `report`, adds the globals it named and what it disarmed to the report.
  Result<PickleParse> parse(const ByteSource& source, PersistentIdMode mode, std::string record_name,
                            bool allow_trailing_bytes = false, bool report = true);
  void report_parse(const PickleParse& parsed);
  Result<std::vector<StorageRecord>> collect_storages(
      ValueTree& tree, const std::function<Result<RecordSource>(const StorageRefValue&)>& locate);
  Status write_torch_archive(TorchCheckpoint& checkpoint, HashingSink& output);
  // Plans the archive and writes data.pkl and byteorder.
  Result<ArchiveRebuild> begin_archive(TorchCheckpoint& checkpoint, ArchiveOutput output);
  // Writes storage `index` (header, data from `source`, descriptor) at its planned place.
  Status copy_storage(ArchiveRebuild& rebuild, const TorchCheckpoint& checkpoint, size_t index,
                      const RecordSource& source);
  // Writes version and the central directory once every storage is in; records, digest.
  Status finish_archive(ArchiveRebuild& rebuild);
  Status put_small_entry(ArchiveRebuild& rebuild, size_t entry, std::span<const uint8_t> bytes);
  // True when the input still arrives and the output can be assembled out of order: a checkpoint's
  // storages are then copied as they arrive.
  bool rebuilds_as_input_arrives() const {
    return random_output_ && options_.input_arrives_in_order && options_.format == OutputFormat::kNative;
  }
  // Out of order: extends the archive's digest over the entries complete from the front.
  Status hash_complete_front(ArchiveRebuild& rebuild);
  Result<LayoutPlan> plan_layout(const ValueTree& tree, const std::vector<StorageRecord>& storages);
  static Status validate_plan(const LayoutPlan& plan, const std::vector<StorageInfo>& storages);
  Status write_safetensors_from(const TorchCheckpoint& checkpoint, HashingSink& output);
  // Streams a record's bytes from the input into `sink`, returning the SHA-256 of what was written;
  // `input_crc`, when given, receives the CRC-32 of the bytes read.
  Result<Sha256::Digest> copy_record(const RecordSource& source, ByteSink& sink, uint32_t* input_crc = nullptr);
  Result<Sha256::Digest> copy_rewritten_record(const RecordSource& source, const StorageRewrite& rewrite,
                                               uint64_t element_size, ByteSink& sink, uint32_t* input_crc);
  // Reads chunks with `read` (0 at the end) and hands each to `write`, hashing them on the worker
  // thread meanwhile: the SHA-256 of all chunks.
  template <typename Read, typename Write>
  Result<Sha256::Digest> hash_chunks(Read&& read, Write&& write);
  void add_record(std::string name, uint64_t size, const Sha256::Digest& digest) {
    report_.records.push_back(RecordDigest{std::move(name), size, digest});
  }

  const ByteSource& input_;
  const Policy& policy_;
  const SanitizeOptions& options_;
  SanitizeReport& report_;
  RandomAccessSink* random_output_;
  std::optional<Sha256::Digest> assembled_sha256_;  // of output assembled out of order, read back
  std::vector<uint8_t> copy_buffers_[2] = {std::vector<uint8_t>(kCopyChunk), std::vector<uint8_t>(kCopyChunk)};
  AsyncSha256 record_hash_;
};

Result<PickleParse> Sanitizer::parse(const ByteSource& source, PersistentIdMode mode, std::string record_name,
                                     bool allow_trailing_bytes, bool report) {
  PickleParseOptions options;
  options.persistent_ids = mode;
  options.record_name = std::move(record_name);
  options.allow_trailing_bytes = allow_trailing_bytes;
  auto parsed = parse_pickle(source, policy_, options);
  if (!parsed) return tl::unexpected(parsed.error().with_context(options.record_name));
  if (report) report_parse(*parsed);
  return parsed;
}

void Sanitizer::report_parse(const PickleParse& parsed) {
  for (const auto& global : parsed.globals_seen) {
    if (std::find(report_.globals.begin(), report_.globals.end(), global) == report_.globals.end()) {
      report_.globals.push_back(global);
    }
  }
  report_.findings.insert(report_.findings.end(), parsed.findings.begin(), parsed.findings.end());
}

Status Sanitizer::run(ByteSink& raw_output) {
  auto detection = identify_content(input_);
  if (!detection) return tl::unexpected(detection.error());
  report_.container = std::string(to_string(detection->kind));
  HashingSink output(raw_output);
  Status status;
  switch (detection->kind) {
    case ContentKind::kZip: status = sanitize_zip(output); break;
    case ContentKind::kTorchLegacy: status = sanitize_legacy(output); break;
    case ContentKind::kPickle: status = sanitize_plain_pickle(output); break;
    case ContentKind::kNpy: status = sanitize_npy(output); break;
    case ContentKind::kSafetensors: status = sanitize_safetensors(output); break;
    case ContentKind::kTorchTar:
      return fail(ErrorCode::kUnsupported,
                  "PyTorch's pre-1.6 tar checkpoint format is not accepted; re-save the model with a current "
                  "PyTorch (" + detection->reason + ")");
    default:
      return fail(ErrorCode::kUnsupported, "not a model format zoogate can rebuild: " + detection->reason);
  }
  ZG_TRY(status);
  report_.output_size = raw_output.position();
  report_.output_sha256 = assembled_sha256_ ? *assembled_sha256_ : output.finish();
  return {};
}

Status Sanitizer::sanitize_zip(HashingSink& output) {
  // A download still arriving is followed record by record, so that the storages are rebuilt while
  // it arrives; the central directory, at the end, then confirms what the local headers said.
  std::optional<ArrivingArchive> arriving;
  if (rebuilds_as_input_arrives()) {
    arriving = read_leading_pickle();
    if (arriving) {
      auto rebuild = begin_archive(arriving->checkpoint, ArchiveOutput(output, random_output_));
      if (!rebuild) return tl::unexpected(rebuild.error());
      arriving->rebuild.emplace(std::move(*rebuild));
      ZG_TRY(copy_arriving_storages(*arriving));
    }
  }
  auto directory = read_zip_directory(input_, ZipLimits::from(policy_.limits));
  if (!directory) return tl::unexpected(directory.error());
  // An arriving archive's first record has a top folder, and the directory agrees with its records.
  if (directory->top_folder().empty() && !arriving) return sanitize_npz(*directory, output);
  for (const auto& entry : directory->entries()) {
    std::string_view relative = std::string_view(entry.name).substr(directory->top_folder().size() + 1);
    if (is_torchscript_entry(relative)) {
      report_.container = "torchscript";
      return fail(ErrorCode::kUnsupported,
                  "TorchScript archives hold code (entry " + entry.name +
                      ") and are never accepted; export the weights with torch.save(model.state_dict())");
    }
  }
  if (!directory->find(directory->top_folder() + "/data.pkl")) {
    return fail(ErrorCode::kUnsupported, "zip archive without " + directory->top_folder() +
                                             "/data.pkl is not a PyTorch checkpoint");
  }
  report_.container = "torch-zip";
  return sanitize_torch_archive(*directory, output, arriving ? &*arriving : nullptr);
}

Result<std::vector<StorageRecord>> Sanitizer::collect_storages(
    ValueTree& tree, const std::function<Result<RecordSource>(const StorageRefValue&)>& locate) {
  std::vector<StorageRecord> storages;
  for (NodeId id : reachable_nodes(tree)) {
    auto* storage = std::get_if<StorageRefValue>(&tree.at(id));
    if (!storage) continue;
    auto expected_size = checked_mul(storage->numel, storage_element_size(storage->type));
    if (!expected_size) return fail(ErrorCode::kParse, "storage " + storage->key + " size overflows");
    auto source = locate(*storage);
    if (!source) return tl::unexpected(source.error());
    if (source->size != *expected_size) {
      return fail(ErrorCode::kParse, "storage " + storage->key + " holds " + std::to_string(source->size) +
                                         " bytes but its " + std::to_string(storage->numel) + " " +
                                         storage_type_name(storage->type) + " elements need " +
                                         std::to_string(*expected_size));
    }
    storages.push_back(StorageRecord{id, *source});
  }
  return storages;
}

Result<std::vector<std::string>> Sanitizer::collect_archive_storages(TorchCheckpoint& checkpoint,
                                                                     const std::string& prefix) {
  // The records are found later (in the directory, or as they arrive); until then each storage's
  // source holds only the size its elements need.
  std::vector<std::string> names;
  auto storages = collect_storages(checkpoint.pickle.tree, [&](const StorageRefValue& storage) -> Result<RecordSource> {
    names.push_back(prefix + "data/" + storage.key);
    return RecordSource{nullptr, 0, storage.numel * storage_element_size(storage.type)};  // checked by the caller
  });
  if (!storages) return tl::unexpected(storages.error());
  checkpoint.storages = std::move(*storages);
  return names;
}

Status Sanitizer::check_archive_entries(const ZipDirectory& directory, const std::string& prefix,
                                        const std::vector<std::string>& storage_names, TorchCheckpoint& checkpoint) {
  std::set<std::string_view> referenced;
  for (size_t i = 0; i < checkpoint.storages.size(); ++i) {
    const std::string& name = storage_names[i];
    const ZipEntry* entry = directory.find(name);
    if (!entry) return fail(ErrorCode::kParse, "the pickle references storage " + name + ", which is missing");
    RecordSource& source = checkpoint.storages[i].source;
    if (entry->size != source.size) {
      // Named by its record: a rebuild that started while the archive arrived has renamed the key.
      const auto& storage = std::get<StorageRefValue>(checkpoint.pickle.tree.at(checkpoint.storages[i].node));
      return fail(ErrorCode::kParse, "storage " + name + " holds " + std::to_string(entry->size) +
                                         " bytes but its " + std::to_string(storage.numel) + " " +
                                         storage_type_name(storage.type) + " elements need " +
                                         std::to_string(source.size));
    }
    source = RecordSource{entry, entry->data_offset, entry->size};
    referenced.insert(entry->name);
  }
  // Every entry must be accounted for: data.pkl, a referenced storage, or a known metadata record.
  for (const auto& entry : directory.entries()) {
    std::string_view relative = std::string_view(entry.name).substr(prefix.size());
    if (relative == "data.pkl" || referenced.contains(entry.name)) continue;
    if (kTorchMetadataRecords.contains(relative)) {
      if (entry.size > kMaxMetadataRecordSize) {
        return fail(ErrorCode::kParse, "metadata record " + entry.name + " is too large");
      }
      continue;
    }
    return fail(ErrorCode::kForbidden, "entry " + entry.name +
                                           " is neither the pickle, a storage it references, nor a known "
                                           "metadata record");
  }
  if (const ZipEntry* byteorder = directory.find(prefix + "byteorder")) {
    auto content = input_.read_vector(byteorder->data_offset, static_cast<size_t>(byteorder->compressed_size));
    if (!content) return tl::unexpected(content.error());
    if (byteorder->method != 0 || std::string(content->begin(), content->end()) != "little") {
      return fail(ErrorCode::kUnsupported, "only little-endian PyTorch archives are accepted");
    }
  }
  return {};
}

Status Sanitizer::sanitize_torch_archive(const ZipDirectory& directory, HashingSink& output,
                                         ArrivingArchive* arriving) {
  Stopwatch parse_time;
  const std::string prefix = directory.top_folder() + "/";
  const ZipEntry* pickle_entry = directory.find(prefix + "data.pkl");
  TorchCheckpoint parsed_here;
  TorchCheckpoint& checkpoint = arriving ? arriving->checkpoint : parsed_here;
  std::vector<std::string> storage_names;
  if (arriving) {
    // The pickle already parsed must be exactly the directory's data.pkl.
    if (arriving->prefix != prefix || pickle_entry->method != zip::kMethodStored ||
        pickle_entry->data_offset != arriving->pickle_offset || pickle_entry->size != arriving->pickle_size ||
        pickle_entry->crc32 != arriving->pickle_crc) {
      return fail(ErrorCode::kParse, prefix + "data.pkl in the central directory is not the pickle that the first "
                                              "local record holds (bytes after its STOP opcode?)",
                  pickle_entry->local_header_offset);
    }
    storage_names = arriving->storage_names;
  } else {
    if (pickle_entry->size > policy_.limits.max_pickle_size) {
      return fail(ErrorCode::kLimitExceeded, prefix + "data.pkl is " + std::to_string(pickle_entry->size) +
                                                 " bytes, above max_pickle_size " +
                                                 std::to_string(policy_.limits.max_pickle_size));
    }
    // The pickle is small next to the storages and is parsed from memory; CRC checked on the way in.
    std::vector<uint8_t> pickle_bytes(pickle_entry->size);
    {
      auto reader =
          RecordReader::open(input_, RecordSource{pickle_entry, pickle_entry->data_offset, pickle_entry->size});
      if (!reader) return tl::unexpected(reader.error());
      ZG_TRY(reader->read_exact(pickle_bytes));
      std::array<uint8_t, 1> beyond;
      auto tail = reader->read(beyond);  // completes the stream: its CRC check
      if (!tail) return tl::unexpected(tail.error());
    }
    MemorySource pickle_source(pickle_bytes);
    auto parsed = parse(pickle_source, PersistentIdMode::kTorchArchive, prefix + "data.pkl");
    if (!parsed) return tl::unexpected(parsed.error());
    checkpoint.pickle = std::move(*parsed);
    auto names = collect_archive_storages(checkpoint, prefix);
    if (!names) return tl::unexpected(names.error());
    storage_names = std::move(*names);
  }
  ZG_TRY(check_archive_entries(directory, prefix, storage_names, checkpoint));
  report_.parse_seconds += parse_time.seconds();
  if (!arriving) {
    return options_.format == OutputFormat::kSafetensors ? write_safetensors_from(checkpoint, output)
                                                         : write_torch_archive(checkpoint, output);
  }
  // A storage copied from the record the directory names, with the directory's CRC, stays; any other
  // is copied (again) from the directory's entry.
  ArchiveRebuild& rebuild = *arriving->rebuild;
  for (size_t i = 0; i < checkpoint.storages.size(); ++i) {
    const RecordSource& source = checkpoint.storages[i].source;
    const auto& copied = rebuild.copied[i];
    if (copied && source.entry->method == zip::kMethodStored && copied->source.offset == source.offset &&
        copied->source.size == source.size && copied->crc32 == source.entry->crc32) {
      continue;
    }
    ZG_TRY(copy_storage(rebuild, checkpoint, i, source));
  }
  return finish_archive(rebuild);
}

std::optional<ArrivingArchive> Sanitizer::read_leading_pickle() {
  Stopwatch parse_time;
  constexpr std::string_view kPickleName = "data.pkl";
  auto header = read_local_header(input_, 0);
  if (!header || header->method != zip::kMethodStored || !header->name.ends_with(kPickleName)) return std::nullopt;
  ArrivingArchive archive;
  archive.prefix = header->name.substr(0, header->name.size() - kPickleName.size());
  if (archive.prefix.size() < 2 || archive.prefix.find('/') != archive.prefix.size() - 1) return std::nullopt;
  // Without a data descriptor the header states the pickle's size; with one (torch.save), the pickle
  // ends at its STOP opcode, and the directory confirms that length at the end.
  const uint64_t available = input_.size() - header->data_offset;
  const uint64_t window = std::min({header->size.value_or(available), available, policy_.limits.max_pickle_size});
  if (header->size && *header->size != window) return std::nullopt;
  SubSource pickle_window(input_, header->data_offset, window);
  // Reported only once the walk can use it: otherwise the directory's path parses it again.
  auto parsed = parse(pickle_window, PersistentIdMode::kTorchArchive, header->name, !header->size.has_value(),
                      /*report=*/false);
  if (!parsed) return std::nullopt;
  archive.pickle_offset = header->data_offset;
  archive.pickle_size = parsed->end_offset;
  for (uint64_t done = 0; done < archive.pickle_size;) {
    std::span<uint8_t> chunk(copy_buffers_[0].data(),
                             static_cast<size_t>(std::min<uint64_t>(kCopyChunk, archive.pickle_size - done)));
    if (!input_.read_at(archive.pickle_offset + done, chunk)) return std::nullopt;
    archive.pickle_crc = zip::crc32_update(archive.pickle_crc, chunk);
    done += chunk.size();
  }
  auto next_record = local_record_end(input_, *header, archive.pickle_size);
  if (!next_record) return std::nullopt;
  archive.next_record = *next_record;
  archive.checkpoint.pickle = std::move(*parsed);
  auto names = collect_archive_storages(archive.checkpoint, archive.prefix);
  if (!names) return std::nullopt;
  archive.storage_names = std::move(*names);
  report_parse(archive.checkpoint.pickle);
  report_.parse_seconds = parse_time.seconds();
  return archive;
}

Status Sanitizer::copy_arriving_storages(ArrivingArchive& archive) {
  std::map<std::string_view, size_t> storage_by_name;
  for (size_t i = 0; i < archive.storage_names.size(); ++i) storage_by_name.emplace(archive.storage_names[i], i);
  // Each step waits for one record's bytes. The walk stops, leaving the rest to the directory, at the
  // first record it cannot follow; it never decides anything about the archive.
  for (uint64_t records = 1, at = archive.next_record; records < policy_.limits.max_zip_entries; ++records) {
    auto header = read_local_header(input_, at);
    if (!header || header->method != zip::kMethodStored) return {};
    auto storage = storage_by_name.find(header->name);
    const bool wanted = storage != storage_by_name.end() && !archive.rebuild->copied[storage->second];
    uint64_t size = 0;
    if (wanted) {
      size = archive.checkpoint.storages[storage->second].source.size;
    } else if (header->size) {
      size = *header->size;
    } else {
      auto found = find_small_stored_size(input_, *header, kMaxMetadataRecordSize);
      if (!found) return {};
      size = *found;
    }
    if (header->size && (*header->size != size || header->compressed_size != header->size)) return {};
    if (!range_fits(header->data_offset, size, input_.size())) return {};
    if (wanted) {
      ZG_TRY(copy_storage(*archive.rebuild, archive.checkpoint, storage->second,
                          RecordSource{nullptr, header->data_offset, size}));
    }
    auto end = local_record_end(input_, *header, size);
    if (!end) return {};
    at = *end;
  }
  return {};
}

Status Sanitizer::sanitize_legacy(HashingSink& output) {
  Stopwatch parse_time;
  report_.container = "torch-legacy";
  uint64_t offset = 0;
  // Each part of the legacy stream is a pickle of its own, parsed one after the other.
  auto next_part = [&](PersistentIdMode mode, const char* what) -> Result<PickleParse> {
    SubSource rest(input_, offset, input_.size() - offset);
    auto part = parse(rest, mode, std::string("legacy ") + what, /*allow_trailing_bytes=*/true);
    if (!part) {
      Error error = part.error();
      if (error.offset) *error.offset += offset;
      return tl::unexpected(error);
    }
    offset += part->end_offset;
    return part;
  };
  // The header parts are fixed data; anything callable in them is an attack, never a model.
  auto plain_part = [&](const char* what) -> Result<PickleParse> {
    uint64_t start = offset;
    auto part = next_part(PersistentIdMode::kNone, what);
    if (part && (!part->findings.empty() || !part->globals_seen.empty())) {
      return fail(ErrorCode::kForbidden, std::string("the legacy ") + what + " must be plain data", start);
    }
    return part;
  };

  auto magic = plain_part("magic number");
  if (!magic) return tl::unexpected(magic.error());
  const auto* magic_value = std::get_if<IntValue>(&magic->tree.at(magic->tree.root));
  if (!magic_value || magic_value->big != kLegacyMagicLittleEndian) {
    return fail(ErrorCode::kParse, "the first pickle is not PyTorch's legacy magic number", 0);
  }
  auto version = plain_part("protocol version");
  if (!version) return tl::unexpected(version.error());
  const auto* version_value = std::get_if<IntValue>(&version->tree.at(version->tree.root));
  if (!version_value || !version_value->big.empty() || version_value->small != kLegacyProtocolVersion) {
    return fail(ErrorCode::kUnsupported, "unknown legacy protocol version");
  }
  auto system_info = plain_part("system info");
  if (!system_info) return tl::unexpected(system_info.error());
  const ValueTree& info_tree = system_info->tree;
  const auto* info = std::get_if<DictValue>(&info_tree.at(info_tree.root));
  if (!info) return fail(ErrorCode::kParse, "legacy system info is not a dict");
  for (const auto& [key, item] : info->items) {
    const auto* name = std::get_if<StrValue>(&info_tree.at(key));
    if (!name || name->utf8 != "little_endian") continue;
    const bool* little_endian = std::get_if<bool>(&info_tree.at(item));
    if (!little_endian || !*little_endian) {
      return fail(ErrorCode::kUnsupported, "only little-endian legacy checkpoints are accepted");
    }
  }

  TorchCheckpoint checkpoint;
  auto main_pickle = next_part(PersistentIdMode::kTorchLegacy, "main pickle");
  if (!main_pickle) return tl::unexpected(main_pickle.error());
  checkpoint.pickle = std::move(*main_pickle);

  auto key_list = plain_part("storage key list");
  if (!key_list) return tl::unexpected(key_list.error());
  const auto* keys = std::get_if<ListValue>(&key_list->tree.at(key_list->tree.root));
  if (!keys) return fail(ErrorCode::kParse, "legacy storage key list is not a list", offset);

  // The raw storages follow in key-list order, each an int64 element count and then the bytes. The
  // element count and size come from the storage reference in the main pickle, so every storage's
  // place is known before its bytes arrive; its stated count is checked against them.
  std::map<std::string, const StorageRefValue*, std::less<>> referenced;
  for (NodeId id : reachable_nodes(checkpoint.pickle.tree)) {
    if (const auto* storage = std::get_if<StorageRefValue>(&checkpoint.pickle.tree.at(id))) {
      referenced.emplace(storage->key, storage);
    }
  }
  struct LegacyRecord {
    std::string key;
    uint64_t count_offset = 0;
    uint64_t numel = 0;
  };
  std::vector<LegacyRecord> in_file_order;
  std::map<std::string, RecordSource, std::less<>> located;
  for (NodeId key_node : keys->items) {
    const auto* key = std::get_if<StrValue>(&key_list->tree.at(key_node));
    if (!key) return fail(ErrorCode::kParse, "legacy storage key is not a str", offset);
    auto storage = referenced.find(key->utf8);
    if (storage == referenced.end()) {
      return fail(ErrorCode::kParse, "legacy storage " + key->utf8 + " is not referenced by the pickle", offset);
    }
    auto size = checked_mul(storage->second->numel, storage_element_size(storage->second->type));
    auto end = size ? checked_add(offset + 8, *size) : std::nullopt;
    if (!end || *end > input_.size()) return fail(ErrorCode::kParse, "legacy storage " + key->utf8 + " is truncated", offset);
    if (!located.emplace(key->utf8, RecordSource{nullptr, offset + 8, *size}).second) {
      return fail(ErrorCode::kParse, "legacy storage " + key->utf8 + " appears twice", offset);
    }
    in_file_order.push_back(LegacyRecord{key->utf8, offset, storage->second->numel});
    offset = *end;
  }
  if (offset != input_.size()) {
    return fail(ErrorCode::kParse, "unexpected bytes after the last legacy storage", offset);
  }
  auto storages = collect_storages(checkpoint.pickle.tree, [&](const StorageRefValue& storage)
                                                               -> Result<RecordSource> {
    auto found = located.find(storage.key);
    if (found == located.end()) {
      return fail(ErrorCode::kParse, "legacy storage " + storage.key + " has no data");
    }
    return found->second;
  });
  if (!storages) return tl::unexpected(storages.error());
  checkpoint.storages = std::move(*storages);
  auto check_count = [&](const LegacyRecord& record) -> Status {
    uint8_t count_bytes[8];
    ZG_TRY(input_.read_at(record.count_offset, count_bytes));
    uint64_t count = 0;
    for (int i = 7; i >= 0; --i) count = count << 8 | count_bytes[i];
    if (count != record.numel) {
      return fail(ErrorCode::kParse, "legacy storage " + record.key + " holds " + std::to_string(count) +
                                         " elements, the pickle says " + std::to_string(record.numel),
                  record.count_offset);
    }
    return {};
  };
  report_.parse_seconds = parse_time.seconds();
  if (rebuilds_as_input_arrives()) {
    // A download still arriving: each storage is copied to its planned place as it comes in.
    std::map<std::string, size_t, std::less<>> storage_of_key;  // before the rebuild renames the keys
    for (size_t i = 0; i < checkpoint.storages.size(); ++i) {
      storage_of_key.emplace(std::get<StorageRefValue>(checkpoint.pickle.tree.at(checkpoint.storages[i].node)).key, i);
    }
    auto rebuild = begin_archive(checkpoint, ArchiveOutput(output, random_output_));
    if (!rebuild) return tl::unexpected(rebuild.error());
    for (const LegacyRecord& record : in_file_order) {
      ZG_TRY(check_count(record));
      auto storage = storage_of_key.find(record.key);
      if (storage == storage_of_key.end()) return fail(ErrorCode::kInternal, "legacy storage " + record.key + " lost");
      ZG_TRY(copy_storage(*rebuild, checkpoint, storage->second, checkpoint.storages[storage->second].source));
    }
    for (size_t i = 0; i < checkpoint.storages.size(); ++i) {  // views that name a storage key twice
      if (!rebuild->copied[i]) ZG_TRY(copy_storage(*rebuild, checkpoint, i, checkpoint.storages[i].source));
    }
    return finish_archive(*rebuild);
  }
  for (const LegacyRecord& record : in_file_order) ZG_TRY(check_count(record));
  return options_.format == OutputFormat::kSafetensors ? write_safetensors_from(checkpoint, output)
                                                       : write_torch_archive(checkpoint, output);
}

Status Sanitizer::sanitize_plain_pickle(HashingSink& output) {
  Stopwatch parse_time;
  if (input_.size() > policy_.limits.max_pickle_size) {
    return fail(ErrorCode::kLimitExceeded, "pickle is " + std::to_string(input_.size()) +
                                               " bytes, above max_pickle_size " +
                                               std::to_string(policy_.limits.max_pickle_size));
  }
  auto parsed = parse(input_, PersistentIdMode::kNone, "pickle");
  if (!parsed) return tl::unexpected(parsed.error());
  report_.parse_seconds = parse_time.seconds();
  if (options_.format == OutputFormat::kSafetensors) {
    return fail(ErrorCode::kUnsupported, "a plain pickle holds no PyTorch tensors to convert to safetensors");
  }
  Stopwatch write_time;
  report_.output_format = "pickle";
  auto plan = plan_layout(parsed->tree, {});
  if (!plan) return tl::unexpected(plan.error());
  PickleWriteOptions write_options;
  write_options.persistent_ids = PersistentIdStyle::kNone;
  write_options.seed = plan->pickle_seed;
  ZG_TRY(write_pickle(parsed->tree, write_options, output));
  report_.write_seconds = write_time.seconds();
  return {};
}

template <typename Read, typename Write>
Result<Sha256::Digest> Sanitizer::hash_chunks(Read&& read, Write&& write) {
  // Two buffers take turns: while one is hashed on the worker thread and written out here, the next
  // chunk is read into the other. The digest then costs no time on this thread.
  uint64_t tickets[2] = {0, 0};
  auto drain = [&] { record_hash_.finish(); };  // the worker must be done with the buffers
  for (size_t turn = 0;; turn ^= 1) {
    std::vector<uint8_t>& buffer = copy_buffers_[turn];
    record_hash_.wait_for(tickets[turn]);
    Result<size_t> got = read(std::span<uint8_t>(buffer));
    if (!got) return drain(), tl::unexpected(got.error());
    if (*got == 0) break;
    std::span<const uint8_t> chunk(buffer.data(), *got);
    tickets[turn] = record_hash_.update(chunk);
    if (Status written = write(chunk); !written) return drain(), tl::unexpected(written.error());
  }
  return record_hash_.finish();
}

Result<Sha256::Digest> Sanitizer::copy_record(const RecordSource& source, ByteSink& sink, uint32_t* input_crc) {
  auto reader = RecordReader::open(input_, source, input_crc != nullptr);
  if (!reader) return tl::unexpected(reader.error());
  auto digest = hash_chunks([&](std::span<uint8_t> out) { return reader->read(out); },
                            [&](std::span<const uint8_t> chunk) { return sink.write(chunk); });
  if (input_crc) *input_crc = reader->crc32();
  return digest;
}

// gathered[j] = slab[source_index[j]] for slices of `width` bytes. Column permutations have slices of a
// single element, so the common element widths get a loop the compiler can keep in registers.
template <typename Element>
void gather_elements(std::span<const uint8_t> slab, const std::vector<uint32_t>& source_index, uint8_t* out) {
  for (size_t j = 0; j < source_index.size(); ++j) {
    Element element;
    std::memcpy(&element, slab.data() + size_t{source_index[j]} * sizeof(Element), sizeof(Element));
    std::memcpy(out + j * sizeof(Element), &element, sizeof(Element));
  }
}

void gather_slices(std::span<const uint8_t> slab, const std::vector<uint32_t>& source_index, uint64_t width,
                   std::vector<uint8_t>& gathered) {
  switch (width) {
    case 1: return gather_elements<uint8_t>(slab, source_index, gathered.data());
    case 2: return gather_elements<uint16_t>(slab, source_index, gathered.data());
    case 4: return gather_elements<uint32_t>(slab, source_index, gathered.data());
    case 8: return gather_elements<uint64_t>(slab, source_index, gathered.data());
    default:
      for (size_t j = 0; j < source_index.size(); ++j) {
        std::memcpy(gathered.data() + j * width, slab.data() + source_index[j] * width, width);
      }
  }
}

Result<Sha256::Digest> Sanitizer::copy_rewritten_record(const RecordSource& source, const StorageRewrite& rewrite,
                                                        uint64_t element_size, ByteSink& sink, uint32_t* input_crc) {
  // The storage is [outer, shape[axis], inner] elements; each outer slab is read whole, its slices
  // gathered in the new order, and written: memory is two slabs, never the file.
  uint64_t outer = 1;
  uint64_t inner = element_size;
  for (size_t dim = 0; dim < rewrite.shape.size(); ++dim) {
    if (dim < rewrite.axis) outer *= rewrite.shape[dim];
    if (dim > rewrite.axis) inner *= rewrite.shape[dim];
  }
  const uint64_t slices = rewrite.shape[rewrite.axis];
  std::vector<uint8_t> slab(static_cast<size_t>(slices * inner));
  std::vector<uint8_t> gathered(slab.size());
  auto reader = RecordReader::open(input_, source, input_crc != nullptr);
  if (!reader) return tl::unexpected(reader.error());
  Sha256 hash;
  for (uint64_t block = 0; block < outer; ++block) {
    ZG_TRY(reader->read_exact(slab));
    gather_slices(slab, rewrite.source_index, inner, gathered);
    hash.update(gathered);
    ZG_TRY(sink.write(gathered));
  }
  auto tail = reader->read(copy_buffers_[0]);  // lets a zip stream verify its CRC at the end
  if (!tail) return tl::unexpected(tail.error());
  if (input_crc) *input_crc = reader->crc32();
  return hash.finish();
}

Result<LayoutPlan> Sanitizer::plan_layout(const ValueTree& tree, const std::vector<StorageRecord>& storages) {
  std::vector<StorageInfo> infos;
  for (const auto& record : storages) {
    const auto& storage = std::get<StorageRefValue>(tree.at(record.node));
    infos.push_back(StorageInfo{record.node, storage.type, storage.numel, record.source.size});
  }
  LayoutPlan plan;
  if (options_.layout) {
    auto planned = options_.layout->plan(tree, infos);
    if (!planned) return tl::unexpected(planned.error());
    plan = std::move(*planned);
  }
  if (plan.storage_order.empty()) {
    // By the names written, as torch.save orders its records: a file it wrote arrives in this order
    // (its names are the canonical ones), and the order does not depend on the input's own names, so
    // that a rebuilt file rebuilds to the same bytes.
    std::vector<std::string> names = plan.storage_keys;
    for (size_t i = names.size(); i < storages.size(); ++i) names.push_back(std::to_string(i));
    plan.storage_order = torch_save_order(names);
  }
  ZG_TRY(validate_plan(plan, infos));
  return plan;
}

// A plan comes from another module; a wrong one would corrupt the model, so it is checked like input.
Status Sanitizer::validate_plan(const LayoutPlan& plan, const std::vector<StorageInfo>& storages) {
  const size_t count = storages.size();
  auto is_safe_name = [](std::string_view name) {
    return !name.empty() && name.size() <= 64 && std::all_of(name.begin(), name.end(), [](char c) {
      return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
    });
  };
  if (!is_safe_name(plan.archive_folder)) return fail(ErrorCode::kInternal, "layout plan: bad archive folder");
  std::vector<bool> placed(count, false);
  if (plan.storage_order.size() != count) return fail(ErrorCode::kInternal, "layout plan: order size");
  for (size_t index : plan.storage_order) {
    if (index >= count || placed[index]) return fail(ErrorCode::kInternal, "layout plan: order is no permutation");
    placed[index] = true;
  }
  if (!plan.storage_keys.empty()) {
    std::set<std::string, std::less<>> unique(plan.storage_keys.begin(), plan.storage_keys.end());
    if (plan.storage_keys.size() != count || unique.size() != count ||
        !std::all_of(plan.storage_keys.begin(), plan.storage_keys.end(), is_safe_name)) {
      return fail(ErrorCode::kInternal, "layout plan: storage keys must be unique safe names, one per storage");
    }
  }
  if (!plan.rewrites.empty() && plan.rewrites.size() != count) {
    return fail(ErrorCode::kInternal, "layout plan: one rewrite slot per storage");
  }
  for (size_t i = 0; i < plan.rewrites.size(); ++i) {
    if (!plan.rewrites[i]) continue;
    const StorageRewrite& rewrite = *plan.rewrites[i];
    std::optional<uint64_t> bytes = storage_element_size(storages[i].type);
    for (uint64_t size : rewrite.shape) bytes = bytes ? checked_mul(*bytes, size) : std::nullopt;
    if (!bytes || *bytes != storages[i].size || rewrite.axis >= rewrite.shape.size() ||
        rewrite.source_index.size() != rewrite.shape[rewrite.axis]) {
      return fail(ErrorCode::kInternal, "layout plan: rewrite of storage " + std::to_string(i) + " does not fit it");
    }
    std::vector<bool> seen(rewrite.source_index.size(), false);
    for (uint32_t index : rewrite.source_index) {
      if (index >= seen.size() || seen[index]) return fail(ErrorCode::kInternal, "layout plan: rewrite is no permutation");
      seen[index] = true;
    }
  }
  return {};
}

Status Sanitizer::write_torch_archive(TorchCheckpoint& checkpoint, HashingSink& output) {
  auto rebuild = begin_archive(checkpoint, ArchiveOutput(output, nullptr));
  if (!rebuild) return tl::unexpected(rebuild.error());
  for (size_t position = 0; position < checkpoint.storages.size(); ++position) {
    const size_t i = rebuild->plan.storage_order[position];
    ZG_TRY(copy_storage(*rebuild, checkpoint, i, checkpoint.storages[i].source));
  }
  return finish_archive(*rebuild);
}

Result<ArchiveRebuild> Sanitizer::begin_archive(TorchCheckpoint& checkpoint, ArchiveOutput output) {
  Stopwatch write_time;
  report_.output_format = "torch-zip";
  ValueTree& tree = checkpoint.pickle.tree;
  auto plan = plan_layout(tree, checkpoint.storages);
  if (!plan) return tl::unexpected(plan.error());
  const size_t count = checkpoint.storages.size();
  // Record names are regenerated: by the plan, or numbered in first-reference order like torch.save.
  for (size_t i = 0; i < count; ++i) {
    std::get<StorageRefValue>(tree.at(checkpoint.storages[i].node)).key =
        plan->storage_keys.empty() ? std::to_string(i) : plan->storage_keys[i];
  }
  MemorySink pickle_bytes;
  PickleWriteOptions write_options;
  write_options.persistent_ids = PersistentIdStyle::kTorchArchive;
  write_options.seed = plan->pickle_seed;
  ZG_TRY(write_pickle(tree, write_options, pickle_bytes));

  const std::string& folder = plan->archive_folder;
  std::vector<ZipLayout::PlannedEntry> entries = {{folder + "/data.pkl", pickle_bytes.position()},
                                                  {folder + "/byteorder", kByteorderRecord.size()}};
  std::vector<size_t> entry_of_storage(count);
  for (size_t position = 0; position < count; ++position) {
    const size_t i = plan->storage_order[position];
    const auto& ref = std::get<StorageRefValue>(tree.at(checkpoint.storages[i].node));
    entry_of_storage[i] = entries.size();
    entries.push_back({folder + "/data/" + ref.key, checkpoint.storages[i].source.size});
  }
  entries.push_back({folder + "/version", kVersionRecord.size()});
  auto layout = ZipLayout::plan(std::move(entries));
  if (!layout) return tl::unexpected(layout.error());
  const size_t entry_count = layout->entry_count();
  ArchiveRebuild rebuild{output,
                         std::move(*plan),
                         std::move(*layout),
                         std::move(entry_of_storage),
                         std::vector<uint32_t>(entry_count),
                         std::vector<Sha256::Digest>(entry_count),
                         std::vector<bool>(entry_count, false),
                         std::vector<std::optional<ArchiveRebuild::Copied>>(count),
                         output.out_of_order() ? std::make_unique<AssembledDigest>() : nullptr,
                         0};
  ZG_TRY(put_small_entry(rebuild, 0, pickle_bytes.bytes()));
  ZG_TRY(put_small_entry(rebuild, 1, as_bytes(kByteorderRecord)));
  report_.write_seconds += write_time.seconds();
  return rebuild;
}

Status Sanitizer::put_small_entry(ArchiveRebuild& rebuild, size_t entry, std::span<const uint8_t> bytes) {
  const uint32_t crc = zip::crc32_update(0, bytes);
  ZG_TRY(rebuild.output.put(rebuild.layout.header_offset(entry), rebuild.layout.local_header(entry)));
  ZG_TRY(rebuild.output.put(rebuild.layout.data_offset(entry), bytes));
  ZG_TRY(rebuild.output.put(rebuild.layout.data_offset(entry) + bytes.size(),
                            rebuild.layout.data_descriptor(entry, crc)));
  rebuild.crcs[entry] = crc;
  rebuild.digests[entry] = Sha256::of(bytes);
  rebuild.written[entry] = true;
  return {};
}

Status Sanitizer::copy_storage(ArchiveRebuild& rebuild, const TorchCheckpoint& checkpoint, size_t index,
                               const RecordSource& source) {
  Stopwatch write_time;
  const auto& ref = std::get<StorageRefValue>(checkpoint.pickle.tree.at(checkpoint.storages[index].node));
  const StorageRewrite* rewrite =
      rebuild.plan.rewrites.empty() || !rebuild.plan.rewrites[index] ? nullptr : &*rebuild.plan.rewrites[index];
  const size_t entry = rebuild.entry_of_storage[index];
  const ZipLayout& layout = rebuild.layout;
  if (rebuild.digest && entry < rebuild.entries_hashed) {  // copied again: what was hashed changes
    (void)rebuild.digest->finish();
    rebuild.entries_hashed = 0;
  }
  ZG_TRY(rebuild.output.put(layout.header_offset(entry), layout.local_header(entry)));
  // Bytes that pass unchanged have the input's CRC, verified by the zip stream or computed on the way.
  EntryDataSink data(rebuild.output, layout.data_offset(entry), /*compute_crc=*/rewrite != nullptr);
  uint32_t input_crc = 0;
  auto digest = rewrite ? copy_rewritten_record(source, *rewrite, storage_element_size(ref.type), data, &input_crc)
                        : copy_record(source, data, &input_crc);
  if (!digest) return tl::unexpected(digest.error());
  if (data.position() != layout.size(entry)) {
    return fail(ErrorCode::kInternal, "storage " + layout.name(entry) + " was copied with a wrong size");
  }
  const uint32_t crc = rewrite ? data.crc32() : input_crc;
  ZG_TRY(rebuild.output.put(layout.data_offset(entry) + layout.size(entry), layout.data_descriptor(entry, crc)));
  rebuild.crcs[entry] = crc;
  rebuild.digests[entry] = *digest;
  rebuild.written[entry] = true;
  rebuild.copied[index] = ArchiveRebuild::Copied{source, input_crc};
  report_.write_seconds += write_time.seconds();
  return rebuild.digest ? hash_complete_front(rebuild) : Status{};
}

Status Sanitizer::hash_complete_front(ArchiveRebuild& rebuild) {
  const ZipLayout& layout = rebuild.layout;
  size_t entry = rebuild.entries_hashed;
  while (entry < layout.entry_count() && rebuild.written[entry]) ++entry;
  rebuild.entries_hashed = entry;
  const uint64_t end = entry < layout.entry_count() ? layout.header_offset(entry) : layout.central_directory_offset();
  return rebuild.digest->extend_to(rebuild.output, end);
}

Status Sanitizer::finish_archive(ArchiveRebuild& rebuild) {
  Stopwatch write_time;
  const ZipLayout& layout = rebuild.layout;
  if (std::find(rebuild.copied.begin(), rebuild.copied.end(), std::nullopt) != rebuild.copied.end()) {
    return fail(ErrorCode::kInternal, "archive finished before every storage was copied");
  }
  const size_t version = layout.entry_count() - 1;
  ZG_TRY(put_small_entry(rebuild, version, as_bytes(kVersionRecord)));
  auto directory = layout.central_directory(rebuild.crcs);
  if (!directory) return tl::unexpected(directory.error());
  ZG_TRY(rebuild.output.put(layout.central_directory_offset(), *directory));
  for (size_t entry = 0; entry < layout.entry_count(); ++entry) {
    add_record(layout.name(entry), layout.size(entry), rebuild.digests[entry]);
  }
  report_.notes.insert(report_.notes.end(), rebuild.plan.notes.begin(), rebuild.plan.notes.end());
  if (rebuild.digest) {
    ZG_TRY(hash_complete_front(rebuild));
    ZG_TRY(rebuild.digest->extend_to(rebuild.output, layout.central_directory_offset() + directory->size()));
    assembled_sha256_ = rebuild.digest->finish();
  }
  report_.write_seconds += write_time.seconds();
  return {};
}

// Presents a strided view of a storage as the contiguous C-order bytes of the tensor, so that writers
// that take a contiguous byte range can copy non-contiguous tensors without materialising them.
class StridedViewSource final : public ByteSource {
 public:
  StridedViewSource(const ByteSource& storage, uint64_t element_size, const TensorValue& tensor)
      : storage_(storage), element_size_(element_size), sizes_(tensor.sizes), strides_(tensor.strides),
        storage_offset_(tensor.storage_offset) {
    elements_ = element_count(tensor);
  }
  uint64_t size() const override { return elements_ * element_size_; }

  Status read_at(uint64_t offset, std::span<uint8_t> out) const override {
    if (!range_fits(offset, out.size(), size()) || offset % element_size_ || out.size() % element_size_) {
      return fail(ErrorCode::kInternal, "unaligned read of a strided tensor view", offset);
    }
    for (uint64_t element = offset / element_size_, done = 0; done < out.size(); ++element) {
      // Turn the C-order element number into the storage element it names.
      uint64_t remainder = element;
      uint64_t position = storage_offset_;
      for (size_t dim = sizes_.size(); dim-- > 0;) {
        uint64_t size = static_cast<uint64_t>(sizes_[dim]);
        position += (remainder % size) * static_cast<uint64_t>(strides_[dim]);
        remainder /= size;
      }
      ZG_TRY(storage_.read_at(position * element_size_, out.subspan(done, element_size_)));
      done += element_size_;
    }
    return {};
  }

 private:
  const ByteSource& storage_;
  uint64_t element_size_;
  std::vector<int64_t> sizes_;
  std::vector<int64_t> strides_;
  uint64_t storage_offset_;
  uint64_t elements_;
};

std::optional<SafetensorsDtype> safetensors_dtype_for(StorageType type) {
  switch (type) {
    case StorageType::kFloat: return SafetensorsDtype::kF32;
    case StorageType::kDouble: return SafetensorsDtype::kF64;
    case StorageType::kHalf: return SafetensorsDtype::kF16;
    case StorageType::kBFloat16: return SafetensorsDtype::kBF16;
    case StorageType::kComplexFloat: return SafetensorsDtype::kC64;
    case StorageType::kByte: return SafetensorsDtype::kU8;
    case StorageType::kChar: return SafetensorsDtype::kI8;
    case StorageType::kShort: return SafetensorsDtype::kI16;
    case StorageType::kInt: return SafetensorsDtype::kI32;
    case StorageType::kLong: return SafetensorsDtype::kI64;
    case StorageType::kBool: return SafetensorsDtype::kBool;
    default: return std::nullopt;  // complex128 and quantized types have no safetensors dtype
  }
}

Status Sanitizer::write_safetensors_from(const TorchCheckpoint& checkpoint, HashingSink& output) {
  Stopwatch write_time;
  report_.output_format = "safetensors";
  const ValueTree& tree = checkpoint.pickle.tree;
  std::unordered_map<NodeId, const RecordSource*> sources;
  for (const auto& storage : checkpoint.storages) sources.emplace(storage.node, &storage.source);

  // safetensors reads tensors at random offsets, so archive CRCs are checked in a pass of their own.
  for (const auto& storage : checkpoint.storages) {
    if (!storage.source.entry) continue;
    if (storage.source.entry->method != 0) {
      return fail(ErrorCode::kUnsupported, "compressed storage " + storage.source.entry->name +
                                               " cannot be converted to safetensors; use --format torch");
    }
    DiscardSink discard;
    auto digest = copy_record(storage.source, discard);
    if (!digest) return tl::unexpected(digest.error());
  }

  std::vector<std::unique_ptr<ByteSource>> owned_sources;
  std::vector<SafetensorsTensorSpec> specs;
  std::unordered_map<NodeId, std::string> first_user;  // storage node -> first tensor name using it
  // Walks nested dicts of tensors ("state_dict" -> {...}), naming tensors by their joined keys.
  std::deque<std::pair<NodeId, std::string>> pending = {{tree.root, ""}};
  auto items_of = [&](NodeId id) -> const std::vector<std::pair<NodeId, NodeId>>* {
    if (const auto* dict = std::get_if<DictValue>(&tree.at(id))) return &dict->items;
    if (const auto* ordered = std::get_if<OrderedDictValue>(&tree.at(id))) return &ordered->items;
    return nullptr;
  };
  if (!items_of(tree.root)) {
    return fail(ErrorCode::kUnsupported, "the checkpoint is not a dict of tensors; use --format torch");
  }
  while (!pending.empty()) {
    auto [id, prefix] = pending.front();
    pending.pop_front();
    const auto* items = items_of(id);
    for (auto it = items->begin(); it != items->end(); ++it) {
      const auto* key = std::get_if<StrValue>(&tree.at(it->first));
      if (!key) {
        report_.notes.push_back("dropped an entry of " + (prefix.empty() ? std::string("the root") : prefix) +
                                " whose key is not a string");
        continue;
      }
      std::string name = prefix.empty() ? key->utf8 : prefix + "." + key->utf8;
      NodeId value = it->second;
      if (const auto* parameter = std::get_if<ParameterValue>(&tree.at(value))) value = parameter->tensor;
      if (items_of(value)) {
        pending.emplace_back(value, name);
        continue;
      }
      const auto* tensor = std::get_if<TensorValue>(&tree.at(value));
      if (!tensor) {
        report_.notes.push_back("dropped non-tensor value " + name + " (safetensors holds tensors only)");
        continue;
      }
      const auto& storage = std::get<StorageRefValue>(tree.at(tensor->storage));
      auto dtype = safetensors_dtype_for(storage.type);
      if (!dtype) {
        report_.notes.push_back("dropped tensor " + name + ": safetensors has no dtype for " +
                                storage_type_name(storage.type));
        continue;
      }
      auto [user, first] = first_user.emplace(tensor->storage, name);
      if (!first) {
        report_.notes.push_back("tensor " + name + " shared its storage with " + user->second +
                                "; safetensors cannot express sharing, so it is written as a copy");
      }
      const RecordSource& record = *sources.at(tensor->storage);
      uint64_t element_size = storage_element_size(storage.type);
      owned_sources.push_back(std::make_unique<SubSource>(input_, record.offset, record.size));
      SafetensorsTensorSpec spec;
      spec.name = name;
      spec.dtype = *dtype;
      for (int64_t size : tensor->sizes) spec.shape.push_back(static_cast<uint64_t>(size));
      if (is_c_contiguous(*tensor)) {
        spec.source = owned_sources.back().get();
        spec.source_offset = tensor->storage_offset * element_size;
      } else {
        owned_sources.push_back(std::make_unique<StridedViewSource>(*owned_sources.back(), element_size, *tensor));
        spec.source = owned_sources.back().get();
      }
      specs.push_back(std::move(spec));
    }
  }
  ZG_TRY(write_safetensors(specs, SafetensorsMetadata{{"format", "pt"}}, output));
  report_.write_seconds = write_time.seconds();
  return {};
}

Status Sanitizer::sanitize_npy(HashingSink& output) {
  Stopwatch parse_time;
  report_.container = "npy";
  auto file = parse_npy_header(input_, NpyLimits{policy_.limits.max_npy_header_size});
  if (!file) return tl::unexpected(file.error());
  report_.parse_seconds = parse_time.seconds();
  if (options_.format == OutputFormat::kSafetensors) {
    return fail(ErrorCode::kUnsupported, "convert .npy files with numpy; --format safetensors takes PyTorch files");
  }
  Stopwatch write_time;
  report_.output_format = "npy";
  ZG_TRY(write_npy_header(file->header, output));
  auto digest = copy_record(RecordSource{nullptr, file->data_offset, file->data_size}, output);
  if (!digest) return tl::unexpected(digest.error());
  add_record("data", file->data_size, *digest);
  report_.write_seconds = write_time.seconds();
  return {};
}

// The first bytes of an input that is otherwise only streamed: enough for a header parser that
// checks the total size but reads only the beginning. Reads past the prefix fail.
class PrefixSource final : public ByteSource {
 public:
  PrefixSource(std::vector<uint8_t> prefix, uint64_t total_size)
      : prefix_(std::move(prefix)), total_size_(total_size) {}
  uint64_t size() const override { return total_size_; }
  Status read_at(uint64_t offset, std::span<uint8_t> out) const override {
    if (!range_fits(offset, out.size(), prefix_.size())) {
      return fail(ErrorCode::kParse, "header is longer than the part of the entry read for it", offset);
    }
    std::memcpy(out.data(), prefix_.data() + offset, out.size());
    return {};
  }

 private:
  std::vector<uint8_t> prefix_;
  uint64_t total_size_;
};

// Array names become file names on extraction; only plain ones are kept.
bool is_plain_npz_member(std::string_view name) {
  constexpr std::string_view kSuffix = ".npy";
  if (name.size() <= kSuffix.size() || name.size() > 255 || !name.ends_with(kSuffix) || name.front() == '.') {
    return false;
  }
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-' ||
           c == '.';
  });
}

Status Sanitizer::sanitize_npz(const ZipDirectory& directory, HashingSink& output) {
  Stopwatch time;
  report_.container = "npz";
  if (options_.format == OutputFormat::kSafetensors) {
    return fail(ErrorCode::kUnsupported, "convert .npz files with numpy; --format safetensors takes PyTorch files");
  }
  report_.output_format = "npz";
  const NpyLimits limits{policy_.limits.max_npy_header_size};
  // An .npy header is at most its 10-byte preamble, the header length and its padding.
  const uint64_t header_window = limits.max_header_size + 16;
  ZipWriter zip(output);
  for (const auto& entry : directory.entries()) {
    if (!is_plain_npz_member(entry.name)) {
      return fail(ErrorCode::kForbidden, "npz member " + entry.name + " is not a plainly named .npy array");
    }
    const RecordSource source{&entry, entry.data_offset, entry.size};
    auto reader = RecordReader::open(input_, source);
    if (!reader) return tl::unexpected(reader.error());
    std::vector<uint8_t> prefix(static_cast<size_t>(std::min(entry.size, header_window)));
    ZG_TRY(reader->read_exact(prefix));
    auto file = parse_npy_header(PrefixSource(prefix, entry.size), limits);
    if (!file) return tl::unexpected(file.error().with_context(entry.name));

    MemorySink header;
    ZG_TRY(write_npy_header(file->header, header));
    ZG_TRY(zip.begin_entry(entry.name, header.position() + file->data_size));
    ZipEntrySink member(zip);
    Sha256 hash;
    hash.update(header.bytes());
    ZG_TRY(member.write(std::span<const uint8_t>(header.bytes())));
    // The prefix may already hold the first data bytes; the rest is streamed.
    std::span<const uint8_t> data_start = std::span<const uint8_t>(prefix).subspan(file->data_offset);
    hash.update(data_start);
    ZG_TRY(member.write(data_start));
    while (true) {
      auto got = reader->read(copy_buffers_[0]);
      if (!got) return tl::unexpected(got.error().with_context(entry.name));
      if (*got == 0) break;
      std::span<const uint8_t> chunk(copy_buffers_[0].data(), *got);
      hash.update(chunk);
      ZG_TRY(member.write(chunk));
    }
    ZG_TRY(zip.end_entry());
    add_record(entry.name, member.position(), hash.finish());
  }
  ZG_TRY(zip.finish());
  report_.write_seconds = time.seconds();
  return {};
}

Status Sanitizer::sanitize_safetensors(HashingSink& output) {
  Stopwatch parse_time;
  report_.container = "safetensors";
  SafetensorsLimits limits;
  limits.max_header_size = policy_.limits.max_safetensors_header_size;
  limits.max_tensor_count = policy_.limits.max_tensor_count;
  auto header = parse_safetensors_header(input_, limits);
  if (!header) return tl::unexpected(header.error());
  report_.parse_seconds = parse_time.seconds();
  Stopwatch write_time;
  report_.output_format = "safetensors";
  std::vector<SafetensorsTensorSpec> specs;
  for (const auto& tensor : header->tensors) {
    specs.push_back(SafetensorsTensorSpec{tensor.name, tensor.dtype, tensor.shape, &input_,
                                          header->data_offset() + tensor.begin});
  }
  ZG_TRY(write_safetensors(specs, header->metadata, output));
  report_.write_seconds = write_time.seconds();
  return {};
}

}  // namespace

namespace {

SanitizeReport sanitize_into(const ByteSource& input, const Policy& policy, const SanitizeOptions& options,
                             ByteSink& output, RandomAccessSink* random_output) {
  SanitizeReport report;
  report.input_size = input.size();
  // Unless the caller already knows it, the input digest is computed on a second thread while the
  // engine works on the first.
  std::future<Result<Sha256::Digest>> input_digest;
  if (!options.known_input_sha256) {
    input_digest = std::async(std::launch::async, [&input] { return Sha256::of_range(input, 0, input.size()); });
  }
  Sanitizer sanitizer(input, policy, options, report, random_output);
  Status status = sanitizer.run(output);
  Result<Sha256::Digest> digest = options.known_input_sha256 ? *options.known_input_sha256 : input_digest.get();
  if (digest) {
    report.input_sha256 = *digest;
  } else if (status) {
    status = tl::unexpected(digest.error());
  }
  if (status) {
    report.verdict = report.findings.empty() ? Verdict::kClean : Verdict::kDisarmed;
    return report;
  }
  report.verdict = Verdict::kBlocked;
  report.error = status.error();
  report.output_format.clear();
  report.output_size = 0;
  report.output_sha256 = {};
  report.records.clear();
  report.notes.clear();
  return report;
}

}  // namespace

std::vector<size_t> torch_save_order(const std::vector<std::string>& names) {
  std::vector<size_t> order(names.size());
  std::iota(order.begin(), order.end(), size_t{0});
  // std::string compares bytes as unsigned, so UTF-8 names sort by code point, as Python's sorted() does.
  std::stable_sort(order.begin(), order.end(), [&names](size_t a, size_t b) { return names[a] < names[b]; });
  return order;
}

SanitizeReport sanitize(const ByteSource& input, const Policy& policy, const SanitizeOptions& options,
                        ByteSink& output) {
  return sanitize_into(input, policy, options, output, nullptr);
}

SanitizeReport sanitize(const ByteSource& input, const Policy& policy, const SanitizeOptions& options,
                        RandomAccessSink& output) {
  return sanitize_into(input, policy, options, output, &output);
}

}  // namespace zoogate::cdr
