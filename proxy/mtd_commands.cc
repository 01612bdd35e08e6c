// `zoogate keygen`, `zoogate sign`, `zoogate verify`, `zoogate trace`, and the MTD options of
// `zoogate sanitize` (layout and weight variation, signed manifest).
#include <charconv>
#include <cstdio>
#include <tuple>
#include <vector>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "cdr/sanitize.h"
#include "common/byte_sink.h"
#include "common/byte_source.h"
#include "common/encoding.h"
#include "mtd/dsse.h"
#include "mtd/manifest.h"
#include "mtd/layout_variation.h"
#include "mtd/signing.h"
#include "mtd/trace.h"
#include "mtd/variant_seed.h"
#include "mtd/verify.h"
#include "proxy/commands.h"

namespace zoogate::cli {

struct MtdOptions {
  std::string key_file;
  std::string manifest_file;
  std::string model_config_file;
  std::string secret_file;
  std::string scope = "deployment";
  uint64_t epoch = 0;
  bool permute_weights = false;
  // Set by prepare_mtd_options.
  std::optional<mtd::PrivateKey> key;
  std::unique_ptr<mtd::LayoutVariation> variation;
  std::optional<Sha256::Digest> input_sha256;  // hashed to key the variation
};

namespace {

int fail_with(const Error& error) {
  std::fprintf(stderr, "zoogate: %s\n", error.describe().c_str());
  return kExitError;
}

Status write_text_file(const std::string& path, std::string_view text) {
  auto sink = AtomicFileSink::create(path);
  if (!sink) return tl::unexpected(sink.error());
  ZG_TRY((*sink)->write(text));
  return (*sink)->commit();
}

Status sign_and_write(const mtd::ArtifactManifest& manifest, const mtd::PrivateKey& key, const std::string& path) {
  auto bundle = mtd::sign_manifest(manifest, key);
  if (!bundle) return tl::unexpected(bundle.error());
  return write_text_file(path, *bundle);
}

// The signed manifest itself is no part of a folder it is kept in.
std::vector<std::string> manifest_inside(const std::string& artifact, const std::string& manifest) {
  namespace fs = std::filesystem;
  std::error_code error;
  if (!fs::is_directory(artifact, error)) return {};
  fs::path relative = fs::weakly_canonical(manifest, error).lexically_relative(fs::weakly_canonical(artifact, error));
  if (error || relative.empty() || *relative.begin() == "..") return {};
  return {relative.generic_string()};
}

void print_outcome(const std::string& path, const mtd::VerifyOutcome& outcome, bool as_json) {
  size_t tensors = 0;
  if (outcome.manifest) {
    for (const auto& file : outcome.manifest->files) tensors += file.facts.tensors.size();
  }
  const size_t files = outcome.manifest ? outcome.manifest->files.size() : 0;
  if (as_json) {
    nlohmann::json differences = nlohmann::json::array();
    for (const auto& difference : outcome.differences) {
      differences.push_back({{"file", difference.file}, {"item", difference.item}, {"field", difference.field},
                             {"expected", difference.expected}, {"found", difference.found}});
    }
    nlohmann::json report = {{"path", path},         {"intact", outcome.intact()},          {"key_id", outcome.key_id},
                             {"files", files},       {"tensors", tensors}, {"differences", std::move(differences)}};
    std::printf("%s\n", report.dump(2, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    return;
  }
  if (outcome.intact()) {
    std::printf("intact: %s matches its manifest signed by key %s (%zu files, %zu tensors)\n", path.c_str(),
                outcome.key_id.c_str(), files, tensors);
    return;
  }
  std::printf("NOT INTACT: %s: %zu differences\n", path.c_str(), outcome.differences.size());
  for (const auto& difference : outcome.differences) std::printf("  %s\n", difference.describe().c_str());
}

}  // namespace

std::shared_ptr<MtdOptions> add_mtd_options(CLI::App& command) {
  auto options = std::make_shared<MtdOptions>();
  CLI::Option* key = command.add_option("--sign", options->key_file,
                                        "Sign a manifest of the written file with this private key (PEM)");
  CLI::Option* manifest = command.add_option("--manifest", options->manifest_file,
                                             "Where --sign writes the signed manifest (Sigstore bundle JSON)");
  key->needs(manifest);
  manifest->needs(key);
  command.add_option("--model-config", options->model_config_file,
                     "The repository's config.json: folded into the manifest's architecture fingerprint, and "
                     "tells --mtd-weights the attention head counts")
      ->check(CLI::ExistingFile);
  CLI::Option* secret = command.add_option(
      "--mtd-secret", options->secret_file,
      "Variation secret (at least 32 bytes): write a keyed variant of the rebuilt file (see docs/mtd.md)");
  command.add_option("--mtd-scope", options->scope, "Who the variant is for (user, client, address)")
      ->needs(secret)
      ->capture_default_str();
  command.add_option("--mtd-epoch", options->epoch, "Variation epoch")->needs(secret)->capture_default_str();
  command.add_flag("--mtd-weights", options->permute_weights,
                   "Also permute feed-forward units and attention heads (function-preserving)")
      ->needs(secret);
  return options;
}

// The repository's config.json, parsed, when --model-config names one.
Result<std::optional<nlohmann::json>> load_model_config(const std::string& path) {
  if (path.empty()) return std::optional<nlohmann::json>{};
  constexpr uint64_t kMaxModelConfigSize = 1 << 20;
  auto text = read_small_file(path, kMaxModelConfigSize);
  if (!text) return tl::unexpected(text.error());
  auto json = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_object()) {
    return fail(ErrorCode::kInvalidArgument, path + " is not a JSON object");
  }
  return std::optional<nlohmann::json>(std::move(json));
}

Status prepare_mtd_options(MtdOptions& options, const ByteSource& input) {
  if (!options.key_file.empty()) {
    auto key = mtd::PrivateKey::load(options.key_file);
    if (!key) return tl::unexpected(key.error());
    options.key = std::move(*key);
  }
  if (options.secret_file.empty()) return {};
  auto secret = mtd::load_secret(options.secret_file);
  if (!secret) return tl::unexpected(secret.error());
  // The variant is keyed by the digest of what upstream served, which must be known before planning.
  auto digest = Sha256::of_range(input, 0, input.size());
  if (!digest) return tl::unexpected(digest.error());
  auto model_config = load_model_config(options.model_config_file);
  if (!model_config) return tl::unexpected(model_config.error());
  auto variation = mtd::make_variation(mtd::VariationSettings{std::move(*secret), options.scope, *digest,
                                                              options.epoch, options.permute_weights,
                                                              std::move(*model_config)});
  if (!variation) return tl::unexpected(variation.error());
  options.variation = std::move(*variation);
  options.input_sha256 = *digest;
  return {};
}

void apply_mtd_options(const MtdOptions& options, cdr::SanitizeOptions& sanitize) {
  sanitize.layout = options.variation.get();
  sanitize.known_input_sha256 = options.input_sha256;
}

Status write_signed_manifest(const MtdOptions& signing, const cdr::SanitizeReport& report,
                             const cdr::Policy& policy, const std::string& output_path) {
  if (!signing.key || report.verdict == cdr::Verdict::kBlocked) return {};
  const std::string seed_id = signing.variation ? signing.variation->seed_id() : "";
  std::optional<mtd::Digest> config_sha256;
  if (!signing.model_config_file.empty()) {
    auto digest = mtd::artifact_sha256(signing.model_config_file);
    if (!digest) return tl::unexpected(digest.error());
    config_sha256 = *digest;
  }
  // The upstream digest is the input file's: on the command line, the input is what upstream served.
  auto manifest = mtd::sanitized_file_manifest(std::filesystem::path(output_path).filename().string(), output_path,
                                               report, policy, report.input_sha256, seed_id, config_sha256);
  if (!manifest) return tl::unexpected(manifest.error());
  return sign_and_write(*manifest, *signing.key, signing.manifest_file);
}

void add_keygen_command(CLI::App& app, int& exit_code) {
  struct Arguments {
    std::string private_file;
    std::string public_file;
    bool force = false;
  };
  auto arguments = std::make_shared<Arguments>();
  CLI::App* command = app.add_subcommand(
      "keygen", "Create an ECDSA P-256 key pair for signing manifests. Exit 0: written; 1: error");
  command->add_option("--private", arguments->private_file, "Private key file to write (PKCS#8 PEM, mode 0600)")
      ->required();
  command->add_option("--public", arguments->public_file, "Public key file to write (PEM)")->required();
  command->add_flag("--force", arguments->force, "Replace existing key files");
  command->callback([arguments, &exit_code] {
    for (const std::string* path : {&arguments->private_file, &arguments->public_file}) {
      std::error_code error;
      if (!arguments->force && std::filesystem::exists(*path, error)) {
        return void(exit_code = fail_with(Error{ErrorCode::kInvalidArgument,
                                                *path + " exists; pass --force to replace it", std::nullopt}));
      }
    }
    auto key = mtd::PrivateKey::generate();
    if (!key) return void(exit_code = fail_with(key.error()));
    if (auto written = key->write_key_pair(arguments->private_file, arguments->public_file); !written) {
      return void(exit_code = fail_with(written.error()));
    }
    std::printf("key id: %s\n", key->public_key().key_id().c_str());
    exit_code = kExitOk;
  });
}

void add_sign_command(CLI::App& app, int& exit_code) {
  struct Arguments {
    std::string path;
    std::string key_file;
    std::string manifest_file;
  };
  auto arguments = std::make_shared<Arguments>();
  CLI::App* command = app.add_subcommand(
      "sign", "Sign a manifest of a file or snapshot folder as it is (no sanitizing, no provenance). "
              "Exit 0: written; 1: error");
  command->add_option("path", arguments->path, "File or folder to describe")->required();
  command->add_option("--key", arguments->key_file, "Private key (PEM)")->required();
  command->add_option("--manifest", arguments->manifest_file, "Where to write the signed manifest")->required();
  command->callback([arguments, &exit_code] {
    auto key = mtd::PrivateKey::load(arguments->key_file);
    if (!key) return void(exit_code = fail_with(key.error()));
    auto manifest = mtd::manifest_for_path(arguments->path, cdr::Policy{});
    if (!manifest) return void(exit_code = fail_with(manifest.error()));
    if (auto written = sign_and_write(*manifest, *key, arguments->manifest_file); !written) {
      return void(exit_code = fail_with(written.error()));
    }
    exit_code = kExitOk;
  });
}

void add_verify_command(CLI::App& app, int& exit_code) {
  struct Arguments {
    std::string path;
    std::string manifest_file;
    std::string public_key_file;
    bool json = false;
  };
  auto arguments = std::make_shared<Arguments>();
  CLI::App* command = app.add_subcommand(
      "verify", "Check a file or snapshot folder against its signed manifest and name every difference. "
                "Exit 0: intact; 4: changed, or the manifest does not verify; 1: usage or I/O error");
  command->add_option("path", arguments->path, "File or folder to check")->required();
  command->add_option("--manifest", arguments->manifest_file, "The signed manifest (Sigstore bundle or DSSE JSON)")
      ->required();
  command->add_option("--pubkey", arguments->public_key_file, "Public key the manifest must be signed with (PEM)")
      ->required();
  command->add_flag("--json", arguments->json, "Print the outcome as JSON");
  command->callback([arguments, &exit_code] {
    auto key = mtd::PublicKey::load(arguments->public_key_file);
    if (!key) return void(exit_code = fail_with(key.error()));
    auto signed_manifest = read_small_file(arguments->manifest_file, mtd::kMaxSignedManifestSize);
    if (!signed_manifest) return void(exit_code = fail_with(signed_manifest.error()));
    mtd::VerifyOptions options{manifest_inside(arguments->path, arguments->manifest_file)};
    auto outcome = mtd::verify_artifact(arguments->path, *signed_manifest, *key, options);
    if (!outcome) return void(exit_code = fail_with(outcome.error()));
    print_outcome(arguments->path, *outcome, arguments->json);
    exit_code = outcome->intact() ? kExitOk : kExitTampered;
  });
}

// "0-9" or "7": an inclusive range of epochs.
Result<std::pair<uint64_t, uint64_t>> parse_epoch_range(const std::string& text) {
  auto parse = [&](std::string_view part) -> std::optional<uint64_t> {
    uint64_t value = 0;
    auto [end, error] = std::from_chars(part.data(), part.data() + part.size(), value);
    if (error != std::errc() || end != part.data() + part.size() || part.empty()) return std::nullopt;
    return value;
  };
  size_t dash = text.find('-');
  auto first = parse(std::string_view(text).substr(0, dash));
  auto last = dash == std::string::npos ? first : parse(std::string_view(text).substr(dash + 1));
  if (!first || !last || *first > *last) {
    return fail(ErrorCode::kInvalidArgument, "--epochs takes N or FIRST-LAST, got '" + text + "'");
  }
  return std::make_pair(*first, *last);
}

void add_trace_command(CLI::App& app, int& exit_code) {
  struct Arguments {
    std::string leaked_file;
    std::string original_file;
    std::string secret_file;
    std::vector<std::string> scopes;
    std::string epochs = "0";
    std::string policy_file;
    std::string model_config_file;
    bool permute_weights = false;
  };
  auto arguments = std::make_shared<Arguments>();
  CLI::App* command = app.add_subcommand(
      "trace", "Tell which scope and epoch a leaked variant was served to. Exit 0: found; 5: no candidate "
               "matches; 1: usage or I/O error");
  command->add_option("file", arguments->leaked_file, "The leaked file")->required()->check(CLI::ExistingFile);
  command->add_option("--original", arguments->original_file, "The upstream file the variant was made from")
      ->required()
      ->check(CLI::ExistingFile);
  command->add_option("--mtd-secret", arguments->secret_file, "The deployment's variation secret")->required();
  command->add_option("--scopes", arguments->scopes, "Candidate scopes, comma-separated")
      ->required()
      ->delimiter(',');
  command->add_option("--epochs", arguments->epochs, "Candidate epochs: N or FIRST-LAST")->capture_default_str();
  command->add_option("--policy", arguments->policy_file, "The policy the variants were served under");
  command->add_option("--model-config", arguments->model_config_file, "config.json, as served with --mtd-weights")
      ->check(CLI::ExistingFile);
  command->add_flag("--mtd-weights", arguments->permute_weights, "The variants had weight variation");
  command->callback([arguments, &exit_code] {
    mtd::TraceRequest request;
    auto secret = mtd::load_secret(arguments->secret_file);
    if (!secret) return void(exit_code = fail_with(secret.error()));
    request.secret = std::move(*secret);
    request.scopes = arguments->scopes;
    auto epochs = parse_epoch_range(arguments->epochs);
    if (!epochs) return void(exit_code = fail_with(epochs.error()));
    std::tie(request.first_epoch, request.last_epoch) = *epochs;
    request.permute_weights = arguments->permute_weights;
    auto model_config = load_model_config(arguments->model_config_file);
    if (!model_config) return void(exit_code = fail_with(model_config.error()));
    request.model_config = std::move(*model_config);
    auto policy = load_policy(arguments->policy_file);
    if (!policy) return void(exit_code = fail_with(policy.error()));
    request.policy = std::move(*policy);
    auto leaked = FileSource::open(arguments->leaked_file);
    if (!leaked) return void(exit_code = fail_with(leaked.error()));
    auto original = FileSource::open(arguments->original_file);
    if (!original) return void(exit_code = fail_with(original.error()));
    auto match = mtd::trace_variant(**leaked, **original, request);
    if (!match) return void(exit_code = fail_with(match.error()));
    if (!*match) {
      std::printf("none: no candidate scope and epoch reproduces %s\n", arguments->leaked_file.c_str());
      return void(exit_code = kExitNoMatch);
    }
    std::printf("scope: %s\nepoch: %llu\nseed id: %s\n", (*match)->scope.c_str(),
                static_cast<unsigned long long>((*match)->epoch), (*match)->seed_id.c_str());
    exit_code = kExitOk;
  });
}

}  // namespace zoogate::cli
