#include "mtd/trace.h"

#include "cdr/sanitize.h"
#include "common/byte_sink.h"
#include "common/sha256.h"
#include "mtd/layout_variation.h"

namespace zoogate::mtd {

Result<std::optional<TraceMatch>> trace_variant(const ByteSource& leaked, const ByteSource& original,
                                                const TraceRequest& request) {
  if (request.first_epoch > request.last_epoch) {
    return fail(ErrorCode::kInvalidArgument, "the epoch range is empty");
  }
  auto leaked_digest = Sha256::of_range(leaked, 0, leaked.size());
  if (!leaked_digest) return tl::unexpected(leaked_digest.error());
  auto original_digest = Sha256::of_range(original, 0, original.size());
  if (!original_digest) return tl::unexpected(original_digest.error());

  for (const std::string& scope : request.scopes) {
    for (uint64_t epoch = request.first_epoch; epoch <= request.last_epoch; ++epoch) {
      VariationSettings settings{request.secret, scope, *original_digest, epoch, request.permute_weights,
                                 request.model_config};
      auto variation = make_variation(settings);
      if (!variation) return tl::unexpected(variation.error());
      cdr::SanitizeOptions options;
      options.layout = variation->get();
      options.known_input_sha256 = *original_digest;  // hashed once above, not once per candidate
      // Only the digest of each candidate is needed; its bytes are hashed and dropped.
      DiscardSink discard;
      cdr::SanitizeReport report = cdr::sanitize(original, request.policy, options, discard);
      if (report.verdict == cdr::Verdict::kBlocked) return tl::unexpected(*report.error);
      if (report.output_size == leaked.size() && report.output_sha256 == *leaked_digest) {
        return TraceMatch{scope, epoch, (*variation)->seed_id()};
      }
      if (epoch == request.last_epoch) break;  // the range may end at UINT64_MAX
    }
  }
  return std::optional<TraceMatch>{};
}

}  // namespace zoogate::mtd
