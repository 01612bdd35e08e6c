// The server's Prometheus metrics (DESIGN.md section 7; the names and labels are the contract of
// proxy-spec.md's "Metrics" section, which dashboards and alerts are written against).
//
// Every label is an enum here, so the server never spells a metric name or a label value, and no label
// can take a value outside its bounded set (never a URL, a repository or a client address). Every
// combination of label values exists from construction on, so each metric name is exported from the
// first scrape, with zeros, rather than appearing the first time something happens.
//
// Thread safety: every member function may be called concurrently from any thread. Counters and gauges
// are atomics, each histogram serializes its own observations, and serialize() takes a consistent
// snapshot under the registry's lock. InFlight guards may be destroyed on any thread.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "common/error.h"

namespace prometheus {
class Counter;
class Gauge;
class Histogram;
class Registry;
}  // namespace prometheus

namespace zoogate::cdr {
enum class FindingKind;
enum class Verdict;
}  // namespace zoogate::cdr

namespace zoogate::proxy {

// The listener a request arrived on: label `listener`.
enum class Listener { kHub, kAdmin, kEgress };
// What a request asked for: label `route` ("manifest" covers /zoogate/manifests/ and the signing key).
enum class Route { kResolve, kApi, kManifest, kAdmin, kOther };
// Why an upstream exchange failed: label `reason` of zoogate_upstream_errors_total.
enum class UpstreamErrorReason {
  kConnect,
  kTls,
  kTimeout,
  kReset,
  kProtocol,
  kDigestMismatch,
  kSizeMismatch,
  kStatus5xx,
  kPolicy,
};
// What zoogate decided about a file: label `verdict`. kPassed: served as upstream sent it (no CDR
// rebuild, e.g. a checked safetensors file or a text file).
enum class VerdictLabel { kClean, kDisarmed, kBlocked, kPassed };
// Why: label `reason`, one value per cdr::FindingKind and per ErrorCode, plus kNone.
enum class ReasonLabel {
  kNone,
  kForbiddenGlobal,
  kForbiddenCall,
  kForbiddenBuild,
  kForbiddenPersistentId,
  kInvalidArgument,
  kIo,
  kParseError,
  kLimit,
  kForbidden,
  kFormat,
  kIntegrity,
  kNotFound,
  kInternal,
};
// Why the forward proxy refused a client: label `reason` of zoogate_egress_denials_total.
enum class DenialReason { kPolicy, kAddress, kAuth, kMismatch, kUpstreamTls, kParse };

// The label values, exactly as exported ("hub", "resolve", "digest_mismatch", "forbidden_global", ...).
std::string_view to_string(Listener listener);
std::string_view to_string(Route route);
std::string_view to_string(UpstreamErrorReason reason);
std::string_view to_string(VerdictLabel verdict);
std::string_view to_string(ReasonLabel reason);
std::string_view to_string(DenialReason reason);

VerdictLabel verdict_label(cdr::Verdict verdict);
ReasonLabel reason_label(cdr::FindingKind kind);
ReasonLabel reason_label(ErrorCode code);

// Holds one unit of a gauge (an open session, a request being answered, an artifact being built) for
// as long as it lives: +1 on construction, -1 on destruction. Move-only; a moved-from guard holds
// nothing.
class [[nodiscard]] InFlight {
 public:
  InFlight(InFlight&& other) noexcept;
  InFlight(const InFlight&) = delete;
  InFlight& operator=(const InFlight&) = delete;
  InFlight& operator=(InFlight&&) = delete;
  ~InFlight();

 private:
  friend class Metrics;
  explicit InFlight(prometheus::Gauge& gauge);

  prometheus::Gauge* gauge_;
};

class Metrics {
 public:
  // Registers every family and every label combination. prometheus-cpp reports a bad name or a
  // duplicate registration by throwing; that can only happen here, and comes back as a kInternal error.
  static Result<std::unique_ptr<Metrics>> create();

  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;
  ~Metrics();

  // One answered client request. The status folds into its class (2xx..5xx); a status outside
  // 200..599 counts as 5xx, since a final answer zoogate gives is never informational.
  void count_request(Listener listener, Route route, unsigned http_status, double seconds);
  void add_client_bytes(uint64_t bytes);
  void add_upstream_bytes(uint64_t bytes);

  // Upstream response headers arrived after `seconds_to_headers`; the status folds as in count_request.
  void count_upstream_response(unsigned http_status, double seconds_to_headers);
  void count_upstream_error(UpstreamErrorReason reason);
  // A whole-artifact fetch started for the pipeline.
  void count_upstream_fetch();
  // A file was answered from a recent answer of the Hub (upstream.resolution_ttl), with no request.
  void count_resolution_reused();

  void count_verdict(VerdictLabel verdict, ReasonLabel reason);
  void observe_disarm_seconds(double seconds);
  void observe_variation_seconds(double seconds);
  // A cold artifact was ready `seconds` after the last byte of its download arrived.
  void observe_ready_after_download_seconds(double seconds);

  void count_cache_hit();
  void count_cache_miss();
  void count_cache_eviction(uint64_t bytes);
  void set_cache_size(uint64_t bytes, uint64_t entries);

  InFlight session_in_flight();
  InFlight request_in_flight();
  InFlight artifact_in_progress();
  // A client answered 503 + Retry-After because its artifact was not ready in time.
  void count_client_held();

  void count_tunnel();
  void count_interception();
  void count_denial(DenialReason reason);
  void count_certificate_cache_hit();
  void count_certificate_minted();

  // Everything registered, in the Prometheus text exposition format 0.0.4.
  std::string serialize() const;

 private:
  static constexpr size_t kListeners = 3;
  static constexpr size_t kRoutes = 5;
  static constexpr size_t kStatusClasses = 4;
  static constexpr size_t kUpstreamErrorReasons = 9;
  static constexpr size_t kVerdicts = 4;
  static constexpr size_t kReasons = 14;
  static constexpr size_t kDenialReasons = 6;

  Metrics();

  std::unique_ptr<prometheus::Registry> registry_;

  std::array<std::array<std::array<prometheus::Counter*, kStatusClasses>, kRoutes>, kListeners> requests_{};
  std::array<std::array<prometheus::Histogram*, kRoutes>, kListeners> request_seconds_{};
  prometheus::Counter* client_bytes_ = nullptr;
  prometheus::Counter* upstream_bytes_ = nullptr;

  std::array<prometheus::Counter*, kStatusClasses> upstream_responses_{};
  prometheus::Histogram* upstream_seconds_ = nullptr;
  std::array<prometheus::Counter*, kUpstreamErrorReasons> upstream_errors_{};
  prometheus::Counter* upstream_fetches_ = nullptr;
  prometheus::Counter* resolutions_reused_ = nullptr;

  std::array<std::array<prometheus::Counter*, kReasons>, kVerdicts> verdicts_{};
  prometheus::Histogram* disarm_seconds_ = nullptr;
  prometheus::Histogram* ready_after_download_seconds_ = nullptr;
  prometheus::Histogram* variation_seconds_ = nullptr;

  prometheus::Counter* cache_hits_ = nullptr;
  prometheus::Counter* cache_misses_ = nullptr;
  prometheus::Counter* cache_evictions_ = nullptr;
  prometheus::Counter* cache_evicted_bytes_ = nullptr;
  prometheus::Gauge* cache_bytes_ = nullptr;
  prometheus::Gauge* cache_entries_ = nullptr;

  prometheus::Gauge* sessions_in_flight_ = nullptr;
  prometheus::Gauge* requests_in_flight_ = nullptr;
  prometheus::Gauge* artifacts_in_progress_ = nullptr;
  prometheus::Counter* clients_held_ = nullptr;

  prometheus::Counter* egress_tunnels_ = nullptr;
  prometheus::Counter* egress_interceptions_ = nullptr;
  std::array<prometheus::Counter*, kDenialReasons> egress_denials_{};
  prometheus::Counter* certificate_cache_hits_ = nullptr;
  prometheus::Counter* certificates_minted_ = nullptr;
};

}  // namespace zoogate::proxy
