// The interception CA of the egress proxy (DESIGN.md section 6): creating it, loading it (zoogate's
// own or the operator's), and the short-lived leaf certificates zoogate presents to clients for the
// hosts it intercepts.
//
// Keys: the CA key only ever signs certificates. Every leaf carries one EC P-256 key pair that
// zoogate generates when it loads the CA and keeps in memory only, so the CA key is never used for
// TLS, and a leaked leaf key (process memory) cannot sign anything and dies with the process.
//
// Thread safety: CertificateAuthority and LeafCertificate are immutable after construction; every
// const member function may be called from any number of threads at once. LeafCertificateCache is
// internally synchronized (see there).
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "common/error.h"

struct evp_pkey_st;  // OpenSSL's EVP_PKEY
struct x509_st;      // OpenSSL's X509

namespace zoogate::proxy {

enum class CaKeyType { kEcP256, kRsa3072 };

inline constexpr std::string_view kDefaultCaName = "zoogate interception CA";
inline constexpr std::chrono::days kDefaultCaValidity{3650};
inline constexpr std::chrono::days kMaxCaValidity{7300};
// A CA certificate file may hold the CA and the chain above it (an operator's subordinate CA).
inline constexpr size_t kMaxCaChainLength = 8;

// Creates a self-signed CA: a new key of `key_type`, basicConstraints CA:TRUE (critical), keyUsage
// keyCertSign and cRLSign (critical), subject and authority key identifiers, subject CN
// `subject_name` (1 to 64 bytes of printable UTF-8), valid from an hour ago for `validity` (1 day
// to kMaxCaValidity).
//
// The key is written PKCS#8 PEM with mode 0600, the certificate PEM with mode 0644 (less the
// umask). Each file is written under a temporary name, synced, and published with link(2), which
// fails if the name exists: an existing file is never overwritten, and no reader ever sees a
// partial file. If the certificate cannot be published, the key written for it is removed again.
// kInvalidArgument when either path exists already.
Status create_ca(const std::string& cert_path, const std::string& key_path, std::string_view subject_name,
                 std::chrono::days validity, CaKeyType key_type = CaKeyType::kEcP256);

// The canonical form of a name zoogate may mint a leaf for, used as the cache key and in the SAN:
// - a host name per RFC 1123 (labels of letters, digits and inner hyphens, 1 to 63 characters each,
//   at most 253 in all, the last label not all digits), lowercased, one trailing dot dropped;
// - an IPv4 or IPv6 literal (the latter with or without brackets), in its canonical text.
// Wildcards, underscores, empty labels and anything else are refused with kInvalidArgument.
Result<std::string> canonical_server_name(std::string_view server_name);

// One leaf certificate with its key and the chain to send after it.
class LeafCertificate {
 public:
  LeafCertificate(std::shared_ptr<x509_st> certificate, std::shared_ptr<evp_pkey_st> private_key,
                  std::vector<std::shared_ptr<x509_st>> chain, std::string chain_pem,
                  std::chrono::system_clock::time_point not_after);

  // For SSL_use_certificate(), SSL_use_PrivateKey() and SSL_add1_chain_cert() (which take their own
  // references). The objects must not be modified.
  x509_st* certificate() const { return certificate_.get(); }
  evp_pkey_st* private_key() const { return private_key_.get(); }
  const std::vector<std::shared_ptr<x509_st>>& chain() const { return chain_; }
  // The leaf followed by the chain, PEM.
  const std::string& chain_pem() const { return chain_pem_; }
  std::chrono::system_clock::time_point not_after() const { return not_after_; }

 private:
  std::shared_ptr<x509_st> certificate_;
  std::shared_ptr<evp_pkey_st> private_key_;
  std::vector<std::shared_ptr<x509_st>> chain_;
  std::string chain_pem_;
  std::chrono::system_clock::time_point not_after_;
};

class CertificateAuthority {
 public:
  // Reads a CA certificate file (the CA first, optionally followed by the chain above it) and the
  // CA's unencrypted private key (EC or RSA of at least 2048 bits). Refused: a key that does not
  // belong to the certificate, a certificate that is not a CA (basicConstraints CA:TRUE, and
  // keyCertSign when keyUsage is present), one that is expired or not yet valid. Generates the leaf
  // key.
  static Result<CertificateAuthority> load(const std::string& cert_path, const std::string& key_path);

  // A new leaf for `server_name` (see canonical_server_name): subjectAltName DNS or IP accordingly
  // (the CN too when the name fits in 64 characters), extendedKeyUsage serverAuth, keyUsage
  // digitalSignature, CA:FALSE, a random 128-bit serial, subject and authority key identifiers,
  // signed with SHA-256.
  //
  // Valid from one hour before now: a client whose clock runs a little behind zoogate's would
  // otherwise reject a certificate minted a moment ago as "not yet valid". Valid until now +
  // `lifetime`, but never past the CA's own notAfter (a leaf outliving its issuer fails to verify).
  Result<std::shared_ptr<const LeafCertificate>> mint_leaf(std::string_view server_name,
                                                          std::chrono::seconds lifetime) const;

  // The CA certificate's SHA-256 fingerprint, "AB:CD:...", as `openssl x509 -fingerprint -sha256`
  // prints it (for checking a certificate installed on a client).
  std::string sha256_fingerprint() const;
  std::chrono::system_clock::time_point not_after() const { return not_after_; }

 private:
  CertificateAuthority() = default;

  std::shared_ptr<x509_st> certificate_;
  std::vector<std::shared_ptr<x509_st>> chain_;  // the CA and the certificates above it
  std::string chain_pem_;
  std::shared_ptr<evp_pkey_st> ca_key_;
  std::shared_ptr<evp_pkey_st> leaf_key_;
  std::chrono::system_clock::time_point not_after_;
};

// Told about cache activity, for metrics. Called from whatever thread called get(), outside the
// cache's lock, so an implementation must be thread-safe and may be slow without blocking others.
class CertificateCacheListener {
 public:
  virtual ~CertificateCacheListener() = default;
  virtual void on_certificate_cache_hit() = 0;
  virtual void on_certificate_minted() = 0;
};

struct LeafCacheOptions {
  size_t capacity = 1024;                        // leaves kept; the least recently used goes first
  std::chrono::seconds leaf_lifetime = std::chrono::hours(24);
  // A cached leaf this close to its notAfter (but at most half its lifetime) is minted again, so
  // that no client gets a certificate that expires during its connection.
  std::chrono::seconds renew_before = std::chrono::hours(1);
  // The time to judge expiry by (tests move it forward).
  std::function<std::chrono::system_clock::time_point()> now = [] { return std::chrono::system_clock::now(); };
};

// A bounded LRU of leaves by canonical server name.
//
// Thread safety: get() may be called from any number of threads. One mutex guards the LRU list and
// map and is held only for lookups and insertions, not while minting, so a slow mint (an RSA CA key
// takes milliseconds) never blocks hits for other names. Two threads missing the same name at once
// may both mint; the first to insert wins and both callers get that leaf. Returned leaves are shared
// and immutable and stay valid after eviction for as long as a caller holds them.
class LeafCertificateCache {
 public:
  // `authority` and `listener` (which may be null) must outlive the cache. kInvalidArgument for a
  // zero capacity or a lifetime that is not positive.
  static Result<std::unique_ptr<LeafCertificateCache>> create(const CertificateAuthority& authority,
                                                              LeafCacheOptions options,
                                                              CertificateCacheListener* listener);

  // The cached leaf for `server_name`, or a new one; kInvalidArgument for a name
  // canonical_server_name() refuses (nothing is minted for it).
  Result<std::shared_ptr<const LeafCertificate>> get(std::string_view server_name);

  size_t size() const;

 private:
  struct Entry {
    std::string server_name;
    std::shared_ptr<const LeafCertificate> leaf;
  };

  LeafCertificateCache(const CertificateAuthority& authority, LeafCacheOptions options,
                       CertificateCacheListener* listener);
  bool is_fresh(const LeafCertificate& leaf) const;

  const CertificateAuthority& authority_;
  const LeafCacheOptions options_;
  const std::chrono::seconds renewal_margin_;  // renew_before, at most half the leaf lifetime
  CertificateCacheListener* const listener_;

  mutable std::mutex mutex_;  // guards entries_ and index_
  std::list<Entry> entries_;                                            // most recently used first
  std::unordered_map<std::string, std::list<Entry>::iterator> index_;  // server name -> its entry
};

}  // namespace zoogate::proxy
