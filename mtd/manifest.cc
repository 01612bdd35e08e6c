#include "mtd/manifest.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <future>
#include <map>
#include <set>
#include <unordered_map>
#include <unordered_set>

#include "cdr/detect.h"
#include "cdr/pickle_vm.h"
#include "cdr/pickle_writer.h"
#include "cdr/report.h"
#include "cdr/safetensors.h"
#include "cdr/zip_reader.h"
#include "common/byte_sink.h"
#include "common/checked.h"
#include "common/encoding.h"

namespace zoogate::mtd {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// Bytes hashed at a time when a record or a view is read back.
constexpr size_t kReadChunk = 1 << 20;
constexpr std::string_view kRootTensorName = "(root)";  // a checkpoint that is one bare tensor

Digest digest_of_json(const json& value) { return Sha256::of(canonical_json(value)); }

// StrValue keeps lone surrogates as surrogatepass bytes (ED A0..BF xx); they become "\udXXX" text.
std::string escape_surrogates(const std::string& utf8) {
  std::string out;
  for (size_t i = 0; i < utf8.size(); ++i) {
    const auto byte = static_cast<uint8_t>(utf8[i]);
    const bool surrogate = byte == 0xED && i + 2 < utf8.size() && static_cast<uint8_t>(utf8[i + 1]) >= 0xA0;
    if (!surrogate) {
      out.push_back(utf8[i]);
      continue;
    }
    const uint32_t code_point =
        0xD000u | (static_cast<uint32_t>(utf8[i + 1]) & 0x3Fu) << 6 | (static_cast<uint32_t>(utf8[i + 2]) & 0x3Fu);
    char text[8];
    std::snprintf(text, sizeof text, "\\u%04x", code_point);
    out += text;
    i += 2;
  }
  return out;
}

std::string key_text(const cdr::Value& key) {
  if (const auto* text = std::get_if<cdr::StrValue>(&key)) return escape_surrogates(text->utf8);
  if (const auto* number = std::get_if<cdr::IntValue>(&key)) {
    return number->big.empty() ? std::to_string(number->small) : "<int>";
  }
  if (const auto* flag = std::get_if<bool>(&key)) return *flag ? "True" : "False";
  if (std::holds_alternative<cdr::NoneValue>(key)) return "None";
  return "<key>";
}

// ---- dtypes ----------------------------------------------------------------------------------------

// PyTorch's dtype names, for archives and safetensors files alike: a model converted from one to the
// other keeps its architecture fingerprint.
std::string_view dtype_name(cdr::StorageType type) {
  switch (type) {
    case cdr::StorageType::kFloat: return "float32";
    case cdr::StorageType::kDouble: return "float64";
    case cdr::StorageType::kHalf: return "float16";
    case cdr::StorageType::kBFloat16: return "bfloat16";
    case cdr::StorageType::kComplexFloat: return "complex64";
    case cdr::StorageType::kComplexDouble: return "complex128";
    case cdr::StorageType::kByte: return "uint8";
    case cdr::StorageType::kChar: return "int8";
    case cdr::StorageType::kShort: return "int16";
    case cdr::StorageType::kInt: return "int32";
    case cdr::StorageType::kLong: return "int64";
    case cdr::StorageType::kBool: return "bool";
    case cdr::StorageType::kQUInt8: return "quint8";
    case cdr::StorageType::kQInt8: return "qint8";
    case cdr::StorageType::kQInt32: return "qint32";
    case cdr::StorageType::kQUInt4x2: return "quint4x2";
  }
  return "unknown";
}

std::string_view dtype_name(cdr::SafetensorsDtype type) {
  switch (type) {
    case cdr::SafetensorsDtype::kBool: return "bool";
    case cdr::SafetensorsDtype::kF4: return "float4_e2m1";
    case cdr::SafetensorsDtype::kF6E2M3: return "float6_e2m3";
    case cdr::SafetensorsDtype::kF6E3M2: return "float6_e3m2";
    case cdr::SafetensorsDtype::kU8: return "uint8";
    case cdr::SafetensorsDtype::kI8: return "int8";
    case cdr::SafetensorsDtype::kF8E5M2: return "float8_e5m2";
    case cdr::SafetensorsDtype::kF8E4M3: return "float8_e4m3fn";
    case cdr::SafetensorsDtype::kF8E8M0: return "float8_e8m0fnu";
    case cdr::SafetensorsDtype::kI16: return "int16";
    case cdr::SafetensorsDtype::kU16: return "uint16";
    case cdr::SafetensorsDtype::kF16: return "float16";
    case cdr::SafetensorsDtype::kBF16: return "bfloat16";
    case cdr::SafetensorsDtype::kI32: return "int32";
    case cdr::SafetensorsDtype::kU32: return "uint32";
    case cdr::SafetensorsDtype::kF32: return "float32";
    case cdr::SafetensorsDtype::kC64: return "complex64";
    case cdr::SafetensorsDtype::kF64: return "float64";
    case cdr::SafetensorsDtype::kI64: return "int64";
    case cdr::SafetensorsDtype::kU64: return "uint64";
  }
  return "unknown";
}

// ---- tensor names ------------------------------------------------------------------------------

struct NamedTensor {
  std::string name;
  cdr::NodeId tensor = 0;  // a TensorValue node
};

// Every path from the root to a tensor, in pickle order (see manifest.h for the naming rules).
// Containers are entered once, so shared or cyclic containers cost nothing extra; a tensor gets one
// entry per container slot that holds it.
Result<std::vector<NamedTensor>> named_tensors(const cdr::ValueTree& tree, uint64_t max_tensors) {
  struct Visit {
    cdr::NodeId node;
    std::string name;
  };
  std::vector<NamedTensor> found;
  std::unordered_set<std::string> taken;
  std::unordered_map<std::string, uint64_t> next_suffixes;  // per base name
  std::unordered_set<cdr::NodeId> entered;
  std::vector<Visit> pending = {{tree.root, ""}};
  auto child_name = [](const std::string& prefix, const std::string& label) {
    return prefix.empty() ? label : prefix + "." + label;
  };
  while (!pending.empty()) {
    Visit visit = std::move(pending.back());
    pending.pop_back();
    cdr::NodeId node = visit.node;
    if (const auto* parameter = std::get_if<cdr::ParameterValue>(&tree.at(node))) node = parameter->tensor;
    if (std::holds_alternative<cdr::TensorValue>(tree.at(node))) {
      const std::string base = visit.name.empty() ? std::string(kRootTensorName) : visit.name;
      std::string name = base;
      // A suffixed name can itself be a key somewhere ("a#2"): count on until the name is free.
      uint64_t& next_suffix = next_suffixes.try_emplace(base, 2).first->second;
      while (!taken.insert(name).second) name = base + "#" + std::to_string(next_suffix++);
      found.push_back(NamedTensor{std::move(name), node});
      if (found.size() > max_tensors) {
        return fail(ErrorCode::kLimitExceeded, "more than " + std::to_string(max_tensors) + " tensors");
      }
      continue;
    }
    if (!entered.insert(node).second) continue;
    // Children are collected in pickle order, then pushed in reverse so that they pop in order.
    std::vector<Visit> children;
    auto add_pairs = [&](const std::vector<std::pair<cdr::NodeId, cdr::NodeId>>& pairs) {
      for (const auto& [key, value] : pairs) {
        children.push_back({value, child_name(visit.name, key_text(tree.at(key)))});
      }
    };
    const cdr::Value& value = tree.at(node);
    if (const auto* dict = std::get_if<cdr::DictValue>(&value)) {
      add_pairs(dict->items);
    } else if (const auto* ordered = std::get_if<cdr::OrderedDictValue>(&value)) {
      add_pairs(ordered->items);
      // Instance attributes (state_dict's _metadata) are named like entries of the dict itself.
      if (ordered->attributes) children.push_back({*ordered->attributes, visit.name});
    } else if (const auto* space = std::get_if<cdr::NamespaceValue>(&value)) {
      add_pairs(space->attributes);
    } else {
      uint64_t index = 0;
      cdr::for_each_child(value, [&](cdr::NodeId child) {
        children.push_back({child, child_name(visit.name, std::to_string(index++))});
      });
    }
    for (auto it = children.rbegin(); it != children.rend(); ++it) pending.push_back(std::move(*it));
  }
  return found;
}

// ---- hashing records and tensor views ------------------------------------------------------------

// The uncompressed bytes of an archive entry. Stored entries are hashed straight from the file without
// their CRC (the digest is the stronger check, and a flipped bit must show up as a changed tensor, not
// as an unreadable file); deflated ones through the CRC-checking stream.
Result<Digest> entry_digest(const ByteSource& file, const cdr::ZipEntry& entry) {
  if (entry.method == 0) return Sha256::of_range(file, entry.data_offset, entry.size);
  auto stream = cdr::ZipEntryStream::open(file, entry);
  if (!stream) return tl::unexpected(stream.error());
  std::vector<uint8_t> buffer(kReadChunk);
  Sha256 hash;
  while (true) {
    auto got = stream->read(buffer);
    if (!got) return tl::unexpected(got.error());
    if (*got == 0) return hash.finish();
    hash.update(std::span<const uint8_t>(buffer.data(), *got));
  }
}

Result<std::vector<uint8_t>> read_entry(const ByteSource& file, const cdr::ZipEntry& entry) {
  auto stream = cdr::ZipEntryStream::open(file, entry);
  if (!stream) return tl::unexpected(stream.error());
  std::vector<uint8_t> bytes(static_cast<size_t>(entry.size));
  size_t filled = 0;
  while (true) {
    auto got = stream->read(std::span(bytes).subspan(filled));
    if (!got) return tl::unexpected(got.error());
    if (*got == 0 && filled == bytes.size()) return bytes;
    filled += *got;
  }
}

bool covers_whole_storage(const cdr::TensorValue& tensor, uint64_t storage_numel) {
  uint64_t expected_stride = 1;
  for (size_t dim = tensor.sizes.size(); dim-- > 0;) {
    if (tensor.sizes[dim] != 1 && tensor.strides[dim] != static_cast<int64_t>(expected_stride)) return false;
    expected_stride *= static_cast<uint64_t>(tensor.sizes[dim]);
  }
  return tensor.storage_offset == 0 && expected_stride == storage_numel;
}

// SHA-256 of a strided view's elements in C order. The longest contiguous suffix of dimensions is read
// as one run; the runs come from one read of the span the view covers when that span is small, and
// straight from the storage otherwise. `max_bytes` bounds the view's size (stride-0 views can name far
// more elements than their storage holds).
Result<Digest> view_digest(const ByteSource& storage, uint64_t element_size, const cdr::TensorValue& tensor,
                           uint64_t max_bytes) {
  const size_t dims = tensor.sizes.size();
  std::optional<uint64_t> elements = 1;
  std::optional<uint64_t> last = tensor.storage_offset;
  for (size_t dim = 0; dim < dims; ++dim) {
    if (tensor.sizes[dim] < 0 || tensor.strides[dim] < 0) {
      return fail(ErrorCode::kUnsupported, "negative sizes or strides");
    }
    const auto size = static_cast<uint64_t>(tensor.sizes[dim]);
    elements = elements ? checked_mul(*elements, size) : std::nullopt;
    if (size > 0 && last) {
      auto step = checked_mul(size - 1, static_cast<uint64_t>(tensor.strides[dim]));
      last = step ? checked_add(*last, *step) : std::nullopt;
    }
  }
  auto total_bytes = elements ? checked_mul(*elements, element_size) : std::nullopt;
  if (!total_bytes || *total_bytes > max_bytes) return fail(ErrorCode::kLimitExceeded, "tensor view too large");
  if (*elements == 0) return Sha256::of(std::string_view());

  size_t outer_dims = dims;
  uint64_t run = 1;
  while (outer_dims > 0) {
    const size_t dim = outer_dims - 1;
    if (tensor.sizes[dim] != 1 && static_cast<uint64_t>(tensor.strides[dim]) != run) break;
    run *= static_cast<uint64_t>(tensor.sizes[dim]);
    --outer_dims;
  }
  if (outer_dims == 0) return Sha256::of_range(storage, tensor.storage_offset * element_size, *total_bytes);

  auto span_bytes = last ? checked_mul(*last - tensor.storage_offset + 1, element_size) : std::nullopt;
  if (!span_bytes) return fail(ErrorCode::kParse, "tensor view extent overflows");
  std::vector<uint8_t> span;
  if (*span_bytes <= kMaxGatherSpan) {
    auto bytes = storage.read_vector(tensor.storage_offset * element_size, static_cast<size_t>(*span_bytes));
    if (!bytes) return tl::unexpected(bytes.error());
    span = std::move(*bytes);
  }
  const uint64_t run_bytes = run * element_size;
  std::vector<uint8_t> batch;
  batch.reserve(static_cast<size_t>(std::max<uint64_t>(kReadChunk, run_bytes)));
  Sha256 hash;
  std::vector<int64_t> index(outer_dims, 0);
  while (true) {
    uint64_t position = 0;  // in elements from storage_offset
    for (size_t dim = 0; dim < outer_dims; ++dim) position += static_cast<uint64_t>(index[dim] * tensor.strides[dim]);
    const size_t start = batch.size();
    batch.resize(start + static_cast<size_t>(run_bytes));
    if (!span.empty()) {
      std::memcpy(batch.data() + start, span.data() + position * element_size, static_cast<size_t>(run_bytes));
    } else {
      ZG_TRY(storage.read_at((tensor.storage_offset + position) * element_size,
                             std::span(batch).subspan(start, static_cast<size_t>(run_bytes))));
    }
    if (batch.size() >= kReadChunk) {
      hash.update(batch);
      batch.clear();
    }
    size_t dim = outer_dims;  // advance the odometer over the outer dimensions
    while (dim > 0 && ++index[dim - 1] == tensor.sizes[dim - 1]) index[--dim] = 0;
    if (dim == 0) break;
  }
  hash.update(batch);
  return hash.finish();
}

// ---- PyTorch archives -------------------------------------------------------------------------------

Result<Digest> canonical_pickle_digest(cdr::ValueTree tree) {
  uint64_t next_key = 0;
  for (cdr::NodeId id : cdr::reachable_nodes(tree)) {
    if (auto* storage = std::get_if<cdr::StorageRefValue>(&tree.at(id))) storage->key = std::to_string(next_key++);
  }
  DiscardSink discard;
  HashingSink sink(discard);
  ZG_TRY(cdr::write_pickle(tree, cdr::PickleWriteOptions{cdr::PersistentIdStyle::kTorchArchive, 0}, sink));
  return sink.finish();
}

// Describes a PyTorch archive. Record digests come from `known_records` when given (in archive order,
// as a sanitize report lists them), and are computed otherwise.
Status describe_torch_archive(const ByteSource& file, const cdr::ZipDirectory& directory, const cdr::Policy& policy,
                              const std::vector<cdr::RecordDigest>* known_records, FileFacts& facts) {
  facts.format = kFormatTorchZip;
  const std::string prefix = directory.top_folder() + "/";
  const cdr::ZipEntry* pickle_entry = directory.find(prefix + "data.pkl");
  if (pickle_entry->size > policy.limits.max_pickle_size) {
    return fail(ErrorCode::kLimitExceeded, prefix + "data.pkl is above max_pickle_size");
  }

  std::map<std::string, Digest, std::less<>> record_digests;
  if (known_records) {
    const auto& entries = directory.entries();
    bool same = known_records->size() == entries.size();
    for (size_t i = 0; same && i < entries.size(); ++i) same = (*known_records)[i].name == entries[i].name;
    if (!same) return fail(ErrorCode::kInternal, "the sanitize report does not describe the written archive");
    facts.records = *known_records;
  } else {
    for (const auto& entry : directory.entries()) {
      auto digest = entry_digest(file, entry);
      if (!digest) return tl::unexpected(digest.error().with_context(entry.name));
      facts.records.push_back(cdr::RecordDigest{entry.name, entry.size, *digest});
    }
  }
  for (const auto& record : facts.records) record_digests.emplace(record.name, record.sha256);

  auto pickle_bytes = read_entry(file, *pickle_entry);
  if (!pickle_bytes) return tl::unexpected(pickle_bytes.error().with_context(pickle_entry->name));
  MemorySource pickle_source(*pickle_bytes);
  cdr::PickleParseOptions parse_options{cdr::PersistentIdMode::kTorchArchive, pickle_entry->name, false};
  auto parsed = cdr::parse_pickle(pickle_source, policy, parse_options);
  if (!parsed) return tl::unexpected(parsed.error().with_context(pickle_entry->name));
  // A pickle is described only as a whole: with anything disarmed, what is described would not be
  // what the file says, and a description made under another policy would not match.
  if (!parsed->findings.empty()) {
    const cdr::Finding& first = parsed->findings.front();
    return fail(ErrorCode::kForbidden, pickle_entry->name + " is not clean under the policy: " + first.construct +
                                           ": " + first.reason + " (" + std::to_string(parsed->findings.size()) +
                                           " findings)");
  }
  const cdr::ValueTree& tree = parsed->tree;

  auto named = named_tensors(tree, policy.limits.max_tensor_count);
  if (!named) return tl::unexpected(named.error());
  for (const auto& [name, node] : *named) {
    const auto& tensor = std::get<cdr::TensorValue>(tree.at(node));
    const auto& storage = std::get<cdr::StorageRefValue>(tree.at(tensor.storage));
    TensorEntry entry{name,
                      std::string(dtype_name(storage.type)),
                      tensor.sizes,
                      tensor.strides,
                      tensor.storage_offset,
                      prefix + "data/" + storage.key,
                      {}};
    const cdr::ZipEntry* record = directory.find(entry.record);
    if (!record) return fail(ErrorCode::kParse, "tensor " + name + ": storage " + entry.record + " is missing");
    if (covers_whole_storage(tensor, storage.numel)) {
      entry.sha256 = record_digests.at(entry.record);
    } else {
      if (record->method != 0) {
        return fail(ErrorCode::kUnsupported, "tensor " + name + " is a view into compressed record " + entry.record);
      }
      SubSource storage_bytes(file, record->data_offset, record->size);
      auto digest =
          view_digest(storage_bytes, cdr::storage_element_size(storage.type), tensor, policy.limits.max_entry_size);
      if (!digest) return tl::unexpected(digest.error().with_context("tensor " + name));
      entry.sha256 = *digest;
    }
    facts.tensors.push_back(std::move(entry));
  }

  PickleStructure structure;
  structure.globals = parsed->globals_seen;
  std::sort(structure.globals.begin(), structure.globals.end());
  structure.globals.erase(std::unique(structure.globals.begin(), structure.globals.end()), structure.globals.end());
  for (const auto& entry : directory.entries()) structure.records.push_back(entry.name);
  auto canonical = canonical_pickle_digest(std::move(parsed->tree));  // the tree's last use
  if (!canonical) return tl::unexpected(canonical.error());
  structure.canonical_pickle = *canonical;
  facts.structure = std::move(structure);
  return {};
}

Status describe_safetensors(const ByteSource& file, const cdr::Policy& policy, FileFacts& facts) {
  facts.format = kFormatSafetensors;
  cdr::SafetensorsLimits limits{policy.limits.max_safetensors_header_size, policy.limits.max_tensor_count};
  auto header = cdr::parse_safetensors_header(file, limits);
  if (!header) return tl::unexpected(header.error());
  for (const auto& tensor : header->tensors) {
    TensorEntry entry{tensor.name, std::string(dtype_name(tensor.dtype)), {}, {}, tensor.begin, "", {}};
    // The parser checked that the element count times the element size fits the file, so every
    // dimension and stride fits in int64.
    entry.shape.assign(tensor.shape.begin(), tensor.shape.end());
    entry.stride.assign(tensor.shape.size(), 1);
    for (size_t dim = tensor.shape.size(); dim-- > 1;) entry.stride[dim - 1] = entry.stride[dim] * entry.shape[dim];
    auto digest = Sha256::of_range(file, header->data_offset() + tensor.begin, tensor.end - tensor.begin);
    if (!digest) return tl::unexpected(digest.error());
    entry.sha256 = *digest;
    facts.tensors.push_back(std::move(entry));
  }
  return {};
}

// Fills the format-specific facts. With `known_records`, the caller vouches that the file is a
// sanitize run's output and every failure is an error; otherwise content that does not parse leaves
// a plain file, described by digest only.
Status describe_content(const ByteSource& file, const cdr::Policy& policy,
                        const std::vector<cdr::RecordDigest>* known_records, FileFacts& facts) {
  auto detection = cdr::identify_content(file);
  if (!detection) return tl::unexpected(detection.error());
  if (detection->kind == cdr::ContentKind::kSafetensors) return describe_safetensors(file, policy, facts);
  if (detection->kind != cdr::ContentKind::kZip) return {};
  auto directory = cdr::read_zip_directory(file, cdr::ZipLimits::from(policy.limits));
  if (!directory) return tl::unexpected(directory.error());
  // A zip without a pickle (an .npz, say) is not a PyTorch archive: it is described by its digest.
  if (!directory->find(directory->top_folder() + "/data.pkl")) return {};
  return describe_torch_archive(file, *directory, policy, known_records, facts);
}

std::string last_component(const std::string& path) {
  fs::path parsed = fs::path(path).lexically_normal();
  if (parsed.filename().empty()) parsed = parsed.parent_path();
  std::string name = parsed.filename().string();
  if (name.empty() || name == "." || name == "..") {
    std::error_code error;
    name = fs::weakly_canonical(parsed, error).filename().string();
  }
  return name;
}

// ---- JSON ---------------------------------------------------------------------------------------------

tl::unexpected<Error> field_error(std::string_view key, std::string_view expected) {
  return fail(ErrorCode::kParse,
              "manifest field \"" + std::string(key) + "\" is missing or not " + std::string(expected));
}

const json* member(const json& object, std::string_view key) {
  if (!object.is_object()) return nullptr;
  auto found = object.find(key);
  return found == object.end() ? nullptr : &*found;
}

Result<std::string> string_field(const json& object, std::string_view key) {
  const json* value = member(object, key);
  if (!value || !value->is_string()) return field_error(key, "a string");
  return value->get<std::string>();
}

Result<uint64_t> unsigned_field(const json& object, std::string_view key) {
  const json* value = member(object, key);
  if (!value || !value->is_number_unsigned()) return field_error(key, "a non-negative integer");
  return value->get<uint64_t>();
}

std::optional<Digest> digest_from_hex(const std::string& hex) {
  auto bytes = from_hex(hex);
  if (!bytes || bytes->size() != Digest{}.size()) return std::nullopt;
  Digest digest{};
  std::copy(bytes->begin(), bytes->end(), digest.begin());
  return digest;
}

Result<Digest> digest_field(const json& object, std::string_view key) {
  auto text = string_field(object, key);
  if (!text) return tl::unexpected(text.error());
  auto digest = digest_from_hex(*text);
  if (!digest) return field_error(key, "a SHA-256 in hex");
  return *digest;
}

// An optional digest: absent is nullopt, present must be well-formed.
Result<std::optional<Digest>> optional_digest_field(const json& object, std::string_view key) {
  if (!member(object, key)) return std::optional<Digest>();
  auto digest = digest_field(object, key);
  if (!digest) return tl::unexpected(digest.error());
  return std::optional<Digest>(*digest);
}

Result<std::vector<int64_t>> integers_field(const json& object, std::string_view key) {
  const json* value = member(object, key);
  if (!value || !value->is_array()) return field_error(key, "an array of integers");
  std::vector<int64_t> out;
  for (const auto& item : *value) {
    if (!item.is_number_integer()) return field_error(key, "an array of integers");
    out.push_back(item.get<int64_t>());
  }
  return out;
}

Result<const json*> array_field(const json& object, std::string_view key) {
  const json* value = member(object, key);
  if (!value || !value->is_array()) return field_error(key, "an array");
  return value;
}

json structure_to_json(const PickleStructure& structure) {
  json globals = json::array();
  for (const auto& global : structure.globals) globals.push_back(json::array({global.module, global.name}));
  return {{"globals", std::move(globals)},
          {"records", structure.records},
          {"canonical_pickle_sha256", to_hex(structure.canonical_pickle)}};
}

Result<PickleStructure> structure_from_json(const json& object) {
  PickleStructure structure;
  auto globals = array_field(object, "globals");
  if (!globals) return tl::unexpected(globals.error());
  for (const auto& pair : **globals) {
    if (!pair.is_array() || pair.size() != 2 || !pair[0].is_string() || !pair[1].is_string()) {
      return field_error("globals", "an array of [module, name] pairs");
    }
    structure.globals.push_back(cdr::GlobalName{pair[0].get<std::string>(), pair[1].get<std::string>()});
  }
  auto records = array_field(object, "records");
  if (!records) return tl::unexpected(records.error());
  for (const auto& name : **records) {
    if (!name.is_string()) return field_error("records", "an array of strings");
    structure.records.push_back(name.get<std::string>());
  }
  auto canonical = digest_field(object, "canonical_pickle_sha256");
  if (!canonical) return tl::unexpected(canonical.error());
  structure.canonical_pickle = *canonical;
  return structure;
}

json file_to_json(const FileManifest& file) {
  const FileFacts& facts = file.facts;
  json records = json::array();
  for (const auto& record : facts.records) {
    records.push_back({{"name", record.name}, {"size", record.size}, {"sha256", to_hex(record.sha256)}});
  }
  json tensors = json::array();
  for (const auto& tensor : facts.tensors) {
    tensors.push_back({{"name", tensor.name},
                       {"dtype", tensor.dtype},
                       {"shape", tensor.shape},
                       {"stride", tensor.stride},
                       {"offset", tensor.offset},
                       {"record", tensor.record},
                       {"sha256", to_hex(tensor.sha256)}});
  }
  json architecture = {{"fingerprint", to_hex(file.architecture)}};
  if (file.config_sha256) architecture["config_sha256"] = to_hex(*file.config_sha256);
  const Provenance& provenance = file.provenance;
  json provenance_json = {{"policy_version", provenance.policy_version},
                          {"verdict", provenance.verdict},
                          {"findings", provenance.findings},
                          {"seed_id", provenance.seed_id}};
  if (provenance.upstream_sha256) provenance_json["upstream_sha256"] = to_hex(*provenance.upstream_sha256);
  json out = {{"path", file.path},
              {"size", facts.size},
              {"sha256", to_hex(facts.sha256)},
              {"format", facts.format},
              {"records", std::move(records)},
              {"tensors", std::move(tensors)},
              {"architecture", std::move(architecture)},
              {"provenance", std::move(provenance_json)}};
  if (facts.structure) {
    out["structure"] = structure_to_json(*facts.structure);
    out["structure"]["fingerprint"] = to_hex(facts.structure->fingerprint());
  }
  return out;
}

Result<TensorEntry> tensor_from_json(const json& object) {
  TensorEntry tensor;
  auto name = string_field(object, "name");
  auto dtype = string_field(object, "dtype");
  auto shape = integers_field(object, "shape");
  auto stride = integers_field(object, "stride");
  auto offset = unsigned_field(object, "offset");
  auto record = string_field(object, "record");
  auto digest = digest_field(object, "sha256");
  if (!name) return tl::unexpected(name.error());
  if (!dtype) return tl::unexpected(dtype.error());
  if (!shape) return tl::unexpected(shape.error());
  if (!stride) return tl::unexpected(stride.error());
  if (!offset) return tl::unexpected(offset.error());
  if (!record) return tl::unexpected(record.error());
  if (!digest) return tl::unexpected(digest.error());
  return TensorEntry{*name, *dtype, *shape, *stride, *offset, *record, *digest};
}

Result<Provenance> provenance_from_json(const json& object) {
  Provenance provenance;
  auto upstream = optional_digest_field(object, "upstream_sha256");
  auto policy_version = string_field(object, "policy_version");
  auto verdict = string_field(object, "verdict");
  auto findings = array_field(object, "findings");
  auto seed_id = string_field(object, "seed_id");
  if (!upstream) return tl::unexpected(upstream.error());
  if (!policy_version) return tl::unexpected(policy_version.error());
  if (!verdict) return tl::unexpected(verdict.error());
  if (!findings) return tl::unexpected(findings.error());
  if (!seed_id) return tl::unexpected(seed_id.error());
  return Provenance{*upstream, *policy_version, *verdict, **findings, *seed_id};
}

Result<FileManifest> file_from_json(const json& object) {
  FileManifest file;
  auto path = string_field(object, "path");
  auto size = unsigned_field(object, "size");
  auto digest = digest_field(object, "sha256");
  auto format = string_field(object, "format");
  if (!path) return tl::unexpected(path.error());
  if (!size) return tl::unexpected(size.error());
  if (!digest) return tl::unexpected(digest.error());
  if (!format) return tl::unexpected(format.error());
  file.path = *path;
  file.facts.size = *size;
  file.facts.sha256 = *digest;
  file.facts.format = *format;

  auto records = array_field(object, "records");
  if (!records) return tl::unexpected(records.error());
  for (const auto& record : **records) {
    auto name = string_field(record, "name");
    auto record_size = unsigned_field(record, "size");
    auto record_digest = digest_field(record, "sha256");
    if (!name || !record_size || !record_digest) return field_error("records", "a list of {name, size, sha256}");
    file.facts.records.push_back(cdr::RecordDigest{*name, *record_size, *record_digest});
  }
  auto tensors = array_field(object, "tensors");
  if (!tensors) return tl::unexpected(tensors.error());
  for (const auto& tensor_json : **tensors) {
    auto tensor = tensor_from_json(tensor_json);
    if (!tensor) return tl::unexpected(tensor.error());
    file.facts.tensors.push_back(std::move(*tensor));
  }
  if (const json* structure = member(object, "structure")) {
    auto parsed = structure_from_json(*structure);
    if (!parsed) return tl::unexpected(parsed.error());
    file.facts.structure = std::move(*parsed);
  }
  const json* architecture = member(object, "architecture");
  if (!architecture) return field_error("architecture", "an object");
  auto fingerprint = digest_field(*architecture, "fingerprint");
  auto config = optional_digest_field(*architecture, "config_sha256");
  if (!fingerprint) return tl::unexpected(fingerprint.error());
  if (!config) return tl::unexpected(config.error());
  file.architecture = *fingerprint;
  file.config_sha256 = *config;
  const json* provenance_json = member(object, "provenance");
  if (!provenance_json) return field_error("provenance", "an object");
  auto provenance = provenance_from_json(*provenance_json);
  if (!provenance) return tl::unexpected(provenance.error());
  file.provenance = std::move(*provenance);
  return file;
}

}  // namespace

// nlohmann's object is a std::map, so keys come out sorted; names are made valid UTF-8 before they get
// here, and the replacement handler keeps anything else from throwing.
std::string canonical_json(const json& value) { return value.dump(-1, ' ', false, json::error_handler_t::replace); }

Digest PickleStructure::fingerprint() const { return digest_of_json(structure_to_json(*this)); }

Digest architecture_fingerprint(const std::vector<TensorEntry>& tensors, const std::optional<Digest>& config_sha256) {
  std::vector<const TensorEntry*> sorted;
  for (const auto& tensor : tensors) sorted.push_back(&tensor);
  std::sort(sorted.begin(), sorted.end(), [](const TensorEntry* a, const TensorEntry* b) { return a->name < b->name; });
  json list = json::array();
  for (const TensorEntry* tensor : sorted) list.push_back(json::array({tensor->name, tensor->dtype, tensor->shape}));
  json fingerprint = {{"tensors", std::move(list)}};
  fingerprint["config_sha256"] = config_sha256 ? json(to_hex(*config_sha256)) : json(nullptr);
  return digest_of_json(fingerprint);
}

Result<FileFacts> facts_from_file(const ByteSource& file, const cdr::Policy& policy) {
  // The whole-file digest runs on a second thread while the content is described on this one.
  auto file_digest = std::async(std::launch::async, [&file] { return Sha256::of_range(file, 0, file.size()); });
  FileFacts facts;
  Status described = describe_content(file, policy, nullptr, facts);
  auto digest = file_digest.get();
  if (!digest) return tl::unexpected(digest.error());
  if (!described) {
    if (described.error().code == ErrorCode::kIo) return tl::unexpected(described.error());
    facts = FileFacts{};  // content that does not parse as its format is a plain file
    facts.content_error = described.error().describe();
  }
  facts.size = file.size();
  facts.sha256 = *digest;
  return facts;
}

Result<FileFacts> facts_from_sanitize(const ByteSource& written, const cdr::SanitizeReport& report,
                                      const cdr::Policy& policy) {
  if (report.verdict == cdr::Verdict::kBlocked || written.size() != report.output_size) {
    return fail(ErrorCode::kInvalidArgument, "the file is not the output of this sanitize run");
  }
  FileFacts facts;
  ZG_TRY(describe_content(written, policy, &report.records, facts));
  facts.size = report.output_size;
  facts.sha256 = report.output_sha256;
  return facts;
}

Provenance provenance_of(const cdr::SanitizeReport& report, const cdr::Policy& policy,
                         std::optional<Digest> upstream_sha256, std::string seed_id) {
  return Provenance{upstream_sha256, policy.version, std::string(cdr::to_string(report.verdict)),
                    cdr::report_to_json(report)["findings"], std::move(seed_id)};
}

FileManifest make_file_manifest(std::string path, FileFacts facts, std::optional<Digest> config_sha256,
                                Provenance provenance) {
  Digest architecture = architecture_fingerprint(facts.tensors, config_sha256);
  return FileManifest{std::move(path), std::move(facts), config_sha256, architecture, std::move(provenance)};
}

Result<ArtifactManifest> sanitized_file_manifest(std::string name, const std::string& written_path,
                                                 const cdr::SanitizeReport& report, const cdr::Policy& policy,
                                                 std::optional<Digest> upstream_sha256, std::string seed_id,
                                                 std::optional<Digest> config_sha256) {
  if (report.verdict == cdr::Verdict::kBlocked) {
    return fail(ErrorCode::kInvalidArgument, "a blocked file has no manifest: nothing was written");
  }
  auto written = FileSource::open(written_path);
  if (!written) return tl::unexpected(written.error());
  auto facts = facts_from_sanitize(**written, report, policy);
  if (!facts) return tl::unexpected(facts.error());
  Provenance provenance = provenance_of(report, policy, upstream_sha256, std::move(seed_id));
  ArtifactManifest manifest{std::move(name), {}};
  manifest.files.push_back(make_file_manifest(".", std::move(*facts), config_sha256, std::move(provenance)));
  return manifest;
}

const std::vector<std::string>& default_ignored_paths() {
  static const std::vector<std::string> paths = {".git", ".gitattributes", ".github", ".gitignore"};
  return paths;
}

bool compare_resource_paths(const std::string& a, const std::string& b) {
  const fs::path first(a);
  const fs::path second(b);
  return std::lexicographical_compare(first.begin(), first.end(), second.begin(), second.end(),
                                      [](const fs::path& x, const fs::path& y) { return x.native() < y.native(); });
}

Result<std::vector<std::string>> artifact_files(const std::string& path, const std::vector<std::string>& ignored) {
  std::error_code error;
  const fs::file_status status = fs::status(path, error);
  if (error || !fs::exists(status)) return fail(ErrorCode::kNotFound, path + " does not exist");
  if (fs::is_regular_file(status)) return std::vector<std::string>{"."};
  if (!fs::is_directory(status)) return fail(ErrorCode::kInvalidArgument, path + " is neither a file nor a folder");
  auto is_ignored = [&](const std::string& relative) {
    return std::any_of(ignored.begin(), ignored.end(), [&](const std::string& prefix) {
      return relative == prefix || relative.starts_with(prefix + "/");
    });
  };
  std::vector<std::string> files;
  fs::recursive_directory_iterator walk(path, error);
  for (; !error && walk != fs::recursive_directory_iterator(); walk.increment(error)) {
    const std::string relative = walk->path().lexically_relative(path).generic_string();
    if (is_ignored(relative)) {
      walk.disable_recursion_pending();
      continue;
    }
    std::error_code kind_error;
    if (walk->is_regular_file(kind_error)) files.push_back(relative);
  }
  if (error) return fail(ErrorCode::kIo, "cannot list " + path + ": " + error.message());
  std::sort(files.begin(), files.end(), compare_resource_paths);
  return files;
}

std::string file_in_artifact(const std::string& root, const std::string& manifest_path) {
  return manifest_path == "." ? root : (fs::path(root) / manifest_path).string();
}

Result<std::optional<Digest>> artifact_config_sha256(const std::string& path) {
  std::error_code error;
  const fs::path config = fs::path(path) / "config.json";
  if (!fs::is_directory(path, error) || !fs::is_regular_file(config, error)) return std::optional<Digest>();
  auto digest = artifact_sha256(config.string());
  if (!digest) return tl::unexpected(digest.error());
  return std::optional<Digest>(*digest);
}

Result<ArtifactManifest> manifest_for_path(const std::string& path, const cdr::Policy& policy) {
  auto files = artifact_files(path, default_ignored_paths());
  if (!files) return tl::unexpected(files.error());
  auto config = artifact_config_sha256(path);
  if (!config) return tl::unexpected(config.error());
  ArtifactManifest manifest{last_component(path), {}};
  for (const auto& relative : *files) {
    auto source = FileSource::open(file_in_artifact(path, relative));
    if (!source) return tl::unexpected(source.error());
    auto facts = facts_from_file(**source, policy);
    if (!facts) return tl::unexpected(facts.error().with_context(relative));
    manifest.files.push_back(make_file_manifest(relative, std::move(*facts), *config, Provenance{}));
  }
  return manifest;
}

Result<Digest> artifact_sha256(const std::string& path) {
  auto source = FileSource::open(path);
  if (!source) return tl::unexpected(source.error());
  return Sha256::of_range(**source, 0, (*source)->size());
}

json manifest_to_json(const ArtifactManifest& manifest) {
  json files = json::array();
  for (const auto& file : manifest.files) files.push_back(file_to_json(file));
  return {{"name", manifest.name}, {"files", std::move(files)}};
}

Result<ArtifactManifest> manifest_from_json(const json& object) {
  ArtifactManifest manifest;
  auto name = string_field(object, "name");
  auto files = array_field(object, "files");
  if (!name) return tl::unexpected(name.error());
  if (!files) return tl::unexpected(files.error());
  manifest.name = *name;
  std::set<std::string> paths;
  for (const auto& file_json : **files) {
    auto file = file_from_json(file_json);
    if (!file) return tl::unexpected(file.error());
    if (!paths.insert(file->path).second) return fail(ErrorCode::kParse, "manifest lists " + file->path + " twice");
    manifest.files.push_back(std::move(*file));
  }
  return manifest;
}

}  // namespace zoogate::mtd
