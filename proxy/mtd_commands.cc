// `zoogate keygen`, `zoogate sign`, `zoogate verify`, and the signed manifest of `zoogate sanitize --sign`.
#include <cstdio>
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
#include "mtd/signing.h"
#include "mtd/verify.h"
#include "proxy/commands.h"

namespace zoogate::cli {

struct ManifestSigning {
  std::string key_file;
  std::string manifest_file;
  std::string model_config_file;
  std::optional<mtd::PrivateKey> key;  // loaded by prepare_manifest_signing
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

std::shared_ptr<ManifestSigning> add_manifest_signing_options(CLI::App& command) {
  auto signing = std::make_shared<ManifestSigning>();
  CLI::Option* key = command.add_option("--sign", signing->key_file,
                                        "Sign a manifest of the written file with this private key (PEM)");
  CLI::Option* manifest = command.add_option("--manifest", signing->manifest_file,
                                             "Where --sign writes the signed manifest (Sigstore bundle JSON)");
  key->needs(manifest);
  manifest->needs(key);
  command.add_option("--model-config", signing->model_config_file,
                     "The repository's config.json, folded into the manifest's architecture fingerprint")
      ->needs(key)
      ->check(CLI::ExistingFile);
  return signing;
}

Status prepare_manifest_signing(ManifestSigning& signing) {
  if (signing.key_file.empty()) return {};
  auto key = mtd::PrivateKey::load(signing.key_file);
  if (!key) return tl::unexpected(key.error());
  signing.key = std::move(*key);
  return {};
}

Status write_signed_manifest(const ManifestSigning& signing, const cdr::SanitizeReport& report,
                             const cdr::Policy& policy, const std::string& output_path, const std::string& seed_id) {
  if (!signing.key || report.verdict == cdr::Verdict::kBlocked) return {};
  std::optional<mtd::Digest> config_sha256;
  if (!signing.model_config_file.empty()) {
    auto digest = mtd::artifact_sha256(signing.model_config_file);
    if (!digest) return tl::unexpected(digest.error());
    config_sha256 = *digest;
  }
  auto written = FileSource::open(output_path);
  if (!written) return tl::unexpected(written.error());
  auto facts = mtd::facts_from_sanitize(**written, report, policy);
  if (!facts) return tl::unexpected(facts.error());
  // The upstream digest is the input file's: on the command line, the input is what upstream served.
  mtd::ArtifactManifest manifest{std::filesystem::path(output_path).filename().string(),
                                 {mtd::make_file_manifest(".", std::move(*facts), config_sha256,
                                                          mtd::provenance_of(report, policy, report.input_sha256, seed_id))}};
  return sign_and_write(manifest, *signing.key, signing.manifest_file);
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

}  // namespace zoogate::cli
