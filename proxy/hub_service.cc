#include "proxy/hub_service.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/http/field.hpp>
#include <openssl/evp.h>
#include <zlib.h>

#include "cdr/detect.h"
#include "cdr/safetensors.h"
#include "common/encoding.h"
#include "common/sha256.h"
#include "proxy/background_verifier.h"
#include "proxy/hub_headers.h"
#include "proxy/hub_json.h"
#include "proxy/metrics.h"
#include "proxy/piece_relay.h"
#include "proxy/worker_pool.h"

namespace zoogate::proxy {

namespace asio = boost::asio;
namespace http = boost::beast::http;

namespace {

// The answer of an upstream error or redirect that zoogate passes on is small; anything larger is
// cut off rather than held.
constexpr uint64_t kMaxRelayedBodyBytes = 1 << 20;
// Names of the kinds of files remembered by upstream identity.
constexpr std::string_view kRouteArtifact = "artifact";
constexpr std::string_view kRoutePass = "pass";
// How often a request waiting for another process's download of a file looks whether it has ended.
constexpr std::chrono::milliseconds kFetchLockPoll{100};

// The first bytes of a file that is still downloading: enough to identify it and to check a
// safetensors header. Reading past them is an error, never a wait.
class PrefixSource final : public ByteSource {
 public:
  PrefixSource(std::span<const uint8_t> prefix, uint64_t size) : prefix_(prefix), size_(size) {}
  uint64_t size() const override { return size_; }
  Status read_at(uint64_t offset, std::span<uint8_t> out) const override {
    if (offset > prefix_.size() || out.size() > prefix_.size() - offset) {
      return fail(ErrorCode::kIo, "read beyond the bytes received so far", offset);
    }
    std::copy_n(prefix_.begin() + static_cast<ptrdiff_t>(offset), out.size(), out.begin());
    return {};
  }

 private:
  std::span<const uint8_t> prefix_;
  uint64_t size_;
};

// Buffers of a file streamed through, per download: one being read, one held back (the newest piece
// is not sent before a later one arrives, nor the last before the digest matches), one being sent,
// and a spare that keeps the reader going while a piece already sent waits for its hash. Without the
// spare, a 1 GiB pass-through was no faster than with a loop doing the reading and sending in turn.
constexpr size_t kStreamPieces = 4;

bool is_pickle_bearing(cdr::ContentKind kind) {
  switch (kind) {
    case cdr::ContentKind::kPickle:
    case cdr::ContentKind::kTorchLegacy:
    case cdr::ContentKind::kZip:
    case cdr::ContentKind::kTorchTar:
    case cdr::ContentKind::kNpy:
      return true;
    default:
      return false;
  }
}

std::string header_value(const http::response_header<>& header, std::string_view name) {
  auto found = header.find(name);
  return found == header.end() ? std::string() : std::string(found->value());
}

std::string file_name_of(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// Names under which the Hub's repositories keep pickle-bearing files. A listing describes these as
// served before anyone downloaded them; a file whose bytes turn out to be a pickle under another name
// is routed by its bytes when downloaded, and described as served from then on.
bool has_pickle_bearing_name(std::string_view path) {
  static constexpr std::string_view kSuffixes[] = {".bin", ".pt",     ".pth", ".ckpt", ".pkl",
                                                   ".pickle", ".joblib", ".npy", ".npz"};
  for (std::string_view suffix : kSuffixes) {
    if (path.size() >= suffix.size()) {
      std::string_view tail = path.substr(path.size() - suffix.size());
      if (std::equal(tail.begin(), tail.end(), suffix.begin(),
                     [](char a, char b) { return std::tolower(static_cast<unsigned char>(a)) == b; })) {
        return true;
      }
    }
  }
  return false;
}

// The revision a listing's files are fetched at: the one asked for, or for a model info without one
// the commit the answer names.
std::string listing_revision(const ApiRoute& route, std::string_view json_text) {
  if (!route.revision.empty()) return route.revision;
  auto json = nlohmann::json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (json.is_object() && json.contains("sha") && json["sha"].is_string()) return json["sha"].get<std::string>();
  return "main";
}

// The body of an upstream answer as the client should see it: zoogate asks for gzip or identity and
// decodes gzip itself, so that it can rewrite the text and serve it without a content-encoding.
Result<std::string> decode_content(std::string_view encoding, std::string body, uint64_t limit) {
  if (encoding.empty() || encoding == "identity") return body;
  if (encoding != "gzip") return fail(ErrorCode::kUnsupported, "unexpected Content-Encoding " + std::string(encoding));
  z_stream stream{};
  if (inflateInit2(&stream, 16 + MAX_WBITS) != Z_OK) return fail(ErrorCode::kInternal, "zlib initialisation failed");
  std::string decoded;
  std::array<char, 64 * 1024> piece{};
  stream.next_in = reinterpret_cast<Bytef*>(body.data());
  stream.avail_in = static_cast<uInt>(body.size());
  int status = Z_OK;
  while (status != Z_STREAM_END) {
    stream.next_out = reinterpret_cast<Bytef*>(piece.data());
    stream.avail_out = static_cast<uInt>(piece.size());
    status = inflate(&stream, Z_NO_FLUSH);
    if (status != Z_OK && status != Z_STREAM_END) {
      inflateEnd(&stream);
      return fail(ErrorCode::kParse, "the upstream's gzip body is corrupt");
    }
    decoded.append(piece.data(), piece.size() - stream.avail_out);
    if (decoded.size() > limit) {
      inflateEnd(&stream);
      return fail(ErrorCode::kLimitExceeded, "the upstream answer decodes to more than " + std::to_string(limit) + " bytes");
    }
    if (status == Z_OK && stream.avail_in == 0 && stream.avail_out != 0) {
      inflateEnd(&stream);
      return fail(ErrorCode::kParse, "the upstream's gzip body is truncated");
    }
  }
  inflateEnd(&stream);
  return decoded;
}

}  // namespace

// The start of a file's answer: its resolution (no location with relay), or the upstream answer to
// pass on as it is.
struct HubService::FileStart : Resolution {
  std::unique_ptr<UpstreamResponse> relay;  // an error or a relative redirect
};

struct HubService::Obtained {
  enum class Kind { kRelay, kArtifact, kPending, kPass, kError };
  Kind kind = Kind::kError;
  FileStart start;
  std::optional<ArtifactOutcome> outcome;     // kArtifact
  bool from_cache = false;                    // kArtifact: the outcome was there before this request
  std::unique_ptr<UpstreamResponse> body;     // kPass (when asked for): the rest of the bytes
  std::vector<uint8_t> first_bytes;           // kPass: bytes already read from `body`
  std::string content_type;                   // kPass: the Content-Type of the host that sent the bytes
  unsigned error_status = 502;                // kError
  std::string error_code;
  std::string error_message;
};

HubService::HubService(const config::ServerConfig& config, Url hub_url, std::shared_ptr<UpstreamClient> upstream,
                       ArtifactPipeline& pipeline, ArtifactCache& cache, asio::thread_pool& file_workers, Metrics& metrics)
    : config_(config),
      hub_url_(std::move(hub_url)),
      upstream_(std::move(upstream)),
      pipeline_(pipeline),
      cache_(cache),
      file_workers_(file_workers),
      metrics_(metrics),
      resolutions_(config.upstream.resolution_ttl, config.upstream.max_resolutions) {}

std::string HubService::public_base(const ClientExchange& exchange) const {
  // An intercepted client asked the Hub's own origin over TLS; links must send it back there.
  if (!config_.public_url.empty() && !exchange.encrypted()) return config_.public_url;
  auto host = exchange.request().find(http::field::host);
  const std::string scheme = exchange.encrypted() ? "https" : exchange.forwarded_scheme.value_or("http");
  return scheme + "://" + (host == exchange.request().end() ? std::string("localhost") : std::string(host->value()));
}

asio::awaitable<void> HubService::handle(ClientExchange& exchange, std::string scope) {
  const HttpRequest& request = exchange.request();
  const std::string_view target(request.target().data(), request.target().size());
  if (target.starts_with("/zoogate/")) {
    exchange.route = Route::kManifest;
    co_return co_await handle_zoogate(exchange, target);
  }
  HubTarget parsed = parse_hub_target(target);
  if (auto* resolve = std::get_if<ResolveRoute>(&parsed)) {
    exchange.route = Route::kResolve;
    if (request.method() != http::verb::get && request.method() != http::verb::head) {
      co_return (void)co_await exchange.send_error(405, "MethodNotAllowed", "files are read with GET or HEAD");
    }
    co_return co_await handle_resolve(exchange, *resolve, std::move(scope));
  }
  if (auto* api = std::get_if<ApiRoute>(&parsed)) {
    exchange.route = Route::kApi;
    co_return co_await handle_api(exchange, *api, std::move(scope));
  }
  if (auto* invalid = std::get_if<InvalidTarget>(&parsed)) {
    co_return (void)co_await exchange.send_error(400, "BadRequest", invalid->reason);
  }
  co_await exchange.send_error(404, "NotFound", "zoogate serves the Hub's API and file downloads only");
}

// ---------------------------------------------------------------------------------------------------
// Files

asio::awaitable<Result<HubService::FileStart>> HubService::start_file(const ResolveRoute& route,
                                                                      const std::string& authorization,
                                                                      bool need_error_body) {
  // HEAD first, as Hub clients do: the answer names the content (commit, ETag or X-Linked-Etag, size)
  // without sending it, so a file zoogate has, or is fetching for another client, costs no download.
  Url url = hub_url_;
  url.target = upstream_target(route);
  // The credentials are part of the key (as a digest, so none is kept): an answer the Hub gave one
  // user is never reused for another, which matters for gated repositories.
  const std::string resolution_key = url.origin() + url.target + "\n" + to_hex(Sha256::of(authorization));
  if (std::optional<Resolution> known = resolutions_.find(resolution_key)) {
    metrics_.count_resolution_reused();
    FileStart start;
    static_cast<Resolution&>(start) = std::move(*known);
    co_return start;
  }
  auto request_for = [&](http::verb method) {
    UpstreamClient::Request request{method, url.target, 11};
    if (!authorization.empty()) request.set(http::field::authorization, authorization);
    request.set(http::field::accept_encoding, "identity");
    request.set(http::field::user_agent, "zoogate");
    return request;
  };
  auto response = co_await upstream_->send(url, request_for(http::verb::head));
  if (!response) co_return tl::unexpected(response.error());
  if ((*response)->status() >= 400 && need_error_body) {
    // The Hub's error explanation is in the body of a GET (a gated repository's 401, a missing file's 404).
    response = co_await upstream_->send(url, request_for(http::verb::get));
    if (!response) co_return tl::unexpected(response.error());
  }

  FileStart start;
  const auto& header = (*response)->header();
  for (const auto& field : header) start.hub_headers.insert(field.name_string(), field.value());
  start.file.repository = canonical_repo_id(route);
  start.file.file_name = file_name_of(route.path);
  start.file.commit = header_value(header, "X-Repo-Commit");
  const unsigned status = (*response)->status();
  if (status >= 300 && status < 400) {
    const std::string location = header_value(header, "Location");
    if (location.starts_with("/") && !location.starts_with("//")) {
      start.relay = std::move(*response);  // a renamed repository: the client asks zoogate again
      co_return start;
    }
    auto next = Url::parse(location);
    if (!next) co_return tl::unexpected(next.error());
    start.location = std::move(*next);
    start.redirects = 1;
  } else if (status == 200) {
    // A file kept in git: its bytes come from the Hub itself, asked for at the commit just named so
    // that they are the ones this answer described.
    ResolveRoute pinned = route;
    if (!start.file.commit.empty()) pinned.revision = start.file.commit;
    start.location = hub_url_;
    start.location->target = upstream_target(pinned);
  } else {
    start.relay = std::move(*response);
    co_return start;
  }
  // An LFS file is named by its SHA-256 (X-Linked-Etag); a file kept in git by its blob id (ETag).
  const std::string linked_etag = parse_entity_tag(header_value(header, "X-Linked-Etag"));
  const std::string etag = parse_entity_tag(header_value(header, "ETag"));
  if (!linked_etag.empty()) {
    auto digest = from_hex(linked_etag);
    if (!digest || digest->size() != 32) {
      co_return fail(ErrorCode::kParse, "the upstream's X-Linked-Etag is not a SHA-256: " + linked_etag.substr(0, 80));
    }
    start.file.lfs_sha256.emplace();
    std::copy(digest->begin(), digest->end(), start.file.lfs_sha256->begin());
  } else {
    start.file.git_blob_id = etag;
  }
  const std::string linked_size = header_value(header, "X-Linked-Size");
  std::optional<uint64_t> size = parse_decimal(linked_size);
  if (!size) size = (*response)->content_length();
  if (!size) co_return fail(ErrorCode::kParse, "the upstream did not say how large the file is");
  start.file.size = *size;
  if (start.file.lfs_sha256 == std::nullopt && start.file.git_blob_id.empty()) {
    co_return fail(ErrorCode::kParse, "the upstream did not name the file's content (no X-Linked-Etag, no ETag)");
  }
  resolutions_.remember(resolution_key, static_cast<const Resolution&>(start));
  co_return start;
}

asio::awaitable<std::optional<std::string>> HubService::remembered_route(const UpstreamFile& file) {
  auto record = co_await run_on_workers(file_workers_, &ArtifactCache::read_record, &cache_, "route/" + file.upstream_id());
  co_return record ? *record : std::nullopt;
}

asio::awaitable<void> HubService::remember_route(const UpstreamFile& file, std::string_view kind) {
  // Written before the fetch lock is released, so that other processes sharing the cache find it.
  // Forgetting costs one identification on the next request; nothing depends on it.
  (void)co_await run_on_workers(file_workers_, &ArtifactCache::write_record, &cache_, "route/" + file.upstream_id(),
                                std::string(kind));
}

// Held by the one request that fetches and identifies a file nobody has seen yet; the requests that
// come meanwhile for the same file wait for what it finds. Whatever way the first request ends, its
// lease ends the wait ("" when nothing was found) and leaves the registry.
class HubService::IdentificationLease {
 public:
  IdentificationLease(HubService& hub, std::string upstream_id) : hub_(hub), upstream_id_(std::move(upstream_id)) {
    std::lock_guard lock(hub_.identifying_mutex_);
    auto [entry, inserted] = hub_.identifying_.try_emplace(upstream_id_);
    if (inserted) entry->second = std::make_shared<Completion<std::string>>();
    found_ = entry->second;
    leading_ = inserted;
  }
  IdentificationLease(const IdentificationLease&) = delete;
  IdentificationLease& operator=(const IdentificationLease&) = delete;
  ~IdentificationLease() {
    if (!leading_) return;
    found_->set("");
    std::lock_guard lock(hub_.identifying_mutex_);
    hub_.identifying_.erase(upstream_id_);
  }

  bool leading() const { return leading_; }
  Completion<std::string>& found() { return *found_; }
  void finish(std::string route) { found_->set(std::move(route)); }

 private:
  HubService& hub_;
  std::string upstream_id_;
  std::shared_ptr<Completion<std::string>> found_;
  bool leading_ = false;
};

asio::awaitable<HubService::Obtained> HubService::obtain(const ResolveRoute& route, const std::string& authorization,
                                                         const std::string& scope, bool need_pass_body) {
  Obtained obtained;
  auto error = [&](unsigned status, std::string code, std::string message) {
    obtained.kind = Obtained::Kind::kError;
    obtained.error_status = status;
    obtained.error_code = std::move(code);
    obtained.error_message = std::move(message);
    return std::move(obtained);
  };
  auto started = co_await start_file(route, authorization, need_pass_body);
  if (!started) co_return error(502, "ZoogateUpstreamError", "the upstream failed: " + started.error().describe());
  obtained.start = std::move(*started);
  if (obtained.start.relay) {
    obtained.kind = Obtained::Kind::kRelay;
    co_return std::move(obtained);
  }
  const UpstreamFile& file = obtained.start.file;

  // What is already known needs no download. A file nobody has identified yet is fetched by the
  // first request for it; concurrent ones wait for what it finds.
  const auto give_up_at = std::chrono::steady_clock::now() + config_.pipeline.client_wait;
  auto time_left = [&] {
    return std::max(std::chrono::milliseconds(0), std::chrono::duration_cast<std::chrono::milliseconds>(
                                                      give_up_at - std::chrono::steady_clock::now()));
  };
  std::optional<std::string> remembered = co_await remembered_route(file);
  std::optional<IdentificationLease> lease;
  if (!remembered && !pipeline_.running(file, scope)) {
    lease.emplace(*this, file.upstream_id());
    if (!lease->leading()) {
      std::optional<std::string> found = co_await lease->found().wait(time_left());
      lease.reset();
      if (!found) {
        obtained.kind = Obtained::Kind::kPending;
        co_return std::move(obtained);
      }
      if (!found->empty()) remembered = std::move(*found);  // empty: the first request failed; try again
    }
  }
  // Across processes sharing the cache folder, one at a time downloads a file that is (or may be) an
  // artifact, under the cache's fetch lock; the others wait for the entry it leaves.
  std::optional<FillLock> fetch_lock;
  asio::steady_timer pause(co_await asio::this_coro::executor);
  for (;;) {
    if (remembered == kRouteArtifact || pipeline_.running(file, scope)) {
      if (auto outcome = co_await pipeline_.lookup(file, scope)) {
        obtained.kind = Obtained::Kind::kArtifact;
        obtained.from_cache = true;
        obtained.outcome = std::move(outcome);
        co_return std::move(obtained);
      }
      if (pipeline_.running(file, scope)) {
        obtained.outcome = co_await pipeline_.wait(file, scope, time_left());
        if (obtained.outcome || pipeline_.running(file, scope)) {
          obtained.kind = obtained.outcome ? Obtained::Kind::kArtifact : Obtained::Kind::kPending;
          co_return std::move(obtained);
        }
      }
      // Nothing stored and nothing running (the last attempt failed, or it was another scope's).
    }
    if (remembered == kRoutePass) break;  // every client of a passed-through file gets its own download
    auto locked = co_await run_on_workers(file_workers_, &ArtifactCache::try_acquire_fetch_lock, &cache_, file.upstream_id());
    if (!locked) co_return error(500, "ZoogateCacheError", "cannot lock the cache: " + locked.error().describe());
    if (*locked) {
      fetch_lock.emplace(std::move(**locked));
      break;
    }
    if (time_left().count() == 0) {
      obtained.kind = Obtained::Kind::kPending;
      co_return std::move(obtained);
    }
    pause.expires_after(std::min(kFetchLockPoll, time_left()));
    (void)co_await pause.async_wait(asio::as_tuple(asio::use_awaitable));
    remembered = co_await remembered_route(file);
  }
  if (remembered == kRoutePass && !need_pass_body) {
    obtained.kind = Obtained::Kind::kPass;
    co_return std::move(obtained);
  }

  // An artifact whose upstream file is kept in the cache (another scope's variant was made from it):
  // this variant is made from there, with no download.
  if (remembered == kRouteArtifact && file.lfs_sha256) {
    auto kept = co_await run_on_workers(file_workers_, &ArtifactCache::lookup_spool, &cache_, to_hex(*file.lfs_sha256));
    if (kept && *kept) {
      auto job_outcome = pipeline_.start_from_spool(file, scope, std::move(**kept), std::move(fetch_lock));
      if (lease) lease->finish(std::string(kRouteArtifact));
      obtained.outcome = co_await job_outcome->wait(time_left());
      obtained.kind = obtained.outcome ? Obtained::Kind::kArtifact : Obtained::Kind::kPending;
      co_return std::move(obtained);
    }
  }

  // The bytes: from the Hub's own answer, or behind redirects to hosts the configuration allows.
  std::unique_ptr<UpstreamResponse> body;
  std::optional<Url> next = obtained.start.location;
  for (unsigned redirects = obtained.start.redirects; !body; ++redirects) {
    if (redirects > config_.upstream.max_redirects) {
      co_return error(502, "ZoogateUpstreamError", "the upstream redirected more than upstream.max_redirects times");
    }
    const bool to_hub = next->host == hub_url_.host && next->port == hub_url_.port;
    bool allowed = to_hub;
    for (const auto& pattern : config_.upstream.redirect_hosts) allowed = allowed || config::host_matches(pattern, next->host);
    if (!allowed) {
      metrics_.count_upstream_error(UpstreamErrorReason::kPolicy);
      co_return error(502, "ZoogateUpstreamError",
                      "the upstream redirected to " + next->host + ", which upstream.redirect_hosts does not allow");
    }
    // The user's credentials go to the Hub only, never across a redirect to another host.
    UpstreamClient::Request request{http::verb::get, next->target, 11};
    request.set(http::field::accept_encoding, "identity");
    request.set(http::field::user_agent, "zoogate");
    if (!authorization.empty() && to_hub) {
      request.set(http::field::authorization, authorization);
    }
    auto response = co_await upstream_->send(*next, std::move(request));
    if (!response) co_return error(502, "ZoogateUpstreamError", "the upstream failed: " + response.error().describe());
    const unsigned status = (*response)->status();
    if (status >= 300 && status < 400) {
      auto location = Url::parse(header_value((*response)->header(), "Location"));
      if (!location) co_return error(502, "ZoogateUpstreamError", location.error().message);
      next = std::move(*location);
      continue;
    }
    if (status != 200) {
      if (status >= 500) metrics_.count_upstream_error(UpstreamErrorReason::kStatus5xx);
      co_return error(502, "ZoogateUpstreamError",
                      "the file's host answered " + std::to_string(status) + " for " + next->origin());
    }
    body = std::move(*response);
  }
  if (auto length = body->content_length(); length && *length != file.size) {
    metrics_.count_upstream_error(UpstreamErrorReason::kSizeMismatch);
    co_return error(502, "ZoogateUpstreamError",
                    "the file's host sends " + std::to_string(*length) + " bytes, the Hub announced " +
                        std::to_string(file.size));
  }

  // Identify the content by its first bytes.
  const uint64_t window = std::min<uint64_t>(cdr::kDetectionWindow, file.size);
  std::vector<uint8_t> first_bytes(window);
  auto got = co_await body->read(first_bytes);
  if (!got) co_return error(502, "ZoogateUpstreamError", "the upstream failed: " + got.error().describe());
  if (*got < window) co_return error(502, "ZoogateUpstreamError", "the upstream body ended early");
  PrefixSource prefix(first_bytes, file.size);
  auto detection = cdr::identify_content(prefix);
  const cdr::ContentKind kind = detection ? detection->kind : cdr::ContentKind::kUnknown;
  if (is_pickle_bearing(kind)) {
    if (remembered != kRouteArtifact) co_await remember_route(file, kRouteArtifact);
    UpstreamBody upstream_body{std::move(body), std::move(first_bytes)};
    auto job_outcome = pipeline_.start(file, scope, std::move(upstream_body), co_await asio::this_coro::executor,
                                       std::move(fetch_lock));
    if (lease) lease->finish(std::string(kRouteArtifact));  // after start(): the waiters find the job running
    obtained.outcome = co_await job_outcome->wait(config_.pipeline.client_wait);
    obtained.kind = obtained.outcome ? Obtained::Kind::kArtifact : Obtained::Kind::kPending;
    co_return std::move(obtained);
  }
  if (remembered != kRoutePass) co_await remember_route(file, kRoutePass);
  if (lease) lease->finish(std::string(kRoutePass));
  obtained.kind = Obtained::Kind::kPass;
  obtained.content_type = header_value(body->header(), "Content-Type");
  obtained.body = std::move(body);
  obtained.first_bytes = std::move(first_bytes);
  co_return std::move(obtained);
}

asio::awaitable<void> HubService::handle_resolve(ClientExchange& exchange, const ResolveRoute& route,
                                                 std::string scope) {
  const HttpRequest& request = exchange.request();
  auto authorization_field = request.find(http::field::authorization);
  const std::string authorization =
      authorization_field == request.end() ? std::string() : std::string(authorization_field->value());
  const bool need_pass_body = !exchange.is_head();
  Obtained obtained = co_await obtain(route, authorization, scope, need_pass_body);
  switch (obtained.kind) {
    case Obtained::Kind::kRelay:
      exchange.upstream_status = obtained.start.relay->status();
      co_return co_await relay(exchange, *obtained.start.relay);
    case Obtained::Kind::kError:
      co_return (void)co_await exchange.send_error(obtained.error_status, obtained.error_code, obtained.error_message);
    case Obtained::Kind::kPending:
      co_return co_await answer_pending(exchange);
    case Obtained::Kind::kArtifact:
      exchange.cache = obtained.from_cache ? CacheOutcome::kHit : CacheOutcome::kMiss;
      co_return co_await serve_artifact(exchange, obtained.start.file, *obtained.outcome);
    case Obtained::Kind::kPass:
      co_return co_await serve_pass_through(exchange, obtained);
  }
}

asio::awaitable<void> HubService::answer_pending(ClientExchange& exchange) {
  metrics_.count_client_held();
  const auto retry_after = std::chrono::duration_cast<std::chrono::seconds>(config_.pipeline.retry_after).count();
  HttpResponse response{http::status::service_unavailable, 11};
  response.set(http::field::retry_after, std::to_string(std::max<int64_t>(1, retry_after)));
  response.set(http::field::content_type, "text/plain; charset=utf-8");
  response.set("X-Error-Code", "ZoogatePending");
  const std::string message = "zoogate is still disarming this file; retry in " + std::to_string(retry_after) +
                              " s (or warm it with `zoogate prefetch`)";
  response.set("X-Error-Message", message);
  response.body() = message + "\n";
  co_await exchange.send(std::move(response));
}

asio::awaitable<void> HubService::relay(ClientExchange& exchange, UpstreamResponse& response) {
  HttpResponse answer{static_cast<http::status>(response.status()), 11};
  copy_passable_headers(response.header(), answer.base());
  auto body = co_await response.read_all(kMaxRelayedBodyBytes);
  if (!body) {
    co_return (void)co_await exchange.send_error(502, "ZoogateUpstreamError", "the upstream failed: " + body.error().describe());
  }
  answer.body() = std::move(*body);
  co_await exchange.send(std::move(answer));
}

asio::awaitable<void> HubService::serve_artifact(ClientExchange& exchange, const UpstreamFile& file,
                                                 const ArtifactOutcome& outcome) {
  if (outcome.state == ArtifactOutcome::State::kBlocked) {
    exchange.verdict = VerdictLabel::kBlocked;
    HttpResponse response{http::status::forbidden, 11};
    response.set(http::field::content_type, "text/plain; charset=utf-8");
    response.set("X-Error-Code", "ZoogateBlocked");
    const std::string message = "zoogate blocked " + file.file_name + ": " + outcome.reason;
    response.set("X-Error-Message", message.substr(0, 2000));
    response.set("X-Zoogate-Verdict", "blocked");
    response.body() = message + "\n";
    exchange.error_message = message.substr(0, 500);
    co_return (void)co_await exchange.send(std::move(response));
  }
  if (outcome.state == ArtifactOutcome::State::kFailed) {
    co_return (void)co_await exchange.send_error(502, "ZoogateUpstreamError", outcome.reason);
  }
  const CachedArtifact& artifact = outcome.artifact;
  exchange.verdict = outcome.verdict == "clean" ? VerdictLabel::kClean : VerdictLabel::kDisarmed;
  const std::string served_hex = to_hex(artifact.sha256);
  const std::string manifest_path = "/zoogate/manifests/" + served_hex + ".sigstore.json";

  const int fd = ::open(artifact.body_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    co_return (void)co_await exchange.send_error(500, "ZoogateCacheError", "the cached file went away; retry");
  }
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};

  auto range = resolve_range(exchange.request()[http::field::range], artifact.size);
  HttpHeader header{http::status::ok, 11};
  if (range.unsatisfiable) {
    HttpResponse response{http::status::range_not_satisfiable, 11};
    response.set(http::field::content_range, "bytes */" + std::to_string(artifact.size));
    co_return (void)co_await exchange.send(std::move(response));
  }
  if (!file.commit.empty()) header.set("X-Repo-Commit", file.commit);
  header.set(http::field::etag, "\"" + served_hex + "\"");
  header.set("X-Linked-Etag", "\"" + served_hex + "\"");
  header.set("X-Linked-Size", std::to_string(artifact.size));
  header.set(http::field::accept_ranges, "bytes");
  header.set(http::field::content_type, "application/octet-stream");
  header.set("Repr-Digest", repr_digest(artifact.sha256));
  header.set("X-Zoogate-Verdict", outcome.verdict);
  header.set("X-Zoogate-Upstream-Sha256", outcome.upstream_sha256);
  header.set("X-Zoogate-Policy", outcome.policy_version);
  header.set("X-Zoogate-Manifest", manifest_path);
  header.set(http::field::link, "<" + public_base(exchange) + manifest_path + ">; rel=\"describedby\"");
  uint64_t first = 0;
  uint64_t length = artifact.size;
  if (range.range) {
    first = range.range->first;
    length = range.range->last - range.range->first + 1;
    header.result(http::status::partial_content);
    header.set(http::field::content_range, content_range(*range.range, artifact.size));
  }
  header.content_length(length);
  if (!co_await exchange.send_header(std::move(header)) || exchange.is_head()) co_return;

  const uint64_t sent_before = exchange.bytes_sent();
  auto sent = co_await exchange.send_file_body(fd, first, length);
  metrics_.add_client_bytes(exchange.bytes_sent() - sent_before);
  if (!sent) exchange.error_message = sent.error().message;
}

asio::awaitable<void> HubService::serve_pass_through(ClientExchange& exchange, Obtained& obtained) {
  const UpstreamFile& file = obtained.start.file;
  exchange.verdict = VerdictLabel::kPassed;
  HttpHeader header{http::status::ok, 11};
  copy_passable_headers(obtained.start.hub_headers, header.base());
  header.set(http::field::accept_ranges, "bytes");
  if (file.lfs_sha256) header.set("Repr-Digest", repr_digest(*file.lfs_sha256));
  header.set("X-Zoogate-Verdict", "passed");
  // The Hub's answer may be a redirect whose Content-Type describes the redirect's own body.
  header.set(http::field::content_type,
             obtained.content_type.empty() ? std::string("application/octet-stream") : obtained.content_type);
  auto range = resolve_range(exchange.request()[http::field::range], file.size);
  if (range.unsatisfiable) {
    HttpResponse response{http::status::range_not_satisfiable, 11};
    response.set(http::field::content_range, "bytes */" + std::to_string(file.size));
    co_return (void)co_await exchange.send(std::move(response));
  }
  uint64_t first = 0;
  uint64_t last = file.size == 0 ? 0 : file.size - 1;
  if (range.range) {
    first = range.range->first;
    last = range.range->last;
    header.result(http::status::partial_content);
    header.set(http::field::content_range, content_range(*range.range, file.size));
  }
  const uint64_t length = file.size == 0 ? 0 : last - first + 1;
  header.content_length(length);
  if (exchange.is_head()) {
    metrics_.count_verdict(VerdictLabel::kPassed, ReasonLabel::kNone);
    co_return (void)co_await exchange.send_header(std::move(header));
  }

  std::vector<uint8_t> first_bytes = std::move(obtained.first_bytes);
  UpstreamResponse& body = *obtained.body;
  // A download holds kStreamPieces pieces of this size, whatever the file's size and the client's speed.
  const size_t piece_size = static_cast<size_t>(config_.pipeline.stream_piece_size);
  // A safetensors file must show a valid header before any of it is passed on.
  PrefixSource probe(first_bytes, file.size);
  if (auto detection = cdr::identify_content(probe); detection && detection->kind == cdr::ContentKind::kSafetensors) {
    const cdr::Policy policy = pipeline_.policy_for(file.repository);
    uint64_t header_size = 0;
    for (int i = 7; i >= 0; --i) header_size = (header_size << 8) | first_bytes[static_cast<size_t>(i)];
    const uint64_t needed = 8 + std::min(header_size, policy.limits.max_safetensors_header_size);
    if (first_bytes.size() < needed) {
      const size_t before = first_bytes.size();
      first_bytes.resize(needed);
      auto got = co_await body.read(std::span(first_bytes).subspan(before));
      if (!got || *got < needed - before) {
        co_return (void)co_await exchange.send_error(502, "ZoogateUpstreamError", "the upstream body ended early");
      }
    }
    cdr::SafetensorsLimits limits;
    limits.max_header_size = policy.limits.max_safetensors_header_size;
    PrefixSource header_source(first_bytes, file.size);
    if (auto parsed = cdr::parse_safetensors_header(header_source, limits); !parsed) {
      metrics_.count_verdict(VerdictLabel::kBlocked, reason_label(parsed.error().code));
      exchange.verdict = VerdictLabel::kBlocked;
      co_return (void)co_await exchange.send_error(403, "ZoogateBlocked",
                                                   "zoogate blocked " + file.file_name +
                                                       ": its safetensors header is invalid: " + parsed.error().describe());
    }
  }
  metrics_.count_verdict(VerdictLabel::kPassed, ReasonLabel::kNone);

  // Small files are checked whole before the answer starts, so a bad one gets a clear 502. Larger
  // ones stream with the last piece held back until the digest matches; on a mismatch the
  // connection closes short, which every client treats as a failed download.
  BackgroundVerifier verifier(file, file_workers_, co_await asio::this_coro::executor);
  auto send_window = [&](std::span<const uint8_t> bytes, uint64_t at) -> asio::awaitable<bool> {
    // Sends the part of [at, at + size) that lies within the requested range.
    const uint64_t begin = std::max(at, first);
    const uint64_t end = std::min(at + bytes.size(), last + 1);
    if (file.size == 0 || begin >= end) co_return true;
    auto part = bytes.subspan(static_cast<size_t>(begin - at), static_cast<size_t>(end - begin));
    if (!co_await exchange.send_body(part)) co_return false;
    metrics_.add_client_bytes(part.size());
    co_return true;
  };
  auto upstream_failed = [&](const Error& error, bool header_sent) -> asio::awaitable<void> {
    if (!header_sent) {
      co_return (void)co_await exchange.send_error(502, "ZoogateUpstreamError", "the upstream failed: " + error.describe());
    }
    exchange.error_message = "the upstream failed mid-body: " + error.message;
    exchange.abort();
  };
  using Piece = BackgroundVerifier::Piece;
  Piece held = std::make_shared<std::vector<uint8_t>>(std::move(first_bytes));  // newest bytes, not sent yet
  uint64_t position = 0;  // file offset of the first byte not sent yet
  bool header_sent = false;

  if (file.size <= config_.pipeline.buffer_before_send) {
    Piece chunk = std::make_shared<std::vector<uint8_t>>(piece_size);
    for (;;) {
      auto got = co_await body.read(*chunk);
      if (!got) co_return co_await upstream_failed(got.error(), header_sent);
      if (*got == 0) break;
      if (held->size() + *got > config_.pipeline.buffer_before_send) {
        co_return (void)co_await exchange.send_error(502, "ZoogateUpstreamError", "the upstream sent more bytes than it announced");
      }
      held->insert(held->end(), chunk->begin(), chunk->begin() + static_cast<ptrdiff_t>(*got));
    }
    verifier.add(held);
  } else {
    // Larger ones stream with the newest piece held back until the next one arrives, and the last
    // until the digest matches. Every piece is hashed on the worker pool while others are read and
    // sent (the SHA-256 costs about 0.6 core-seconds per GiB, over half of what the TLS and the
    // sockets cost).
    PieceRelay relay(co_await asio::this_coro::executor, verifier, kStreamPieces, piece_size);
    PieceRelay::Read read_body = [&body](std::span<uint8_t> out) { return body.read(out); };
    PieceRelay::Consume send_piece = [&](std::span<const uint8_t> piece) -> asio::awaitable<Status> {
      if (!header_sent) {
        ZG_CO_TRY(co_await exchange.send_header(header));
        header_sent = true;
      }
      if (!co_await send_window(piece, position)) co_return fail(ErrorCode::kIo, "the client's connection failed");
      position += piece.size();
      co_return Status{};
    };
    PieceRelay::Outcome relayed = co_await relay.run(held, read_body, send_piece, /*held_back=*/1);
    if (relayed.ending == PieceRelay::Ending::kConsumeFailed) co_return;
    if (relayed.ending == PieceRelay::Ending::kReadFailed) co_return co_await upstream_failed(*relayed.error, header_sent);
    if (!relayed.held_back.empty()) held = std::move(relayed.held_back.front());
  }
  const Result<Sha256::Digest> verified = co_await verifier.finish();
  if (!verified) {
    metrics_.count_upstream_error(verifier.complete() ? UpstreamErrorReason::kDigestMismatch
                                                      : UpstreamErrorReason::kSizeMismatch);
    const std::string mismatch = verified.error().message;
    if (!header_sent) co_return (void)co_await exchange.send_error(502, "ZoogateDigestMismatch", mismatch);
    exchange.error_message = mismatch;
    exchange.abort();
    co_return;
  }
  if (!header_sent && !co_await exchange.send_header(header)) co_return;
  co_await send_window(*held, position);
}

// ---------------------------------------------------------------------------------------------------
// API

asio::awaitable<void> HubService::handle_api(ClientExchange& exchange, const ApiRoute& route, std::string scope) {
  const HttpRequest& request = exchange.request();
  if (route.kind == ApiKind::kXetReadToken) {
    co_return (void)co_await exchange.send_error(
        403, "ZoogateXetRefused",
        "zoogate serves every file itself and gives out no Xet tokens; download through /resolve");
  }
  const bool post = request.method() == http::verb::post;
  if (!(request.method() == http::verb::get || request.method() == http::verb::head ||
        (post && route.kind == ApiKind::kPathsInfo))) {
    co_return (void)co_await exchange.send_error(405, "MethodNotAllowed", "zoogate passes on the Hub's read API only");
  }
  Url url = hub_url_;
  url.target = std::string(request.target());
  UpstreamClient::Request upstream_request{request.method(), url.target, 11};
  for (auto field : {http::field::authorization, http::field::content_type, http::field::accept}) {
    if (auto found = request.find(field); found != request.end()) upstream_request.set(field, found->value());
  }
  upstream_request.set(http::field::accept_encoding, "gzip, identity");
  upstream_request.set(http::field::user_agent, "zoogate");
  upstream_request.body() = request.body();
  auto response = co_await upstream_->send(url, std::move(upstream_request), /*idempotent=*/true);
  if (!response) {
    co_return (void)co_await exchange.send_error(502, "ZoogateUpstreamError", "the upstream failed: " + response.error().describe());
  }
  exchange.upstream_status = (*response)->status();
  auto raw = co_await (*response)->read_all(config_.limits.max_api_json_bytes);
  if (!raw) {
    co_return (void)co_await exchange.send_error(502, "ZoogateUpstreamError", "the upstream answer: " + raw.error().describe());
  }
  auto text = decode_content(header_value((*response)->header(), "Content-Encoding"), std::move(*raw),
                             config_.limits.max_api_json_bytes);
  if (!text) {
    co_return (void)co_await exchange.send_error(502, "ZoogateUpstreamError", "the upstream answer: " + text.error().describe());
  }
  HttpResponse answer{static_cast<http::status>((*response)->status()), 11};
  copy_passable_headers((*response)->header(), answer.base());
  if (auto link = rewrite_next_link(header_value((*response)->header(), "Link"), hub_url_.origin(), public_base(exchange))) {
    answer.set(http::field::link, *link);
  } else {
    answer.erase(http::field::link);
  }

  if ((*response)->status() == 200 && route.kind != ApiKind::kOther) {
    // Files zoogate rewrites are described as served: their size and digest are those of the
    // variant this client gets, which may need the pipeline to run first.
    auto entries = collect_file_entries(*text, route.kind);
    if (!entries) {
      co_return (void)co_await exchange.send_error(502, "ZoogateUpstreamError", "the upstream listing: " + entries.error().describe());
    }
    const std::string authorization = std::string(request[http::field::authorization]);
    std::map<std::string, ServedFile> served;
    for (const ListedFile& entry : *entries) {
      UpstreamFile file;
      file.repository = canonical_repo_id(route);
      file.file_name = file_name_of(entry.path);
      file.size = entry.facts.size;
      if (entry.facts.lfs_sha256) {
        auto digest = from_hex(*entry.facts.lfs_sha256);
        if (!digest || digest->size() != 32) continue;
        file.lfs_sha256.emplace();
        std::copy(digest->begin(), digest->end(), file.lfs_sha256->begin());
      } else {
        file.git_blob_id = entry.facts.git_oid;
      }
      std::optional<std::string> remembered = co_await remembered_route(file);
      if (remembered == kRoutePass) continue;
      if (!remembered && !has_pickle_bearing_name(entry.path)) continue;
      std::optional<ArtifactOutcome> outcome = co_await pipeline_.lookup(file, scope);
      if (!outcome) {
        ResolveRoute resolve{route.type, route.repo, listing_revision(route, *text), entry.path};
        Obtained obtained = co_await obtain(resolve, authorization, scope, /*need_pass_body=*/false);
        if (obtained.kind == Obtained::Kind::kPending) co_return co_await answer_pending(exchange);
        if (obtained.kind != Obtained::Kind::kArtifact) continue;
        outcome = std::move(obtained.outcome);
      }
      if (outcome->state == ArtifactOutcome::State::kReady) {
        served[entry.path] = ServedFile{outcome->artifact.size, to_hex(outcome->artifact.sha256)};
      }
    }
    auto rewritten = rewrite_listing(*text, route.kind, [&](std::string_view path, const UpstreamFileFacts&) {
      auto found = served.find(std::string(path));
      return found == served.end() ? std::optional<ServedFile>() : std::optional<ServedFile>(found->second);
    });
    if (!rewritten) {
      co_return (void)co_await exchange.send_error(502, "ZoogateUpstreamError", "the upstream listing: " + rewritten.error().describe());
    }
    answer.body() = std::move(*rewritten);
  } else {
    answer.body() = std::move(*text);
  }
  co_await exchange.send(std::move(answer));
}

// ---------------------------------------------------------------------------------------------------
// zoogate's own documents

asio::awaitable<void> HubService::handle_zoogate(ClientExchange& exchange, std::string_view path) {
  if (path == "/zoogate/signing-key.pem") {
    HttpResponse response{http::status::ok, 11};
    response.set(http::field::content_type, "application/x-pem-file");
    response.body() = pipeline_.signing_public_key().pem();
    co_return (void)co_await exchange.send(std::move(response));
  }
  constexpr std::string_view kManifests = "/zoogate/manifests/";
  constexpr std::string_view kSuffix = ".sigstore.json";
  if (path.starts_with(kManifests) && path.ends_with(kSuffix)) {
    const std::string_view hex = path.substr(kManifests.size(), path.size() - kManifests.size() - kSuffix.size());
    const bool valid = hex.size() == 64 && std::all_of(hex.begin(), hex.end(), [](char c) {
                         return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
                       });
    if (valid) {
      auto manifest = co_await run_on_workers(file_workers_, &ArtifactPipeline::manifest, &pipeline_, std::string(hex));
      if (manifest && *manifest) {
        HttpResponse response{http::status::ok, 11};
        response.set(http::field::content_type, "application/json");
        response.body() = std::move(**manifest);
        co_return (void)co_await exchange.send(std::move(response));
      }
    }
  }
  co_await exchange.send_error(404, "NotFound", "no such zoogate document");
}

// ---------------------------------------------------------------------------------------------------
// Prefetch

asio::awaitable<Result<nlohmann::json>> HubService::prefetch(RepoType type, std::string repository,
                                                             std::string revision, std::string authorization,
                                                             std::string scope) {
  nlohmann::json files = nlohmann::json::array();
  std::string target = api_tree_target(type, repository, revision);
  for (unsigned page = 0; !target.empty(); ++page) {
    Url url = hub_url_;
    url.target = target;
    UpstreamClient::Request request{http::verb::get, url.target, 11};
    if (!authorization.empty()) request.set(http::field::authorization, authorization);
    request.set(http::field::accept_encoding, "gzip, identity");
    auto response = co_await upstream_->send(url, std::move(request));
    if (!response) co_return tl::unexpected(response.error());
    if ((*response)->status() != 200) {
      co_return fail(ErrorCode::kNotFound, "the Hub answered " + std::to_string((*response)->status()) +
                                               " when listing " + repository + "@" + revision);
    }
    auto raw = co_await (*response)->read_all(config_.limits.max_api_json_bytes);
    if (!raw) co_return tl::unexpected(raw.error());
    auto text = decode_content(header_value((*response)->header(), "Content-Encoding"), std::move(*raw),
                               config_.limits.max_api_json_bytes);
    if (!text) co_return tl::unexpected(text.error());
    auto entries = collect_file_entries(*text, ApiKind::kTree);
    if (!entries) co_return tl::unexpected(entries.error());
    for (const ListedFile& entry : *entries) {
      ResolveRoute route{type, repository, revision, entry.path};
      Obtained obtained = co_await obtain(route, authorization, scope, /*need_pass_body=*/false);
      nlohmann::json item = {{"path", entry.path}};
      switch (obtained.kind) {
        case Obtained::Kind::kArtifact:
          if (obtained.outcome->state == ArtifactOutcome::State::kReady) {
            item["result"] = obtained.outcome->verdict;
            item["sha256"] = to_hex(obtained.outcome->artifact.sha256);
          } else {
            item["result"] = obtained.outcome->state == ArtifactOutcome::State::kBlocked ? "blocked" : "failed";
            item["reason"] = obtained.outcome->reason;
          }
          break;
        case Obtained::Kind::kPending: item["result"] = "pending"; break;
        case Obtained::Kind::kPass: item["result"] = "passed"; break;
        case Obtained::Kind::kRelay: item["result"] = "upstream " + std::to_string(obtained.start.relay->status()); break;
        case Obtained::Kind::kError: item["result"] = "failed"; item["reason"] = obtained.error_message; break;
      }
      files.push_back(std::move(item));
    }
    target = next_page_target(header_value((*response)->header(), "Link"), hub_url_.origin());
  }
  co_return nlohmann::json{{"repository", repository}, {"revision", revision}, {"files", std::move(files)}};
}

}  // namespace zoogate::proxy
