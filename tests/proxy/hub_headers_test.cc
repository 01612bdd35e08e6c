#include "proxy/hub_headers.h"

#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/sha256.h"

namespace zoogate::proxy {

// For gtest's messages; found by argument-dependent lookup, so it lives in HeaderField's namespace.
void PrintTo(const HeaderField& field, std::ostream* out) { *out << field.name << ": " << field.value; }

namespace {

using ::testing::ElementsAre;

constexpr std::string_view kHub = "https://huggingface.co";
constexpr std::string_view kPublic = "http://127.0.0.1:8080";

std::vector<HeaderField> passed(std::vector<HeaderField> upstream) { return passable_headers(upstream); }

TEST(HubHeaders, PassesAResolveAnswerWithoutHopByHopXetAndFramingHeaders) {
  // HEAD /acme/model/resolve/main/model.bin on a Xet-backed file, as the Hub answers it.
  const std::vector<HeaderField> upstream = {
      {"Content-Type", "application/octet-stream"},
      {"Content-Length", "1087"},
      {"Connection", "keep-alive, X-Hop-Private"},
      {"X-Hop-Private", "1"},
      {"Keep-Alive", "timeout=5"},
      {"Transfer-Encoding", "chunked"},
      {"Content-Encoding", "gzip"},
      {"Content-Range", "bytes 0-0/548118077"},
      {"X-Repo-Commit", "607a30d783dfa663caf39e06633721c8d4cfcd7e"},
      {"X-Linked-Etag", "\"7c5d3f4b8b76583b422fcb9189ad6c89d5d97a094cdd52bd9c3e8ded5a9c2f5b\""},
      {"X-Linked-Size", "548118077"},
      {"ETag", "\"b7c5d3f4b8b76583b422fcb9189ad6c89d5d97a0\""},
      {"X-Xet-Hash", "f8accece953fd366d4ce30597b97acc1ccedc3c785187a5ef6ecb4a8e1755122"},
      {"X-Xet-Refresh-Route", "/api/models/acme/model/xet-read-token/607a30d783dfa663caf39e06633721c8d4cfcd7e"},
      {"x-xet-access-token", "secret"},
      {"Link",
       "<https://cas-server.xethub.hf.co/v1/reconstructions/f8accece>; rel=\"xet-reconstruction-info\", "
       "<https://huggingface.co/api/models/acme/model/xet-read-token/607a30d>; rel=\"xet-auth\""},
      {"Set-Cookie", "token=abc; Domain=huggingface.co; Secure"},
      {"Proxy-Authenticate", "Basic"},
      {"Alt-Svc", "h3=\":443\"; ma=86400"},
      {"Strict-Transport-Security", "max-age=31536000"},
      {"Access-Control-Expose-Headers",
       "X-Repo-Commit,X-Request-Id,X-Error-Code,X-Error-Message,X-Total-Count,ETag,Link,Accept-Ranges,Content-Range,X-"
       "Linked-Size,X-Linked-ETag,X-Xet-Hash"},
      {"X-Request-Id", "Root=1-66bca67b-6ad70d2e5d2917ce5d09d6b4"},
      {"Vary", "Origin"},
  };
  EXPECT_THAT(passable_headers(upstream), ElementsAre(upstream[0], upstream[8], upstream[9], upstream[10], upstream[11],
                                                      upstream[20], upstream[21], upstream[22]));
}

TEST(HubHeaders, PassesOnlyRelativeRedirects) {
  EXPECT_THAT(passed({{"Location", "/acme/renamed-model/resolve/main/config.json"}}),
              ElementsAre(HeaderField{"Location", "/acme/renamed-model/resolve/main/config.json"}));
  EXPECT_THAT(
      passed({{"location", "/api/resolve-cache/models/acme/model/607a30d/config.json?etag=%22x%22"}}),
      ElementsAre(HeaderField{"location", "/api/resolve-cache/models/acme/model/607a30d/config.json?etag=%22x%22"}));
  EXPECT_TRUE(passed({{"Location", "https://cdn-lfs.hf.co/repos/7c/5d/7c5d3f?X-Amz-Signature=abc"}}).empty());
  EXPECT_TRUE(passed({{"Location", "//evil.example/x"}}).empty());
  EXPECT_TRUE(passed({{"Location", "relative/without/slash"}}).empty());
}

TEST(HubHeaders, KeepsOtherLinkValuesParsingQuotedStrings) {
  const std::string described = "<https://example.org/a,b;c>; title=\"a, b; \\\"c\\\", <d>\"; rel=\"describedby\"";
  const std::string header = described + ", <https://cas.example/x>; rel=\"xet-reconstruction-info\"";
  EXPECT_THAT(passed({{"Link", header}}), ElementsAre(HeaderField{"Link", described}));
  // rel is a list of types compared case-insensitively; unquoted tokens count too.
  EXPECT_TRUE(passed({{"Link", "<https://h/x>; rel=\"alternate XET-AUTH\""}}).empty());
  EXPECT_TRUE(passed({{"Link", "<https://h/x>; rel=Xet-Auth"}}).empty());
  // Python's requests lets a repeated rel override the first: any Xet rel condemns the value.
  EXPECT_TRUE(passed({{"Link", "<https://h/x>; rel=\"license\"; rel=\"xet-auth\""}}).empty());
  // A next link needs rewrite_next_link(); a header that does not parse could hide a Xet link.
  EXPECT_TRUE(passed({{"Link", "<https://huggingface.co/api/models/a/b/tree/main?cursor=x>; rel=\"next\""}}).empty());
  EXPECT_TRUE(passed({{"Link", "<https://h/x>; rel=\"license\", garbage"}}).empty());
  EXPECT_TRUE(passed({{"Link", "<https://h/x>; title=\"unterminated"}}).empty());
  EXPECT_TRUE(passed({{"Link", "<https://h/x"}}).empty());
  EXPECT_THAT(passed({{"Link", " , <https://h/x>;rel=license ,, "}}),
              ElementsAre(HeaderField{"Link", "<https://h/x>;rel=license"}));
}

TEST(HubHeaders, CopiesBetweenBeastHeaderSets) {
  boost::beast::http::fields from;
  from.insert("Content-Type", "application/json");
  from.insert("Connection", "close");
  from.insert("X-Xet-Hash", "abc");
  from.insert("X-Repo-Commit", "607a30d");
  boost::beast::http::fields to;
  to.insert("X-Request-Id", "zoogate-1");
  copy_passable_headers(from, to);
  std::vector<std::string> lines;
  for (const auto& field : to) lines.push_back(std::string(field.name_string()) + ": " + std::string(field.value()));
  EXPECT_THAT(lines,
              ElementsAre("X-Request-Id: zoogate-1", "Content-Type: application/json", "X-Repo-Commit: 607a30d"));
}

TEST(HubHeaders, RebasesTheTreeNextLinkOnZoogate) {
  const std::string next =
      "<https://huggingface.co/api/models/acme/model/tree/main?recursive=true&expand=false&cursor=ZXlKbWFXeGxYMjVo>; "
      "rel=\"next\"";
  EXPECT_EQ(
      rewrite_next_link(next, kHub, kPublic),
      "<http://127.0.0.1:8080/api/models/acme/model/tree/main?recursive=true&expand=false&cursor=ZXlKbWFXeGxYMjVo>; "
      "rel=\"next\"");
  EXPECT_EQ(rewrite_next_link(next, "https://HuggingFace.co:443", "https://gw.corp.example/hub/"),
            "<https://gw.corp.example/hub/api/models/acme/model/tree/"
            "main?recursive=true&expand=false&cursor=ZXlKbWFXeGxYMjVo>; "
            "rel=\"next\"");
  EXPECT_EQ(rewrite_next_link("<HTTPS://HUGGINGFACE.CO:443/api/x?c=1>; rel=next", kHub, kPublic),
            "<http://127.0.0.1:8080/api/x?c=1>; rel=next");
  // Other values stay; Xet values go.
  EXPECT_EQ(rewrite_next_link("<https://h/l>; rel=license, " + next + ", <https://cas/x>; rel=xet-auth", kHub, kPublic),
            "<https://h/l>; rel=license, <http://127.0.0.1:8080/api/models/acme/model/tree/main?recursive=true&expand="
            "false&cursor=ZXlKbWFXeGxYMjVo>; rel=\"next\"");
  // A relative next link already points at whoever answered.
  EXPECT_EQ(rewrite_next_link("</api/models/a/b/tree/main?cursor=2>; rel=\"next\"", kHub, kPublic),
            "</api/models/a/b/tree/main?cursor=2>; rel=\"next\"");
}

TEST(HubHeaders, DropsNextLinksThatLeaveTheUpstreamHub) {
  for (std::string_view link : {
           "<https://evil.example/api/models/a/b/tree/main?cursor=2>; rel=\"next\"",
           "<http://huggingface.co/api/x>; rel=\"next\"",            // another scheme
           "<https://huggingface.co:8443/api/x>; rel=\"next\"",      // another port
           "<https://huggingface.co.evil.example/api/x>; rel=next",  // a longer host
           "<https://user@huggingface.co/api/x>; rel=next",          // user info
           "<//huggingface.co/api/x>; rel=next",                     // scheme-relative
           "<ftp://huggingface.co/api/x>; rel=next",
           "<https://huggingface.co/api/x#frag>; rel=next",
       }) {
    EXPECT_EQ(rewrite_next_link(link, kHub, kPublic), std::nullopt) << link;
    EXPECT_EQ(next_page_target(link, kHub), "") << link;
  }
  EXPECT_EQ(rewrite_next_link("not a link", kHub, kPublic), std::nullopt);
  EXPECT_EQ(rewrite_next_link("", kHub, kPublic), std::nullopt);
}

TEST(HubHeaders, FindsTheNextPageTarget) {
  EXPECT_EQ(next_page_target("<https://huggingface.co/api/models/a/b/tree/main?recursive=true&cursor=Mg>; rel=\"next\"",
                             kHub),
            "/api/models/a/b/tree/main?recursive=true&cursor=Mg");
  EXPECT_EQ(next_page_target("<https://huggingface.co?cursor=Mg>; rel=\"next\"", kHub), "/?cursor=Mg");
  EXPECT_EQ(next_page_target("</api/models/a/b/tree/main?cursor=3>; rel=next", kHub),
            "/api/models/a/b/tree/main?cursor=3");
  EXPECT_EQ(next_page_target("<https://huggingface.co/api/x>; rel=\"prev\"", kHub), "");
  EXPECT_EQ(next_page_target("", kHub), "");
  EXPECT_EQ(next_page_target("<https://127.0.0.1:8443/api/x>; rel=next", "https://127.0.0.1:8443"), "/api/x");
  EXPECT_EQ(next_page_target("<https://[::1]:8443/api/x>; rel=next", "https://[::1]:8443"), "/api/x");
  EXPECT_EQ(next_page_target("<https://[::1]/api/x>; rel=next", "https://[::1]:8443"), "");
}

TEST(HubHeaders, ParsesEntityTags) {
  EXPECT_EQ(parse_entity_tag("\"7c5d3f4b8b76583b422fcb9189ad6c89d5d97a094cdd52bd9c3e8ded5a9c2f5b\""),
            "7c5d3f4b8b76583b422fcb9189ad6c89d5d97a094cdd52bd9c3e8ded5a9c2f5b");
  EXPECT_EQ(parse_entity_tag("W/\"a6344aac8c09253b3b630fb776ae94478aa0275b\""),
            "a6344aac8c09253b3b630fb776ae94478aa0275b");
  EXPECT_EQ(parse_entity_tag("  \"abc\"\t"), "abc");
  EXPECT_EQ(parse_entity_tag("abc"), "abc");
  EXPECT_EQ(parse_entity_tag(""), "");
  EXPECT_EQ(parse_entity_tag("\"\""), "");
  EXPECT_EQ(parse_entity_tag("\"abc"), "");
  EXPECT_EQ(parse_entity_tag("\"a\"b\""), "");
  EXPECT_EQ(parse_entity_tag("\"a b\""), "");
  EXPECT_EQ(parse_entity_tag("\"a\r\nX: y\""), "");
}

TEST(HubHeaders, ParsesDecimalSizes) {
  EXPECT_EQ(parse_decimal("548118077"), 548118077u);
  EXPECT_EQ(parse_decimal("0"), 0u);
  EXPECT_EQ(parse_decimal(" 12\t"), 12u);
  EXPECT_EQ(parse_decimal("18446744073709551615"), UINT64_MAX);
  EXPECT_EQ(parse_decimal("18446744073709551616"), std::nullopt);
  for (std::string_view bad : {"", " ", "-1", "+1", "1.0", "12a", "1 2", "0x10"}) {
    EXPECT_EQ(parse_decimal(bad), std::nullopt) << bad;
  }
}

RangeResolution range(std::string_view header, uint64_t size) { return resolve_range(header, size); }

void expect_partial(const RangeResolution& resolution, uint64_t first, uint64_t last) {
  ASSERT_TRUE(resolution.range.has_value());
  EXPECT_FALSE(resolution.unsatisfiable);
  EXPECT_EQ(resolution.range->first, first);
  EXPECT_EQ(resolution.range->last, last);
}

void expect_whole(const RangeResolution& resolution) {
  EXPECT_FALSE(resolution.range.has_value());
  EXPECT_FALSE(resolution.unsatisfiable);
}

void expect_unsatisfiable(const RangeResolution& resolution) {
  EXPECT_FALSE(resolution.range.has_value());
  EXPECT_TRUE(resolution.unsatisfiable);
}

TEST(HubHeaders, ResolvesSingleByteRanges) {
  expect_partial(range("bytes=0-0", 548118077), 0, 0);  // @huggingface/hub's probe
  expect_partial(range("bytes=0-499", 1000), 0, 499);
  expect_partial(range("bytes=500-", 1000), 500, 999);  // huggingface_hub's resume
  expect_partial(range("bytes=-300", 1000), 700, 999);
  expect_partial(range("bytes=990-5000", 1000), 990, 999);
  expect_partial(range("bytes=999-999", 1000), 999, 999);
  expect_partial(range("BYTES=1-2", 10), 1, 2);
  expect_partial(range(" bytes= 1-2 ", 10), 1, 2);
  expect_partial(range("bytes=1-2,", 10), 1, 2);  // an empty list element is no second range
  expect_partial(range("bytes=0-", UINT64_MAX), 0, UINT64_MAX - 1);
  expect_partial(range("bytes=-18446744073709551615", 10), 0, 9);
}

TEST(HubHeaders, RangeEdgeCases) {
  // A suffix longer than the representation is all of it, still as 206.
  expect_partial(range("bytes=-5000", 1000), 0, 999);
  // Every range of an empty representation is unsatisfiable (RFC 9110 section 14.1.2).
  expect_unsatisfiable(range("bytes=0-0", 0));
  expect_unsatisfiable(range("bytes=0-", 0));
  expect_unsatisfiable(range("bytes=-1", 0));
  expect_unsatisfiable(range("bytes=1000-", 1000));
  expect_unsatisfiable(range("bytes=1000-2000", 1000));
  expect_unsatisfiable(range("bytes=-0", 1000));
  // Invalid or multiple ranges are ignored: the whole representation, 200.
  expect_whole(range("bytes=5-3", 1000));  // a > b is an invalid range-spec
  expect_whole(range("bytes=0-1,5-6", 1000));
  expect_whole(range("bytes=0-1, -5", 1000));
  expect_whole(range("", 1000));
  expect_whole(range("bytes=", 1000));
  expect_whole(range("bytes=-", 1000));
  expect_whole(range("bytes=a-b", 1000));
  expect_whole(range("bytes=1", 1000));
  expect_whole(range("bytes=1-2-3", 1000));
  expect_whole(range("bytes=+1-2", 1000));
  expect_whole(range("bytes=0-99999999999999999999", 1000));
  expect_whole(range("items=0-1", 1000));
  expect_whole(range("bytes 0-1", 1000));
  expect_whole(range("bytes=0 - 1", 1000));
}

TEST(HubHeaders, ParsesRangeForms) {
  auto spec = parse_range("bytes=7-");
  ASSERT_TRUE(spec);
  EXPECT_EQ(spec->form, RangeSpec::Form::kFrom);
  EXPECT_EQ(spec->first, 7u);
  spec = parse_range("bytes=-7");
  ASSERT_TRUE(spec);
  EXPECT_EQ(spec->form, RangeSpec::Form::kSuffix);
  EXPECT_EQ(spec->suffix_length, 7u);
  spec = parse_range("bytes=3-7");
  ASSERT_TRUE(spec);
  EXPECT_EQ(spec->form, RangeSpec::Form::kFromTo);
  EXPECT_EQ(spec->last, 7u);
}

TEST(HubHeaders, BuildsContentRanges) {
  EXPECT_EQ(content_range(ByteRange{0, 0}, 548118077), "bytes 0-0/548118077");
  EXPECT_EQ(content_range(ByteRange{500, 999}, 1000), "bytes 500-999/1000");
  EXPECT_EQ(unsatisfied_content_range(0), "bytes */0");
  EXPECT_EQ(unsatisfied_content_range(1000), "bytes */1000");
}

TEST(HubHeaders, BuildsReprDigest) {
  // RFC 9530's encoding of SHA-256 of the empty string.
  EXPECT_EQ(repr_digest(Sha256::of(std::string_view())), "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:");
  EXPECT_EQ(repr_digest(Sha256::of(std::string_view("hello"))),
            "sha-256=:LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ=:");
}

}  // namespace
}  // namespace zoogate::proxy
