// Feeds arbitrary bytes to the safetensors header parser. It must refuse with an Error that carries an
// offset inside the input, or accept; whatever it accepts must go through the canonical writer and
// parse again to the same tensors, metadata and data bytes. Never a crash, leak, hang or trap.
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "cdr/safetensors.h"

namespace {

using zoogate::cdr::SafetensorsHeader;
using TensorContent = std::tuple<zoogate::cdr::SafetensorsDtype, std::vector<uint64_t>, std::vector<uint8_t>>;

std::map<std::string, TensorContent> contents(const SafetensorsHeader& header, const zoogate::ByteSource& source) {
  std::map<std::string, TensorContent> out;
  for (const auto& tensor : header.tensors) {
    auto bytes = source.read_vector(header.data_offset() + tensor.begin, static_cast<size_t>(tensor.end - tensor.begin));
    if (!bytes) __builtin_trap();
    out[tensor.name] = {tensor.dtype, tensor.shape, std::move(*bytes)};
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  zoogate::MemorySource source(std::span<const uint8_t>(data, size));
  const zoogate::cdr::SafetensorsLimits limits;
  auto header = zoogate::cdr::parse_safetensors_header(source, limits);
  if (!header) {
    if (!header.error().offset || *header.error().offset > size) __builtin_trap();
    return 0;
  }
  std::vector<zoogate::cdr::SafetensorsTensorSpec> specs;
  for (const auto& tensor : header->tensors) {
    specs.push_back({tensor.name, tensor.dtype, tensor.shape, &source, header->data_offset() + tensor.begin});
  }
  zoogate::MemorySink sink;
  if (!zoogate::cdr::write_safetensors(specs, header->metadata, sink)) __builtin_trap();
  zoogate::MemorySource rewritten(sink.bytes());
  auto again = zoogate::cdr::parse_safetensors_header(rewritten, limits);
  if (!again || again->metadata != header->metadata || again->header_size % 8 != 0) __builtin_trap();
  if (contents(*again, rewritten) != contents(*header, source)) __builtin_trap();
  return 0;
}
