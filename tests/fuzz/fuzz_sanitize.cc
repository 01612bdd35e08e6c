// Fuzzes the whole CDR engine, sanitize(), on arbitrary bytes. Its seeds include PyTorch legacy files,
// so this is also the fuzz target of the legacy stacked-pickle reader, which lives inside the engine;
// PyTorch archives as torch.save writes them, with data descriptors after a byteorder record, and with
// sizes in the local headers (for the walk that follows an arriving archive); and a pickle and an npy.
//
// Invariants checked beyond "no crash, no leak, no sanitizer report":
//   - a verdict other than blocked comes with output whose size and digest the report states;
//   - the engine accepts its own output and rebuilds it to the same bytes (a fixpoint);
//   - run as on a download still arriving (input_arrives_in_order: a PyTorch archive is followed by its
//     local headers before the central directory confirms them), it gives the same verdict and, when
//     it rebuilds the file, the same bytes.
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
  zoogate::cdr::SanitizeOptions arriving_options;
  arriving_options.input_arrives_in_order = true;
  zoogate::MemorySink arriving_output;
  auto arriving = zoogate::cdr::sanitize(input, policy, arriving_options, arriving_output);
  if (arriving.verdict != report.verdict) std::abort();
  if (report.verdict == zoogate::cdr::Verdict::kBlocked) return 0;
  if (arriving_output.bytes() != output.bytes() || arriving.output_sha256 != report.output_sha256) std::abort();
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
