// What the manifest, DSSE and verification tests share: PyTorch archives built from value trees, the
// engine run over them, and keys.
#pragma once

#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "cdr/pickle_writer.h"
#include "cdr/sanitize.h"
#include "cdr/zip_reader.h"
#include "cdr/zip_writer.h"
#include "common/byte_sink.h"
#include "mtd/manifest.h"
#include "mtd/signing.h"
#include "tests/common/temporary_folder.h"
#include "tests/mtd/state_dict_builder.h"

namespace zoogate::mtd::testing {

using Bytes = std::vector<uint8_t>;
using zoogate::testing::TemporaryFolder;

// A torch.save-like archive of `tree` under folder "upstream": each storage's bytes are drawn from the
// SHA-256 of its key, so distinct storages differ.
inline Bytes archive_of(const cdr::ValueTree& tree) {
  MemorySink pickle;
  EXPECT_TRUE(cdr::write_pickle(tree, cdr::PickleWriteOptions{}, pickle));
  MemorySink sink;
  cdr::ZipWriter zip(sink);
  EXPECT_TRUE(zip.begin_entry("upstream/data.pkl", pickle.bytes().size()));
  EXPECT_TRUE(zip.write(pickle.bytes()));
  EXPECT_TRUE(zip.end_entry());
  for (const auto& storage : StateDictBuilder::storages_of(tree)) {
    const auto& ref = std::get<cdr::StorageRefValue>(tree.at(storage.node));
    const Sha256::Digest pattern = Sha256::of(ref.key);
    Bytes data(storage.size);
    for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(pattern[i % pattern.size()] + i / 32);
    EXPECT_TRUE(zip.begin_entry("upstream/data/" + ref.key, data.size()));
    EXPECT_TRUE(zip.write(data));
    EXPECT_TRUE(zip.end_entry());
  }
  EXPECT_TRUE(zip.finish());
  return sink.take();
}

struct Sanitized {
  cdr::SanitizeReport report;
  Bytes output;
};

inline Sanitized sanitize_bytes(const Bytes& input, const cdr::SanitizeOptions& options = {}) {
  MemorySource source(input);
  MemorySink sink;
  Sanitized result;
  result.report = cdr::sanitize(source, cdr::Policy{}, options, sink);
  EXPECT_NE(result.report.verdict, cdr::Verdict::kBlocked) << result.report.error->describe();
  result.output = sink.take();
  return result;
}

inline FileManifest sanitized_file_manifest(const Sanitized& sanitized, std::string path = ".") {
  MemorySource written(sanitized.output);
  auto facts = facts_from_sanitize(written, sanitized.report, cdr::Policy{});
  EXPECT_TRUE(facts) << facts.error().describe();
  return make_file_manifest(std::move(path), std::move(*facts), std::nullopt,
                            provenance_of(sanitized.report, cdr::Policy{}, sanitized.report.input_sha256, "seed-1"));
}

// The archive entry `name` of a written file (as read back by the strict reader).
inline cdr::ZipEntry entry_named(const Bytes& archive, const std::string& name) {
  MemorySource source(archive);
  auto directory = cdr::read_zip_directory(source, cdr::ZipLimits{});
  EXPECT_TRUE(directory) << directory.error().describe();
  const cdr::ZipEntry* entry = directory ? directory->find(name) : nullptr;
  EXPECT_NE(entry, nullptr) << name;
  return entry ? *entry : cdr::ZipEntry{};
}


inline PrivateKey new_key() {
  auto key = PrivateKey::generate();
  EXPECT_TRUE(key) << key.error().describe();
  return *key;
}

}  // namespace zoogate::mtd::testing
