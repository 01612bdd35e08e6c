#include "mtd/verify.h"

#include <algorithm>
#include <map>
#include <set>

#include "cdr/pickle_vm.h"
#include "common/encoding.h"
#include "mtd/dsse.h"

namespace zoogate::mtd {
namespace {

std::string shape_text(const std::vector<int64_t>& values) {
  std::string out = "[";
  for (size_t i = 0; i < values.size(); ++i) out += (i ? "," : "") + std::to_string(values[i]);
  return out + "]";
}

std::string globals_text(const std::vector<cdr::GlobalName>& globals) {
  std::string out;
  for (const auto& global : globals) out += (out.empty() ? "" : " ") + global.module + "." + global.name;
  return out;
}

std::string names_text(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& name : names) out += (out.empty() ? "" : " ") + name;
  return out;
}

// Collects the differences of one file under its manifest path.
class FileComparison {
 public:
  FileComparison(const std::string& path, std::vector<Difference>& out) : path_(path), out_(out) {}

  void add(std::string item, std::string field, std::string expected, std::string found) {
    out_.push_back(Difference{path_, std::move(item), std::move(field), std::move(expected), std::move(found)});
  }
  void compare(std::string item, std::string field, const std::string& expected, const std::string& found) {
    if (expected != found) add(std::move(item), std::move(field), expected, found);
  }

  void compare_records(const std::vector<cdr::RecordDigest>& expected, const std::vector<cdr::RecordDigest>& found) {
    std::map<std::string, const cdr::RecordDigest*> remaining;
    for (const auto& record : found) remaining.emplace(record.name, &record);
    for (const auto& record : expected) {
      auto match = remaining.find(record.name);
      if (match == remaining.end()) {
        add("record " + record.name, "missing", to_hex(record.sha256), "");
        continue;
      }
      compare("record " + record.name, "size", std::to_string(record.size), std::to_string(match->second->size));
      compare("record " + record.name, "sha256", to_hex(record.sha256), to_hex(match->second->sha256));
      remaining.erase(match);
    }
    for (const auto& record : found) {
      if (remaining.contains(record.name)) add("record " + record.name, "extra", "", to_hex(record.sha256));
    }
  }

  void compare_tensors(const std::vector<TensorEntry>& expected, const std::vector<TensorEntry>& found) {
    std::map<std::string, const TensorEntry*> by_name;
    for (const auto& tensor : found) by_name.emplace(tensor.name, &tensor);
    std::vector<const TensorEntry*> missing;
    std::set<std::string> matched;
    for (const auto& tensor : expected) {
      auto match = by_name.find(tensor.name);
      if (match == by_name.end()) {
        missing.push_back(&tensor);
        continue;
      }
      matched.insert(tensor.name);
      const TensorEntry& actual = *match->second;
      const std::string item = "tensor " + tensor.name;
      compare(item, "dtype", tensor.dtype, actual.dtype);
      compare(item, "shape", shape_text(tensor.shape), shape_text(actual.shape));
      compare(item, "stride", shape_text(tensor.stride), shape_text(actual.stride));
      compare(item, "offset", std::to_string(tensor.offset), std::to_string(actual.offset));
      compare(item, "record", tensor.record, actual.record);
      compare(item, "sha256", to_hex(tensor.sha256), to_hex(actual.sha256));
    }
    std::vector<const TensorEntry*> extra;
    for (const auto& tensor : found) {
      if (!matched.contains(tensor.name)) extra.push_back(&tensor);
    }
    // A tensor that vanished under one name and whose bytes, dtype and shape appear under a new name
    // was renamed.
    for (const TensorEntry* gone : missing) {
      auto renamed = std::find_if(extra.begin(), extra.end(), [&](const TensorEntry* candidate) {
        return candidate && candidate->sha256 == gone->sha256 && candidate->dtype == gone->dtype &&
               candidate->shape == gone->shape;
      });
      if (renamed != extra.end()) {
        add("tensor " + gone->name, "renamed", gone->name, (*renamed)->name);
        *renamed = nullptr;
      } else {
        add("tensor " + gone->name, "missing", to_hex(gone->sha256), "");
      }
    }
    for (const TensorEntry* added : extra) {
      if (added) add("tensor " + added->name, "extra", "", to_hex(added->sha256));
    }
  }

  void compare_structure(const PickleStructure& expected, const PickleStructure& found) {
    std::vector<cdr::GlobalName> removed;
    std::vector<cdr::GlobalName> added;
    std::set_difference(expected.globals.begin(), expected.globals.end(), found.globals.begin(), found.globals.end(),
                        std::back_inserter(removed));
    std::set_difference(found.globals.begin(), found.globals.end(), expected.globals.begin(), expected.globals.end(),
                        std::back_inserter(added));
    if (!removed.empty() || !added.empty()) {
      add("structure", "globals", "-" + globals_text(removed), "+" + globals_text(added));
    }
    compare("structure", "records", names_text(expected.records), names_text(found.records));
    compare("structure", "canonical_pickle", to_hex(expected.canonical_pickle), to_hex(found.canonical_pickle));
    compare("structure", "fingerprint", to_hex(expected.fingerprint()), to_hex(found.fingerprint()));
  }

 private:
  const std::string& path_;
  std::vector<Difference>& out_;
};

void compare_file(const FileManifest& expected, const FileFacts& found, const std::optional<Digest>& config_sha256,
                  std::vector<Difference>& out) {
  FileComparison comparison(expected.path, out);
  comparison.compare("file", "size", std::to_string(expected.facts.size), std::to_string(found.size));
  comparison.compare("file", "sha256", to_hex(expected.facts.sha256), to_hex(found.sha256));
  if (expected.facts.format != found.format) {
    // Nothing past the digest compares across formats; the reason says why the content did not parse.
    std::string reason = found.content_error.empty() ? "" : " (" + found.content_error + ")";
    comparison.add("file", "format", expected.facts.format, found.format + reason);
    return;
  }
  comparison.compare_records(expected.facts.records, found.records);
  comparison.compare_tensors(expected.facts.tensors, found.tensors);
  if (expected.facts.structure && found.structure) {
    comparison.compare_structure(*expected.facts.structure, *found.structure);
  }
  comparison.compare("architecture", "fingerprint", to_hex(expected.architecture),
                     to_hex(architecture_fingerprint(found.tensors, config_sha256)));
}

// The built-in allowlist plus exactly the globals the signed manifest says the pickle names.
cdr::Policy verification_policy(const FileManifest& expected) {
  cdr::Policy policy;
  if (expected.facts.structure) {
    for (const auto& global : expected.facts.structure->globals) {
      if (!cdr::is_builtin_allowed(global)) policy.operator_allowed_globals.push_back(global);
    }
  }
  return policy;
}

}  // namespace

std::string Difference::describe() const {
  // The manifest's own problems are one sentence; a single-file artifact's path "." says nothing.
  if (item == "manifest") return "manifest: " + field + ": " + found;
  std::string out = file.empty() || file == "." ? item : file + ": " + item;
  out += ": " + field;
  if (!expected.empty() || !found.empty()) {
    out += " (";
    if (!expected.empty()) out += "signed " + expected;
    if (!expected.empty() && !found.empty()) out += ", ";
    if (!found.empty()) out += "found " + found;
    out += ")";
  }
  return out;
}

Result<VerifyOutcome> verify_artifact(const std::string& path, std::string_view signed_manifest, const PublicKey& key,
                                      const VerifyOptions& options) {
  VerifyOutcome outcome;
  auto opened = open_signed_manifest(signed_manifest, key);
  if (!opened) {
    const bool bad_signature = opened.error().code == ErrorCode::kIntegrity;
    outcome.differences.push_back(
        Difference{"", "manifest", bad_signature ? "signature" : "malformed", "", opened.error().message});
    return outcome;
  }
  outcome.key_id = opened->key_id;
  const ArtifactManifest& manifest = outcome.manifest.emplace(std::move(opened->manifest));

  std::vector<std::string> ignored = default_ignored_paths();
  ignored.insert(ignored.end(), options.ignored_paths.begin(), options.ignored_paths.end());
  auto files = artifact_files(path, ignored);
  if (!files) return tl::unexpected(files.error());
  // A single file has no config.json beside it: its architecture check uses the signed config digest.
  auto folder_config = artifact_config_sha256(path);
  if (!folder_config) return tl::unexpected(folder_config.error());
  const bool single_file = *files == std::vector<std::string>{"."};

  const std::set<std::string> present(files->begin(), files->end());
  std::set<std::string> listed;
  for (const auto& expected : manifest.files) {
    listed.insert(expected.path);
    if (!present.contains(expected.path)) {
      outcome.differences.push_back(Difference{expected.path, "file", "missing", to_hex(expected.facts.sha256), ""});
      continue;
    }
    auto source = FileSource::open(file_in_artifact(path, expected.path));
    if (!source) return tl::unexpected(source.error());
    auto facts = facts_from_file(**source, verification_policy(expected));
    if (!facts) return tl::unexpected(facts.error().with_context(expected.path));
    compare_file(expected, *facts, single_file ? expected.config_sha256 : *folder_config, outcome.differences);
  }
  for (const auto& relative : *files) {
    if (listed.contains(relative)) continue;
    auto digest = artifact_sha256(file_in_artifact(path, relative));
    if (!digest) return tl::unexpected(digest.error());
    outcome.differences.push_back(Difference{relative, "file", "extra", "", to_hex(*digest)});
  }
  return outcome;
}

}  // namespace zoogate::mtd
