// Subcommands of the zoogate executable. Each add_* function registers one subcommand (with its own
// --help) on the application; the callback returns the process exit code through `exit_code`.
#pragma once

#include <memory>
#include <string>

#include <CLI/CLI.hpp>

#include "common/error.h"

namespace zoogate {
class ByteSource;
}  // namespace zoogate

namespace zoogate::cdr {
struct Policy;
struct SanitizeReport;
struct SanitizeOptions;
}  // namespace zoogate::cdr

namespace zoogate::cli {

// Exit codes shared by every subcommand.
inline constexpr int kExitOk = 0;
inline constexpr int kExitError = 1;       // usage or I/O error
inline constexpr int kExitFindings = 2;    // scan: the file would be disarmed
inline constexpr int kExitBlocked = 3;     // the file is blocked; nothing was written
inline constexpr int kExitTampered = 4;    // verify: the artifact differs from its manifest, or the
                                           // manifest does not verify with the key
inline constexpr int kExitNoMatch = 5;     // trace: no candidate scope and epoch made this file

void add_sanitize_command(CLI::App& app, int& exit_code);
void add_scan_command(CLI::App& app, int& exit_code);
void add_keygen_command(CLI::App& app, int& exit_code);
void add_sign_command(CLI::App& app, int& exit_code);
void add_verify_command(CLI::App& app, int& exit_code);

void add_trace_command(CLI::App& app, int& exit_code);
void add_serve_command(CLI::App& app, int& exit_code);
void add_prefetch_command(CLI::App& app, int& exit_code);
// `zoogate ca init` and `zoogate passwd-hash` (egress_commands.cc).
void add_ca_command(CLI::App& app, int& exit_code);
void add_passwd_hash_command(CLI::App& app, int& exit_code);
// `config check FILE` and `config defaults` (config_commands.cc).
void add_config_command(CLI::App& app, int& exit_code);

// The CDR policy from a policy file, or the built-in one when `path` is empty.
Result<cdr::Policy> load_policy(const std::string& path);

// The MTD options of `sanitize` (mtd_commands.cc): --sign, --manifest, --model-config, --mtd-secret,
// --mtd-scope, --mtd-epoch, --mtd-weights.
struct MtdOptions;
std::shared_ptr<MtdOptions> add_mtd_options(CLI::App& command);
// Loads the signing key and builds the variation for `input`, so that a bad key or secret fails
// before any output is written.
Status prepare_mtd_options(MtdOptions& options, const ByteSource& input);
// Puts the variation (or the canonical layout) and the input digest it was keyed with into `sanitize`.
void apply_mtd_options(const MtdOptions& options, cdr::SanitizeOptions& sanitize);
// After a sanitize run that wrote `output_path`: when --sign was given and the file was not blocked,
// builds the file's manifest (provenance: the input's digest as upstream digest, the policy, the
// verdict and findings, the variant's seed id), signs it and writes it to the --manifest file.
Status write_signed_manifest(const MtdOptions& options, const cdr::SanitizeReport& report,
                             const cdr::Policy& policy, const std::string& output_path);

}  // namespace zoogate::cli
