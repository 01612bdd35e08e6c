// The Hub's API answers, rewritten so that they describe the bytes zoogate serves (DESIGN.md section 5).
//
// Listings name files with what a client may check or cache them by: model info `siblings` (with
// blobs=true: size, blobId, lfs.sha256, lfs.size), `/tree` and `paths-info` entries (size, oid,
// lfs.oid, lfs.size). For a file zoogate rewrites, those must be the served file's, and every
// `xetHash` must go: huggingface_hub 1.22+ skips its per-file HEAD when a tree entry has one, and a
// Xet client would fetch the upstream bytes around zoogate.
//
// A rewritten entry describes the served file as an LFS object, which is what its answers on
// /resolve say (ETag = X-Linked-Etag = sha256 of the served bytes):
//   size                      served size
//   lfs.oid / lfs.sha256      served sha256 (tree and paths-info say "oid", siblings "sha256")
//   lfs.size                  served size
//   lfs.pointerSize           length of the git-lfs pointer of the served file (125 bytes plus the
//                             size's digits: the upstream value unless the digit count changed)
//   oid / blobId              git blob id of that pointer
// An entry without `lfs` (a file kept in git) gets one, with every key clients require: both
// huggingface_hub 0.x and 1.x fail on an `lfs` object without `pointerSize`. Everything else, key
// order included, stays as the Hub sent it (numbers and escapes are re-serialized, same values).
//
// A "file entry" is an entry that describes a file's content: a `/tree` or `paths-info` entry whose
// `type` is "file", or a sibling with any of `size`, `blobId`, `lfs` (model info asked with
// blobs=true). A sibling known by name alone says nothing that could go stale and is left alone.
//
// Untrusted input: the JSON is bounded in size and nesting, and a file entry must be well-formed (an
// object; path a string naming a valid repository path; size a non-negative integer; oid, blobId,
// lfs.oid and lfs.sha256 strings or null; lfs an object or null), or the whole answer is refused
// with kParse: a listing zoogate cannot read is one it cannot make true. Nothing throws.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.h"
#include "proxy/hub_route.h"

namespace zoogate::proxy {

// What the upstream entry says about a file.
struct UpstreamFileFacts {
  uint64_t size = 0;
  std::optional<std::string> lfs_sha256;  // lfs.oid (tree, paths-info) or lfs.sha256 (siblings), as given
  std::string git_oid;                    // oid (tree, paths-info) or blobId (siblings); "" when absent
};

// What zoogate serves for a file.
struct ServedFile {
  uint64_t size = 0;
  std::string sha256;  // 64 lowercase hex digits
};

struct ListedFile {
  std::string path;  // "rfilename" of a sibling, "path" of a tree or paths-info entry
  UpstreamFileFacts facts;
};

struct ListingLimits {
  uint64_t max_bytes = 64ull << 20;  // the server passes limits.max_api_json_bytes
  // Deeper than any answer the Hub gives (model cards' YAML included), shallow enough that the
  // recursive serializer stays far from the stack's end.
  unsigned max_depth = 128;
};

// Decides, for one file entry, whether zoogate rewrites it: the served file, or nullopt to leave the
// entry as the Hub sent it (but for xetHash). Called once per file entry, in document order.
using ServedFileLookup =
    std::function<std::optional<ServedFile>(std::string_view path, const UpstreamFileFacts& facts)>;

// The file entries of an answer of `kind`, in document order, without changing anything, so the proxy
// can prepare (run the pipeline) before rewriting. kXetReadToken and kOther answers list no files.
Result<std::vector<ListedFile>> collect_file_entries(std::string_view json_text, ApiKind kind,
                                                     const ListingLimits& limits = {});

// The answer rewritten: file entries for which `lookup` returns a ServedFile describe it, and every
// `xetHash` key at any depth is removed (in kOther answers too, which have no file entries).
// kInvalidArgument when `lookup` returns a sha256 that is not 64 lowercase hex digits.
Result<std::string> rewrite_listing(std::string_view json_text, ApiKind kind, const ServedFileLookup& lookup,
                                    const ListingLimits& limits = {});

}  // namespace zoogate::proxy
