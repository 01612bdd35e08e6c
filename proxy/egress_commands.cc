// `zoogate ca init` (the interception CA of the egress proxy) and `zoogate passwd-hash` (password
// hashes for proxy authentication). See docs/egress.md.
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <map>
#include <memory>
#include <string>

#include <openssl/crypto.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include "common/password_hash.h"
#include "proxy/certificate_authority.h"
#include "proxy/commands.h"

namespace zoogate::cli {
namespace {

// Where the server configuration looks when egress.ca_cert and egress.ca_key are not set, for the
// default cache.dir: `zoogate ca init` without options makes the files `zoogate serve` loads.
constexpr std::string_view kDefaultCaDirectory = "zoogate-cache/ca";
constexpr std::string_view kCaCertificateFile = "ca.pem";
constexpr std::string_view kCaKeyFile = "ca.key";
constexpr size_t kMaxPasswordLength = 1024;

int report_error(const Error& error) {
  std::fprintf(stderr, "zoogate: %s\n", error.describe().c_str());
  return kExitError;
}

// The CA's folder, created private (0700) when missing, with its parents; an existing one is used
// as it is.
Status make_ca_directory(const std::string& directory) {
  std::error_code error;
  const std::filesystem::path parent = std::filesystem::path(directory).parent_path();
  if (!parent.empty() && !std::filesystem::create_directories(parent, error) && error) {
    return fail(ErrorCode::kIo, "cannot create the folder " + parent.string() + ": " + error.message());
  }
  if (::mkdir(directory.c_str(), 0700) == 0) return {};
  const int mkdir_errno = errno;
  if (mkdir_errno == EEXIST && std::filesystem::is_directory(directory, error)) return {};
  return fail(ErrorCode::kIo, "cannot create the folder " + directory + ": " + std::strerror(mkdir_errno));
}

std::string absolute(const std::string& path) {
  std::error_code error;
  std::filesystem::path full = std::filesystem::absolute(path, error);
  return error ? path : full.string();
}

std::string utc_date(std::chrono::system_clock::time_point time) {
  const std::time_t seconds = std::chrono::system_clock::to_time_t(time);
  std::tm broken_down{};
  char text[32] = {};
  gmtime_r(&seconds, &broken_down);
  std::strftime(text, sizeof text, "%Y-%m-%d %H:%M:%S UTC", &broken_down);
  return text;
}

void print_installation(const std::string& cert_path, const std::string& key_path,
                        const proxy::CertificateAuthority& authority) {
  std::printf(
      "zoogate: created the interception CA\n"
      "  certificate:  %s  (give this to clients)\n"
      "  private key:  %s  (mode 0600; keep it on the zoogate host, never give it out)\n"
      "  SHA-256 fingerprint: %s\n"
      "  valid until:  %s\n"
      "\n"
      "The server configuration names them in egress.ca_cert and egress.ca_key (by default\n"
      "<cache.dir>/ca/ca.pem and ca.key). Install the certificate on every client that uses zoogate\n"
      "as its HTTPS_PROXY (docs/egress.md):\n"
      "  Debian/Ubuntu:  sudo cp %s /usr/local/share/ca-certificates/zoogate-ca.crt\n"
      "                  sudo update-ca-certificates\n"
      "  Python (requests, huggingface_hub): after the step above,\n"
      "                  export REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt\n"
      "  Node.js:        export NODE_EXTRA_CA_CERTS=%s\n"
      "  curl:           curl --cacert %s ...  (or the system store after the first step)\n",
      cert_path.c_str(), key_path.c_str(), authority.sha256_fingerprint().c_str(),
      utc_date(authority.not_after()).c_str(), cert_path.c_str(), cert_path.c_str(), cert_path.c_str());
}

// Turns terminal echo off for as long as it lives, when standard input is a terminal.
class TerminalEchoOff {
 public:
  TerminalEchoOff() {
    if (::tcgetattr(STDIN_FILENO, &saved_) != 0) return;
    termios quiet = saved_;
    quiet.c_lflag &= ~static_cast<tcflag_t>(ECHO);
    active_ = ::tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet) == 0;
  }
  ~TerminalEchoOff() {
    if (active_) ::tcsetattr(STDIN_FILENO, TCSAFLUSH, &saved_);
  }
  TerminalEchoOff(const TerminalEchoOff&) = delete;
  TerminalEchoOff& operator=(const TerminalEchoOff&) = delete;

 private:
  termios saved_{};
  bool active_ = false;
};

// Wipes a password from memory when it goes out of scope.
struct SecretText {
  std::string text;
  ~SecretText() { OPENSSL_cleanse(text.data(), text.size()); }
};

// One line from standard input without its line ending ("\n" or "\r\n").
Status read_password_line(SecretText& password) {
  for (int c = std::getchar(); c != EOF && c != '\n'; c = std::getchar()) {
    if (password.text.size() == kMaxPasswordLength) {
      return fail(ErrorCode::kLimitExceeded,
                  "the password is longer than " + std::to_string(kMaxPasswordLength) + " bytes");
    }
    password.text.push_back(static_cast<char>(c));
  }
  if (!password.text.empty() && password.text.back() == '\r') password.text.pop_back();
  if (password.text.empty()) return fail(ErrorCode::kInvalidArgument, "no password on standard input");
  return {};
}

// From a pipe, the first line; on a terminal, typed twice without echo.
Status read_password(SecretText& password) {
  if (!::isatty(STDIN_FILENO)) return read_password_line(password);
  TerminalEchoOff echo_off;
  std::fputs("Password: ", stderr);
  Status read = read_password_line(password);
  std::fputs("\n", stderr);
  ZG_TRY(read);
  SecretText again;
  std::fputs("Password again: ", stderr);
  read = read_password_line(again);
  std::fputs("\n", stderr);
  ZG_TRY(read);
  if (again.text != password.text) return fail(ErrorCode::kInvalidArgument, "the passwords differ");
  return {};
}

}  // namespace

void add_ca_command(CLI::App& app, int& exit_code) {
  struct Arguments {
    std::string directory{kDefaultCaDirectory};
    std::string cert_file;
    std::string key_file;
    std::string name{proxy::kDefaultCaName};
    unsigned days = static_cast<unsigned>(proxy::kDefaultCaValidity.count());
    proxy::CaKeyType key_type = proxy::CaKeyType::kEcP256;
  };
  auto arguments = std::make_shared<Arguments>();
  CLI::App* ca = app.add_subcommand("ca", "The interception CA of the egress proxy");
  ca->require_subcommand(1);
  CLI::App* init = ca->add_subcommand(
      "init", "Create a CA certificate and its private key (mode 0600) for TLS interception; existing files "
              "are never replaced. Exit 0: created; 1: error");
  CLI::Option* directory = init->add_option(
      "--dir", arguments->directory,
      "Folder for " + std::string(kCaCertificateFile) + " and " + std::string(kCaKeyFile) + " (created 0700)");
  directory->capture_default_str();
  CLI::Option* cert = init->add_option("--cert", arguments->cert_file, "CA certificate file to write (PEM)");
  CLI::Option* key = init->add_option("--key", arguments->key_file, "CA private key file to write (PKCS#8 PEM)");
  cert->needs(key)->excludes(directory);
  key->needs(cert)->excludes(directory);
  init->add_option("--name", arguments->name, "Subject common name of the CA")->capture_default_str();
  init->add_option("--days", arguments->days, "Validity in days")->check(CLI::Range(1, static_cast<int>(proxy::kMaxCaValidity.count())))->capture_default_str();
  init->add_option("--key-type", arguments->key_type, "CA key: ec (P-256) or rsa (3072 bits)")
      ->transform(CLI::CheckedTransformer(
          std::map<std::string, proxy::CaKeyType>{{"ec", proxy::CaKeyType::kEcP256},
                                                  {"rsa", proxy::CaKeyType::kRsa3072}}))
      ->default_str("ec");
  init->callback([arguments, &exit_code] {
    std::string cert_path = arguments->cert_file;
    std::string key_path = arguments->key_file;
    if (cert_path.empty()) {
      if (auto made = make_ca_directory(arguments->directory); !made) return void(exit_code = report_error(made.error()));
      cert_path = (std::filesystem::path(arguments->directory) / kCaCertificateFile).string();
      key_path = (std::filesystem::path(arguments->directory) / kCaKeyFile).string();
    }
    if (auto created = proxy::create_ca(cert_path, key_path, arguments->name, std::chrono::days(arguments->days),
                                        arguments->key_type);
        !created) {
      return void(exit_code = report_error(created.error()));
    }
    // Loading what was written checks it the way `zoogate serve` will.
    auto authority = proxy::CertificateAuthority::load(cert_path, key_path);
    if (!authority) return void(exit_code = report_error(authority.error()));
    print_installation(absolute(cert_path), absolute(key_path), *authority);
    exit_code = kExitOk;
  });
}

void add_passwd_hash_command(CLI::App& app, int& exit_code) {
  CLI::App* command = app.add_subcommand(
      "passwd-hash", "Read a password from standard input (the first line; typed twice on a terminal) and print "
                     "its scrypt hash for the proxy users in the configuration. Exit 0: printed; 1: error");
  command->callback([&exit_code] {
    SecretText password;
    if (auto read = read_password(password); !read) return void(exit_code = report_error(read.error()));
    auto hash = hash_password(password.text);
    if (!hash) return void(exit_code = report_error(hash.error()));
    std::printf("%s\n", hash->c_str());
    exit_code = kExitOk;
  });
}

}  // namespace zoogate::cli
