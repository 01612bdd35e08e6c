#include "proxy/hub_json.h"

#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace zoogate::proxy {
namespace {

using ::testing::HasSubstr;
using Json = nlohmann::ordered_json;

// What zoogate serves for the rewritten file in these tests, and the git-lfs pointer facts that
// follow from it (git hash-object of the pointer text, computed outside zoogate).
const std::string kServedSha256 = "9b2d77374d10bbead4e30115f381c48a2117d0178a5f0367ec25701979e52372";
constexpr uint64_t kServedSize = 548118321;
constexpr std::string_view kServedPointerBlobId = "3c9cf248583af3c0b560614c01d5d358d4855e76";
constexpr uint64_t kServedPointerSize = 134;
constexpr uint64_t kSmallServedSize = 1234;
constexpr std::string_view kSmallServedPointerBlobId = "f840a500066b74dc21945bb06452981d7639d4f3";
constexpr uint64_t kSmallServedPointerSize = 129;

// GET /api/models/openai-community/gpt2?blobs=true, shaped like the Hub's answer.
constexpr std::string_view kModelInfo = R"json({
  "_id": "621ffdc036468d709f17434d",
  "id": "openai-community/gpt2",
  "private": false,
  "pipeline_tag": "text-generation",
  "library_name": "transformers",
  "tags": ["transformers", "pytorch", "tf", "safetensors", "gpt2", "text-generation", "en", "license:mit"],
  "downloads": 11873042,
  "likes": 2612,
  "modelId": "openai-community/gpt2",
  "author": "openai-community",
  "sha": "607a30d783dfa663caf39e06633721c8d4cfcd7e",
  "lastModified": "2024-02-19T10:57:45.000Z",
  "gated": false,
  "disabled": false,
  "widgetData": [{"text": "My name is Julien and I like to"}],
  "model-index": null,
  "config": {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "tokenizer_config": {}},
  "cardData": {"language": "en", "tags": ["exbert"], "license": "mit",
               "model-index": [{"name": "gpt2", "results": [{"task": {"type": "text-generation"},
                                "metrics": [{"type": "perplexity", "value": 29.41, "verified": false}]}]}]},
  "transformersInfo": {"auto_model": "AutoModelForCausalLM", "pipeline_tag": "text-generation", "processor": "AutoTokenizer"},
  "siblings": [
    {"rfilename": ".gitattributes", "blobId": "7c795a7e0be3ba3a4d2a8e3a2fa6e3b1f4e0b2b5", "size": 445},
    {"rfilename": "config.json", "blobId": "10c66461e4c109db5a2196bff4bb59be30396ed8", "size": 665},
    {"rfilename": "model.safetensors", "blobId": "a1f1a4ad3e5ff9d1dd6bbb6b5a1a6c0e5d4d2c11", "size": 548105171,
     "lfs": {"sha256": "248dfc3911869ec493c76e65bf2fcf7f615828b0254c12b473182f0f81d3a707", "size": 548105171, "pointerSize": 135}},
    {"rfilename": "pytorch_model.bin", "blobId": "b7c5d3f4b8b76583b422fcb9189ad6c89d5d97a0", "size": 548118077,
     "lfs": {"sha256": "7c5d3f4b8b76583b422fcb9189ad6c89d5d97a094cdd52bd9c3e8ded5a9c2f5b", "size": 548118077, "pointerSize": 135}},
    {"rfilename": "training_args.bin", "blobId": "a7f2e1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4", "size": 1211}
  ],
  "spaces": ["open-llm-leaderboard/open_llm_leaderboard"],
  "createdAt": "2022-03-02T23:29:04.000Z",
  "safetensors": {"parameters": {"F32": 137022720}, "total": 137022720},
  "usedStorage": 7775243473
})json";

// GET /api/models/acme/model/tree/main?recursive=true&expand=true: a page of a Xet-backed repository.
constexpr std::string_view kTreePage = R"json([
  {"type": "directory", "oid": "4b825dc642cb6eb9a060e54bf8d69288fbee4904", "size": 0, "path": "onnx"},
  {"type": "file", "oid": "a6344aac8c09253b3b630fb776ae94478aa0275b", "size": 1519, "path": ".gitattributes",
   "lastCommit": {"id": "607a30d783dfa663caf39e06633721c8d4cfcd7e", "title": "Adding generation config", "date": "2022-10-17T16:05:49.000Z"}},
  {"type": "file", "oid": "7c5d3f4b8b76583b422fcb9189ad6c89d5d97a09", "size": 548118077, "path": "pytorch_model.bin",
   "lfs": {"oid": "7c5d3f4b8b76583b422fcb9189ad6c89d5d97a094cdd52bd9c3e8ded5a9c2f5b", "size": 548118077, "pointerSize": 135},
   "xetHash": "f8accece953fd366d4ce30597b97acc1ccedc3c785187a5ef6ecb4a8e1755122",
   "lastCommit": {"id": "11c5a3d5811f50298f278a704980280950aedb10", "title": "Upload weights", "date": "2022-03-02T23:29:04.000Z"},
   "securityFileStatus": {"status": "safe", "avScan": {"virusFound": false}, "pickleImportScan": {"highestSafetyLevel": "innocuous",
                          "imports": [{"module": "torch._utils", "name": "_rebuild_tensor_v2", "safety": "innocuous"}]}}},
  {"type": "file", "oid": "a1f1a4ad3e5ff9d1dd6bbb6b5a1a6c0e5d4d2c11", "size": 548105171, "path": "model.safetensors",
   "lfs": {"oid": "248dfc3911869ec493c76e65bf2fcf7f615828b0254c12b473182f0f81d3a707", "size": 548105171, "pointerSize": 135},
   "xetHash": "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9"},
  {"type": "file", "oid": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4", "size": 1211, "path": "onnx/training_args.bin"}
])json";

// POST /api/models/acme/model/paths-info/main (paths=pytorch_model.bin&paths=onnx&expand=false).
constexpr std::string_view kPathsInfo = R"json([
  {"type": "file", "oid": "7c5d3f4b8b76583b422fcb9189ad6c89d5d97a09", "size": 548118077, "path": "pytorch_model.bin",
   "lfs": {"oid": "7c5d3f4b8b76583b422fcb9189ad6c89d5d97a094cdd52bd9c3e8ded5a9c2f5b", "size": 548118077, "pointerSize": 135},
   "xetHash": "f8accece953fd366d4ce30597b97acc1ccedc3c785187a5ef6ecb4a8e1755122"},
  {"type": "directory", "oid": "4b825dc642cb6eb9a060e54bf8d69288fbee4904", "size": 0, "path": "onnx"}
])json";

ServedFile served() { return ServedFile{kServedSize, kServedSha256}; }

// A lookup that rewrites the files named in `rewritten` and records every call.
struct RecordingLookup {
  std::vector<std::string> rewritten;
  std::vector<ListedFile> calls = {};
  std::optional<ServedFile> answer = served();

  ServedFileLookup function() {
    return [this](std::string_view path, const UpstreamFileFacts& facts) -> std::optional<ServedFile> {
      calls.push_back({std::string(path), facts});
      if (std::find(rewritten.begin(), rewritten.end(), path) == rewritten.end()) return std::nullopt;
      return answer;
    };
  }
};

Json parse(std::string_view text) { return Json::parse(text); }

std::vector<std::string> keys_of(const Json& object) {
  std::vector<std::string> keys;
  for (const auto& item : object.items()) keys.push_back(item.key());
  return keys;
}

// True when `value` or anything inside it has a key named `key`.
bool has_key_anywhere(const Json& value, std::string_view key) {
  if (value.is_object()) {
    if (value.contains(key)) return true;
    for (const auto& member : value) {
      if (has_key_anywhere(member, key)) return true;
    }
  } else if (value.is_array()) {
    for (const auto& element : value) {
      if (has_key_anywhere(element, key)) return true;
    }
  }
  return false;
}

TEST(HubJson, CollectsSiblingsWithTheirBlobFacts) {
  auto files = collect_file_entries(kModelInfo, ApiKind::kModelInfo);
  ASSERT_TRUE(files) << files.error().describe();
  ASSERT_EQ(files->size(), 5u);
  EXPECT_EQ((*files)[0].path, ".gitattributes");
  EXPECT_EQ((*files)[0].facts.size, 445u);
  EXPECT_EQ((*files)[0].facts.git_oid, "7c795a7e0be3ba3a4d2a8e3a2fa6e3b1f4e0b2b5");
  EXPECT_EQ((*files)[0].facts.lfs_sha256, std::nullopt);
  EXPECT_EQ((*files)[3].path, "pytorch_model.bin");
  EXPECT_EQ((*files)[3].facts.size, 548118077u);
  EXPECT_EQ((*files)[3].facts.lfs_sha256, "7c5d3f4b8b76583b422fcb9189ad6c89d5d97a094cdd52bd9c3e8ded5a9c2f5b");
}

TEST(HubJson, SiblingsListedByNameAloneAreNotFileEntries) {
  constexpr std::string_view kBare =
      R"({"id": "acme/model", "sha": "abc", "siblings": [{"rfilename": "a.bin"}, {"rfilename": "b.json"}]})";
  auto files = collect_file_entries(kBare, ApiKind::kModelInfo);
  ASSERT_TRUE(files);
  EXPECT_TRUE(files->empty());
  RecordingLookup lookup{{"a.bin"}};
  auto rewritten = rewrite_listing(kBare, ApiKind::kModelInfo, lookup.function());
  ASSERT_TRUE(rewritten);
  EXPECT_TRUE(lookup.calls.empty());
  EXPECT_EQ(parse(*rewritten), parse(kBare));
  // Model info without siblings at all (expand[]=downloads) has nothing to rewrite either.
  EXPECT_TRUE(collect_file_entries(R"({"id": "acme/model", "downloads": 3})", ApiKind::kModelInfo)->empty());
}

TEST(HubJson, RewritesAnLfsSiblingAndKeepsEverythingElse) {
  RecordingLookup lookup{{"pytorch_model.bin"}};
  auto rewritten = rewrite_listing(kModelInfo, ApiKind::kModelInfo, lookup.function());
  ASSERT_TRUE(rewritten) << rewritten.error().describe();
  ASSERT_EQ(lookup.calls.size(), 5u);  // every file entry, in document order
  EXPECT_EQ(lookup.calls[2].path, "model.safetensors");
  EXPECT_EQ(lookup.calls[3].facts.git_oid, "b7c5d3f4b8b76583b422fcb9189ad6c89d5d97a0");

  Json after = parse(*rewritten);
  const Json& sibling = after["siblings"][3];
  EXPECT_EQ(keys_of(sibling), (std::vector<std::string>{"rfilename", "blobId", "size", "lfs"}));
  EXPECT_EQ(sibling["size"], kServedSize);
  EXPECT_EQ(sibling["blobId"], kServedPointerBlobId);
  EXPECT_EQ(keys_of(sibling["lfs"]), (std::vector<std::string>{"sha256", "size", "pointerSize"}));
  EXPECT_EQ(sibling["lfs"]["sha256"], kServedSha256);
  EXPECT_EQ(sibling["lfs"]["size"], kServedSize);
  EXPECT_EQ(sibling["lfs"]["pointerSize"], kServedPointerSize);

  // Apart from that sibling, the document is the Hub's, key order included.
  Json before = parse(kModelInfo);
  EXPECT_EQ(keys_of(after), keys_of(before));
  after["siblings"][3] = before["siblings"][3];
  EXPECT_EQ(after, before);
}

TEST(HubJson, DescribesARewrittenGitFileAsAnLfsObject) {
  RecordingLookup lookup{{"training_args.bin"}};
  lookup.answer = ServedFile{kSmallServedSize, kServedSha256};
  auto rewritten = rewrite_listing(kModelInfo, ApiKind::kModelInfo, lookup.function());
  ASSERT_TRUE(rewritten);
  const Json sibling = parse(*rewritten)["siblings"][4];
  EXPECT_EQ(keys_of(sibling), (std::vector<std::string>{"rfilename", "blobId", "size", "lfs"}));
  EXPECT_EQ(sibling["size"], kSmallServedSize);
  EXPECT_EQ(sibling["blobId"], kSmallServedPointerBlobId);
  // huggingface_hub reads lfs.size, lfs.sha256 and lfs.pointerSize unconditionally once lfs exists.
  EXPECT_EQ(sibling["lfs"],
            (Json{{"sha256", kServedSha256}, {"size", kSmallServedSize}, {"pointerSize", kSmallServedPointerSize}}));
}

TEST(HubJson, RewritesTreeEntriesAndRemovesEveryXetHash) {
  RecordingLookup lookup{{"pytorch_model.bin", "onnx/training_args.bin"}};
  auto rewritten = rewrite_listing(kTreePage, ApiKind::kTree, lookup.function());
  ASSERT_TRUE(rewritten) << rewritten.error().describe();
  ASSERT_EQ(lookup.calls.size(), 4u);  // the directory is no file entry
  EXPECT_EQ(lookup.calls[1].facts.lfs_sha256, "7c5d3f4b8b76583b422fcb9189ad6c89d5d97a094cdd52bd9c3e8ded5a9c2f5b");
  EXPECT_EQ(lookup.calls[1].facts.git_oid, "7c5d3f4b8b76583b422fcb9189ad6c89d5d97a09");
  EXPECT_EQ(lookup.calls[3].path, "onnx/training_args.bin");

  const Json after = parse(*rewritten);
  const Json before = parse(kTreePage);
  EXPECT_FALSE(has_key_anywhere(after, "xetHash"));
  EXPECT_EQ(after[0], before[0]);
  EXPECT_EQ(after[1], before[1]);

  const Json& weights = after[2];
  EXPECT_EQ(keys_of(weights),
            (std::vector<std::string>{"type", "oid", "size", "path", "lfs", "lastCommit", "securityFileStatus"}));
  EXPECT_EQ(weights["size"], kServedSize);
  EXPECT_EQ(weights["oid"], kServedPointerBlobId);
  EXPECT_EQ(weights["lfs"], (Json{{"oid", kServedSha256}, {"size", kServedSize}, {"pointerSize", kServedPointerSize}}));
  EXPECT_EQ(weights["lastCommit"], before[2]["lastCommit"]);
  EXPECT_EQ(weights["securityFileStatus"], before[2]["securityFileStatus"]);

  // Not rewritten: only its xetHash is gone.
  Json safetensors = before[3];
  safetensors.erase("xetHash");
  EXPECT_EQ(after[3], safetensors);

  const Json& git_file = after[4];
  EXPECT_EQ(keys_of(git_file), (std::vector<std::string>{"type", "oid", "size", "path", "lfs"}));
  EXPECT_EQ(git_file["oid"], kServedPointerBlobId);
}

TEST(HubJson, RewritesPathsInfoEntries) {
  auto files = collect_file_entries(kPathsInfo, ApiKind::kPathsInfo);
  ASSERT_TRUE(files);
  ASSERT_EQ(files->size(), 1u);
  EXPECT_EQ((*files)[0].path, "pytorch_model.bin");

  RecordingLookup lookup{{"pytorch_model.bin"}};
  auto rewritten = rewrite_listing(kPathsInfo, ApiKind::kPathsInfo, lookup.function());
  ASSERT_TRUE(rewritten);
  const Json after = parse(*rewritten);
  EXPECT_EQ(after[0]["lfs"]["oid"], kServedSha256);
  EXPECT_EQ(after[0]["lfs"]["size"], kServedSize);
  EXPECT_EQ(after[0]["size"], kServedSize);
  EXPECT_FALSE(after[0].contains("xetHash"));
  EXPECT_EQ(after[1], parse(kPathsInfo)[1]);
}

TEST(HubJson, RemovesXetHashesAtAnyDepthInAnyAnswer) {
  constexpr std::string_view kNested =
      R"({"xetHash": "a", "keep": {"xetHash": 1, "list": [{"xetHash": null, "x": [[{"xetHash": {}}]]}], "XetHash": 2}})";
  auto rewritten = rewrite_listing(kNested, ApiKind::kOther, RecordingLookup{}.function());
  ASSERT_TRUE(rewritten);
  EXPECT_EQ(parse(*rewritten), parse(R"({"keep": {"list": [{"x": [[{}]]}], "XetHash": 2}})"));
  // A repeated key is one key in the parsed document; none survives.
  auto repeated = rewrite_listing(R"([{"type": "directory", "path": "d", "xetHash": "a", "xetHash": "b"}])",
                                  ApiKind::kTree, RecordingLookup{}.function());
  ASSERT_TRUE(repeated);
  EXPECT_EQ(parse(*repeated), parse(R"([{"type": "directory", "path": "d"}])"));
}

TEST(HubJson, KeepsTextAndNumbersSemanticallyEqual) {
  constexpr std::string_view kText =
      R"([{"type": "file", "oid": "x", "size": 3, "path": "na\u00efve \u2603/\ud83d\ude00.bin", "score": 0.1, "big": 1e300, "neg": -5}])";
  auto files = collect_file_entries(kText, ApiKind::kTree);
  ASSERT_TRUE(files);
  EXPECT_EQ((*files)[0].path, "na\xC3\xAFve \xE2\x98\x83/\xF0\x9F\x98\x80.bin");
  auto rewritten = rewrite_listing(kText, ApiKind::kTree, RecordingLookup{}.function());
  ASSERT_TRUE(rewritten);
  EXPECT_EQ(parse(*rewritten), parse(kText));
}

TEST(HubJson, RefusesMalformedAndHostileAnswers) {
  auto expect_refused = [](std::string_view text, ApiKind kind, ErrorCode code, std::string_view words) {
    auto files = collect_file_entries(text, kind);
    ASSERT_FALSE(files) << text;
    EXPECT_EQ(files.error().code, code) << text;
    EXPECT_THAT(files.error().message, HasSubstr(words)) << text;
    auto rewritten = rewrite_listing(text, kind, RecordingLookup{}.function());
    ASSERT_FALSE(rewritten) << text;
    EXPECT_EQ(rewritten.error().code, code) << text;
  };
  expect_refused(R"([{"type": "file", "path": "a", "size": 1)", ApiKind::kTree, ErrorCode::kParse, "malformed JSON");
  expect_refused(R"([] trailing)", ApiKind::kTree, ErrorCode::kParse, "malformed JSON");
  expect_refused("[\"\xff\"]", ApiKind::kTree, ErrorCode::kParse, "malformed JSON");
  expect_refused(R"({"not": "a list"})", ApiKind::kTree, ErrorCode::kParse, "not a JSON array");
  expect_refused(R"(["file"])", ApiKind::kPathsInfo, ErrorCode::kParse, "entry 0: not an object");
  expect_refused(R"([{"path": "a", "size": 1}])", ApiKind::kTree, ErrorCode::kParse, "type is not a string");
  expect_refused(R"([{"type": "file", "path": "a", "size": "1"}])", ApiKind::kTree, ErrorCode::kParse, "size");
  expect_refused(R"([{"type": "file", "path": "a", "size": -1}])", ApiKind::kTree, ErrorCode::kParse, "size");
  expect_refused(R"([{"type": "file", "path": "a", "size": 1.5}])", ApiKind::kTree, ErrorCode::kParse, "size");
  expect_refused(R"([{"type": "file", "path": 7, "size": 1}])", ApiKind::kTree, ErrorCode::kParse,
                 "path is not a string");
  expect_refused(R"([{"type": "file", "path": "../../.bashrc", "size": 1}])", ApiKind::kTree, ErrorCode::kParse,
                 "\"..\"");
  expect_refused(R"([{"type": "file", "path": "a\\..\\b", "size": 1}])", ApiKind::kTree, ErrorCode::kParse,
                 "backslash");
  expect_refused(R"([{"type": "file", "path": "a", "size": 1, "lfs": "x"}])", ApiKind::kTree, ErrorCode::kParse,
                 "lfs is not an object");
  expect_refused(R"([{"type": "file", "path": "a", "size": 1, "lfs": {"oid": 5}}])", ApiKind::kTree, ErrorCode::kParse,
                 "entry 0.lfs: oid is not a string");
  expect_refused(R"([{"type": "file", "path": "a", "size": 1, "oid": []}])", ApiKind::kTree, ErrorCode::kParse,
                 "oid is not a string");
  expect_refused(R"(["siblings"])", ApiKind::kModelInfo, ErrorCode::kParse, "not a JSON object");
  expect_refused(R"({"siblings": {"rfilename": "a"}})", ApiKind::kModelInfo, ErrorCode::kParse,
                 "siblings is not an array");
  expect_refused(R"({"siblings": [1]})", ApiKind::kModelInfo, ErrorCode::kParse, "siblings[0]: not an object");
  expect_refused(R"({"siblings": [{"rfilename": "a", "lfs": {"sha256": "x", "size": 1}}]})", ApiKind::kModelInfo,
                 ErrorCode::kParse, "size");
}

TEST(HubJson, ReportsWhereMalformedJsonGoesWrong) {
  auto files = collect_file_entries(R"([{"type": "file", x])", ApiKind::kTree);
  ASSERT_FALSE(files);
  ASSERT_TRUE(files.error().offset.has_value());
  EXPECT_EQ(*files.error().offset, 19u);
}

TEST(HubJson, BoundsNestingAndSize) {
  const ListingLimits limits{1 << 20, 128};
  const std::string at_limit = std::string(128, '[') + std::string(128, ']');
  EXPECT_TRUE(rewrite_listing(at_limit, ApiKind::kOther, RecordingLookup{}.function(), limits));
  const std::string too_deep = std::string(129, '[') + std::string(129, ']');
  auto refused = rewrite_listing(too_deep, ApiKind::kOther, RecordingLookup{}.function(), limits);
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, ErrorCode::kLimitExceeded);
  EXPECT_THAT(refused.error().message, HasSubstr("deeper than 128"));
  // A nesting bomb far beyond any stack is refused by the same check, not by a crash.
  const std::string bomb = std::string(1'000'000, '[');
  auto bombed = collect_file_entries(bomb, ApiKind::kTree, ListingLimits{2 << 20, 128});
  ASSERT_FALSE(bombed);
  EXPECT_EQ(bombed.error().code, ErrorCode::kLimitExceeded);

  // A huge string within the size limit is just data.
  const std::string huge = R"([{"type": "directory", "path": ")" + std::string(900'000, 'a') + R"("}])";
  EXPECT_TRUE(rewrite_listing(huge, ApiKind::kTree, RecordingLookup{}.function(), limits));
  auto oversized = collect_file_entries(huge, ApiKind::kTree, ListingLimits{100'000, 128});
  ASSERT_FALSE(oversized);
  EXPECT_EQ(oversized.error().code, ErrorCode::kLimitExceeded);
}

TEST(HubJson, RefusesAServedDigestThatIsNotLowercaseHex) {
  RecordingLookup lookup{{"pytorch_model.bin"}};
  lookup.answer = ServedFile{1, "ABC"};
  auto rewritten = rewrite_listing(kTreePage, ApiKind::kTree, lookup.function());
  ASSERT_FALSE(rewritten);
  EXPECT_EQ(rewritten.error().code, ErrorCode::kInvalidArgument);
  lookup.answer = ServedFile{1, std::string(64, 'A')};
  EXPECT_FALSE(rewrite_listing(kTreePage, ApiKind::kTree, lookup.function()));
}

TEST(HubJson, XetTokenAndOtherAnswersListNoFiles) {
  EXPECT_TRUE(collect_file_entries(kTreePage, ApiKind::kOther)->empty());
  EXPECT_TRUE(
      collect_file_entries(R"({"accessToken": "t", "casUrl": "https://cas"})", ApiKind::kXetReadToken)->empty());
}

}  // namespace
}  // namespace zoogate::proxy
