// Test helper for test_variation.py: sanitizes one file with MTD variation and prints the report.
//
//   mtd_variant_tool INPUT OUTPUT SECRET_FILE SCOPE EPOCH WEIGHTS(0|1) [CONFIG_JSON]
//
// Exit 0 when written, 3 when blocked, 1 on a usage or I/O error. (The zoogate CLI offers the same
// through `zoogate sanitize --mtd-*`; this helper keeps the MTD tests independent of it.)
#include <cstdio>
#include <cstdlib>
#include <string>

#include <nlohmann/json.hpp>

#include "cdr/report.h"
#include "cdr/sanitize.h"
#include "common/byte_sink.h"
#include "common/byte_source.h"
#include "common/sha256.h"
#include "mtd/layout_variation.h"

namespace {

int fail_with(const zoogate::Error& error) {
  std::fprintf(stderr, "mtd_variant_tool: %s\n", error.describe().c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace zoogate;
  if (argc != 7 && argc != 8) {
    std::fprintf(stderr, "usage: %s INPUT OUTPUT SECRET_FILE SCOPE EPOCH WEIGHTS(0|1) [CONFIG_JSON]\n", argv[0]);
    return 1;
  }
  auto source = FileSource::open(argv[1]);
  if (!source) return fail_with(source.error());
  auto secret = mtd::load_secret(argv[3]);
  if (!secret) return fail_with(secret.error());
  auto digest = Sha256::of_range(**source, 0, (*source)->size());
  if (!digest) return fail_with(digest.error());

  mtd::VariationSettings settings;
  settings.secret = std::move(*secret);
  settings.scope = argv[4];
  settings.artifact_digest = *digest;
  settings.epoch = std::strtoull(argv[5], nullptr, 10);
  settings.permute_weights = std::string(argv[6]) == "1";
  if (argc == 8) {
    auto text = read_small_file(argv[7], 1 << 20);
    if (!text) return fail_with(text.error());
    auto config = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
    if (config.is_discarded()) {
      std::fprintf(stderr, "mtd_variant_tool: %s is not JSON\n", argv[7]);
      return 1;
    }
    settings.model_config = std::move(config);
  }
  auto variation = mtd::make_variation(settings);
  if (!variation) return fail_with(variation.error());

  auto sink = AtomicFileSink::create(argv[2]);
  if (!sink) return fail_with(sink.error());
  cdr::SanitizeOptions options;
  options.layout = variation->get();
  cdr::SanitizeReport report = cdr::sanitize(**source, cdr::Policy{}, options, **sink);
  if (report.verdict != cdr::Verdict::kBlocked) {
    if (auto committed = (*sink)->commit(); !committed) return fail_with(committed.error());
  }
  nlohmann::json json = cdr::report_to_json(report);
  json["seed_id"] = (*variation)->seed_id();
  std::printf("%s\n", json.dump(2).c_str());
  return report.verdict == cdr::Verdict::kBlocked ? 3 : 0;
}
