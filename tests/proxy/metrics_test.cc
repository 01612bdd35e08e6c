#include "proxy/metrics.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "cdr/policy.h"
#include "cdr/sanitize.h"

namespace zoogate::proxy {
namespace {

using Labels = std::map<std::string, std::string>;

struct Sample {
  std::string name;
  Labels labels;
  double value = 0;
};

struct Exposition {
  std::map<std::string, std::string> types;  // family name -> "counter", "gauge", "histogram"
  std::vector<Sample> samples;
};

// A strict reader of the text format 0.0.4 lines prometheus-cpp writes: "# TYPE name type",
// "# HELP ...", and "name{label="value",...} number".
Exposition parse_exposition(const std::string& text) {
  Exposition exposition;
  std::istringstream lines(text);
  std::string line;
  static const std::regex kType(R"(# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram))");
  static const std::regex kSample(R"(([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+))");
  static const std::regex kLabel(R"re(([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)",?)re");
  while (std::getline(lines, line)) {
    if (line.empty() || line.starts_with("# HELP ")) continue;
    std::smatch match;
    if (line.starts_with("#")) {
      EXPECT_TRUE(std::regex_match(line, match, kType)) << line;
      exposition.types[match[1]] = match[2];
      continue;
    }
    if (!std::regex_match(line, match, kSample)) {
      ADD_FAILURE() << "not a sample line: " << line;
      continue;
    }
    Sample sample;
    sample.name = match[1];
    sample.value = std::stod(match[3]);
    const std::string labels = match[2];
    size_t consumed = 0;
    for (auto it = std::sregex_iterator(labels.begin(), labels.end(), kLabel); it != std::sregex_iterator(); ++it) {
      EXPECT_EQ(static_cast<size_t>(it->position()), consumed) << "stray text in labels: " << line;
      consumed = static_cast<size_t>(it->position() + it->length());
      sample.labels[(*it)[1]] = (*it)[2];
    }
    EXPECT_EQ(consumed, labels.size()) << "stray text in labels: " << line;
    exposition.samples.push_back(std::move(sample));
  }
  return exposition;
}

std::unique_ptr<Metrics> make_metrics() {
  auto metrics = Metrics::create();
  EXPECT_TRUE(metrics) << metrics.error().describe();
  return std::move(*metrics);
}

// The value of the one sample with exactly this name and these labels.
std::optional<double> value_of(const Metrics& metrics, const std::string& name, const Labels& labels = {}) {
  std::optional<double> found;
  for (const Sample& sample : parse_exposition(metrics.serialize()).samples) {
    if (sample.name != name || sample.labels != labels) continue;
    EXPECT_FALSE(found) << "two samples " << name;
    found = sample.value;
  }
  return found;
}

const std::set<std::string> kListeners = {"hub", "admin", "egress"};
const std::set<std::string> kRoutes = {"resolve", "api", "manifest", "admin", "other"};
const std::set<std::string> kCodes = {"2xx", "3xx", "4xx", "5xx"};
const std::set<std::string> kUpstreamErrorReasons = {"connect",         "tls",           "timeout",
                                                     "reset",           "protocol",      "digest_mismatch",
                                                     "size_mismatch",   "status_5xx",    "policy"};
const std::set<std::string> kVerdicts = {"clean", "disarmed", "blocked", "passed"};
// cdr::FindingKind and ErrorCode names, plus "none".
const std::set<std::string> kVerdictReasons = {
    "none",  "forbidden_global", "forbidden_call", "forbidden_build", "forbidden_persistent_id",
    "invalid_argument", "io", "parse_error", "limit", "forbidden", "format", "integrity", "not_found", "internal"};
const std::set<std::string> kDenialReasons = {"policy", "address", "auth", "mismatch", "upstream_tls", "parse"};

struct SpecFamily {
  std::string type;
  std::map<std::string, std::set<std::string>> labels;  // label name -> every allowed value
};

// proxy-spec.md, "Metrics": the contract dashboards are written against.
const std::map<std::string, SpecFamily>& spec_families() {
  static const std::map<std::string, SpecFamily> families = {
      {"zoogate_build_info", {"gauge", {{"version", {}}}}},
      {"zoogate_http_requests_total", {"counter", {{"listener", kListeners}, {"route", kRoutes}, {"code", kCodes}}}},
      {"zoogate_http_request_duration_seconds", {"histogram", {{"listener", kListeners}, {"route", kRoutes}}}},
      {"zoogate_client_bytes_sent_total", {"counter", {}}},
      {"zoogate_upstream_bytes_received_total", {"counter", {}}},
      {"zoogate_upstream_requests_total", {"counter", {{"code", kCodes}}}},
      {"zoogate_upstream_request_duration_seconds", {"histogram", {}}},
      {"zoogate_upstream_errors_total", {"counter", {{"reason", kUpstreamErrorReasons}}}},
      {"zoogate_upstream_fetches_total", {"counter", {}}},
      {"zoogate_upstream_resolutions_reused_total", {"counter", {}}},
      {"zoogate_verdicts_total", {"counter", {{"verdict", kVerdicts}, {"reason", kVerdictReasons}}}},
      {"zoogate_disarm_duration_seconds", {"histogram", {}}},
      {"zoogate_ready_after_download_seconds", {"histogram", {}}},
      {"zoogate_variation_duration_seconds", {"histogram", {}}},
      {"zoogate_cache_hits_total", {"counter", {}}},
      {"zoogate_cache_misses_total", {"counter", {}}},
      {"zoogate_cache_evictions_total", {"counter", {}}},
      {"zoogate_cache_evicted_bytes_total", {"counter", {}}},
      {"zoogate_cache_bytes", {"gauge", {}}},
      {"zoogate_cache_entries", {"gauge", {}}},
      {"zoogate_sessions_in_flight", {"gauge", {}}},
      {"zoogate_requests_in_flight", {"gauge", {}}},
      {"zoogate_artifacts_in_progress", {"gauge", {}}},
      {"zoogate_clients_held_total", {"counter", {}}},
      {"zoogate_egress_tunnels_total", {"counter", {}}},
      {"zoogate_egress_interceptions_total", {"counter", {}}},
      {"zoogate_egress_denials_total", {"counter", {{"reason", kDenialReasons}}}},
      {"zoogate_certificate_cache_hits_total", {"counter", {}}},
      {"zoogate_certificates_minted_total", {"counter", {}}},
  };
  return families;
}

// The family a sample belongs to: histogram samples carry a _bucket, _sum or _count suffix.
std::string family_of(const Sample& sample, const Exposition& exposition) {
  if (exposition.types.contains(sample.name)) return sample.name;
  for (const char* suffix : {"_bucket", "_sum", "_count"}) {
    if (sample.name.ends_with(suffix)) return sample.name.substr(0, sample.name.size() - std::strlen(suffix));
  }
  return sample.name;
}

TEST(Metrics, ExportsExactlyTheSpecFamiliesFromTheFirstScrape) {
  const auto metrics = make_metrics();
  const Exposition exposition = parse_exposition(metrics->serialize());
  std::map<std::string, std::string> expected;
  for (const auto& [name, family] : spec_families()) expected[name] = family.type;
  EXPECT_EQ(exposition.types, expected);
  for (const auto& [name, type] : exposition.types) {
    if (name != "zoogate_build_info") {
      EXPECT_EQ(name.ends_with("_total"), type == "counter") << name;
    }
  }
  // Every family has samples before anything happened, so dashboards and alerts see every name.
  std::set<std::string> with_samples;
  for (const Sample& sample : exposition.samples) with_samples.insert(family_of(sample, exposition));
  for (const auto& [name, family] : spec_families()) EXPECT_TRUE(with_samples.contains(name)) << name;
}

TEST(Metrics, CreatesEveryLabelCombinationAtZeroAndNoOther) {
  const auto metrics = make_metrics();
  const Exposition exposition = parse_exposition(metrics->serialize());
  std::map<std::string, std::set<Labels>> seen;
  for (const Sample& sample : exposition.samples) {
    const std::string family = family_of(sample, exposition);
    Labels labels = sample.labels;
    labels.erase("le");  // a histogram's bucket bound, not a label of the family
    seen[family].insert(labels);
    if (family != "zoogate_build_info") {
      EXPECT_EQ(sample.value, 0) << sample.name;
    }
  }
  for (const auto& [name, family] : spec_families()) {
    size_t combinations = 1;
    for (const auto& [label, values] : family.labels) combinations *= std::max<size_t>(values.size(), 1);
    EXPECT_EQ(seen[name].size(), combinations) << name;
  }
}

TEST(Metrics, NoLabelValueIsOutsideItsBoundedSet) {
  const auto metrics = make_metrics();
  // Exercise every accessor, with odd statuses, before looking.
  metrics->count_request(Listener::kEgress, Route::kOther, 101, 0.5);
  metrics->count_request(Listener::kHub, Route::kResolve, 0, 0.5);
  metrics->count_request(Listener::kHub, Route::kResolve, 999, 0.5);
  metrics->count_upstream_response(100, 0.1);
  metrics->count_upstream_error(UpstreamErrorReason::kStatus5xx);
  metrics->count_verdict(VerdictLabel::kBlocked, reason_label(ErrorCode::kUnsupported));
  metrics->count_denial(DenialReason::kUpstreamTls);
  const Exposition exposition = parse_exposition(metrics->serialize());
  for (const Sample& sample : exposition.samples) {
    const std::string family = family_of(sample, exposition);
    ASSERT_TRUE(spec_families().contains(family)) << sample.name;
    const SpecFamily& spec = spec_families().at(family);
    for (const auto& [label, value] : sample.labels) {
      if (label == "le" && spec.type == "histogram") continue;
      ASSERT_TRUE(spec.labels.contains(label)) << sample.name << " has label " << label;
      if (label == "version") {
        EXPECT_TRUE(std::regex_match(value, std::regex(R"(\d+\.\d+\.\d+)"))) << value;
        continue;
      }
      EXPECT_TRUE(spec.labels.at(label).contains(value)) << sample.name << " " << label << "=" << value;
    }
  }
}

TEST(Metrics, BuildInfoIsOne) {
  const auto metrics = make_metrics();
  const Exposition exposition = parse_exposition(metrics->serialize());
  size_t found = 0;
  for (const Sample& sample : exposition.samples) {
    if (sample.name != "zoogate_build_info") continue;
    ++found;
    EXPECT_EQ(sample.value, 1);
    EXPECT_EQ(sample.labels.size(), 1u);
  }
  EXPECT_EQ(found, 1u);
}

TEST(Metrics, CountsRequestsByListenerRouteAndStatusClass) {
  const auto metrics = make_metrics();
  metrics->count_request(Listener::kHub, Route::kResolve, 200, 0.02);
  metrics->count_request(Listener::kHub, Route::kResolve, 206, 0.02);
  metrics->count_request(Listener::kHub, Route::kResolve, 403, 0.002);
  metrics->count_request(Listener::kHub, Route::kApi, 302, 1.5);
  metrics->count_request(Listener::kAdmin, Route::kAdmin, 503, 0.0005);
  metrics->count_request(Listener::kHub, Route::kOther, 0, 0.0005);  // no valid status: a server error
  const std::string name = "zoogate_http_requests_total";
  EXPECT_EQ(value_of(*metrics, name, {{"listener", "hub"}, {"route", "resolve"}, {"code", "2xx"}}), 2);
  EXPECT_EQ(value_of(*metrics, name, {{"listener", "hub"}, {"route", "resolve"}, {"code", "4xx"}}), 1);
  EXPECT_EQ(value_of(*metrics, name, {{"listener", "hub"}, {"route", "resolve"}, {"code", "5xx"}}), 0);
  EXPECT_EQ(value_of(*metrics, name, {{"listener", "hub"}, {"route", "api"}, {"code", "3xx"}}), 1);
  EXPECT_EQ(value_of(*metrics, name, {{"listener", "admin"}, {"route", "admin"}, {"code", "5xx"}}), 1);
  EXPECT_EQ(value_of(*metrics, name, {{"listener", "hub"}, {"route", "other"}, {"code", "5xx"}}), 1);

  const std::string duration = "zoogate_http_request_duration_seconds";
  const Labels resolve = {{"listener", "hub"}, {"route", "resolve"}};
  EXPECT_EQ(value_of(*metrics, duration + "_count", resolve), 3);
  EXPECT_NEAR(*value_of(*metrics, duration + "_sum", resolve), 0.042, 1e-9);
  auto bucket = [&](const Labels& labels, const std::string& le) {
    Labels with_le = labels;
    with_le["le"] = le;
    return value_of(*metrics, duration + "_bucket", with_le);
  };
  EXPECT_EQ(bucket(resolve, "0.001"), 0);
  EXPECT_EQ(bucket(resolve, "0.0025"), 1);
  EXPECT_EQ(bucket(resolve, "0.025"), 3);
  EXPECT_EQ(bucket(resolve, "+Inf"), 3);
  // Buckets reach from a millisecond to ten minutes.
  EXPECT_EQ(bucket(resolve, "600"), 3);
  EXPECT_EQ(bucket({{"listener", "admin"}, {"route", "admin"}}, "0.001"), 1);
}

TEST(Metrics, CountsUpstreamTraffic) {
  const auto metrics = make_metrics();
  metrics->add_client_bytes(1000);
  metrics->add_client_bytes(24);
  metrics->add_upstream_bytes(4096);
  metrics->count_upstream_response(200, 0.3);
  metrics->count_upstream_response(302, 0.1);
  metrics->count_upstream_response(502, 12);
  metrics->count_upstream_error(UpstreamErrorReason::kTimeout);
  metrics->count_upstream_error(UpstreamErrorReason::kDigestMismatch);
  metrics->count_upstream_error(UpstreamErrorReason::kDigestMismatch);
  metrics->count_upstream_fetch();
  metrics->count_resolution_reused();
  metrics->count_resolution_reused();
  EXPECT_EQ(value_of(*metrics, "zoogate_client_bytes_sent_total"), 1024);
  EXPECT_EQ(value_of(*metrics, "zoogate_upstream_bytes_received_total"), 4096);
  EXPECT_EQ(value_of(*metrics, "zoogate_upstream_requests_total", {{"code", "2xx"}}), 1);
  EXPECT_EQ(value_of(*metrics, "zoogate_upstream_requests_total", {{"code", "3xx"}}), 1);
  EXPECT_EQ(value_of(*metrics, "zoogate_upstream_requests_total", {{"code", "5xx"}}), 1);
  EXPECT_EQ(value_of(*metrics, "zoogate_upstream_request_duration_seconds_count"), 3);
  EXPECT_EQ(value_of(*metrics, "zoogate_upstream_request_duration_seconds_bucket", {{"le", "0.25"}}), 1);
  EXPECT_EQ(value_of(*metrics, "zoogate_upstream_request_duration_seconds_bucket", {{"le", "10"}}), 2);
  EXPECT_EQ(value_of(*metrics, "zoogate_upstream_request_duration_seconds_bucket", {{"le", "30"}}), 3);
  EXPECT_EQ(value_of(*metrics, "zoogate_upstream_errors_total", {{"reason", "timeout"}}), 1);
  EXPECT_EQ(value_of(*metrics, "zoogate_upstream_errors_total", {{"reason", "digest_mismatch"}}), 2);
  EXPECT_EQ(value_of(*metrics, "zoogate_upstream_errors_total", {{"reason", "connect"}}), 0);
  EXPECT_EQ(value_of(*metrics, "zoogate_upstream_fetches_total"), 1);
  EXPECT_EQ(value_of(*metrics, "zoogate_upstream_resolutions_reused_total"), 2);
}

TEST(Metrics, MapsFindingsAndErrorsToBoundedReasons) {
  EXPECT_EQ(to_string(reason_label(cdr::FindingKind::kForbiddenGlobal)), "forbidden_global");
  EXPECT_EQ(to_string(reason_label(cdr::FindingKind::kForbiddenCall)), "forbidden_call");
  EXPECT_EQ(to_string(reason_label(cdr::FindingKind::kForbiddenBuild)), "forbidden_build");
  EXPECT_EQ(to_string(reason_label(cdr::FindingKind::kForbiddenPersistentId)), "forbidden_persistent_id");
  EXPECT_EQ(to_string(reason_label(ErrorCode::kParse)), "parse_error");
  EXPECT_EQ(to_string(reason_label(ErrorCode::kLimitExceeded)), "limit");
  EXPECT_EQ(to_string(reason_label(ErrorCode::kUnsupported)), "format");
  EXPECT_EQ(to_string(reason_label(ErrorCode::kForbidden)), "forbidden");
  EXPECT_EQ(to_string(reason_label(ErrorCode::kIntegrity)), "integrity");
  EXPECT_EQ(to_string(reason_label(ErrorCode::kIo)), "io");
  EXPECT_EQ(to_string(reason_label(ErrorCode::kInternal)), "internal");
  EXPECT_EQ(verdict_label(cdr::Verdict::kClean), VerdictLabel::kClean);
  EXPECT_EQ(verdict_label(cdr::Verdict::kDisarmed), VerdictLabel::kDisarmed);
  EXPECT_EQ(verdict_label(cdr::Verdict::kBlocked), VerdictLabel::kBlocked);
}

TEST(Metrics, CountsVerdictsAndTimesTheirWork) {
  const auto metrics = make_metrics();
  metrics->count_verdict(VerdictLabel::kClean, ReasonLabel::kNone);
  metrics->count_verdict(VerdictLabel::kDisarmed, reason_label(cdr::FindingKind::kForbiddenGlobal));
  metrics->count_verdict(VerdictLabel::kBlocked, reason_label(ErrorCode::kParse));
  metrics->count_verdict(VerdictLabel::kBlocked, reason_label(ErrorCode::kParse));
  metrics->count_verdict(VerdictLabel::kPassed, ReasonLabel::kNone);
  metrics->observe_disarm_seconds(0.3);
  metrics->observe_disarm_seconds(400);
  metrics->observe_variation_seconds(0.004);
  metrics->observe_ready_after_download_seconds(0.7);
  const std::string name = "zoogate_verdicts_total";
  EXPECT_EQ(value_of(*metrics, name, {{"verdict", "clean"}, {"reason", "none"}}), 1);
  EXPECT_EQ(value_of(*metrics, name, {{"verdict", "disarmed"}, {"reason", "forbidden_global"}}), 1);
  EXPECT_EQ(value_of(*metrics, name, {{"verdict", "blocked"}, {"reason", "parse_error"}}), 2);
  EXPECT_EQ(value_of(*metrics, name, {{"verdict", "passed"}, {"reason", "none"}}), 1);
  EXPECT_EQ(value_of(*metrics, name, {{"verdict", "blocked"}, {"reason", "limit"}}), 0);
  EXPECT_EQ(value_of(*metrics, "zoogate_disarm_duration_seconds_bucket", {{"le", "0.25"}}), 0);
  EXPECT_EQ(value_of(*metrics, "zoogate_disarm_duration_seconds_bucket", {{"le", "0.5"}}), 1);
  EXPECT_EQ(value_of(*metrics, "zoogate_disarm_duration_seconds_bucket", {{"le", "300"}}), 1);
  EXPECT_EQ(value_of(*metrics, "zoogate_disarm_duration_seconds_bucket", {{"le", "600"}}), 2);
  EXPECT_NEAR(*value_of(*metrics, "zoogate_disarm_duration_seconds_sum"), 400.3, 1e-9);
  EXPECT_EQ(value_of(*metrics, "zoogate_variation_duration_seconds_bucket", {{"le", "0.005"}}), 1);
  EXPECT_EQ(value_of(*metrics, "zoogate_variation_duration_seconds_count"), 1);
  EXPECT_EQ(value_of(*metrics, "zoogate_ready_after_download_seconds_bucket", {{"le", "0.5"}}), 0);
  EXPECT_EQ(value_of(*metrics, "zoogate_ready_after_download_seconds_bucket", {{"le", "1"}}), 1);
  EXPECT_EQ(value_of(*metrics, "zoogate_ready_after_download_seconds_count"), 1);
}

TEST(Metrics, TracksTheCache) {
  const auto metrics = make_metrics();
  metrics->count_cache_hit();
  metrics->count_cache_hit();
  metrics->count_cache_miss();
  metrics->count_cache_eviction(1000);
  metrics->count_cache_eviction(500);
  metrics->set_cache_size(7 << 20, 3);
  metrics->set_cache_size(5 << 20, 2);
  EXPECT_EQ(value_of(*metrics, "zoogate_cache_hits_total"), 2);
  EXPECT_EQ(value_of(*metrics, "zoogate_cache_misses_total"), 1);
  EXPECT_EQ(value_of(*metrics, "zoogate_cache_evictions_total"), 2);
  EXPECT_EQ(value_of(*metrics, "zoogate_cache_evicted_bytes_total"), 1500);
  EXPECT_EQ(value_of(*metrics, "zoogate_cache_bytes"), 5 << 20);
  EXPECT_EQ(value_of(*metrics, "zoogate_cache_entries"), 2);
}

TEST(Metrics, InFlightGuardsHoldTheGaugeForTheirLifetime) {
  const auto metrics = make_metrics();
  {
    auto session = metrics->session_in_flight();
    auto first = metrics->request_in_flight();
    auto second = metrics->request_in_flight();
    auto artifact = metrics->artifact_in_progress();
    EXPECT_EQ(value_of(*metrics, "zoogate_sessions_in_flight"), 1);
    EXPECT_EQ(value_of(*metrics, "zoogate_requests_in_flight"), 2);
    EXPECT_EQ(value_of(*metrics, "zoogate_artifacts_in_progress"), 1);
    {
      const InFlight moved(std::move(second));  // a move hands the unit on without counting it twice
      EXPECT_EQ(value_of(*metrics, "zoogate_requests_in_flight"), 2);
    }
    EXPECT_EQ(value_of(*metrics, "zoogate_requests_in_flight"), 1);
  }
  EXPECT_EQ(value_of(*metrics, "zoogate_sessions_in_flight"), 0);
  EXPECT_EQ(value_of(*metrics, "zoogate_requests_in_flight"), 0);
  EXPECT_EQ(value_of(*metrics, "zoogate_artifacts_in_progress"), 0);
  metrics->count_client_held();
  EXPECT_EQ(value_of(*metrics, "zoogate_clients_held_total"), 1);
}

TEST(Metrics, CountsEgress) {
  const auto metrics = make_metrics();
  metrics->count_tunnel();
  metrics->count_interception();
  metrics->count_interception();
  metrics->count_denial(DenialReason::kAddress);
  metrics->count_certificate_cache_hit();
  metrics->count_certificate_minted();
  EXPECT_EQ(value_of(*metrics, "zoogate_egress_tunnels_total"), 1);
  EXPECT_EQ(value_of(*metrics, "zoogate_egress_interceptions_total"), 2);
  EXPECT_EQ(value_of(*metrics, "zoogate_egress_denials_total", {{"reason", "address"}}), 1);
  EXPECT_EQ(value_of(*metrics, "zoogate_egress_denials_total", {{"reason", "policy"}}), 0);
  EXPECT_EQ(value_of(*metrics, "zoogate_certificate_cache_hits_total"), 1);
  EXPECT_EQ(value_of(*metrics, "zoogate_certificates_minted_total"), 1);
}

TEST(Metrics, CountsExactlyUnderConcurrentUpdatesAndScrapes) {
  const auto metrics = make_metrics();
  constexpr int kThreads = 8;
  constexpr int kRounds = 2000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < kRounds; ++i) {
        const auto request = metrics->request_in_flight();
        metrics->count_request(Listener::kHub, Route::kResolve, 200, 0.01);
        metrics->add_client_bytes(3);
        if (i % 500 == 0) {
          EXPECT_FALSE(metrics->serialize().empty());
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(value_of(*metrics, "zoogate_http_requests_total",
                     {{"listener", "hub"}, {"route", "resolve"}, {"code", "2xx"}}),
            kThreads * kRounds);
  EXPECT_EQ(value_of(*metrics, "zoogate_http_request_duration_seconds_count", {{"listener", "hub"}, {"route", "resolve"}}),
            kThreads * kRounds);
  EXPECT_EQ(value_of(*metrics, "zoogate_client_bytes_sent_total"), 3 * kThreads * kRounds);
  EXPECT_EQ(value_of(*metrics, "zoogate_requests_in_flight"), 0);
}

}  // namespace
}  // namespace zoogate::proxy
