// Feeds arbitrary bytes to the .npy header parser. It must refuse with an Error that carries an offset
// inside the input, or accept; whatever it accepts must get a canonical header from the writer that,
// followed by the original data, parses again to the same header. Never a crash, leak, hang or trap.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "cdr/npy.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  zoogate::MemorySource source(std::span<const uint8_t>(data, size));
  auto file = zoogate::cdr::parse_npy_header(source, zoogate::cdr::NpyLimits{});
  if (!file) {
    if (!file.error().offset || *file.error().offset > size) __builtin_trap();
    return 0;
  }
  if (file->data_offset + file->data_size != size) __builtin_trap();
  zoogate::MemorySink sink;
  if (!zoogate::cdr::write_npy_header(file->header, sink)) __builtin_trap();
  std::vector<uint8_t> rewritten = sink.take();
  if (rewritten.size() % 64 != 0) __builtin_trap();
  rewritten.insert(rewritten.end(), data + file->data_offset, data + size);
  // The canonical spelling can be longer than a compact input's, so the limit is lifted here.
  zoogate::cdr::NpyLimits lifted;
  lifted.max_header_size = 1 << 20;
  zoogate::MemorySource again_source(rewritten);
  auto again = zoogate::cdr::parse_npy_header(again_source, lifted);
  if (!again || again->header != file->header || again->data_size != file->data_size) __builtin_trap();
  return 0;
}
