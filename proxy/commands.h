// Subcommands of the zoogate executable. Each add_* function registers one subcommand (with its own
// --help) on the application; the callback returns the process exit code through `exit_code`.
#pragma once

#include <CLI/CLI.hpp>

namespace zoogate::cli {

// Exit codes shared by every subcommand.
inline constexpr int kExitOk = 0;
inline constexpr int kExitError = 1;       // usage or I/O error
inline constexpr int kExitFindings = 2;    // scan: the file would be disarmed
inline constexpr int kExitBlocked = 3;     // the file is blocked; nothing was written

void add_sanitize_command(CLI::App& app, int& exit_code);
void add_scan_command(CLI::App& app, int& exit_code);

}  // namespace zoogate::cli
