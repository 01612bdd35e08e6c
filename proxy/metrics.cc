#include "proxy/metrics.h"

#include <exception>
#include <utility>
#include <vector>

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include "cdr/policy.h"
#include "cdr/sanitize.h"

#ifndef ZOOGATE_VERSION
#error "ZOOGATE_VERSION must be defined by the build (CMake's PROJECT_VERSION)"
#endif

namespace zoogate::proxy {
namespace {

// Client requests range from a /metrics scrape to streaming a multi-gigabyte file.
const prometheus::Histogram::BucketBoundaries kRequestBuckets = {
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600};
// Time to upstream response headers: bounded by the connect and read timeouts and their retries.
const prometheus::Histogram::BucketBoundaries kUpstreamHeaderBuckets = {
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120};
// Sanitizing or varying one artifact: milliseconds for a small pickle, minutes for the largest.
const prometheus::Histogram::BucketBoundaries kArtifactBuckets = {
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600};

constexpr std::array<std::string_view, 4> kStatusClassNames = {"2xx", "3xx", "4xx", "5xx"};

size_t status_class(unsigned http_status) {
  if (http_status >= 200 && http_status < 300) return 0;
  if (http_status >= 300 && http_status < 400) return 1;
  if (http_status >= 400 && http_status < 500) return 2;
  return 3;
}

template <typename Enum>
constexpr size_t index_of(Enum value) {
  return static_cast<size_t>(value);
}

template <typename Enum>
std::string label_value(size_t index) {
  return std::string(to_string(static_cast<Enum>(index)));
}

prometheus::Family<prometheus::Counter>& counter_family(prometheus::Registry& registry, const std::string& name,
                                                        const std::string& help) {
  return prometheus::BuildCounter().Name(name).Help(help).Register(registry);
}

prometheus::Counter& counter(prometheus::Registry& registry, const std::string& name, const std::string& help) {
  return counter_family(registry, name, help).Add({});
}

prometheus::Gauge& gauge(prometheus::Registry& registry, const std::string& name, const std::string& help) {
  return prometheus::BuildGauge().Name(name).Help(help).Register(registry).Add({});
}

prometheus::Histogram& histogram(prometheus::Registry& registry, const std::string& name, const std::string& help,
                                 const prometheus::Histogram::BucketBoundaries& buckets) {
  return prometheus::BuildHistogram().Name(name).Help(help).Register(registry).Add({}, buckets);
}

}  // namespace

std::string_view to_string(Listener listener) {
  switch (listener) {
    case Listener::kHub: return "hub";
    case Listener::kAdmin: return "admin";
    case Listener::kEgress: return "egress";
  }
  return "hub";
}

std::string_view to_string(Route route) {
  switch (route) {
    case Route::kResolve: return "resolve";
    case Route::kApi: return "api";
    case Route::kManifest: return "manifest";
    case Route::kAdmin: return "admin";
    case Route::kOther: return "other";
  }
  return "other";
}

std::string_view to_string(UpstreamErrorReason reason) {
  switch (reason) {
    case UpstreamErrorReason::kConnect: return "connect";
    case UpstreamErrorReason::kTls: return "tls";
    case UpstreamErrorReason::kTimeout: return "timeout";
    case UpstreamErrorReason::kReset: return "reset";
    case UpstreamErrorReason::kProtocol: return "protocol";
    case UpstreamErrorReason::kDigestMismatch: return "digest_mismatch";
    case UpstreamErrorReason::kSizeMismatch: return "size_mismatch";
    case UpstreamErrorReason::kStatus5xx: return "status_5xx";
    case UpstreamErrorReason::kPolicy: return "policy";
  }
  return "protocol";
}

std::string_view to_string(VerdictLabel verdict) {
  switch (verdict) {
    case VerdictLabel::kClean: return "clean";
    case VerdictLabel::kDisarmed: return "disarmed";
    case VerdictLabel::kBlocked: return "blocked";
    case VerdictLabel::kPassed: return "passed";
  }
  return "blocked";
}

std::string_view to_string(ReasonLabel reason) {
  switch (reason) {
    case ReasonLabel::kNone: return "none";
    case ReasonLabel::kForbiddenGlobal: return "forbidden_global";
    case ReasonLabel::kForbiddenCall: return "forbidden_call";
    case ReasonLabel::kForbiddenBuild: return "forbidden_build";
    case ReasonLabel::kForbiddenPersistentId: return "forbidden_persistent_id";
    case ReasonLabel::kInvalidArgument: return "invalid_argument";
    case ReasonLabel::kIo: return "io";
    case ReasonLabel::kParseError: return "parse_error";
    case ReasonLabel::kLimit: return "limit";
    case ReasonLabel::kForbidden: return "forbidden";
    case ReasonLabel::kFormat: return "format";
    case ReasonLabel::kIntegrity: return "integrity";
    case ReasonLabel::kNotFound: return "not_found";
    case ReasonLabel::kInternal: return "internal";
  }
  return "internal";
}

std::string_view to_string(DenialReason reason) {
  switch (reason) {
    case DenialReason::kPolicy: return "policy";
    case DenialReason::kAddress: return "address";
    case DenialReason::kAuth: return "auth";
    case DenialReason::kMismatch: return "mismatch";
    case DenialReason::kUpstreamTls: return "upstream_tls";
    case DenialReason::kParse: return "parse";
  }
  return "parse";
}

VerdictLabel verdict_label(cdr::Verdict verdict) {
  switch (verdict) {
    case cdr::Verdict::kClean: return VerdictLabel::kClean;
    case cdr::Verdict::kDisarmed: return VerdictLabel::kDisarmed;
    case cdr::Verdict::kBlocked: return VerdictLabel::kBlocked;
  }
  return VerdictLabel::kBlocked;
}

ReasonLabel reason_label(cdr::FindingKind kind) {
  switch (kind) {
    case cdr::FindingKind::kForbiddenGlobal: return ReasonLabel::kForbiddenGlobal;
    case cdr::FindingKind::kForbiddenCall: return ReasonLabel::kForbiddenCall;
    case cdr::FindingKind::kForbiddenBuild: return ReasonLabel::kForbiddenBuild;
    case cdr::FindingKind::kForbiddenPersistentId: return ReasonLabel::kForbiddenPersistentId;
  }
  return ReasonLabel::kInternal;
}

ReasonLabel reason_label(ErrorCode code) {
  switch (code) {
    case ErrorCode::kInvalidArgument: return ReasonLabel::kInvalidArgument;
    case ErrorCode::kIo: return ReasonLabel::kIo;
    case ErrorCode::kParse: return ReasonLabel::kParseError;
    case ErrorCode::kLimitExceeded: return ReasonLabel::kLimit;
    case ErrorCode::kForbidden: return ReasonLabel::kForbidden;
    case ErrorCode::kUnsupported: return ReasonLabel::kFormat;
    case ErrorCode::kIntegrity: return ReasonLabel::kIntegrity;
    case ErrorCode::kNotFound: return ReasonLabel::kNotFound;
    case ErrorCode::kInternal: return ReasonLabel::kInternal;
  }
  return ReasonLabel::kInternal;
}

InFlight::InFlight(prometheus::Gauge& gauge) : gauge_(&gauge) { gauge_->Increment(); }

InFlight::InFlight(InFlight&& other) noexcept : gauge_(std::exchange(other.gauge_, nullptr)) {}

InFlight::~InFlight() {
  if (gauge_ != nullptr) gauge_->Decrement();
}

Result<std::unique_ptr<Metrics>> Metrics::create() {
  try {
    return std::unique_ptr<Metrics>(new Metrics());
  } catch (const std::exception& e) {
    return fail(ErrorCode::kInternal, std::string("cannot register the metrics: ") + e.what());
  }
}

Metrics::Metrics() : registry_(std::make_unique<prometheus::Registry>()) {
  // The array sizes in the header follow the enums; the last enumerator of each pins its size.
  static_assert(index_of(Listener::kEgress) + 1 == kListeners);
  static_assert(index_of(Route::kOther) + 1 == kRoutes);
  static_assert(kStatusClassNames.size() == kStatusClasses);
  static_assert(index_of(UpstreamErrorReason::kPolicy) + 1 == kUpstreamErrorReasons);
  static_assert(index_of(VerdictLabel::kPassed) + 1 == kVerdicts);
  static_assert(index_of(ReasonLabel::kInternal) + 1 == kReasons);
  static_assert(index_of(DenialReason::kParse) + 1 == kDenialReasons);

  prometheus::Registry& registry = *registry_;
  prometheus::BuildGauge()
      .Name("zoogate_build_info")
      .Help("Always 1; the label says which zoogate version is running")
      .Register(registry)
      .Add({{"version", ZOOGATE_VERSION}})
      .Set(1);

  auto& requests = counter_family(registry, "zoogate_http_requests_total", "Client requests answered");
  auto& request_seconds = prometheus::BuildHistogram()
                              .Name("zoogate_http_request_duration_seconds")
                              .Help("Time from a client request's arrival to the end of its answer")
                              .Register(registry);
  for (size_t listener = 0; listener < kListeners; ++listener) {
    for (size_t route = 0; route < kRoutes; ++route) {
      const prometheus::Labels labels = {{"listener", label_value<Listener>(listener)},
                                         {"route", label_value<Route>(route)}};
      request_seconds_[listener][route] = &request_seconds.Add(labels, kRequestBuckets);
      for (size_t code = 0; code < kStatusClasses; ++code) {
        prometheus::Labels with_code = labels;
        with_code.emplace("code", std::string(kStatusClassNames[code]));
        requests_[listener][route][code] = &requests.Add(with_code);
      }
    }
  }
  client_bytes_ = &counter(registry, "zoogate_client_bytes_sent_total", "Response body bytes sent to clients");
  upstream_bytes_ =
      &counter(registry, "zoogate_upstream_bytes_received_total", "Response body bytes received from upstream");

  auto& upstream_responses =
      counter_family(registry, "zoogate_upstream_requests_total", "Upstream responses received, by status class");
  for (size_t code = 0; code < kStatusClasses; ++code) {
    upstream_responses_[code] = &upstream_responses.Add({{"code", std::string(kStatusClassNames[code])}});
  }
  upstream_seconds_ = &histogram(registry, "zoogate_upstream_request_duration_seconds",
                                 "Time from sending an upstream request to its response headers",
                                 kUpstreamHeaderBuckets);
  auto& upstream_errors =
      counter_family(registry, "zoogate_upstream_errors_total", "Upstream exchanges that failed, by reason");
  for (size_t reason = 0; reason < kUpstreamErrorReasons; ++reason) {
    upstream_errors_[reason] = &upstream_errors.Add({{"reason", label_value<UpstreamErrorReason>(reason)}});
  }
  upstream_fetches_ =
      &counter(registry, "zoogate_upstream_fetches_total", "Whole-artifact fetches started for the pipeline");
  resolutions_reused_ = &counter(registry, "zoogate_upstream_resolutions_reused_total",
                                 "Files answered from a recent answer of the Hub instead of a new request");

  auto& verdicts = counter_family(registry, "zoogate_verdicts_total", "Files decided, by verdict and reason");
  for (size_t verdict = 0; verdict < kVerdicts; ++verdict) {
    for (size_t reason = 0; reason < kReasons; ++reason) {
      verdicts_[verdict][reason] =
          &verdicts.Add({{"verdict", label_value<VerdictLabel>(verdict)}, {"reason", label_value<ReasonLabel>(reason)}});
    }
  }
  disarm_seconds_ = &histogram(registry, "zoogate_disarm_duration_seconds",
                               "Time to sanitize one artifact (parse, check, rebuild)", kArtifactBuckets);
  ready_after_download_seconds_ =
      &histogram(registry, "zoogate_ready_after_download_seconds",
                 "Time from the last byte of a cold artifact's download to its rebuilt file being ready",
                 kArtifactBuckets);
  variation_seconds_ = &histogram(registry, "zoogate_variation_duration_seconds",
                                  "Time spent planning and applying the moving-target variation of one artifact",
                                  kArtifactBuckets);

  cache_hits_ = &counter(registry, "zoogate_cache_hits_total", "Cache lookups that found a verified entry");
  cache_misses_ = &counter(registry, "zoogate_cache_misses_total", "Cache lookups that found nothing usable");
  cache_evictions_ = &counter(registry, "zoogate_cache_evictions_total", "Cache entries evicted to stay in size");
  cache_evicted_bytes_ = &counter(registry, "zoogate_cache_evicted_bytes_total", "Bytes freed by cache evictions");
  cache_bytes_ = &gauge(registry, "zoogate_cache_bytes", "Bytes the cache holds");
  cache_entries_ = &gauge(registry, "zoogate_cache_entries", "Entries the cache holds");

  sessions_in_flight_ = &gauge(registry, "zoogate_sessions_in_flight", "Open client connections");
  requests_in_flight_ = &gauge(registry, "zoogate_requests_in_flight", "Client requests being answered");
  artifacts_in_progress_ =
      &gauge(registry, "zoogate_artifacts_in_progress", "Artifacts being fetched and sanitized");
  clients_held_ = &counter(registry, "zoogate_clients_held_total",
                           "Clients answered 503 with Retry-After because their artifact was not ready");

  egress_tunnels_ = &counter(registry, "zoogate_egress_tunnels_total", "CONNECT requests relayed blindly");
  egress_interceptions_ =
      &counter(registry, "zoogate_egress_interceptions_total", "CONNECT requests whose TLS zoogate terminated");
  auto& denials = counter_family(registry, "zoogate_egress_denials_total", "Forward-proxy requests refused, by reason");
  for (size_t reason = 0; reason < kDenialReasons; ++reason) {
    egress_denials_[reason] = &denials.Add({{"reason", label_value<DenialReason>(reason)}});
  }
  certificate_cache_hits_ =
      &counter(registry, "zoogate_certificate_cache_hits_total", "Interceptions served with a cached leaf certificate");
  certificates_minted_ = &counter(registry, "zoogate_certificates_minted_total", "Leaf certificates minted");
}

Metrics::~Metrics() = default;

void Metrics::count_request(Listener listener, Route route, unsigned http_status, double seconds) {
  requests_[index_of(listener)][index_of(route)][status_class(http_status)]->Increment();
  request_seconds_[index_of(listener)][index_of(route)]->Observe(seconds);
}

void Metrics::add_client_bytes(uint64_t bytes) { client_bytes_->Increment(static_cast<double>(bytes)); }

void Metrics::add_upstream_bytes(uint64_t bytes) { upstream_bytes_->Increment(static_cast<double>(bytes)); }

void Metrics::count_upstream_response(unsigned http_status, double seconds_to_headers) {
  upstream_responses_[status_class(http_status)]->Increment();
  upstream_seconds_->Observe(seconds_to_headers);
}

void Metrics::count_upstream_error(UpstreamErrorReason reason) { upstream_errors_[index_of(reason)]->Increment(); }

void Metrics::count_upstream_fetch() { upstream_fetches_->Increment(); }
void Metrics::count_resolution_reused() { resolutions_reused_->Increment(); }

void Metrics::count_verdict(VerdictLabel verdict, ReasonLabel reason) {
  verdicts_[index_of(verdict)][index_of(reason)]->Increment();
}

void Metrics::observe_disarm_seconds(double seconds) { disarm_seconds_->Observe(seconds); }
void Metrics::observe_ready_after_download_seconds(double seconds) { ready_after_download_seconds_->Observe(seconds); }

void Metrics::observe_variation_seconds(double seconds) { variation_seconds_->Observe(seconds); }

void Metrics::count_cache_hit() { cache_hits_->Increment(); }

void Metrics::count_cache_miss() { cache_misses_->Increment(); }

void Metrics::count_cache_eviction(uint64_t bytes) {
  cache_evictions_->Increment();
  cache_evicted_bytes_->Increment(static_cast<double>(bytes));
}

void Metrics::set_cache_size(uint64_t bytes, uint64_t entries) {
  cache_bytes_->Set(static_cast<double>(bytes));
  cache_entries_->Set(static_cast<double>(entries));
}

InFlight Metrics::session_in_flight() { return InFlight(*sessions_in_flight_); }

InFlight Metrics::request_in_flight() { return InFlight(*requests_in_flight_); }

InFlight Metrics::artifact_in_progress() { return InFlight(*artifacts_in_progress_); }

void Metrics::count_client_held() { clients_held_->Increment(); }

void Metrics::count_tunnel() { egress_tunnels_->Increment(); }

void Metrics::count_interception() { egress_interceptions_->Increment(); }

void Metrics::count_denial(DenialReason reason) { egress_denials_[index_of(reason)]->Increment(); }

void Metrics::count_certificate_cache_hit() { certificate_cache_hits_->Increment(); }

void Metrics::count_certificate_minted() { certificates_minted_->Increment(); }

std::string Metrics::serialize() const { return prometheus::TextSerializer().Serialize(registry_->Collect()); }

}  // namespace zoogate::proxy
