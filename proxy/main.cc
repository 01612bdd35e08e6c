// The zoogate executable: one binary, one subcommand per job, `--help` on each.
#include <cstdio>

#include <CLI/CLI.hpp>

#include "proxy/commands.h"

int main(int argc, char** argv) {
  CLI::App app{"zoogate: a zero-trust gateway for AI model downloads"};
  app.require_subcommand(1);
  int exit_code = zoogate::cli::kExitOk;
  zoogate::cli::add_serve_command(app, exit_code);
  zoogate::cli::add_prefetch_command(app, exit_code);
  zoogate::cli::add_sanitize_command(app, exit_code);
  zoogate::cli::add_scan_command(app, exit_code);
  zoogate::cli::add_keygen_command(app, exit_code);
  zoogate::cli::add_sign_command(app, exit_code);
  zoogate::cli::add_verify_command(app, exit_code);
  zoogate::cli::add_trace_command(app, exit_code);
  zoogate::cli::add_ca_command(app, exit_code);
  zoogate::cli::add_passwd_hash_command(app, exit_code);
  zoogate::cli::add_config_command(app, exit_code);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& error) {
    // Usage errors exit with 1 (--help with 0), as documented in docs/cli.md.
    int code = app.exit(error);
    return code == 0 ? zoogate::cli::kExitOk : zoogate::cli::kExitError;
  }
  return exit_code;
}
