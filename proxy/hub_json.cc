#include "proxy/hub_json.h"

#include <algorithm>
#include <array>

#include <nlohmann/json.hpp>
#include <openssl/evp.h>

#include "cdr/message_text.h"
#include "common/encoding.h"

namespace zoogate::proxy {
namespace {

// ordered_json keeps each object's keys in the order the Hub sent them.
using Json = nlohmann::ordered_json;

constexpr std::string_view kXetHashKey = "xetHash";

// Syntax and nesting check before the document is built: the DOM parser has no depth limit, and
// this pass also reports where malformed input goes wrong.
class BoundedSyntaxCheck final : public nlohmann::json_sax<Json> {
 public:
  explicit BoundedSyntaxCheck(unsigned max_depth) : max_depth_(max_depth) {}

  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }
  bool key(string_t&) override { return true; }
  bool start_object(std::size_t) override { return enter(); }
  bool end_object() override { return leave(); }
  bool start_array(std::size_t) override { return enter(); }
  bool end_array() override { return leave(); }
  bool parse_error(std::size_t position, const std::string&, const Json::exception& exception) override {
    error_ = Error{ErrorCode::kParse, "malformed JSON: " + cdr::escape_for_message(exception.what()), position};
    return false;
  }

  Error take_error() { return std::move(error_); }

 private:
  bool enter() {
    if (++depth_ <= max_depth_) return true;
    error_ = Error{ErrorCode::kLimitExceeded, "the JSON nests deeper than " + std::to_string(max_depth_) + " levels",
                   std::nullopt};
    return false;
  }
  bool leave() {
    --depth_;
    return true;
  }

  unsigned max_depth_;
  unsigned depth_ = 0;
  Error error_;
};

Result<Json> parse_bounded(std::string_view text, const ListingLimits& limits) {
  if (text.size() > limits.max_bytes) {
    return fail(ErrorCode::kLimitExceeded, "the JSON answer of " + std::to_string(text.size()) +
                                               " bytes exceeds the limit of " + std::to_string(limits.max_bytes));
  }
  BoundedSyntaxCheck check(limits.max_depth);
  if (!Json::sax_parse(text.begin(), text.end(), &check, Json::input_format_t::json, /*strict=*/true,
                       /*ignore_comments=*/false)) {
    return fail(check.take_error());
  }
  Json document = Json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (document.is_discarded()) return fail(ErrorCode::kInternal, "JSON that passed the syntax check did not parse");
  return document;
}

// Where a file entry lives and what it says.
struct FileEntry {
  Json* object;
  bool sibling;  // model info sibling (blobId, lfs.sha256) rather than tree / paths-info entry (oid, lfs.oid)
  ListedFile listed;
};

Error malformed(const std::string& where, std::string_view what) {
  return Error{ErrorCode::kParse, where + ": " + std::string(what), std::nullopt};
}

// A string member that may be absent or null; anything else is malformed.
Result<std::optional<std::string>> optional_string(const Json& object, std::string_view key, const std::string& where) {
  auto found = object.find(key);
  if (found == object.end() || found->is_null()) return std::nullopt;
  if (!found->is_string()) return fail(malformed(where, std::string(key) + " is not a string"));
  return found->get<std::string>();
}

Result<FileEntry> read_file_entry(Json& object, bool sibling, const std::string& where) {
  FileEntry entry{&object, sibling, {}};
  const std::string_view path_key = sibling ? "rfilename" : "path";
  auto path = object.find(path_key);
  if (path == object.end() || !path->is_string()) {
    return fail(malformed(where, std::string(path_key) + " is not a string"));
  }
  entry.listed.path = path->get<std::string>();
  if (auto valid = validate_repo_path(entry.listed.path); !valid) return fail(malformed(where, valid.error().message));

  auto size = object.find("size");
  if (size == object.end() || !size->is_number_unsigned()) {
    return fail(malformed(where, "size is not a non-negative integer"));
  }
  entry.listed.facts.size = size->get<uint64_t>();

  auto git_oid = optional_string(object, sibling ? "blobId" : "oid", where);
  if (!git_oid) return fail(git_oid.error());
  entry.listed.facts.git_oid = git_oid->value_or("");

  auto lfs = object.find("lfs");
  if (lfs != object.end() && !lfs->is_null()) {
    if (!lfs->is_object()) return fail(malformed(where, "lfs is not an object"));
    auto sha256 = optional_string(*lfs, sibling ? "sha256" : "oid", where + ".lfs");
    if (!sha256) return fail(sha256.error());
    entry.listed.facts.lfs_sha256 = std::move(*sha256);
  }
  return entry;
}

// The file entries of a document, in document order (see hub_json.h for what counts as one).
Result<std::vector<FileEntry>> find_file_entries(Json& document, ApiKind kind) {
  std::vector<FileEntry> entries;
  switch (kind) {
    case ApiKind::kModelInfo: {
      if (!document.is_object()) return fail(ErrorCode::kParse, "the model info answer is not a JSON object");
      auto siblings = document.find("siblings");
      if (siblings == document.end() || siblings->is_null()) return entries;
      if (!siblings->is_array()) return fail(ErrorCode::kParse, "siblings is not an array");
      for (size_t i = 0; i < siblings->size(); ++i) {
        Json& sibling = (*siblings)[i];
        const std::string where = "siblings[" + std::to_string(i) + "]";
        if (!sibling.is_object()) return fail(malformed(where, "not an object"));
        if (!sibling.contains("size") && !sibling.contains("blobId") && !sibling.contains("lfs")) continue;
        auto entry = read_file_entry(sibling, /*sibling=*/true, where);
        if (!entry) return fail(entry.error());
        entries.push_back(std::move(*entry));
      }
      return entries;
    }
    case ApiKind::kTree:
    case ApiKind::kPathsInfo: {
      if (!document.is_array()) return fail(ErrorCode::kParse, "the listing is not a JSON array");
      for (size_t i = 0; i < document.size(); ++i) {
        Json& item = document[i];
        const std::string where = "entry " + std::to_string(i);
        if (!item.is_object()) return fail(malformed(where, "not an object"));
        auto type = item.find("type");
        if (type == item.end() || !type->is_string()) return fail(malformed(where, "type is not a string"));
        if (type->get_ref<const std::string&>() != "file") continue;
        auto entry = read_file_entry(item, /*sibling=*/false, where);
        if (!entry) return fail(entry.error());
        entries.push_back(std::move(*entry));
      }
      return entries;
    }
    case ApiKind::kXetReadToken:
    case ApiKind::kOther:
      return entries;
  }
  return entries;
}

bool is_lowercase_sha256_hex(std::string_view text) {
  return text.size() == 64 &&
         std::all_of(text.begin(), text.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

// The git-lfs (spec v1) pointer file that stands for a file in git.
std::string lfs_pointer(const ServedFile& served) {
  return "version https://git-lfs.github.com/spec/v1\noid sha256:" + served.sha256 + "\nsize " +
         std::to_string(served.size) + "\n";
}

// git's object id of a blob: SHA-1 over "blob <length>\0" and the content.
std::string git_blob_id(std::string_view content) {
  std::string object = "blob " + std::to_string(content.size());
  object.push_back('\0');
  object.append(content);
  std::array<uint8_t, 20> digest{};
  unsigned length = 0;
  EVP_Digest(object.data(), object.size(), digest.data(), &length, EVP_sha1(), nullptr);
  return to_hex(digest);
}

void describe_served(FileEntry& entry, const ServedFile& served) {
  Json& object = *entry.object;
  const std::string pointer = lfs_pointer(served);
  object["size"] = served.size;
  object[entry.sibling ? "blobId" : "oid"] = git_blob_id(pointer);
  Json& lfs = object["lfs"];
  if (!lfs.is_object()) lfs = Json::object();
  lfs[entry.sibling ? "sha256" : "oid"] = served.sha256;
  lfs["size"] = served.size;
  lfs["pointerSize"] = pointer.size();
}

// Depth is bounded by ListingLimits::max_depth, checked before the document was built.
void remove_xet_hashes(Json& value) {
  if (value.is_object()) {
    value.erase(kXetHashKey);
    for (auto& member : value) remove_xet_hashes(member);
  } else if (value.is_array()) {
    for (auto& element : value) remove_xet_hashes(element);
  }
}

}  // namespace

Result<std::vector<ListedFile>> collect_file_entries(std::string_view json_text, ApiKind kind,
                                                     const ListingLimits& limits) {
  auto document = parse_bounded(json_text, limits);
  if (!document) return fail(document.error());
  auto entries = find_file_entries(*document, kind);
  if (!entries) return fail(entries.error());
  std::vector<ListedFile> files;
  files.reserve(entries->size());
  for (FileEntry& entry : *entries) files.push_back(std::move(entry.listed));
  return files;
}

Result<std::string> rewrite_listing(std::string_view json_text, ApiKind kind, const ServedFileLookup& lookup,
                                    const ListingLimits& limits) {
  auto document = parse_bounded(json_text, limits);
  if (!document) return fail(document.error());
  auto entries = find_file_entries(*document, kind);
  if (!entries) return fail(entries.error());
  for (FileEntry& entry : *entries) {
    std::optional<ServedFile> served = lookup(entry.listed.path, entry.listed.facts);
    if (!served) continue;
    if (!is_lowercase_sha256_hex(served->sha256)) {
      return fail(ErrorCode::kInvalidArgument, "the served SHA-256 of " + cdr::quote_for_message(entry.listed.path) +
                                                   " is not 64 lowercase hex digits");
    }
    describe_served(entry, *served);
  }
  remove_xet_hashes(*document);
  // dump() throws only on invalid UTF-8, which the parser already refused and hex cannot be;
  // `replace` makes "never throws" hold without relying on that.
  return document->dump(-1, ' ', /*ensure_ascii=*/false, Json::error_handler_t::replace);
}

}  // namespace zoogate::proxy
