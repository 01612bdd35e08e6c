// Subcommands of the zoogate executable. Each add_* function registers one subcommand (with its own
// --help) on the application; the callback returns the process exit code through `exit_code`.
#pragma once

#include <memory>
#include <string>

#include <CLI/CLI.hpp>

#include "common/error.h"

namespace zoogate::cdr {
struct Policy;
struct SanitizeReport;
}  // namespace zoogate::cdr

namespace zoogate::cli {

// Exit codes shared by every subcommand.
inline constexpr int kExitOk = 0;
inline constexpr int kExitError = 1;       // usage or I/O error
inline constexpr int kExitFindings = 2;    // scan: the file would be disarmed
inline constexpr int kExitBlocked = 3;     // the file is blocked; nothing was written
inline constexpr int kExitTampered = 4;    // verify: the artifact differs from its manifest, or the
                                           // manifest does not verify with the key

void add_sanitize_command(CLI::App& app, int& exit_code);
void add_scan_command(CLI::App& app, int& exit_code);
void add_keygen_command(CLI::App& app, int& exit_code);
void add_sign_command(CLI::App& app, int& exit_code);
void add_verify_command(CLI::App& app, int& exit_code);

// The --sign, --manifest and --model-config options of `sanitize` (mtd_commands.cc).
struct ManifestSigning;
std::shared_ptr<ManifestSigning> add_manifest_signing_options(CLI::App& command);
// Loads the signing key when --sign was given, so that a bad key fails before any work is done.
Status prepare_manifest_signing(ManifestSigning& signing);
// After a sanitize run that wrote `output_path`: when --sign was given and the file was not blocked,
// builds the file's manifest (provenance: the input's digest as upstream digest, the policy, the
// verdict and findings, `seed_id`), signs it and writes it to the --manifest file.
Status write_signed_manifest(const ManifestSigning& signing, const cdr::SanitizeReport& report,
                             const cdr::Policy& policy, const std::string& output_path, const std::string& seed_id);

}  // namespace zoogate::cli
