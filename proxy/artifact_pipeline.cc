#include "proxy/artifact_pipeline.h"

#include <atomic>
#include <filesystem>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <nlohmann/json.hpp>
#include <openssl/evp.h>

#include "cdr/report.h"
#include "cdr/sanitize.h"
#include "common/byte_sink.h"
#include "common/encoding.h"
#include "common/openssl_ptr.h"
#include "mtd/dsse.h"
#include "mtd/layout_variation.h"
#include "mtd/manifest.h"
#include "proxy/access_log.h"
#include "proxy/background_verifier.h"
#include "proxy/metrics.h"
#include "proxy/piece_relay.h"
#include "proxy/spool_file.h"
#include "proxy/worker_pool.h"

namespace zoogate::proxy {

namespace asio = boost::asio;

namespace {

// A download into the spool moves in pieces of this size, kDownloadPieces of them in memory whatever
// the file's size: one being read, one being appended, and a spare that keeps the reading going while
// an appended piece's hash ends.
constexpr size_t kDownloadChunkBytes = 1 << 20;
constexpr size_t kDownloadPieces = 3;

// Names the MTD secret in cache keys without revealing it, so that processes sharing a cache folder
// with different secrets never serve each other's variants.
std::string variation_secret_id(const std::vector<uint8_t>& secret) {
  Sha256 hash;
  hash.update(std::string_view("zoogate variation secret id"));
  hash.update(secret);
  return to_hex(hash.finish()).substr(0, 16);
}

// Measures the time the variation's planning takes inside a sanitize run.
class TimedPlanner final : public cdr::LayoutPlanner {
 public:
  explicit TimedPlanner(const cdr::LayoutPlanner& inner) : inner_(inner) {}
  Result<cdr::LayoutPlan> plan(const cdr::ValueTree& tree, const std::vector<cdr::StorageInfo>& storages) const override {
    const auto started = std::chrono::steady_clock::now();
    auto plan = inner_.plan(tree, storages);
    seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    return plan;
  }
  double seconds() const { return seconds_; }

 private:
  const cdr::LayoutPlanner& inner_;
  mutable double seconds_ = 0;
};

double seconds_since(std::chrono::steady_clock::time_point started) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
}

ArtifactOutcome failed_outcome(std::string reason, std::string reason_code) {
  ArtifactOutcome outcome;
  outcome.state = ArtifactOutcome::State::kFailed;
  outcome.reason = std::move(reason);
  outcome.reason_code = std::move(reason_code);
  return outcome;
}

std::string blocked_record_name(const std::string& key_name) { return "blocked/" + key_name; }
std::string manifest_record_name(std::string_view served_hex) { return "manifest/" + std::string(served_hex); }

// The metrics label of a block: the first finding that the policy blocks on, else the error's kind.
ReasonLabel blocked_reason(const cdr::SanitizeReport& report) {
  for (const cdr::Finding& finding : report.findings) {
    if (finding.action == cdr::Action::kBlock) return reason_label(finding.kind);
  }
  return reason_label(report.error->code);
}

ArtifactOutcome ready_outcome(CachedArtifact artifact) {
  ArtifactOutcome outcome;
  outcome.state = ArtifactOutcome::State::kReady;
  outcome.verdict = artifact.meta.value("verdict", "");
  outcome.upstream_sha256 = artifact.meta.value("upstream_sha256", "");
  outcome.policy_version = artifact.meta.value("policy_version", "");
  outcome.artifact = std::move(artifact);
  return outcome;
}

}  // namespace

std::string UpstreamFile::upstream_id() const {
  return lfs_sha256 ? "sha256:" + to_hex(*lfs_sha256) : "git:" + git_blob_id;
}

// The git blob id: SHA-1 over "blob <size>\0" and the bytes.
struct ContentVerifier::GitBlobHash {
  explicit GitBlobHash(uint64_t size) : context(EVP_MD_CTX_new()) {
    EVP_DigestInit_ex(context.get(), EVP_sha1(), nullptr);
    const std::string prefix = "blob " + std::to_string(size);
    EVP_DigestUpdate(context.get(), prefix.data(), prefix.size() + 1);  // with the terminating NUL
  }
  OpenSslPtr<EVP_MD_CTX, EVP_MD_CTX_free> context;
};

ContentVerifier::ContentVerifier(const UpstreamFile& file)
    : announced_sha256_(file.lfs_sha256), announced_git_blob_id_(file.git_blob_id), announced_size_(file.size) {
  if (!announced_sha256_) git_blob_ = std::make_unique<GitBlobHash>(file.size);
}

ContentVerifier::~ContentVerifier() = default;

void ContentVerifier::update(std::span<const uint8_t> bytes) {
  received_ += bytes.size();
  sha256_.update(bytes);
  if (git_blob_) EVP_DigestUpdate(git_blob_->context.get(), bytes.data(), bytes.size());
}

Result<Sha256::Digest> ContentVerifier::finish() {
  if (received_ != announced_size_) {
    return fail(ErrorCode::kIntegrity, "received " + std::to_string(received_) + " bytes, the upstream announced " +
                                           std::to_string(announced_size_));
  }
  const Sha256::Digest received = sha256_.finish();
  if (announced_sha256_ && received != *announced_sha256_) {
    return fail(ErrorCode::kIntegrity, "the bytes received have SHA-256 " + to_hex(received) + ", not the " +
                                           to_hex(*announced_sha256_) + " the upstream announced (X-Linked-Etag)");
  }
  if (git_blob_) {
    std::array<uint8_t, 20> digest{};
    unsigned length = 0;
    EVP_DigestFinal_ex(git_blob_->context.get(), digest.data(), &length);
    if (to_hex(digest) != announced_git_blob_id_) {
      return fail(ErrorCode::kIntegrity, "the bytes received have git blob id " + to_hex(digest) + ", not the " +
                                             announced_git_blob_id_ + " the upstream announced (ETag)");
    }
  }
  return received;
}

class ArtifactPipeline::Job {
 public:
  UpstreamFile file;
  std::string scope;
  CacheKey key;
  std::string key_name;
  cdr::Policy policy;
  std::shared_ptr<SpoolFile> spool;
  // Where the spool goes once the disarm has read it: published into the cache's spool (a verified
  // LFS download, so that other variants need no download), left there (it came from the cache's
  // spool), or removed (a temporary file).
  std::unique_ptr<SpoolWriter> spool_writer;
  bool temporary_spool = false;
  bool spool_arriving = false;     // the spool fills from this job's download (else it was complete)
  bool download_verified = false;  // set by the disarm once the whole download checked out
  std::atomic<bool> abandoned{false};  // set when the download is no longer needed
  Sha256::Digest received_sha256{};    // written by the download before it finishes the spool
  std::chrono::steady_clock::time_point download_ended;  // likewise: when the last byte had arrived
  std::optional<InFlight> in_progress;  // counts the job in zoogate_artifacts_in_progress
  std::optional<FillLock> fetch_lock;   // held until the job ends: other processes wait for its entry

  std::shared_ptr<Completion<ArtifactOutcome>> outcome = std::make_shared<Completion<ArtifactOutcome>>();
};

ArtifactPipeline::ArtifactPipeline(PipelineSettings settings, config::PolicyConfig policies, ArtifactCache& cache,
                                   mtd::PrivateKey signing_key, asio::thread_pool& file_workers,
                                   asio::thread_pool& disarm_workers, Metrics& metrics, AccessLog& log)
    : settings_(std::move(settings)),
      policies_(std::move(policies)),
      cache_(cache),
      signing_key_(std::move(signing_key)),
      signing_public_key_(signing_key_.public_key()),
      file_workers_(file_workers),
      disarm_workers_(disarm_workers),
      metrics_(metrics),
      log_(log),
      secret_id_(variation_secret_id(settings_.mtd_secret)) {}

ArtifactPipeline::~ArtifactPipeline() { shut_down(); }

CacheKey ArtifactPipeline::key_for(const UpstreamFile& file, std::string_view scope) const {
  // The variant is named by what selects it; the scope itself never appears in a file name, only
  // inside the key's hash.
  std::string variant = settings_.mtd_secret.empty()
                            ? "canonical"
                            : "layout:" + secret_id_ + ":" + std::string(scope) + ":" + std::to_string(settings_.mtd_epoch) +
                                  (settings_.permute_weights ? ":weights" : "");
  return CacheKey{file.upstream_id(), policies_.policy_for(file.repository).version, std::move(variant)};
}

asio::awaitable<std::optional<ArtifactOutcome>> ArtifactPipeline::lookup(const UpstreamFile& file, std::string scope) {
  CacheKey key = key_for(file, scope);
  co_return co_await run_on_workers(file_workers_, &ArtifactPipeline::stored_outcome, this, std::move(key));
}

std::optional<ArtifactOutcome> ArtifactPipeline::stored_outcome(const CacheKey& key) {
  auto cached = cache_.lookup(key);
  if (cached && *cached) return ready_outcome(std::move(**cached));
  auto blocked = cache_.read_record(blocked_record_name(key.name()));
  if (blocked && *blocked) {
    auto json = nlohmann::json::parse(**blocked, nullptr, false);
    if (json.is_object()) {
      ArtifactOutcome outcome;
      outcome.state = ArtifactOutcome::State::kBlocked;
      outcome.reason = json.value("reason", "blocked by policy");
      outcome.reason_code = json.value("reason_code", "blocked");
      return outcome;
    }
  }
  return std::nullopt;
}

size_t ArtifactPipeline::running_jobs() {
  std::lock_guard lock(jobs_mutex_);
  return jobs_.size();
}

bool ArtifactPipeline::running(const UpstreamFile& file, std::string_view scope) {
  std::lock_guard lock(jobs_mutex_);
  return jobs_.count(key_for(file, scope).name()) != 0;
}

asio::awaitable<std::optional<ArtifactOutcome>> ArtifactPipeline::wait(const UpstreamFile& file,
                                                                       std::string_view scope,
                                                                       std::chrono::milliseconds wait) {
  CacheKey key = key_for(file, scope);
  std::shared_ptr<Job> job;
  {
    std::lock_guard lock(jobs_mutex_);
    auto found = jobs_.find(key.name());
    if (found != jobs_.end()) job = found->second;
  }
  if (!job) co_return co_await run_on_workers(file_workers_, &ArtifactPipeline::stored_outcome, this, std::move(key));
  co_return co_await job->outcome->wait(wait);
}

std::shared_ptr<ArtifactPipeline::Job> ArtifactPipeline::register_job(const UpstreamFile& file, std::string scope,
                                                                       std::optional<FillLock>& fetch_lock,
                                                                       bool& started) {
  CacheKey key = key_for(file, scope);
  std::string key_name = key.name();
  std::shared_ptr<Job> job = std::make_shared<Job>();
  std::lock_guard lock(jobs_mutex_);
  started = false;
  if (shutting_down_) {
    job->outcome->set(failed_outcome("zoogate is shutting down", "shutdown"));
    return job;
  }
  if (auto running = jobs_.find(key_name); running != jobs_.end()) return running->second;
  job->file = file;
  job->scope = std::move(scope);
  job->key = std::move(key);
  job->key_name = key_name;
  job->policy = policies_.policy_for(file.repository);
  if (fetch_lock) job->fetch_lock.emplace(std::move(*fetch_lock));
  jobs_.emplace(key_name, job);
  job->in_progress.emplace(metrics_.artifact_in_progress());
  started = true;
  return job;
}

std::shared_ptr<Completion<ArtifactOutcome>> ArtifactPipeline::start(const UpstreamFile& file, std::string scope,
                                                                    UpstreamBody body, asio::any_io_executor io_executor,
                                                                    std::optional<FillLock> fetch_lock) {
  bool started = false;
  std::shared_ptr<Job> job = register_job(file, std::move(scope), fetch_lock, started);
  if (!started) return job->outcome;
  if (job->file.size > settings_.max_artifact_size) {
    ArtifactOutcome outcome;
    outcome.state = ArtifactOutcome::State::kBlocked;
    outcome.reason = "the file has " + std::to_string(job->file.size) + " bytes, more than pipeline.max_artifact_size (" +
                     std::to_string(settings_.max_artifact_size) + ")";
    outcome.reason_code = "limit";
    finish_job(job, std::move(outcome));
    return job->outcome;
  }
  // A verified LFS download is kept in the cache's spool (named by its SHA-256, as announced); a file
  // kept in git, small and named by its git blob id only, in a temporary file.
  std::string spool_path;
  if (job->file.lfs_sha256) {
    auto writer = cache_.begin_spool(to_hex(*job->file.lfs_sha256));
    if (!writer) {
      finish_job(job, failed_outcome("cannot spool the download: " + writer.error().describe(), "io"));
      return job->outcome;
    }
    job->spool_writer = std::move(*writer);
    spool_path = job->spool_writer->path();
  } else {
    spool_path = cache_.temporary_path("spool");
    job->temporary_spool = true;
  }
  auto spool = SpoolFile::create(spool_path, job->file.size, settings_.spool_direct_io);
  if (!spool) {
    finish_job(job, failed_outcome("cannot spool the download: " + spool.error().describe(), "io"));
    return job->outcome;
  }
  job->spool = std::move(*spool);
  job->spool_arriving = true;
  asio::co_spawn(io_executor, download(job, std::move(body)), asio::detached);
  asio::post(disarm_workers_, [this, job] { finish_job(job, disarm(*job)); });
  return job->outcome;
}

std::shared_ptr<Completion<ArtifactOutcome>> ArtifactPipeline::start_from_spool(const UpstreamFile& file,
                                                                               std::string scope,
                                                                               SpooledUpstream spooled,
                                                                               std::optional<FillLock> fetch_lock) {
  bool started = false;
  std::shared_ptr<Job> job = register_job(file, std::move(scope), fetch_lock, started);
  if (!started) return job->outcome;
  auto spool = SpoolFile::open_complete(spooled.path, spooled.size);
  if (!spool || spooled.size != file.size || !file.lfs_sha256) {
    finish_job(job, failed_outcome("cannot read the kept download: " +
                                       (spool ? std::string("its size is not the announced one") : spool.error().describe()),
                                   "io"));
    return job->outcome;
  }
  job->spool = std::move(*spool);
  job->received_sha256 = *file.lfs_sha256;  // lookup_spool() verified it
  asio::post(disarm_workers_, [this, job] { finish_job(job, disarm(*job)); });
  return job->outcome;
}

asio::awaitable<void> ArtifactPipeline::download(std::shared_ptr<Job> job, UpstreamBody body) {
  SpoolFile& spool = *job->spool;
  metrics_.count_upstream_fetch();
  const asio::any_io_executor executor = co_await asio::this_coro::executor;
  BackgroundVerifier verifier(job->file, file_workers_, executor);
  // Pieces are appended to the spool on a worker thread while the next ones are read, so the download
  // takes the longer of the two rather than both, and the I/O thread never blocks on the disk.
  PieceRelay relay(executor, verifier, kDownloadPieces, kDownloadChunkBytes);
  PieceRelay::Read read_body = [&body](std::span<uint8_t> out) { return body.response->read(out); };
  PieceRelay::Consume append = [this, job](std::span<const uint8_t> piece) -> asio::awaitable<Status> {
    if (job->abandoned) co_return fail(ErrorCode::kIo, "the download was abandoned");
    co_return co_await run_on_workers(file_workers_, &SpoolFile::append, job->spool.get(), piece);
  };
  PieceRelay::Outcome relayed = co_await relay.run(
      std::make_shared<std::vector<uint8_t>>(std::move(body.first_bytes)), read_body, append, /*held_back=*/0);
  if (relayed.ending == PieceRelay::Ending::kReadFailed) co_return spool.finish(tl::unexpected(*relayed.error));
  if (relayed.ending == PieceRelay::Ending::kConsumeFailed) {
    // The spool refuses bytes beyond the announced size.
    if (!job->abandoned) metrics_.count_upstream_error(UpstreamErrorReason::kSizeMismatch);
    co_return spool.finish(tl::unexpected(*relayed.error));
  }
  const Result<Sha256::Digest> received = co_await verifier.finish();
  if (!received) {
    metrics_.count_upstream_error(verifier.complete() ? UpstreamErrorReason::kDigestMismatch
                                                      : UpstreamErrorReason::kSizeMismatch);
    co_return spool.finish(tl::unexpected(received.error()));
  }
  job->received_sha256 = *received;
  job->download_ended = std::chrono::steady_clock::now();
  spool.finish({});
}

ArtifactOutcome ArtifactPipeline::disarm(Job& job) {
  // Another process sharing the cache may be filling the same entry; the lock makes it one fill, and
  // the entry it leaves is ours too.
  auto fill_lock = cache_.acquire_fill_lock(job.key);
  if (!fill_lock) return failed_outcome("cannot lock the cache: " + fill_lock.error().describe(), "io");
  if (auto cached = cache_.lookup(job.key); cached && *cached) {
    job.abandoned = true;
    return ready_outcome(std::move(**cached));
  }

  // The variant is keyed by the upstream file's SHA-256: announced for LFS files, computed for the
  // small files kept in git (whose download then has to end first).
  Sha256::Digest upstream_sha256{};
  if (job.file.lfs_sha256) {
    upstream_sha256 = *job.file.lfs_sha256;
  } else {
    if (auto downloaded = job.spool->wait_finished(); !downloaded) {
      return failed_outcome(downloaded.error().message,
                            downloaded.error().code == ErrorCode::kIntegrity ? "digest_mismatch" : "upstream");
    }
    upstream_sha256 = job.received_sha256;
  }
  std::unique_ptr<mtd::LayoutVariation> variation;
  if (!settings_.mtd_secret.empty()) {
    auto made = mtd::make_variation(mtd::VariationSettings{settings_.mtd_secret, job.scope, upstream_sha256,
                                                           settings_.mtd_epoch, settings_.permute_weights,
                                                           std::nullopt});
    if (!made) return failed_outcome("cannot set up the variation: " + made.error().describe(), "internal");
    variation = std::move(*made);
  }
  std::optional<TimedPlanner> timed_planner;
  if (variation) timed_planner.emplace(*variation);

  auto writer = cache_.begin(job.key);
  if (!writer) return failed_outcome("cannot write to the cache: " + writer.error().describe(), "io");
  auto sink = AtomicFileSink::create((*writer)->body_path());
  if (!sink) return failed_outcome("cannot write to the cache: " + sink.error().describe(), "io");
  cdr::SanitizeOptions options;
  options.layout = timed_planner ? &*timed_planner : nullptr;
  options.known_input_sha256 = upstream_sha256;
  // A PyTorch checkpoint is then rebuilt as its storages arrive: the answer is ready soon after the last byte.
  options.input_arrives_in_order = job.spool_arriving;
  const auto started = std::chrono::steady_clock::now();
  std::unique_ptr<ByteSource> input = job.spool->reader();
  cdr::SanitizeReport report = cdr::sanitize(*input, job.policy, options, **sink);
  metrics_.observe_disarm_seconds(seconds_since(started));
  if (timed_planner) metrics_.observe_variation_seconds(timed_planner->seconds());

  // A broken or forged download decides the outcome whatever the parser made of the bytes it got.
  const Status downloaded = job.spool->wait_finished();
  job.download_verified = downloaded.has_value();
  if (!downloaded) {
    return failed_outcome(downloaded.error().message,
                          downloaded.error().code == ErrorCode::kIntegrity ? "digest_mismatch" : "upstream");
  }

  if (report.verdict == cdr::Verdict::kBlocked) {
    const Error& why = *report.error;
    metrics_.count_verdict(VerdictLabel::kBlocked, blocked_reason(report));
    ArtifactOutcome outcome;
    outcome.state = ArtifactOutcome::State::kBlocked;
    outcome.reason = why.describe();
    outcome.reason_code = std::string(to_string(why.code));
    nlohmann::json record = {{"reason", outcome.reason}, {"reason_code", outcome.reason_code},
                             {"upstream_sha256", to_hex(upstream_sha256)}};
    // Remembering the block spares the next client the download; failing to remember costs only that.
    (void)cache_.write_record(blocked_record_name(job.key_name), record.dump());
    log_.write_event("blocked", {{"repository", job.file.repository}, {"file", job.file.file_name},
                                 {"upstream_sha256", to_hex(upstream_sha256)}, {"reason", outcome.reason}});
    return outcome;
  }
  if (auto committed = (*sink)->commit(); !committed) {
    return failed_outcome("cannot write to the cache: " + committed.error().describe(), "io");
  }
  metrics_.count_verdict(verdict_label(report.verdict), report.findings.empty() ? ReasonLabel::kNone : reason_label(report.findings.front().kind));

  const std::string seed_id = variation ? variation->seed_id() : "";
  auto manifest = mtd::sanitized_file_manifest(job.file.file_name, (*writer)->body_path(), report, job.policy,
                                               upstream_sha256, seed_id, std::nullopt);
  if (!manifest) return failed_outcome("cannot describe the disarmed file: " + manifest.error().describe(), "internal");
  auto bundle = mtd::sign_manifest(*manifest, signing_key_);
  if (!bundle) return failed_outcome("cannot sign the manifest: " + bundle.error().describe(), "internal");
  const std::string served_hex = to_hex(report.output_sha256);
  if (auto stored = cache_.write_record(manifest_record_name(served_hex), *bundle); !stored) {
    return failed_outcome("cannot store the manifest: " + stored.error().describe(), "io");
  }
  nlohmann::json meta = {{"verdict", std::string(cdr::to_string(report.verdict))},
                         {"upstream_sha256", to_hex(upstream_sha256)},
                         {"policy_version", job.policy.version},
                         {"container", report.container},
                         {"findings", report.findings.size()},
                         {"seed_id", seed_id}};
  auto committed = (*writer)->commit(meta, std::nullopt, report.output_sha256);
  if (!committed) return failed_outcome("cannot publish the cache entry: " + committed.error().describe(), "io");
  if (job.spool_arriving) {
    metrics_.observe_ready_after_download_seconds(seconds_since(job.download_ended));
  }
  return ready_outcome(std::move(*committed));
}

void ArtifactPipeline::release_spool(Job& job) {
  if (!job.spool) return;
  if (job.temporary_spool) {
    std::error_code ignored;
    std::filesystem::remove(job.spool->path(), ignored);
  } else if (job.spool_writer && job.download_verified) {
    // Keeping the download spares other variants a fetch; failing to keep it costs only that.
    (void)job.spool_writer->commit(job.received_sha256);
  }
  job.spool_writer.reset();  // uncommitted: its staged file goes
}

void ArtifactPipeline::finish_job(const std::shared_ptr<Job>& job, ArtifactOutcome outcome) {
  if (outcome.state == ArtifactOutcome::State::kFailed && job->spool) {
    job->abandoned = true;
    log_.write_event("artifact_failed", {{"repository", job->file.repository}, {"file", job->file.file_name},
                                         {"reason", outcome.reason}});
  }
  job->outcome->set(std::move(outcome));
  // Published before the fetch lock goes, so that other processes find the kept download.
  release_spool(*job);
  {
    std::lock_guard lock(jobs_mutex_);
    jobs_.erase(job->key_name);
  }
  job->fetch_lock.reset();
  job->in_progress.reset();
}

Result<std::optional<std::string>> ArtifactPipeline::manifest(std::string_view served_sha256_hex) {
  return cache_.read_record(manifest_record_name(served_sha256_hex));
}

void ArtifactPipeline::shut_down() {
  std::vector<std::shared_ptr<Job>> running;
  {
    std::lock_guard lock(jobs_mutex_);
    shutting_down_ = true;
    for (auto& [name, job] : jobs_) running.push_back(job);
  }
  for (auto& job : running) {
    job->abandoned = true;
    if (job->spool) job->spool->finish(fail(ErrorCode::kIo, "zoogate is shutting down"));
  }
}

}  // namespace zoogate::proxy
