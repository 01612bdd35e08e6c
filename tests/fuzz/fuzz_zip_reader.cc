// Feeds arbitrary bytes to the strict ZIP reader and streams every entry it accepts. A refusal must be
// an Error whose offset lies inside the input. An accepted archive must describe entries that lie inside
// the input, in order, each found by name; whatever streams completely is rewritten with ZipWriter and
// must read back with the same names, sizes and CRCs. Never a crash, leak, hang or trap.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "cdr/zip_reader.h"
#include "cdr/zip_writer.h"
#include "common/byte_sink.h"
#include "common/byte_source.h"

namespace {

using zoogate::Error;

void check_offset(const Error& error, size_t size) {
  if (!error.offset || *error.offset > size) __builtin_trap();
}

// Small limits keep one run's output bounded (at most max_compression_ratio x the input).
zoogate::cdr::ZipLimits fuzz_limits() {
  zoogate::cdr::ZipLimits limits;
  limits.max_entries = 1000;
  limits.max_entry_size = 1 << 20;
  limits.max_compression_ratio = 100;
  return limits;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace zoogate;
  MemorySource source(std::span<const uint8_t>(data, size));
  auto directory = cdr::read_zip_directory(source, fuzz_limits());
  if (!directory) {
    check_offset(directory.error(), size);
    return 0;
  }
  uint64_t previous_end = 0;
  for (const cdr::ZipEntry& entry : directory->entries()) {
    if (entry.local_header_offset < previous_end || entry.data_offset + entry.compressed_size > size) __builtin_trap();
    previous_end = entry.data_offset + entry.compressed_size;
    if (directory->find(entry.name) != &entry) __builtin_trap();
  }

  MemorySink rewritten;
  cdr::ZipWriter writer(rewritten);
  std::vector<uint8_t> buffer(64 << 10);
  for (const cdr::ZipEntry& entry : directory->entries()) {
    auto stream = cdr::ZipEntryStream::open(source, entry);
    if (!stream) __builtin_trap();  // entries from the reader always open
    if (!writer.begin_entry(entry.name, entry.size)) __builtin_trap();
    while (true) {
      auto n = stream->read(buffer);
      if (!n) {
        check_offset(n.error(), size);
        return 0;
      }
      if (*n == 0) break;
      if (!writer.write(std::span<const uint8_t>(buffer.data(), *n))) __builtin_trap();
    }
    if (!stream->finished() || stream->produced() != entry.size || !writer.end_entry()) __builtin_trap();
  }
  if (!writer.finish()) __builtin_trap();

  MemorySource again_source(rewritten.bytes());
  auto again = cdr::read_zip_directory(again_source, fuzz_limits());
  if (!again || again->entries().size() != directory->entries().size()) __builtin_trap();
  for (size_t i = 0; i < again->entries().size(); ++i) {
    const cdr::ZipEntry& original = directory->entries()[i];
    const cdr::ZipEntry& copy = again->entries()[i];
    if (copy.name != original.name || copy.size != original.size || copy.crc32 != original.crc32 ||
        copy.data_offset % 64 != 0) {
      __builtin_trap();
    }
  }
  return 0;
}
