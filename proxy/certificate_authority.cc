#include "proxy/certificate_authority.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <optional>
#include <utility>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/asio/ip/address.hpp>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "common/byte_sink.h"
#include "common/encoding.h"
#include "common/openssl_error.h"
#include "common/openssl_ptr.h"

namespace zoogate::proxy {
namespace {

using Clock = std::chrono::system_clock;

using Bio = OpenSslPtr<BIO, BIO_free>;
using BigNumber = OpenSslPtr<BIGNUM, BN_free>;
using Extension = OpenSslPtr<X509_EXTENSION, X509_EXTENSION_free>;
using Name = OpenSslPtr<X509_NAME, X509_NAME_free>;

std::shared_ptr<X509> own(X509* certificate) { return {certificate, X509_free}; }
std::shared_ptr<EVP_PKEY> own(EVP_PKEY* key) { return {key, EVP_PKEY_free}; }

constexpr uint64_t kMaxCaCertificateFileSize = 256 * 1024;
constexpr uint64_t kMaxCaKeyFileSize = 64 * 1024;
constexpr int kMinRsaBits = 2048;
constexpr size_t kMaxCommonNameLength = 64;  // ub-common-name, RFC 5280
constexpr size_t kMaxHostNameLength = 253;
constexpr size_t kMaxLabelLength = 63;
constexpr size_t kSerialBytes = 16;
// Both CA and leaves start an hour in the past: see mint_leaf() in the header.
constexpr std::chrono::seconds kBackdate = std::chrono::hours(1);

tl::unexpected<Error> openssl_failure(std::string_view what) {
  return fail(ErrorCode::kInternal, std::string(what) + ": " + openssl_reason());
}

std::string bio_text(BIO* bio) {
  char* data = nullptr;
  const long length = BIO_get_mem_data(bio, &data);
  return length > 0 ? std::string(data, static_cast<size_t>(length)) : std::string();
}

Result<std::string> certificate_pem(X509* certificate) {
  Bio bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_X509(bio.get(), certificate) != 1) return openssl_failure("cannot encode a certificate");
  return bio_text(bio.get());
}

// Refuses to decrypt: an encrypted key file must not make OpenSSL prompt on the terminal.
int no_password(char*, int, int, void*) { return 0; }

Result<std::shared_ptr<EVP_PKEY>> generate_key(CaKeyType key_type) {
  EVP_PKEY* key = key_type == CaKeyType::kRsa3072 ? EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", size_t{3072})
                                                  : EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256");
  if (key == nullptr) return openssl_failure("cannot generate a key");
  return own(key);
}

std::optional<Clock::time_point> to_time_point(const ASN1_TIME* time) {
  std::tm broken_down{};
  if (ASN1_TIME_to_tm(time, &broken_down) != 1) return std::nullopt;
  return Clock::from_time_t(timegm(&broken_down));
}

Status set_random_serial(X509* certificate) {
  std::array<uint8_t, kSerialBytes> bytes{};
  if (RAND_bytes(bytes.data(), static_cast<int>(bytes.size())) != 1) return openssl_failure("no random serial");
  BigNumber serial(BN_bin2bn(bytes.data(), static_cast<int>(bytes.size()), nullptr));
  // A serial must be positive; all 128 bits zero is as good as impossible, but not allowed.
  if (!serial || (BN_is_zero(serial.get()) && BN_set_word(serial.get(), 1) != 1) ||
      BN_to_ASN1_INTEGER(serial.get(), X509_get_serialNumber(certificate)) == nullptr) {
    return openssl_failure("cannot set a serial number");
  }
  return {};
}

Status set_common_name(X509* certificate, std::string_view common_name) {
  Name name(X509_NAME_new());
  if (!name ||
      X509_NAME_add_entry_by_NID(name.get(), NID_commonName, MBSTRING_UTF8,
                                 reinterpret_cast<const unsigned char*>(common_name.data()),
                                 static_cast<int>(common_name.size()), -1, 0) != 1 ||
      X509_set_subject_name(certificate, name.get()) != 1) {
    return openssl_failure("cannot set the subject name");
  }
  return {};
}

// notBefore is kBackdate before `now`, notAfter is `not_after`.
Status set_validity(X509* certificate, Clock::time_point now, Clock::time_point not_after) {
  if (ASN1_TIME_set(X509_getm_notBefore(certificate), Clock::to_time_t(now - kBackdate)) == nullptr ||
      ASN1_TIME_set(X509_getm_notAfter(certificate), Clock::to_time_t(not_after)) == nullptr) {
    return openssl_failure("cannot set the validity period");
  }
  return {};
}

// Adds one extension in OpenSSL's configuration syntax ("critical,CA:TRUE"). `context` names the
// subject and issuer certificates the key identifiers are computed from.
Status add_extension(X509* certificate, X509V3_CTX& context, int nid, const std::string& value) {
  Extension extension(X509V3_EXT_conf_nid(nullptr, &context, nid, value.c_str()));
  if (!extension || X509_add_ext(certificate, extension.get(), -1) != 1) {
    return openssl_failure(std::string("cannot add the ") + OBJ_nid2sn(nid) + " extension");
  }
  return {};
}

// A new certificate with version, serial, validity and public key set, and a subject of just the CN
// `common_name`, or an empty subject when that is empty.
Result<std::shared_ptr<X509>> new_certificate(std::string_view common_name, Clock::time_point now,
                                             Clock::time_point not_after, EVP_PKEY* public_key) {
  auto certificate = own(X509_new());
  if (!certificate || X509_set_version(certificate.get(), X509_VERSION_3) != 1 ||
      X509_set_pubkey(certificate.get(), public_key) != 1) {
    return openssl_failure("cannot start a certificate");
  }
  ZG_TRY(set_random_serial(certificate.get()));
  if (!common_name.empty()) ZG_TRY(set_common_name(certificate.get(), common_name));
  ZG_TRY(set_validity(certificate.get(), now, not_after));
  return certificate;
}

Status sign(X509* certificate, EVP_PKEY* issuer_key) {
  if (X509_sign(certificate, issuer_key, EVP_sha256()) <= 0) return openssl_failure("cannot sign a certificate");
  return {};
}

bool path_exists(const std::string& path) {
  struct stat status {};
  return ::lstat(path.c_str(), &status) == 0;
}

// A file beside its final name; closed and removed when this goes out of scope (after a successful
// link(2) only the temporary name goes away).
class TemporaryFile {
 public:
  static Result<TemporaryFile> create(const std::string& final_path, mode_t mode) {
    std::array<uint8_t, 8> suffix{};
    if (RAND_bytes(suffix.data(), static_cast<int>(suffix.size())) != 1) {
      return openssl_failure("no random bytes for a file name");
    }
    TemporaryFile file(final_path + ".tmp-" + to_hex(suffix));
    file.fd_ = ::open(file.path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    if (file.fd_ < 0) return fail(ErrorCode::kIo, "cannot create " + file.path_ + ": " + std::strerror(errno));
    return file;
  }
  TemporaryFile(TemporaryFile&& other) noexcept
      : path_(std::exchange(other.path_, {})), fd_(std::exchange(other.fd_, -1)) {}
  TemporaryFile& operator=(TemporaryFile&&) = delete;
  ~TemporaryFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!path_.empty()) ::unlink(path_.c_str());
  }

  // Writes, syncs and closes the file, then gives it `final_path` unless that name exists.
  Status publish(std::string_view content, const std::string& final_path) {
    while (!content.empty()) {
      const ssize_t written = ::write(fd_, content.data(), content.size());
      if (written < 0 && errno == EINTR) continue;
      if (written < 0) return fail(ErrorCode::kIo, "write to " + path_ + " failed: " + std::strerror(errno));
      content.remove_prefix(static_cast<size_t>(written));
    }
    const int descriptor = std::exchange(fd_, -1);
    if (::fsync(descriptor) != 0 || ::close(descriptor) != 0) {
      return fail(ErrorCode::kIo, "cannot sync " + path_ + ": " + std::strerror(errno));
    }
    if (::link(path_.c_str(), final_path.c_str()) != 0) {
      if (errno == EEXIST) return fail(ErrorCode::kInvalidArgument, final_path + " exists; zoogate never replaces it");
      return fail(ErrorCode::kIo, "cannot create " + final_path + ": " + std::strerror(errno));
    }
    return {};
  }

 private:
  explicit TemporaryFile(std::string path) : path_(std::move(path)) {}
  std::string path_;
  int fd_ = -1;
};

Status publish_new_file(const std::string& path, std::string_view content, mode_t mode) {
  auto file = TemporaryFile::create(path, mode);
  if (!file) return tl::unexpected(file.error());
  return file->publish(content, path);
}

Status check_ca_name(std::string_view name) {
  const bool printable = std::none_of(name.begin(), name.end(), [](char c) {
    return static_cast<unsigned char>(c) < 0x20 || c == 0x7f;
  });
  if (name.empty() || name.size() > kMaxCommonNameLength || !printable || !is_valid_utf8(name)) {
    return fail(ErrorCode::kInvalidArgument, "the CA name must be 1 to 64 bytes of printable UTF-8");
  }
  return {};
}

bool is_letter_or_digit(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); }

Status check_host_label(std::string_view label) {
  if (label.empty() || label.size() > kMaxLabelLength) {
    return fail(ErrorCode::kInvalidArgument, "server name: labels must be 1 to 63 characters");
  }
  if (!std::all_of(label.begin(), label.end(), [](char c) { return is_letter_or_digit(c) || c == '-'; })) {
    return fail(ErrorCode::kInvalidArgument, "server name: only letters, digits, '-' and '.' are allowed");
  }
  if (label.front() == '-' || label.back() == '-') {
    return fail(ErrorCode::kInvalidArgument, "server name: a label must not start or end with '-'");
  }
  return {};
}

struct ServerName {
  std::string text;  // canonical
  bool is_ip_literal = false;
};

Result<std::string> canonical_host_name(std::string_view name) {
  if (!name.empty() && name.back() == '.') name.remove_suffix(1);
  if (name.empty() || name.size() > kMaxHostNameLength) {
    return fail(ErrorCode::kInvalidArgument, "server name: must be 1 to 253 characters");
  }
  std::string host(name);
  std::transform(host.begin(), host.end(), host.begin(),
                 [](char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; });
  std::string_view last_label;
  for (std::string_view rest = host;;) {
    const size_t dot = rest.find('.');
    last_label = rest.substr(0, dot);
    ZG_TRY(check_host_label(last_label));
    if (dot == std::string_view::npos) break;
    rest.remove_prefix(dot + 1);
  }
  // "1.2.3" or "0x7f.1" are not host names but IPv4 shorthand that resolvers read as addresses.
  if (std::all_of(last_label.begin(), last_label.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return fail(ErrorCode::kInvalidArgument, "server name: the last label must not be all digits");
  }
  return host;
}

Result<ServerName> parse_server_name(std::string_view server_name) {
  const bool bracketed = server_name.size() >= 2 && server_name.front() == '[' && server_name.back() == ']';
  std::string_view literal = bracketed ? server_name.substr(1, server_name.size() - 2) : server_name;
  // Zone indexes ("fe80::1%eth0") name an interface of this machine, not a server.
  if (literal.find('%') == std::string_view::npos) {
    boost::system::error_code error;
    const auto address = boost::asio::ip::make_address(std::string(literal), error);
    if (!error && (!bracketed || address.is_v6())) return ServerName{address.to_string(), true};
  }
  if (bracketed) return fail(ErrorCode::kInvalidArgument, "server name: brackets must hold an IPv6 address");
  auto host = canonical_host_name(server_name);
  if (!host) return tl::unexpected(host.error());
  return ServerName{std::move(*host), false};
}

}  // namespace

Result<std::string> canonical_server_name(std::string_view server_name) {
  auto name = parse_server_name(server_name);
  if (!name) return tl::unexpected(name.error());
  return std::move(name->text);
}

LeafCertificate::LeafCertificate(std::shared_ptr<x509_st> certificate, std::shared_ptr<evp_pkey_st> private_key,
                                 std::vector<std::shared_ptr<x509_st>> chain, std::string chain_pem,
                                 std::chrono::system_clock::time_point not_after)
    : certificate_(std::move(certificate)), private_key_(std::move(private_key)), chain_(std::move(chain)),
      chain_pem_(std::move(chain_pem)), not_after_(not_after) {}

Status create_ca(const std::string& cert_path, const std::string& key_path, std::string_view subject_name,
                 std::chrono::days validity, CaKeyType key_type) {
  ZG_TRY(check_ca_name(subject_name));
  if (validity.count() < 1 || validity > kMaxCaValidity) {
    return fail(ErrorCode::kInvalidArgument,
                "the CA validity must be 1 to " + std::to_string(kMaxCaValidity.count()) + " days");
  }
  for (const std::string* path : {&cert_path, &key_path}) {
    if (path_exists(*path)) return fail(ErrorCode::kInvalidArgument, *path + " exists; zoogate never replaces it");
  }
  if (cert_path == key_path) return fail(ErrorCode::kInvalidArgument, "the certificate and key paths are the same");

  auto key = generate_key(key_type);
  if (!key) return tl::unexpected(key.error());
  const Clock::time_point now = Clock::now();
  auto certificate = new_certificate(subject_name, now, now + validity, key->get());
  if (!certificate) return tl::unexpected(certificate.error());
  X509* ca = certificate->get();
  if (X509_set_issuer_name(ca, X509_get_subject_name(ca)) != 1) return openssl_failure("cannot set the issuer");
  X509V3_CTX context;
  X509V3_set_ctx(&context, ca, ca, nullptr, nullptr, 0);
  ZG_TRY(add_extension(ca, context, NID_basic_constraints, "critical,CA:TRUE"));
  ZG_TRY(add_extension(ca, context, NID_key_usage, "critical,keyCertSign,cRLSign"));
  ZG_TRY(add_extension(ca, context, NID_subject_key_identifier, "hash"));
  // Optional in a self-signed certificate (RFC 5280 4.2.1.1), but strict verifiers look for it.
  ZG_TRY(add_extension(ca, context, NID_authority_key_identifier, "keyid:always"));
  ZG_TRY(sign(ca, key->get()));

  auto cert_pem = certificate_pem(ca);
  if (!cert_pem) return tl::unexpected(cert_pem.error());
  Bio key_bio(BIO_new(BIO_s_secmem()));
  // PEM_write_bio_PrivateKey writes PKCS#8 ("BEGIN PRIVATE KEY") in OpenSSL 3.
  if (!key_bio || PEM_write_bio_PrivateKey(key_bio.get(), key->get(), nullptr, nullptr, 0, nullptr, nullptr) != 1) {
    return openssl_failure("cannot encode the CA key");
  }
  std::string key_pem = bio_text(key_bio.get());
  const Status key_written = publish_new_file(key_path, key_pem, 0600);
  OPENSSL_cleanse(key_pem.data(), key_pem.size());
  ZG_TRY(key_written);
  if (Status cert_written = publish_new_file(cert_path, *cert_pem, 0644); !cert_written) {
    ::unlink(key_path.c_str());  // ours: link(2) created it a moment ago
    return cert_written;
  }
  return {};
}

Result<CertificateAuthority> CertificateAuthority::load(const std::string& cert_path, const std::string& key_path) {
  auto cert_text = read_small_file(cert_path, kMaxCaCertificateFileSize);
  if (!cert_text) return tl::unexpected(cert_text.error());
  CertificateAuthority authority;
  Bio cert_bio(BIO_new_mem_buf(cert_text->data(), static_cast<int>(cert_text->size())));
  while (cert_bio && authority.chain_.size() <= kMaxCaChainLength) {
    X509* certificate = PEM_read_bio_X509(cert_bio.get(), nullptr, no_password, nullptr);
    if (certificate == nullptr) break;
    authority.chain_.push_back(own(certificate));
  }
  ERR_clear_error();  // reading past the last certificate leaves a "no start line" error behind
  if (authority.chain_.empty()) return fail(ErrorCode::kParse, cert_path + ": no PEM certificate");
  if (authority.chain_.size() > kMaxCaChainLength) {
    return fail(ErrorCode::kLimitExceeded,
                cert_path + ": more than " + std::to_string(kMaxCaChainLength) + " certificates");
  }
  authority.certificate_ = authority.chain_.front();
  X509* ca = authority.certificate_.get();

  auto key_text = read_small_file(key_path, kMaxCaKeyFileSize);
  if (!key_text) return tl::unexpected(key_text.error());
  Bio key_bio(BIO_new_mem_buf(key_text->data(), static_cast<int>(key_text->size())));
  EVP_PKEY* key = key_bio ? PEM_read_bio_PrivateKey(key_bio.get(), nullptr, no_password, nullptr) : nullptr;
  OPENSSL_cleanse(key_text->data(), key_text->size());
  if (key == nullptr) {
    return fail(ErrorCode::kParse, key_path + ": not an unencrypted PEM private key: " + openssl_reason());
  }
  authority.ca_key_ = own(key);
  if (!EVP_PKEY_is_a(key, "EC") && !(EVP_PKEY_is_a(key, "RSA") && EVP_PKEY_get_bits(key) >= kMinRsaBits)) {
    return fail(ErrorCode::kUnsupported, key_path + ": the CA key must be EC or RSA of at least 2048 bits");
  }
  if (X509_check_private_key(ca, key) != 1) {
    ERR_clear_error();
    return fail(ErrorCode::kInvalidArgument, key_path + " is not the key of the certificate in " + cert_path);
  }

  // Reading the extension flags also caches the parsed extensions, so that later concurrent mints
  // only read the certificate.
  const uint32_t flags = X509_get_extension_flags(ca);
  const bool is_ca = (flags & EXFLAG_BCONS) != 0 && (flags & EXFLAG_CA) != 0;
  const bool may_sign = (flags & EXFLAG_KUSAGE) == 0 || (X509_get_key_usage(ca) & KU_KEY_CERT_SIGN) != 0;
  if (!is_ca || !may_sign) {
    return fail(ErrorCode::kInvalidArgument,
                cert_path + " is not a CA certificate (it needs basicConstraints CA:TRUE and keyCertSign)");
  }
  if (X509_cmp_current_time(X509_get0_notBefore(ca)) >= 0) {
    return fail(ErrorCode::kInvalidArgument, cert_path + " is not valid yet");
  }
  if (X509_cmp_current_time(X509_get0_notAfter(ca)) <= 0) {
    return fail(ErrorCode::kInvalidArgument, cert_path + " has expired");
  }
  auto not_after = to_time_point(X509_get0_notAfter(ca));
  if (!not_after) return fail(ErrorCode::kParse, cert_path + ": unreadable notAfter time");
  authority.not_after_ = *not_after;

  for (const auto& certificate : authority.chain_) {
    auto pem = certificate_pem(certificate.get());
    if (!pem) return tl::unexpected(pem.error());
    authority.chain_pem_ += *pem;
  }
  auto leaf_key = generate_key(CaKeyType::kEcP256);
  if (!leaf_key) return tl::unexpected(leaf_key.error());
  authority.leaf_key_ = std::move(*leaf_key);
  return authority;
}

Result<std::shared_ptr<const LeafCertificate>> CertificateAuthority::mint_leaf(std::string_view server_name,
                                                                               std::chrono::seconds lifetime) const {
  auto name = parse_server_name(server_name);
  if (!name) return tl::unexpected(name.error());
  if (lifetime.count() <= 0) return fail(ErrorCode::kInvalidArgument, "a leaf lifetime must be positive");
  const Clock::time_point now = Clock::now();
  const Clock::time_point not_after = std::min(now + lifetime, not_after_);
  if (not_after <= now) return fail(ErrorCode::kInvalidArgument, "the CA has expired");

  const std::string alternative_name = (name->is_ip_literal ? "IP:" : "DNS:") + name->text;
  // A host name longer than a CN may be leaves the subject empty, which RFC 5280 allows only with a
  // critical subjectAltName.
  const bool fits_common_name = name->text.size() <= kMaxCommonNameLength;

  auto certificate = new_certificate(fits_common_name ? name->text : "", now, not_after, leaf_key_.get());
  if (!certificate) return tl::unexpected(certificate.error());
  X509* leaf = certificate->get();
  if (X509_set_issuer_name(leaf, X509_get_subject_name(certificate_.get())) != 1) {
    return openssl_failure("cannot set the issuer");
  }
  X509V3_CTX context;
  X509V3_set_ctx(&context, certificate_.get(), leaf, nullptr, nullptr, 0);
  ZG_TRY(add_extension(leaf, context, NID_basic_constraints, "critical,CA:FALSE"));
  ZG_TRY(add_extension(leaf, context, NID_key_usage, "critical,digitalSignature"));
  ZG_TRY(add_extension(leaf, context, NID_ext_key_usage, "serverAuth"));
  // canonical_server_name() leaves only letters, digits, '-', '.' and ':' here, nothing the
  // configuration syntax would read as a separator.
  ZG_TRY(add_extension(leaf, context, NID_subject_alt_name,
                       (fits_common_name ? "" : "critical,") + alternative_name));
  ZG_TRY(add_extension(leaf, context, NID_subject_key_identifier, "hash"));
  ZG_TRY(add_extension(leaf, context, NID_authority_key_identifier, "keyid:always"));
  ZG_TRY(sign(leaf, ca_key_.get()));

  auto leaf_pem = certificate_pem(leaf);
  if (!leaf_pem) return tl::unexpected(leaf_pem.error());
  return std::make_shared<const LeafCertificate>(std::move(*certificate), leaf_key_, chain_, *leaf_pem + chain_pem_,
                                                 Clock::from_time_t(Clock::to_time_t(not_after)));
}

std::string CertificateAuthority::sha256_fingerprint() const {
  std::array<unsigned char, EVP_MAX_MD_SIZE> digest{};
  unsigned int length = 0;
  X509_digest(certificate_.get(), EVP_sha256(), digest.data(), &length);
  std::string hex = to_hex(std::span<const uint8_t>(digest.data(), length));
  std::string fingerprint;
  for (size_t i = 0; i < hex.size(); i += 2) {
    if (i > 0) fingerprint += ':';
    fingerprint += static_cast<char>(std::toupper(static_cast<unsigned char>(hex[i])));
    fingerprint += static_cast<char>(std::toupper(static_cast<unsigned char>(hex[i + 1])));
  }
  return fingerprint;
}

Result<std::unique_ptr<LeafCertificateCache>> LeafCertificateCache::create(const CertificateAuthority& authority,
                                                                           LeafCacheOptions options,
                                                                           CertificateCacheListener* listener) {
  if (options.capacity == 0) return fail(ErrorCode::kInvalidArgument, "the certificate cache needs a capacity");
  if (options.leaf_lifetime.count() <= 0) return fail(ErrorCode::kInvalidArgument, "the leaf lifetime must be positive");
  return std::unique_ptr<LeafCertificateCache>(new LeafCertificateCache(authority, std::move(options), listener));
}

LeafCertificateCache::LeafCertificateCache(const CertificateAuthority& authority, LeafCacheOptions options,
                                           CertificateCacheListener* listener)
    : authority_(authority), options_(std::move(options)),
      renewal_margin_(std::min(options_.renew_before, options_.leaf_lifetime / 2)), listener_(listener) {}

bool LeafCertificateCache::is_fresh(const LeafCertificate& leaf) const {
  return options_.now() + renewal_margin_ < leaf.not_after();
}

Result<std::shared_ptr<const LeafCertificate>> LeafCertificateCache::get(std::string_view server_name) {
  auto name = canonical_server_name(server_name);
  if (!name) return tl::unexpected(name.error());
  std::shared_ptr<const LeafCertificate> cached;
  {
    std::lock_guard lock(mutex_);
    if (auto found = index_.find(*name); found != index_.end() && is_fresh(*found->second->leaf)) {
      entries_.splice(entries_.begin(), entries_, found->second);
      cached = found->second->leaf;
    }
  }
  if (cached) {
    if (listener_) listener_->on_certificate_cache_hit();
    return cached;
  }

  auto minted = authority_.mint_leaf(*name, options_.leaf_lifetime);
  if (!minted) return tl::unexpected(minted.error());
  if (listener_) listener_->on_certificate_minted();

  std::lock_guard lock(mutex_);
  if (auto found = index_.find(*name); found != index_.end()) {
    entries_.splice(entries_.begin(), entries_, found->second);
    // A stale entry (why we minted) is replaced. A fresh one was minted by another thread while we
    // minted too: it stays, so that all callers share one leaf.
    if (!is_fresh(*found->second->leaf)) found->second->leaf = *minted;
    return found->second->leaf;
  }
  entries_.push_front(Entry{*name, *minted});
  index_.emplace(*name, entries_.begin());
  if (entries_.size() > options_.capacity) {
    index_.erase(entries_.back().server_name);
    entries_.pop_back();
  }
  return *minted;
}

size_t LeafCertificateCache::size() const {
  std::lock_guard lock(mutex_);
  return entries_.size();
}

}  // namespace zoogate::proxy
