// Fuzzes the whole CDR engine, sanitize(), on arbitrary bytes. Its seeds are mostly PyTorch legacy
// files, so this is also the fuzz target of the legacy stacked-pickle reader, which lives inside the
// engine; the other seeds reach the archive, pickle, npy and safetensors routes end to end.
//
// Invariants checked beyond "no crash, no leak, no sanitizer report":
//   - a verdict other than blocked comes with output whose size and digest the report states;
//   - the engine accepts its own output and rebuilds it to the same bytes (a fixpoint).
#include <cstdint>
#include <cstdlib>

#include "cdr/sanitize.h"
#include "common/byte_sink.h"
#include "common/byte_source.h"
#include "common/sha256.h"

namespace {

zoogate::cdr::Policy fuzz_policy() {
  zoogate::cdr::Policy policy;
  // Small limits keep each run fast; they are still far above what the seeds need.
  policy.limits.max_opcodes = 200'000;
  policy.limits.max_string_length = 1 << 20;
  policy.limits.max_tensor_count = 10'000;
  return policy;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const zoogate::cdr::Policy policy = fuzz_policy();
  zoogate::MemorySource input(std::span<const uint8_t>(data, size));
  zoogate::MemorySink output;
  auto report = zoogate::cdr::sanitize(input, policy, zoogate::cdr::SanitizeOptions{}, output);
  if (report.verdict == zoogate::cdr::Verdict::kBlocked) return 0;
  if (report.output_size != output.bytes().size() ||
      report.output_sha256 != zoogate::Sha256::of(output.bytes())) {
    std::abort();
  }
  zoogate::MemorySource rebuilt(output.bytes());
  zoogate::MemorySink again;
  auto second = zoogate::cdr::sanitize(rebuilt, policy, zoogate::cdr::SanitizeOptions{}, again);
  if (second.verdict != zoogate::cdr::Verdict::kClean || again.bytes() != output.bytes()) std::abort();
  return 0;
}
