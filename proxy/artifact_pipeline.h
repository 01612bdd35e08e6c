// The artifact pipeline: an upstream pickle-bearing file becomes a disarmed, varied, signed artifact
// in the cache, once, however many clients ask for it at the same time.
//
//   download (I/O thread) -> spool file -> sanitize with layout variation (worker) -> manifest, signed
//   -> cache entry (atomic) -> every waiting client
//
// The disarm reads the spool while the download is still writing it, so that the answer is ready soon
// after the last byte: pickles are parsed front to back, and the storages of a PyTorch checkpoint
// (archive or legacy file) are copied into the rebuilt file as they arrive (cdr::SanitizeOptions::
// input_arrives_in_order); an archive's central directory, at the end, confirms them. The bytes received must
// match the upstream's digest (X-Linked-Etag for LFS files, the git blob id otherwise); on a mismatch,
// a broken download or a lying length nothing is cached and every waiting client gets a 502.
//
// Jobs are keyed by the cache key (upstream file, policy version, variant). Within a process a map of
// running jobs joins concurrent requests; across processes sharing the cache folder the fetch lock
// the caller takes (and the job holds) and the cache's fill lock do, and the second process finds the
// first one's entry. A verified LFS download is kept in the cache's spool: the variants of other
// scopes are made from it (start_from_spool) without another download.
//
// Thread safety: every public method may be called from any thread. Disarms run on the disarm pool,
// cache lookups on the file pool, both given at construction; the coroutines never block an I/O
// thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/thread_pool.hpp>

#include "cdr/policy.h"
#include "common/error.h"
#include "common/sha256.h"
#include "config/policy_config.h"
#include "mtd/signing.h"
#include "proxy/artifact_cache.h"
#include "proxy/completion.h"
#include "proxy/upstream_client.h"

namespace zoogate::proxy {

class Metrics;
class AccessLog;

// What the upstream said about one file before its bytes arrived.
struct UpstreamFile {
  std::string repository;  // canonical id ("owner/name", "datasets/owner/name"): selects the policy
  std::string file_name;   // the path's last component, for the manifest
  std::string commit;      // X-Repo-Commit
  std::optional<Sha256::Digest> lfs_sha256;  // X-Linked-Etag of an LFS file
  std::string git_blob_id;                   // ETag of a file stored in git (40 hex digits)
  uint64_t size = 0;
  // The identity the cache is keyed by: "sha256:<hex>" for LFS files, "git:<blob id>" otherwise.
  std::string upstream_id() const;
};

// Checks that a file's bytes are the ones the upstream named before sending them: the size, and the
// SHA-256 of X-Linked-Etag (LFS files) or the git blob id of the ETag (files kept in git, whose
// SHA-256 is computed too: variants and manifests are keyed by it).
class ContentVerifier {
 public:
  explicit ContentVerifier(const UpstreamFile& file);
  ContentVerifier(const ContentVerifier&) = delete;
  ContentVerifier& operator=(const ContentVerifier&) = delete;
  ~ContentVerifier();

  void update(std::span<const uint8_t> bytes);
  // True when exactly the announced number of bytes has arrived.
  bool complete() const { return received_ == announced_size_; }
  // After the last byte: the SHA-256 of the bytes received, or kIntegrity saying how they differ from
  // what the upstream announced.
  Result<Sha256::Digest> finish();

 private:
  std::optional<Sha256::Digest> announced_sha256_;
  std::string announced_git_blob_id_;
  uint64_t announced_size_;
  uint64_t received_ = 0;
  Sha256 sha256_;
  struct GitBlobHash;
  std::unique_ptr<GitBlobHash> git_blob_;  // files kept in git only
};

// The result of the pipeline for one variant of one file.
struct ArtifactOutcome {
  enum class State { kReady, kBlocked, kFailed };
  State state = State::kFailed;
  // kReady: the served file.
  CachedArtifact artifact;
  std::string verdict;          // "clean" or "disarmed"
  std::string upstream_sha256;  // hex of the file as upstream served it
  std::string policy_version;
  // kBlocked (403, remembered) and kFailed (502, not remembered): why, in words a user can act on.
  std::string reason;
  std::string reason_code;  // a short stable name ("forbidden_global", "digest_mismatch", ...)
};

// A download handed to the pipeline: the open upstream response and the bytes already read from it
// (to identify the content).
struct UpstreamBody {
  std::unique_ptr<UpstreamResponse> response;
  std::vector<uint8_t> first_bytes;
};

struct PipelineSettings {
  std::chrono::milliseconds client_wait{60'000};
  uint64_t max_artifact_size = 64ull << 30;
  std::vector<uint8_t> mtd_secret;  // empty: no layout variation (canonical layout)
  uint64_t mtd_epoch = 0;
  bool permute_weights = false;
  bool spool_direct_io = false;  // downloads into the spool bypass the page cache
};

class ArtifactPipeline {
 public:
  ArtifactPipeline(PipelineSettings settings, config::PolicyConfig policies, ArtifactCache& cache,
                   mtd::PrivateKey signing_key, boost::asio::thread_pool& file_workers,
                   boost::asio::thread_pool& disarm_workers, Metrics& metrics, AccessLog& log);
  ~ArtifactPipeline();

  // The cache key of `file` for a client with MTD scope `scope`.
  CacheKey key_for(const UpstreamFile& file, std::string_view scope) const;

  // A finished outcome that needs no download: a cache entry or a remembered block. Runs on the
  // worker pool (the first read of an entry verifies its digest).
  boost::asio::awaitable<std::optional<ArtifactOutcome>> lookup(const UpstreamFile& file, std::string scope);

  // True when a job for this key is running in this process: a caller can wait() without a body.
  bool running(const UpstreamFile& file, std::string_view scope);

  // Starts the job for the key with `body`, unless one is running (then `body` is dropped) or the
  // pipeline is shutting down, and returns where the job's outcome arrives: the caller waits there,
  // because a failed job leaves its outcome nowhere else. The download runs on `io_executor`, the
  // disarm on the disarm pool. The job holds `fetch_lock` (the cache's fetch lock of the file, when
  // the caller took it) until it ends.
  std::shared_ptr<Completion<ArtifactOutcome>> start(const UpstreamFile& file, std::string scope, UpstreamBody body,
                                                     boost::asio::any_io_executor io_executor,
                                                     std::optional<FillLock> fetch_lock);
  // Starts the job for the key from an upstream file kept in the cache's spool (another variant's
  // download): no fetch. Otherwise as start().
  std::shared_ptr<Completion<ArtifactOutcome>> start_from_spool(const UpstreamFile& file, std::string scope,
                                                                SpooledUpstream spooled,
                                                                std::optional<FillLock> fetch_lock);
  // How many jobs are running in this process (a draining server waits for them).
  size_t running_jobs();
  // The outcome of the running job for the key, or nullopt when `wait` passed first (the job goes on
  // and the client may come back); without a running job, lookup()'s answer.
  boost::asio::awaitable<std::optional<ArtifactOutcome>> wait(const UpstreamFile& file, std::string_view scope,
                                                              std::chrono::milliseconds wait);

  // The signed manifest of a served file by its SHA-256 (hex), when this cache holds it.
  Result<std::optional<std::string>> manifest(std::string_view served_sha256_hex);

  const PipelineSettings& settings() const { return settings_; }
  const mtd::PublicKey& signing_public_key() const { return signing_public_key_; }
  cdr::Policy policy_for(std::string_view repository) const { return policies_.policy_for(repository); }

  // Jobs in progress are abandoned (their downloads fail, their clients get 502); new ones are refused.
  void shut_down();

 private:
  class Job;
  // lookup()'s work, on a worker thread.
  std::optional<ArtifactOutcome> stored_outcome(const CacheKey& key);
  // The running job of the key (`started` false), or a new one registered as running (`started`
  // true; it takes `fetch_lock`), or when shutting down a job already failed (`started` false).
  std::shared_ptr<Job> register_job(const UpstreamFile& file, std::string scope, std::optional<FillLock>& fetch_lock,
                                    bool& started);
  // When the job ends: publishes a verified download into the cache's spool, or removes a temporary
  // spool.
  void release_spool(Job& job);
  boost::asio::awaitable<void> download(std::shared_ptr<Job> job, UpstreamBody body);
  ArtifactOutcome disarm(Job& job);
  void finish_job(const std::shared_ptr<Job>& job, ArtifactOutcome outcome);

  PipelineSettings settings_;
  config::PolicyConfig policies_;
  ArtifactCache& cache_;
  mtd::PrivateKey signing_key_;
  mtd::PublicKey signing_public_key_;
  boost::asio::thread_pool& file_workers_;    // cache lookups
  boost::asio::thread_pool& disarm_workers_;  // disarms: each blocks while its download goes on
  Metrics& metrics_;
  AccessLog& log_;
  std::mutex jobs_mutex_;
  std::map<std::string, std::shared_ptr<Job>> jobs_;  // running, by cache key name
  bool shutting_down_ = false;
  const std::string secret_id_;  // see variation_secret_id()
};

}  // namespace zoogate::proxy
