// The Hub router: zoogate's answer to every request of a Hub client (HF_ENDPOINT mode, and the
// intercepted requests of the egress mode, which come through the same object).
//
//   /{repo}/resolve/{rev}/{path}   files: pickle-bearing ones through the artifact pipeline, safetensors
//                                  after their header checks, everything else streamed untouched
//   /api/...                       JSON passed on, rewritten where it describes rewritten files
//   /zoogate/manifests/{sha}.sigstore.json, /zoogate/signing-key.pem
//
// Files are routed by their bytes, never by their names; what zoogate learned about a file (artifact
// or pass-through) is remembered by its upstream identity, so a listing can describe the served bytes.
// DESIGN.md section 5 is the contract this file implements.
//
// Thread safety: one HubService serves every connection; handle() runs concurrently on many
// coroutines, each on an executor that runs one handler at a time (an event loop of one thread, or a
// strand), since a streamed download runs two coroutines over shared buffers there.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/beast/http/fields.hpp>
#include <nlohmann/json.hpp>

#include "config/server_config.h"
#include "proxy/artifact_pipeline.h"
#include "proxy/client_exchange.h"
#include "proxy/completion.h"
#include "proxy/expiring_memo.h"
#include "proxy/hub_route.h"
#include "proxy/upstream_client.h"

namespace zoogate::proxy {

class Metrics;
class AccessLog;

class HubService {
 public:
  HubService(const config::ServerConfig& config, Url hub_url, std::shared_ptr<UpstreamClient> upstream,
             ArtifactPipeline& pipeline, ArtifactCache& cache, boost::asio::thread_pool& file_workers, Metrics& metrics);

  // Answers one request. `scope` names the client for MTD (its user or address).
  boost::asio::awaitable<void> handle(ClientExchange& exchange, std::string scope);

  // Warms the cache for every file of a repository at a revision: lists it and runs each
  // pickle-bearing file through the pipeline (for `scope`). The summary says what happened per file.
  boost::asio::awaitable<Result<nlohmann::json>> prefetch(RepoType type, std::string repository,
                                                          std::string revision, std::string authorization,
                                                          std::string scope);

 private:
  // What the Hub's answer for a file says (the file's identity, the headers to pass on, where its
  // bytes are), without the answer itself, so that it can be reused.
  struct Resolution {
    UpstreamFile file;
    boost::beast::http::fields hub_headers;  // the Hub's answer's headers, for pass-through answers
    std::optional<Url> location;             // where to GET the file's bytes
    unsigned redirects = 0;                  // followed to learn `location`
  };
  struct FileStart;
  struct Obtained;
  class IdentificationLease;

  boost::asio::awaitable<void> handle_resolve(ClientExchange& exchange, const ResolveRoute& route, std::string scope);
  boost::asio::awaitable<void> handle_api(ClientExchange& exchange, const ApiRoute& route, std::string scope);
  boost::asio::awaitable<void> handle_zoogate(ClientExchange& exchange, std::string_view path);

  // `need_error_body`: an upstream error is fetched again with GET, for the explanation in its body.
  // A resolution the Hub gave for the same URL and credentials within upstream.resolution_ttl is
  // reused without asking again.
  boost::asio::awaitable<Result<FileStart>> start_file(const ResolveRoute& route, const std::string& authorization,
                                                       bool need_error_body);
  boost::asio::awaitable<Obtained> obtain(const ResolveRoute& route, const std::string& authorization,
                                          const std::string& scope, bool need_pass_body);
  boost::asio::awaitable<void> relay(ClientExchange& exchange, UpstreamResponse& response);
  boost::asio::awaitable<void> serve_artifact(ClientExchange& exchange, const UpstreamFile& file,
                                              const ArtifactOutcome& outcome);
  boost::asio::awaitable<void> serve_pass_through(ClientExchange& exchange, Obtained& obtained);
  boost::asio::awaitable<void> answer_pending(ClientExchange& exchange);

  boost::asio::awaitable<std::optional<std::string>> remembered_route(const UpstreamFile& file);
  boost::asio::awaitable<void> remember_route(const UpstreamFile& file, std::string_view kind);
  std::string public_base(const ClientExchange& exchange) const;

  const config::ServerConfig& config_;
  Url hub_url_;
  std::shared_ptr<UpstreamClient> upstream_;
  ArtifactPipeline& pipeline_;
  ArtifactCache& cache_;
  boost::asio::thread_pool& file_workers_;  // short blocking work: cache lookups and records
  Metrics& metrics_;
  // The Hub's recent answers naming files, by upstream URL and a digest of the credentials.
  ExpiringMemo<Resolution> resolutions_;

  std::mutex identifying_mutex_;
  // Files being fetched for the first time, by upstream identity: what the first request for each
  // found ("artifact", "pass", or "" when it failed). Guarded by identifying_mutex_.
  std::map<std::string, std::shared_ptr<Completion<std::string>>> identifying_;
};

}  // namespace zoogate::proxy
