// Feeds arbitrary bytes to the Hub protocol's pure parsers: request targets, API JSON listings, and
// the header rules (Link, Range, entity tags, sizes, header filtering).
//
// Invariants checked beyond "no crash, no leak, no sanitizer report":
//   - a parsed route builds an upstream target that parses back to the same route, wherever the
//     target is unambiguous (two-segment repositories, /resolve/ form and known API kinds);
//   - a listing that collects also rewrites; the rewritten JSON parses, holds no xetHash at any depth,
//     lists the same files, and the rewritten ones with the served facts; leaving every file alone
//     changes no file entry;
//   - a resolved range lies inside the representation;
//   - no header zoogate passes on is hop-by-hop or Xet's, and a passed Location is relative;
//   - the client named by an X-Forwarded-For is an IP address, and the peer itself when the peer is
//     not trusted; a forwarded scheme is http or https; a forwarded user is a user name taken from the
//     text; an address range reads back from its own text and contains its network.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <boost/asio/ip/address.hpp>
#include <nlohmann/json.hpp>

#include "config/server_config.h"
#include "proxy/forwarded_client.h"
#include "proxy/hub_headers.h"
#include "proxy/hub_json.h"
#include "proxy/hub_route.h"

namespace {

using namespace zoogate::proxy;

void check(bool condition) {
  if (!condition) __builtin_trap();
}

bool has_two_segments(const std::string& repo) { return repo.find('/') != std::string::npos; }

void fuzz_route(std::string_view text) {
  HubTarget parsed = parse_hub_target(text);
  (void)parse_query(text);
  if (const auto* route = std::get_if<ResolveRoute>(&parsed)) {
    (void)canonical_repo_id(*route);
    const std::string target = upstream_target(*route);
    if (route->form == ResolveForm::kResolve && has_two_segments(route->repo)) {
      HubTarget again = parse_hub_target(target);
      const auto* back = std::get_if<ResolveRoute>(&again);
      check(back && back->type == route->type && back->repo == route->repo && back->revision == route->revision &&
            back->path == route->path && back->form == route->form);
    }
  } else if (const auto* api = std::get_if<ApiRoute>(&parsed)) {
    const std::optional<std::string> target = upstream_target(*api);
    check(target.has_value() == (api->kind != ApiKind::kOther));
    if (target && has_two_segments(api->repo)) {
      HubTarget again = parse_hub_target(*target);
      const auto* back = std::get_if<ApiRoute>(&again);
      check(back && back->kind == api->kind && back->type == api->type && back->repo == api->repo &&
            back->revision == api->revision && back->path == api->path && back->query == api->query);
    }
  }
}

bool has_xet_hash(const nlohmann::ordered_json& value) {
  if (value.is_object()) {
    if (value.contains("xetHash")) return true;
    for (const auto& member : value) {
      if (has_xet_hash(member)) return true;
    }
  } else if (value.is_array()) {
    for (const auto& element : value) {
      if (has_xet_hash(element)) return true;
    }
  }
  return false;
}

void fuzz_listing(std::string_view text) {
  const ServedFile served{12345, std::string(64, 'a')};
  for (ApiKind kind : {ApiKind::kModelInfo, ApiKind::kTree, ApiKind::kPathsInfo, ApiKind::kOther}) {
    auto files = collect_file_entries(text, kind);
    size_t index = 0;
    auto rewritten = rewrite_listing(text, kind, [&](std::string_view, const UpstreamFileFacts&) {
      return index++ % 2 == 0 ? std::optional<ServedFile>(served) : std::nullopt;
    });
    check(files.has_value() == rewritten.has_value());
    if (!rewritten) continue;
    check(index == files->size());
    const auto document = nlohmann::ordered_json::parse(*rewritten, nullptr, /*allow_exceptions=*/false);
    check(!document.is_discarded() && !has_xet_hash(document));

    auto after = collect_file_entries(*rewritten, kind);
    check(after && after->size() == files->size());
    for (size_t i = 0; i < files->size(); ++i) {
      const ListedFile& was = (*files)[i];
      const ListedFile& now = (*after)[i];
      check(now.path == was.path);
      if (i % 2 == 0) {
        check(now.facts.size == served.size && now.facts.lfs_sha256 == served.sha256);
      } else {
        check(now.facts.size == was.facts.size && now.facts.lfs_sha256 == was.facts.lfs_sha256 &&
              now.facts.git_oid == was.facts.git_oid);
      }
    }
  }
}

void fuzz_headers(std::string_view text) {
  std::vector<HeaderField> fields;
  size_t start = 0;
  while (start <= text.size()) {
    const size_t end = std::min(text.find('\n', start), text.size());
    const std::string_view line = text.substr(start, end - start);
    const size_t colon = line.find(':');
    if (colon != std::string_view::npos) {
      fields.push_back({std::string(line.substr(0, colon)), std::string(line.substr(colon + 1))});
    }
    start = end + 1;
  }
  for (const HeaderField& field : passable_headers(fields)) {
    std::string name = field.name;
    for (char& c : name) c = static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
    check(name != "connection" && name != "transfer-encoding" && name != "set-cookie" && !name.starts_with("x-xet-"));
    if (name == "location") {
      const size_t first = field.value.find_first_not_of(" \t");
      check(first != std::string::npos && field.value[first] == '/' && field.value.compare(first, 2, "//") != 0);
    }
  }

  (void)rewrite_next_link(text, "https://huggingface.co", "http://127.0.0.1:8080/");
  const std::string next = next_page_target(text, "https://huggingface.co");
  check(next.empty() || next.front() == '/');
  (void)parse_entity_tag(text);
  (void)parse_decimal(text);

  uint64_t size = 0;
  for (size_t i = 0; i < std::min<size_t>(8, text.size()); ++i) size = size << 8 | static_cast<uint8_t>(text[i]);
  for (uint64_t representation : {size, size % 1024, uint64_t{0}}) {
    const RangeResolution resolution = resolve_range(text, representation);
    if (resolution.range) {
      check(!resolution.unsatisfiable && resolution.range->first <= resolution.range->last &&
            resolution.range->last < representation);
      (void)content_range(*resolution.range, representation);
    }
  }
}

void fuzz_forwarded_for(std::string_view text) {
  static const std::vector<zoogate::config::AddressRange> trusted = [] {
    std::vector<zoogate::config::AddressRange> ranges;
    for (std::string_view range : {"10.0.0.0/8", "fd00::/8", "127.0.0.1"}) {
      ranges.push_back(*zoogate::config::AddressRange::parse(range));
    }
    return ranges;
  }();
  for (std::string_view peer : {"10.0.0.2", "::ffff:10.0.0.2", "fd00::2", "203.0.113.7"}) {
    const std::string client = forwarded_client(peer, text, trusted);
    boost::system::error_code error;
    (void)boost::asio::ip::make_address(client, error);
    check(!error);
    if (peer == "203.0.113.7") check(client == peer);
  }
  if (auto scheme = forwarded_scheme(text)) check(*scheme == "http" || *scheme == "https");
  if (auto user = forwarded_user(text)) check(zoogate::config::is_user_name(*user) && text.find(*user) != text.npos);
  if (auto range = zoogate::config::AddressRange::parse(text)) {
    auto again = zoogate::config::AddressRange::parse(range->to_string());
    check(again && *again == *range);
    check(range->contains(std::span<const uint8_t>(range->network).first(range->ipv6 ? 16 : 4)));
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  fuzz_route(text);
  fuzz_listing(text);
  fuzz_headers(text);
  fuzz_forwarded_for(text);
  return 0;
}
