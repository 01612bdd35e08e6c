// Feeds arbitrary bytes to content identification. It must always answer (a MemorySource never fails to
// read), with a reason, and a pickle protocol exactly for the pickle kinds. Never a crash, leak or hang.
#include <cstddef>
#include <cstdint>

#include "cdr/detect.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  zoogate::MemorySource source(std::span<const uint8_t>(data, size));
  auto detection = zoogate::cdr::identify_content(source);
  if (!detection || detection->reason.empty()) __builtin_trap();
  using zoogate::cdr::ContentKind;
  const bool pickle_kind = detection->kind == ContentKind::kPickle || detection->kind == ContentKind::kTorchLegacy;
  if (pickle_kind != detection->pickle_protocol.has_value()) __builtin_trap();
  if (detection->pickle_protocol && *detection->pickle_protocol > 5) __builtin_trap();
  return 0;
}
