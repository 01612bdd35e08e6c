// Leak attribution: which client (scope) and epoch a served variant was made for.
//
// Every variant is a deterministic function of the original file, the deployment secret, the scope and
// the epoch, so a leaked copy is attributed by rebuilding the original for each candidate and comparing
// the SHA-256 of the result with the leaked file's. Pure; safe to run concurrently.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cdr/policy.h"
#include "common/byte_source.h"
#include "common/error.h"

namespace zoogate::mtd {

struct TraceRequest {
  std::vector<uint8_t> secret;
  std::vector<std::string> scopes;   // candidate client identities
  uint64_t first_epoch = 0;          // candidate epochs, inclusive
  uint64_t last_epoch = 0;
  bool permute_weights = false;      // as the variants were served
  std::optional<nlohmann::json> model_config;
  cdr::Policy policy;                // the policy the variants were served under
};

struct TraceMatch {
  std::string scope;
  uint64_t epoch = 0;
  std::string seed_id;
};

// nullopt when no candidate reproduces the leaked bytes (an unrelated or modified file). Fails when
// the original itself does not sanitize, or on a read error.
Result<std::optional<TraceMatch>> trace_variant(const ByteSource& leaked, const ByteSource& original,
                                                const TraceRequest& request);

}  // namespace zoogate::mtd
