// `zoogate serve` (the gateway) and `zoogate prefetch` (asks a running gateway to warm its cache).
#include <cstdio>
#include <memory>
#include <string>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>

#include "config/server_config.h"
#include "proxy/commands.h"
#include "proxy/server.h"

namespace zoogate::cli {

namespace {

int report_error(const Error& error) {
  std::fprintf(stderr, "zoogate: %s\n", error.describe().c_str());
  return kExitError;
}

// "http://host:port" -> host, port. The admin listener is plain HTTP on a trusted network.
Result<std::pair<std::string, std::string>> split_admin_url(const std::string& url) {
  constexpr std::string_view kScheme = "http://";
  if (!url.starts_with(kScheme)) return fail(ErrorCode::kInvalidArgument, "--admin must be http://HOST:PORT");
  std::string authority = url.substr(kScheme.size());
  if (auto slash = authority.find('/'); slash != std::string::npos) authority.resize(slash);
  const size_t colon = authority.rfind(':');
  if (colon == std::string::npos || colon + 1 == authority.size()) {
    return fail(ErrorCode::kInvalidArgument, "--admin must name a port: http://HOST:PORT");
  }
  std::string host = authority.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  return std::pair{host, authority.substr(colon + 1)};
}

std::string percent_encode(std::string_view text) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string encoded;
  for (unsigned char c : text) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~' || c == '/') {
      encoded.push_back(static_cast<char>(c));
    } else {
      encoded += {'%', kHex[c >> 4], kHex[c & 15]};
    }
  }
  return encoded;
}

}  // namespace

void add_serve_command(CLI::App& app, int& exit_code) {
  auto config_file = std::make_shared<std::string>();
  CLI::App* command = app.add_subcommand(
      "serve", "Run the gateway: the Hub endpoint for HF_ENDPOINT clients and the admin listener "
               "(see docs/configuration.md). Without --config, built-in defaults apply");
  command->add_option("--config", *config_file, "Server configuration (YAML)")->check(CLI::ExistingFile);
  command->callback([config_file, &exit_code] {
    auto config = config_file->empty() ? Result<config::ServerConfig>(config::default_server_config())
                                       : config::load_server_config(*config_file);
    if (!config) return void(exit_code = report_error(config.error()));
    auto server = proxy::Server::create(std::move(*config));
    if (!server) return void(exit_code = report_error(server.error()));
    if (auto ran = (*server)->run(); !ran) return void(exit_code = report_error(ran.error()));
    exit_code = kExitOk;
  });
}

void add_prefetch_command(CLI::App& app, int& exit_code) {
  struct Arguments {
    std::string repository;
    std::string admin = "http://127.0.0.1:9090";
    std::string type = "model";
    std::string token;
    std::string scope;
  };
  auto arguments = std::make_shared<Arguments>();
  CLI::App* command = app.add_subcommand(
      "prefetch", "Ask a running zoogate to fetch and disarm every file of a repository now, so that clients "
                  "find them ready. Exit 0: done (the summary says per file); 1: error");
  command->add_option("repository", arguments->repository, "REPO or REPO@REVISION (default revision: main)")
      ->required();
  command->add_option("--admin", arguments->admin, "The admin listener of the running zoogate")->capture_default_str();
  command->add_option("--type", arguments->type, "model, dataset or space")
      ->check(CLI::IsMember({"model", "dataset", "space"}))
      ->capture_default_str();
  command->add_option("--token", arguments->token, "Hub token for gated or private repositories");
  command->add_option("--scope", arguments->scope, "MTD scope to prepare the variant for (default: this host's address)");
  command->callback([arguments, &exit_code] {
    namespace beast = boost::beast;
    namespace http = beast::http;
    auto address = split_admin_url(arguments->admin);
    if (!address) return void(exit_code = report_error(address.error()));
    std::string repository = arguments->repository;
    std::string revision = "main";
    if (auto at = repository.find('@'); at != std::string::npos) {
      revision = repository.substr(at + 1);
      repository.resize(at);
    }
    std::string target = "/admin/prefetch?repo=" + percent_encode(repository) + "&revision=" + percent_encode(revision) +
                         "&type=" + arguments->type;
    if (!arguments->scope.empty()) target += "&scope=" + percent_encode(arguments->scope);
    boost::asio::io_context io;
    boost::asio::ip::tcp::resolver resolver(io);
    boost::asio::ip::tcp::socket socket(io);
    boost::system::error_code error;
    auto endpoints = resolver.resolve(address->first, address->second, error);
    if (!error) boost::asio::connect(socket, endpoints, error);
    if (error) {
      return void(exit_code = report_error(Error{ErrorCode::kIo, "cannot reach " + arguments->admin + ": " + error.message(), std::nullopt}));
    }
    http::request<http::string_body> request{http::verb::post, target, 11};
    request.set(http::field::host, address->first);
    if (!arguments->token.empty()) request.set(http::field::authorization, "Bearer " + arguments->token);
    request.prepare_payload();
    http::write(socket, request, error);
    beast::flat_buffer buffer;
    http::response<http::string_body> response;
    if (!error) http::read(socket, buffer, response, error);
    if (error) {
      return void(exit_code = report_error(Error{ErrorCode::kIo, "the prefetch request failed: " + error.message(), std::nullopt}));
    }
    std::fwrite(response.body().data(), 1, response.body().size(), stdout);
    exit_code = response.result_int() == 200 ? kExitOk : kExitError;
  });
}

}  // namespace zoogate::cli
