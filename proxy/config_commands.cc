// `zoogate config check FILE` and `zoogate config defaults`: the server configuration without a server.
#include <cstdio>
#include <memory>
#include <string>

#include "config/policy_config.h"
#include "config/server_config.h"
#include "proxy/commands.h"

namespace zoogate::cli {
namespace {

// Loads the configuration as `zoogate serve` would, and the policy file it names, so that a file that
// passes here fails at start-up only for reasons outside the files (a port in use, a cache folder it
// may not write).
Status check_configuration(const std::string& path) {
  auto server = config::load_server_config(path);
  if (!server) return tl::unexpected(server.error());
  if (server->policy_file.empty()) return {};
  auto policy = config::load_policy_config(server->policy_file);
  if (!policy) return tl::unexpected(policy.error());
  return {};
}

}  // namespace

void add_config_command(CLI::App& app, int& exit_code) {
  CLI::App* command = app.add_subcommand(
      "config", "Check a server configuration, or print the built-in one (see docs/configuration.md)");
  command->require_subcommand(1);

  auto file = std::make_shared<std::string>();
  CLI::App* check = command->add_subcommand(
      "check", "Load a server configuration and the policy file it names. Exit 0: both are valid (prints "
               "'ok: FILE'); 1: the first error, as FILE:LINE:COLUMN: message");
  check->add_option("file", *file, "Server configuration (YAML)")->required();
  check->callback([file, &exit_code] {
    if (auto checked = check_configuration(*file); !checked) {
      std::fprintf(stderr, "zoogate: %s\n", checked.error().describe().c_str());
      return void(exit_code = kExitError);
    }
    std::printf("ok: %s\n", file->c_str());
    exit_code = kExitOk;
  });

  CLI::App* defaults = command->add_subcommand(
      "defaults", "Print the built-in server configuration as YAML, every key with its default: a file to "
                  "start from");
  defaults->callback([&exit_code] {
    std::string yaml = config::server_config_to_yaml(config::default_server_config());
    std::fwrite(yaml.data(), 1, yaml.size(), stdout);
    exit_code = kExitOk;
  });
}

}  // namespace zoogate::cli
