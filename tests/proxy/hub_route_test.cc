#include "proxy/hub_route.h"

#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace zoogate::proxy {
namespace {

using ::testing::HasSubstr;

constexpr std::string_view kCommit = "607a30d783dfa663caf39e06633721c8d4cfcd7e";

ResolveRoute resolve(std::string_view target) {
  HubTarget parsed = parse_hub_target(target);
  const auto* route = std::get_if<ResolveRoute>(&parsed);
  EXPECT_NE(route, nullptr) << target;
  return route ? *route : ResolveRoute{};
}

ApiRoute api(std::string_view target) {
  HubTarget parsed = parse_hub_target(target);
  const auto* route = std::get_if<ApiRoute>(&parsed);
  EXPECT_NE(route, nullptr) << target;
  return route ? *route : ApiRoute{};
}

std::string refusal(std::string_view target) {
  HubTarget parsed = parse_hub_target(target);
  const auto* invalid = std::get_if<InvalidTarget>(&parsed);
  EXPECT_NE(invalid, nullptr) << target;
  return invalid ? invalid->reason : "";
}

bool is_other(std::string_view target) { return std::holds_alternative<OtherTarget>(parse_hub_target(target)); }

void expect_route(const ResolveRoute& route, RepoType type, std::string_view repo, std::string_view revision,
                  std::string_view path, ResolveForm form = ResolveForm::kResolve) {
  EXPECT_EQ(route.type, type);
  EXPECT_EQ(route.repo, repo);
  EXPECT_EQ(route.revision, revision);
  EXPECT_EQ(route.path, path);
  EXPECT_EQ(route.form, form);
}

TEST(HubRoute, ResolvesModelDatasetAndSpaceFiles) {
  expect_route(resolve("/openai-community/gpt2/resolve/main/config.json"), RepoType::kModel, "openai-community/gpt2",
               "main", "config.json");
  expect_route(resolve("/gpt2/resolve/main/pytorch_model.bin"), RepoType::kModel, "gpt2", "main", "pytorch_model.bin");
  expect_route(resolve("/datasets/rajpurkar/squad/resolve/main/plain_text/train-00000-of-00001.parquet"),
               RepoType::kDataset, "rajpurkar/squad", "main", "plain_text/train-00000-of-00001.parquet");
  expect_route(resolve("/datasets/squad/resolve/main/README.md"), RepoType::kDataset, "squad", "main", "README.md");
  expect_route(resolve("/spaces/acme/demo/resolve/v1.0/app.py"), RepoType::kSpace, "acme/demo", "v1.0", "app.py");
  // The query (?download=true) does not change which file is meant.
  expect_route(resolve("/acme/model/resolve/" + std::string(kCommit) + "/sub/dir/model.ckpt?download=true"),
               RepoType::kModel, "acme/model", std::string(kCommit), "sub/dir/model.ckpt");
}

TEST(HubRoute, DecodesRevisionsAndPaths) {
  expect_route(resolve("/acme/model/resolve/refs%2Fpr%2F1/model.bin"), RepoType::kModel, "acme/model", "refs/pr/1",
               "model.bin");
  expect_route(resolve("/acme/model/resolve/refs%2fconvert%2fparquet/data.parquet"), RepoType::kModel, "acme/model",
               "refs/convert/parquet", "data.parquet");
  expect_route(resolve("/acme/model/resolve/main/dir/a%20b%2Bc.bin"), RepoType::kModel, "acme/model", "main",
               "dir/a b+c.bin");
  // '+' in a path is a plus, not a space.
  expect_route(resolve("/acme/model/resolve/main/a+b.bin"), RepoType::kModel, "acme/model", "main", "a+b.bin");
  expect_route(resolve("/acme/model/resolve/main/na%C3%AFve%E2%98%83.pt"), RepoType::kModel, "acme/model", "main",
               "na\xC3\xAFve\xE2\x98\x83.pt");
  // An encoded '/' inside a path segment names the same file as a plain one.
  expect_route(resolve("/acme/model/resolve/main/dir%2Fmodel.bin"), RepoType::kModel, "acme/model", "main",
               "dir/model.bin");
}

TEST(HubRoute, PrefersTwoSegmentRepositoriesWhereTargetsAreAmbiguous) {
  expect_route(resolve("/acme/resolve/resolve/main/f.bin"), RepoType::kModel, "acme/resolve", "main", "f.bin");
  // With no file after it, the two-segment reading does not fit; the one-segment reading does.
  expect_route(resolve("/acme/resolve/resolve/main"), RepoType::kModel, "acme", "resolve", "main");
  ApiRoute route = api("/api/models/acme/revision/tree");
  EXPECT_EQ(route.kind, ApiKind::kModelInfo);
  EXPECT_EQ(route.repo, "acme");
  EXPECT_EQ(route.revision, "tree");
  route = api("/api/models/acme/tree/tree/main");
  EXPECT_EQ(route.kind, ApiKind::kTree);
  EXPECT_EQ(route.repo, "acme/tree");
  EXPECT_EQ(route.revision, "main");
}

TEST(HubRoute, ResolveCacheTargetsAreFileRoutes) {
  const std::string commit(kCommit);
  expect_route(resolve("/api/resolve-cache/models/acme/model/" + commit + "/config.json?download=true&etag=%22abc%22"),
               RepoType::kModel, "acme/model", commit, "config.json", ResolveForm::kResolveCache);
  expect_route(resolve("/api/resolve-cache/datasets/acme/data/" + commit + "/a/b.pkl"), RepoType::kDataset, "acme/data",
               commit, "a/b.pkl", ResolveForm::kResolveCache);
  expect_route(resolve("/api/resolve-cache/models/gpt2/" + commit + "/vocab.json"), RepoType::kModel, "gpt2", commit,
               "vocab.json", ResolveForm::kResolveCache);
  // They serve file bytes: whatever does not parse as a file is refused, never passed on.
  EXPECT_THAT(refusal("/api/resolve-cache/models/acme/model/" + commit), HasSubstr("resolve-cache"));
  EXPECT_THAT(refusal("/api/resolve-cache/buckets/acme/model/" + commit + "/f"), HasSubstr("resolve-cache"));
  EXPECT_THAT(refusal("/api/resolve-cache"), HasSubstr("resolve-cache"));
}

TEST(HubRoute, ParsesEveryApiKind) {
  ApiRoute route = api("/api/models/openai-community/gpt2?blobs=true");
  EXPECT_EQ(route.kind, ApiKind::kModelInfo);
  EXPECT_EQ(route.type, RepoType::kModel);
  EXPECT_EQ(route.repo, "openai-community/gpt2");
  EXPECT_EQ(route.revision, "");
  EXPECT_EQ(route.query, "blobs=true");

  route = api("/api/models/gpt2");
  EXPECT_EQ(route.kind, ApiKind::kModelInfo);
  EXPECT_EQ(route.repo, "gpt2");

  route = api("/api/datasets/acme/data/revision/refs%2Fpr%2F3?expand%5B%5D=siblings");
  EXPECT_EQ(route.kind, ApiKind::kModelInfo);
  EXPECT_EQ(route.type, RepoType::kDataset);
  EXPECT_EQ(route.revision, "refs/pr/3");
  EXPECT_EQ(route.query, "expand%5B%5D=siblings");

  // Nothing follows a revision here, so an unencoded one is read whole.
  route = api("/api/models/acme/model/revision/refs/pr/1");
  EXPECT_EQ(route.kind, ApiKind::kModelInfo);
  EXPECT_EQ(route.revision, "refs/pr/1");

  route = api("/api/models/acme/model/tree/main?recursive=true&expand=false");
  EXPECT_EQ(route.kind, ApiKind::kTree);
  EXPECT_EQ(route.revision, "main");
  EXPECT_EQ(route.path, "");
  EXPECT_EQ(route.query, "recursive=true&expand=false");

  route = api("/api/spaces/acme/demo/tree/refs%2Fpr%2F2/sub%20dir/nested");
  EXPECT_EQ(route.kind, ApiKind::kTree);
  EXPECT_EQ(route.type, RepoType::kSpace);
  EXPECT_EQ(route.revision, "refs/pr/2");
  EXPECT_EQ(route.path, "sub dir/nested");

  route = api("/api/models/acme/model/paths-info/" + std::string(kCommit));
  EXPECT_EQ(route.kind, ApiKind::kPathsInfo);
  EXPECT_EQ(route.revision, kCommit);

  route = api("/api/models/acme/model/xet-read-token/main");
  EXPECT_EQ(route.kind, ApiKind::kXetReadToken);
  EXPECT_EQ(route.repo, "acme/model");
  EXPECT_EQ(route.revision, "main");
  EXPECT_EQ(api("/api/datasets/acme/data/xet-read-token").kind, ApiKind::kXetReadToken);
}

TEST(HubRoute, OtherApiTargetsKeepOnlyTheirQuery) {
  for (std::string_view target :
       {"/api/whoami-v2", "/api/models?search=llama&limit=5", "/api/models/acme/model/refs",
        "/api/models/acme/model/commits/main", "/api/datasets/acme/data/parquet/default/train/0.parquet"}) {
    const ApiRoute route = api(target);
    EXPECT_EQ(route.kind, ApiKind::kOther) << target;
    EXPECT_EQ(route.repo, "") << target;
  }
  EXPECT_EQ(api("/api/models?search=llama&limit=5").query, "search=llama&limit=5");
  EXPECT_EQ(canonical_repo_id(api("/api/whoami-v2")), "");
}

TEST(HubRoute, EverythingElseIsOther) {
  EXPECT_TRUE(is_other("/"));
  EXPECT_TRUE(is_other("/favicon.ico"));
  EXPECT_TRUE(is_other("/acme/model"));
  // The raw bytes of a file kept in git would bypass the pipeline: never a file route.
  EXPECT_TRUE(is_other("/acme/model/raw/main/model.bin"));
  EXPECT_TRUE(is_other("/acme/model/blob/main/model.bin"));
  EXPECT_TRUE(is_other("/acme/model/resolve/main"));
  EXPECT_TRUE(is_other("/datasets/acme"));
}

TEST(HubRoute, RefusesTraversalAndMalformedTargets) {
  EXPECT_THAT(refusal("/acme/model/resolve/main/../../../etc/passwd"), HasSubstr("\"..\""));
  EXPECT_THAT(refusal("/acme/model/resolve/main/./model.bin"), HasSubstr("\".\""));
  EXPECT_THAT(refusal("/acme/model/resolve/main/%2e%2E/x"), HasSubstr("\"..\""));
  EXPECT_THAT(refusal("/acme/model/resolve/main/a%2F..%2Fb"), HasSubstr("\"..\""));
  EXPECT_THAT(refusal("/acme/model/resolve/main/a%2F%2Fb"), HasSubstr("empty"));
  EXPECT_THAT(refusal("/acme/model/resolve/main/a\\b"), HasSubstr("not allowed"));
  EXPECT_THAT(refusal("/acme/model/resolve/main/a%5Cb"), HasSubstr("backslash"));
  EXPECT_THAT(refusal("/acme/model/resolve/main/a%00b"), HasSubstr("control"));
  EXPECT_THAT(refusal("/acme/model/resolve/main/a%0D%0AX-Evil:%201"), HasSubstr("control"));
  EXPECT_THAT(refusal("/acme/model/resolve/main/%FF%FE"), HasSubstr("UTF-8"));
  EXPECT_THAT(refusal("/acme/model/resolve/main/%C0%AF"), HasSubstr("UTF-8"));  // overlong '/'
  EXPECT_THAT(refusal("/acme//model/resolve/main/f"), HasSubstr("empty"));
  EXPECT_THAT(refusal("/acme/model/resolve/main/dir/"), HasSubstr("empty"));
  EXPECT_THAT(refusal("/acme/model/resolve/main/%G1"), HasSubstr("percent"));
  EXPECT_THAT(refusal("/acme/model/resolve/main/f%2"), HasSubstr("percent"));
  EXPECT_THAT(refusal("/acme/model/resolve/main/f#frag"), HasSubstr("not allowed"));
  EXPECT_THAT(refusal("/acme/model/resolve/main/a b"), HasSubstr("not allowed"));
  EXPECT_THAT(refusal("https://huggingface.co/acme/model/resolve/main/f"), HasSubstr("not a path"));
  EXPECT_THAT(refusal(""), HasSubstr("not a path"));
  EXPECT_THAT(refusal("*"), HasSubstr("not a path"));
  EXPECT_THAT(refusal("/api/models/acme/../model"), HasSubstr("\"..\""));
  EXPECT_THAT(refusal("/api/models/acme/model/tree/main/../../../other/repo"), HasSubstr("\"..\""));
}

TEST(HubRoute, ValidatesRepositoryNames) {
  // An encoded '/' cannot smuggle a third segment into a repository id.
  EXPECT_THAT(refusal("/acme/mod%2Fel/resolve/main/f"), HasSubstr("\"name\" or \"owner/name\""));
  EXPECT_THAT(refusal("/acme/mo--del/resolve/main/f"), HasSubstr("\"--\""));
  EXPECT_THAT(refusal("/acme/-model/resolve/main/f"), HasSubstr("start nor end"));
  EXPECT_THAT(refusal("/acme/model./resolve/main/f"), HasSubstr("start nor end"));
  EXPECT_THAT(refusal("/acme/mo%20del/resolve/main/f"), HasSubstr("ASCII letters"));
  EXPECT_THAT(refusal("/acme/mod%C3%A9l/resolve/main/f"), HasSubstr("ASCII letters"));
  EXPECT_THAT(refusal("/api/models/acme/mo$del/tree/main"), HasSubstr("ASCII letters"));
  const std::string longest(96, 'a');
  EXPECT_EQ(resolve("/acme/" + longest + "/resolve/main/f").repo, "acme/" + longest);
  EXPECT_THAT(refusal("/acme/" + longest + "a/resolve/main/f"), HasSubstr("1 to 96"));

  EXPECT_TRUE(validate_repo_id("Acme_Corp/Llama-3.1_8B"));
  EXPECT_TRUE(validate_repo_id("gpt2"));
  EXPECT_TRUE(validate_repo_id("_private/x"));
  EXPECT_FALSE(validate_repo_id(""));
  EXPECT_FALSE(validate_repo_id("a/b/c"));
  EXPECT_FALSE(validate_repo_id("a/"));
  EXPECT_FALSE(validate_repo_id("/a"));
  EXPECT_FALSE(validate_repo_id("a..b/c"));
  EXPECT_EQ(validate_repo_id("a/b/c").error().code, ErrorCode::kInvalidArgument);
}

TEST(HubRoute, ValidatesRevisionsAsGitRefs) {
  for (std::string_view good : {std::string_view("main"), std::string_view("v1.0"), std::string_view("refs/pr/1"),
                                std::string_view("refs/convert/parquet"), std::string_view("feature/x-y_z"), kCommit}) {
    EXPECT_TRUE(validate_revision(good)) << good;
  }
  for (std::string_view bad :
       {"",  "a..b",  "refs/../x", "a b",   "a~1",  "a^",      "a:b",     "a?",        "a*",    "a[",   "a\\b",
        "@", "a@{1}", "/main",     "main/", "a//b", ".hidden", "refs/.x", "main.lock", "main.", "a\x01"}) {
    EXPECT_FALSE(validate_revision(bad)) << bad;
  }
  EXPECT_FALSE(validate_revision(std::string(256, 'a')));
  EXPECT_THAT(refusal("/acme/model/resolve/refs%2F..%2Fx/f"), HasSubstr("git ref"));
  EXPECT_THAT(refusal("/api/models/acme/model/revision/a%20b"), HasSubstr("git ref"));
}

TEST(HubRoute, ValidatesRepositoryPaths) {
  EXPECT_TRUE(validate_repo_path("model.safetensors"));
  EXPECT_TRUE(validate_repo_path("a/b/c d+e#f?.bin"));
  EXPECT_TRUE(validate_repo_path("..hidden/...x"));
  EXPECT_FALSE(validate_repo_path(""));
  EXPECT_FALSE(validate_repo_path("/abs"));
  EXPECT_FALSE(validate_repo_path("a/../b"));
  EXPECT_FALSE(validate_repo_path(".."));
  EXPECT_FALSE(validate_repo_path("a/./b"));
  EXPECT_FALSE(validate_repo_path("a\\..\\b"));
  EXPECT_FALSE(validate_repo_path("a\nb"));
  EXPECT_FALSE(validate_repo_path(std::string_view("a\0b", 3)));
  EXPECT_FALSE(validate_repo_path("\xff"));
}

TEST(HubRoute, CanonicalRepositoryIdsMatchPolicyPatterns) {
  EXPECT_EQ(canonical_repo_id(resolve("/acme/model/resolve/main/f")), "acme/model");
  EXPECT_EQ(canonical_repo_id(resolve("/gpt2/resolve/main/f")), "gpt2");
  EXPECT_EQ(canonical_repo_id(resolve("/datasets/acme/data/resolve/main/f")), "datasets/acme/data");
  EXPECT_EQ(canonical_repo_id(resolve("/spaces/acme/demo/resolve/main/f")), "spaces/acme/demo");
  EXPECT_EQ(canonical_repo_id(api("/api/datasets/acme/data/tree/main")), "datasets/acme/data");
  EXPECT_EQ(canonical_repo_id(api("/api/spaces/acme/demo")), "spaces/acme/demo");
  EXPECT_EQ(canonical_repo_id(RepoType::kModel, "acme/model"), "acme/model");
}

TEST(HubRoute, BuildsUpstreamTargetsThatParseBack) {
  const ResolveRoute pr{RepoType::kModel, "acme/model", "refs/pr/1", "dir/a b+c.bin", ResolveForm::kResolve};
  EXPECT_EQ(upstream_target(pr), "/acme/model/resolve/refs%2Fpr%2F1/dir/a%20b%2Bc.bin");
  const ResolveRoute dataset{RepoType::kDataset, "acme/data", "main", "na\xC3\xAFve.pkl", ResolveForm::kResolve};
  EXPECT_EQ(upstream_target(dataset), "/datasets/acme/data/resolve/main/na%C3%AFve.pkl");
  const ResolveRoute cached{RepoType::kSpace, "acme/demo", std::string(kCommit), "app.py", ResolveForm::kResolveCache};
  EXPECT_EQ(upstream_target(cached), "/api/resolve-cache/spaces/acme/demo/" + std::string(kCommit) + "/app.py");
  for (const ResolveRoute& route : {pr, dataset, cached}) {
    const ResolveRoute back = resolve(upstream_target(route));
    expect_route(back, route.type, route.repo, route.revision, route.path, route.form);
  }

  const ApiRoute tree{ApiKind::kTree, RepoType::kModel, "acme/model", "refs/pr/1", "sub dir", "recursive=true"};
  EXPECT_EQ(upstream_target(tree), "/api/models/acme/model/tree/refs%2Fpr%2F1/sub%20dir?recursive=true");
  const ApiRoute info{ApiKind::kModelInfo, RepoType::kDataset, "acme/data", "", "", "blobs=true"};
  EXPECT_EQ(upstream_target(info), "/api/datasets/acme/data?blobs=true");
  const ApiRoute info_at{ApiKind::kModelInfo, RepoType::kModel, "gpt2", "v1", "", ""};
  EXPECT_EQ(upstream_target(info_at), "/api/models/gpt2/revision/v1");
  const ApiRoute paths{ApiKind::kPathsInfo, RepoType::kSpace, "acme/demo", "main", "", ""};
  EXPECT_EQ(upstream_target(paths), "/api/spaces/acme/demo/paths-info/main");
  const ApiRoute token{ApiKind::kXetReadToken, RepoType::kModel, "acme/model", "main", "", ""};
  EXPECT_EQ(upstream_target(token), "/api/models/acme/model/xet-read-token/main");
  EXPECT_EQ(upstream_target(ApiRoute{}), std::nullopt);
  for (const ApiRoute& route : {tree, info, info_at, paths, token}) {
    const ApiRoute back = api(*upstream_target(route));
    EXPECT_EQ(back.kind, route.kind);
    EXPECT_EQ(back.type, route.type);
    EXPECT_EQ(back.repo, route.repo);
    EXPECT_EQ(back.revision, route.revision);
    EXPECT_EQ(back.path, route.path);
    EXPECT_EQ(back.query, route.query);
  }
  EXPECT_EQ(api_tree_target(RepoType::kDataset, "acme/data", "refs/convert/parquet"),
            "/api/datasets/acme/data/tree/refs%2Fconvert%2Fparquet?recursive=true");
}

TEST(HubRoute, NamesRepositoryTypes) {
  EXPECT_EQ(repo_type_from_name("model"), RepoType::kModel);
  EXPECT_EQ(repo_type_from_name("dataset"), RepoType::kDataset);
  EXPECT_EQ(repo_type_from_name("space"), RepoType::kSpace);
  EXPECT_EQ(repo_type_from_name("models"), std::nullopt);
  EXPECT_EQ(repo_type_from_name("Model"), std::nullopt);
  EXPECT_EQ(repo_type_name(RepoType::kDataset), "dataset");
}

TEST(HubRoute, ParsesQueries) {
  auto query = parse_query("/admin/prefetch?repo=acme%2Fmodel&revision=refs%2Fpr%2F1&scope=a+b&flag&repo=second");
  EXPECT_EQ(query["repo"], "acme/model");  // the first value wins
  EXPECT_EQ(query["revision"], "refs/pr/1");
  EXPECT_EQ(query["scope"], "a b");
  EXPECT_EQ(query["flag"], "");
  EXPECT_EQ(query.size(), 4u);
  EXPECT_TRUE(parse_query("/admin/prefetch").empty());
  EXPECT_TRUE(parse_query("/x?bad=%zz&alsobad=%FF").empty());
  EXPECT_EQ(parse_query("/x?&&a=1&&").at("a"), "1");
}

}  // namespace
}  // namespace zoogate::proxy
