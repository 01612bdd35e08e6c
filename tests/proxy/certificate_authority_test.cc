#include "proxy/certificate_authority.h"

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <sys/stat.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "common/openssl_ptr.h"
#include "tests/common/temporary_folder.h"

namespace zoogate::proxy {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using Clock = std::chrono::system_clock;
using zoogate::testing::TemporaryFolder;

using Bio = OpenSslPtr<BIO, BIO_free>;
using Certificate = OpenSslPtr<X509, X509_free>;
using Key = OpenSslPtr<EVP_PKEY, EVP_PKEY_free>;
using Store = OpenSslPtr<X509_STORE, X509_STORE_free>;
using StoreContext = OpenSslPtr<X509_STORE_CTX, X509_STORE_CTX_free>;
using GeneralNames = OpenSslPtr<GENERAL_NAMES, GENERAL_NAMES_free>;
using ExtendedKeyUsage = OpenSslPtr<EXTENDED_KEY_USAGE, EXTENDED_KEY_USAGE_free>;

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream content;
  content << in.rdbuf();
  return content.str();
}

Certificate certificate_from_pem(std::string_view pem) {
  Bio bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  return Certificate(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
}

unsigned file_mode(const std::string& path) {
  struct stat status {};
  EXPECT_EQ(::stat(path.c_str(), &status), 0) << path;
  return status.st_mode & 07777;
}

// X509_verify_cert of `leaf` against `ca` as the only trust anchor, as a TLS client checks a server:
// purpose serverAuth, the host name or IP address, and OpenSSL's strict checks (those that Python
// 3.13 turns on by default).
std::string verify(X509* leaf, X509* ca, std::string_view name, bool is_ip) {
  Store store(X509_STORE_new());
  StoreContext context(X509_STORE_CTX_new());
  X509_STORE_add_cert(store.get(), ca);
  X509_STORE_CTX_init(context.get(), store.get(), leaf, nullptr);
  X509_VERIFY_PARAM* parameters = X509_STORE_CTX_get0_param(context.get());
  X509_VERIFY_PARAM_set_purpose(parameters, X509_PURPOSE_SSL_SERVER);
  X509_VERIFY_PARAM_set_flags(parameters, X509_V_FLAG_X509_STRICT);
  if (is_ip) {
    X509_VERIFY_PARAM_set1_ip_asc(parameters, std::string(name).c_str());
  } else {
    X509_VERIFY_PARAM_set1_host(parameters, name.data(), name.size());
  }
  if (X509_verify_cert(context.get()) == 1) return "ok";
  return X509_verify_cert_error_string(X509_STORE_CTX_get_error(context.get()));
}

std::vector<std::string> alternative_names(X509* certificate) {
  std::vector<std::string> names;
  GeneralNames general_names(
      static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(certificate, NID_subject_alt_name, nullptr, nullptr)));
  for (int i = 0; general_names && i < sk_GENERAL_NAME_num(general_names.get()); ++i) {
    const GENERAL_NAME* name = sk_GENERAL_NAME_value(general_names.get(), i);
    if (name->type == GEN_DNS) {
      names.push_back("DNS:" + std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(name->d.dNSName)),
                                           static_cast<size_t>(ASN1_STRING_length(name->d.dNSName))));
    } else if (name->type == GEN_IPADD) {
      names.push_back("IP bytes:" + std::to_string(ASN1_STRING_length(name->d.iPAddress)));
    }
  }
  return names;
}

std::string common_name(X509* certificate) {
  char text[256] = {};
  int length = X509_NAME_get_text_by_NID(X509_get_subject_name(certificate), NID_commonName, text, sizeof text);
  return length < 0 ? "" : std::string(text, static_cast<size_t>(length));
}

Clock::time_point time_of(const ASN1_TIME* time) {
  std::tm broken_down{};
  EXPECT_EQ(ASN1_TIME_to_tm(time, &broken_down), 1);
  return Clock::from_time_t(timegm(&broken_down));
}

// One EC CA for the tests that do not care how it was made.
class CertificateAuthorityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto created = create_ca(cert_path_, key_path_, "zoogate test CA", std::chrono::days(30));
    ASSERT_TRUE(created) << created.error().describe();
    auto loaded = CertificateAuthority::load(cert_path_, key_path_);
    ASSERT_TRUE(loaded) << loaded.error().describe();
    authority_.emplace(std::move(*loaded));
    ca_ = certificate_from_pem(read_text(cert_path_));
    ASSERT_TRUE(ca_);
  }

  std::shared_ptr<const LeafCertificate> mint(std::string_view name,
                                              std::chrono::seconds lifetime = std::chrono::hours(24)) {
    auto leaf = authority_->mint_leaf(name, lifetime);
    EXPECT_TRUE(leaf) << name << ": " << (leaf ? "" : leaf.error().describe());
    return leaf ? *leaf : nullptr;
  }

  TemporaryFolder folder_;
  std::string cert_path_ = folder_.file("ca.pem");
  std::string key_path_ = folder_.file("ca.key");
  std::optional<CertificateAuthority> authority_;
  Certificate ca_;
};

TEST_F(CertificateAuthorityTest, CreatesAPrivateKeyAndAStrictCaCertificate) {
  EXPECT_EQ(file_mode(key_path_), 0600u);
  EXPECT_THAT(read_text(key_path_), HasSubstr("-----BEGIN PRIVATE KEY-----"));
  EXPECT_EQ(common_name(ca_.get()), "zoogate test CA");
  const uint32_t flags = X509_get_extension_flags(ca_.get());
  EXPECT_TRUE(flags & EXFLAG_CA);
  EXPECT_TRUE(flags & EXFLAG_SS);
  EXPECT_EQ(X509_get_key_usage(ca_.get()), static_cast<uint32_t>(KU_KEY_CERT_SIGN | KU_CRL_SIGN));
  ASSERT_NE(X509_get0_subject_key_id(ca_.get()), nullptr);
  ASSERT_NE(X509_get0_authority_key_id(ca_.get()), nullptr);
  EXPECT_EQ(ASN1_OCTET_STRING_cmp(X509_get0_authority_key_id(ca_.get()), X509_get0_subject_key_id(ca_.get())), 0);
  int critical = 0;
  BASIC_CONSTRAINTS_free(
      static_cast<BASIC_CONSTRAINTS*>(X509_get_ext_d2i(ca_.get(), NID_basic_constraints, &critical, nullptr)));
  EXPECT_EQ(critical, 1);
  // Backdated an hour, valid for the days asked.
  const auto now = Clock::now();
  const auto not_before = time_of(X509_get0_notBefore(ca_.get()));
  EXPECT_LT(not_before, now - std::chrono::minutes(59));
  EXPECT_GT(not_before, now - std::chrono::minutes(61));
  EXPECT_NEAR(std::chrono::duration<double>(authority_->not_after() - now).count(),
              std::chrono::duration<double>(std::chrono::days(30)).count(), 60);
  // The CA verifies as its own trust anchor under the strict checks.
  Store store(X509_STORE_new());
  StoreContext context(X509_STORE_CTX_new());
  X509_STORE_add_cert(store.get(), ca_.get());
  X509_STORE_CTX_init(context.get(), store.get(), ca_.get(), nullptr);
  X509_VERIFY_PARAM_set_flags(X509_STORE_CTX_get0_param(context.get()), X509_V_FLAG_X509_STRICT);
  EXPECT_EQ(X509_verify_cert(context.get()), 1)
      << X509_verify_cert_error_string(X509_STORE_CTX_get_error(context.get()));
}

TEST_F(CertificateAuthorityTest, FingerprintMatchesTheCertificate) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  ASSERT_EQ(X509_digest(ca_.get(), EVP_sha256(), digest, &length), 1);
  char first_byte[3];
  std::snprintf(first_byte, sizeof first_byte, "%02X", digest[0]);
  const std::string fingerprint = authority_->sha256_fingerprint();
  EXPECT_EQ(fingerprint.size(), 32u * 3 - 1);
  EXPECT_EQ(fingerprint.substr(0, 2), first_byte);
}

TEST_F(CertificateAuthorityTest, NeverOverwritesAnExistingFile) {
  const std::string cert_before = read_text(cert_path_);
  const std::string key_before = read_text(key_path_);
  auto again = create_ca(cert_path_, key_path_, "other", std::chrono::days(1));
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error().code, ErrorCode::kInvalidArgument);
  EXPECT_THAT(again.error().message, HasSubstr("exists"));
  EXPECT_EQ(read_text(cert_path_), cert_before);
  EXPECT_EQ(read_text(key_path_), key_before);

  // Only the certificate exists: no key is written either.
  const std::string new_key = folder_.file("new.key");
  EXPECT_FALSE(create_ca(cert_path_, new_key, "other", std::chrono::days(1)));
  EXPECT_FALSE(fs::exists(new_key));
  // Only the key exists.
  const std::string new_cert = folder_.file("new.pem");
  EXPECT_FALSE(create_ca(new_cert, key_path_, "other", std::chrono::days(1)));
  EXPECT_FALSE(fs::exists(new_cert));
  EXPECT_EQ(read_text(key_path_), key_before);
  // No temporary files are left behind.
  size_t files = 0;
  for (const auto& entry : fs::directory_iterator(folder_.file(""))) files += entry.is_regular_file() ? 1 : 0;
  EXPECT_EQ(files, 2u);
}

TEST_F(CertificateAuthorityTest, RefusesBadCreateArguments) {
  EXPECT_FALSE(create_ca(folder_.file("a.pem"), folder_.file("a.key"), "", std::chrono::days(1)));
  EXPECT_FALSE(create_ca(folder_.file("a.pem"), folder_.file("a.key"), std::string(65, 'x'), std::chrono::days(1)));
  EXPECT_FALSE(create_ca(folder_.file("a.pem"), folder_.file("a.key"), "line\nbreak", std::chrono::days(1)));
  EXPECT_FALSE(create_ca(folder_.file("a.pem"), folder_.file("a.key"), "\xff\xfe", std::chrono::days(1)));
  EXPECT_FALSE(create_ca(folder_.file("a.pem"), folder_.file("a.key"), "CA", std::chrono::days(0)));
  EXPECT_FALSE(create_ca(folder_.file("a.pem"), folder_.file("a.pem"), "CA", std::chrono::days(1)));
  EXPECT_FALSE(create_ca(folder_.file("missing/a.pem"), folder_.file("missing/a.key"), "CA", std::chrono::days(1)));
  EXPECT_FALSE(fs::exists(folder_.file("a.pem")));
  EXPECT_FALSE(fs::exists(folder_.file("a.key")));
}

TEST_F(CertificateAuthorityTest, MintsALeafForAHostNameThatVerifiesAgainstTheCa) {
  auto leaf = mint("huggingface.co");
  ASSERT_TRUE(leaf);
  EXPECT_EQ(verify(leaf->certificate(), ca_.get(), "huggingface.co", false), "ok");
  EXPECT_NE(verify(leaf->certificate(), ca_.get(), "hf.co", false), "ok");
  EXPECT_THAT(alternative_names(leaf->certificate()), ::testing::ElementsAre("DNS:huggingface.co"));
  EXPECT_EQ(common_name(leaf->certificate()), "huggingface.co");

  // serverAuth only, not a CA, issued by the CA with its key identifier.
  ExtendedKeyUsage usages(
      static_cast<EXTENDED_KEY_USAGE*>(X509_get_ext_d2i(leaf->certificate(), NID_ext_key_usage, nullptr, nullptr)));
  ASSERT_TRUE(usages);
  ASSERT_EQ(sk_ASN1_OBJECT_num(usages.get()), 1);
  EXPECT_EQ(OBJ_obj2nid(sk_ASN1_OBJECT_value(usages.get(), 0)), NID_server_auth);
  EXPECT_EQ(X509_check_ca(leaf->certificate()), 0);
  EXPECT_EQ(X509_check_issued(ca_.get(), leaf->certificate()), X509_V_OK);
  ASSERT_NE(X509_get0_authority_key_id(leaf->certificate()), nullptr);
  EXPECT_EQ(ASN1_OCTET_STRING_cmp(X509_get0_authority_key_id(leaf->certificate()),
                                  X509_get0_subject_key_id(ca_.get())),
            0);

  // A 128-bit random serial.
  const ASN1_INTEGER* serial = X509_get0_serialNumber(leaf->certificate());
  EXPECT_GE(ASN1_STRING_length(serial), 14);
  EXPECT_NE(ASN1_INTEGER_cmp(serial, X509_get0_serialNumber(mint("huggingface.co")->certificate())), 0);

  // The chain after the leaf is the CA; the PEM holds both.
  ASSERT_EQ(leaf->chain().size(), 1u);
  EXPECT_EQ(X509_cmp(leaf->chain().front().get(), ca_.get()), 0);
  auto first = certificate_from_pem(leaf->chain_pem());
  ASSERT_TRUE(first);
  EXPECT_EQ(X509_cmp(first.get(), leaf->certificate()), 0);
  EXPECT_THAT(leaf->chain_pem(), HasSubstr(read_text(cert_path_)));
}

TEST_F(CertificateAuthorityTest, LeafLifetimeIsBackdatedAndBounded) {
  const auto now = Clock::now();
  auto leaf = mint("hf.co", std::chrono::hours(6));
  ASSERT_TRUE(leaf);
  const auto not_before = time_of(X509_get0_notBefore(leaf->certificate()));
  const auto not_after = time_of(X509_get0_notAfter(leaf->certificate()));
  EXPECT_EQ(not_after, leaf->not_after());
  EXPECT_LE(not_before, now - std::chrono::minutes(59));
  EXPECT_GE(not_before, now - std::chrono::minutes(61));
  EXPECT_GE(not_after, now + std::chrono::hours(6) - std::chrono::seconds(2));
  EXPECT_LE(not_after, now + std::chrono::hours(6) + std::chrono::seconds(60));

  // Never past the CA's own end of validity (30 days here).
  auto long_lived = mint("hf.co", std::chrono::hours(24 * 365));
  ASSERT_TRUE(long_lived);
  EXPECT_EQ(long_lived->not_after(), authority_->not_after());
  EXPECT_EQ(verify(long_lived->certificate(), ca_.get(), "hf.co", false), "ok");

  EXPECT_FALSE(authority_->mint_leaf("hf.co", std::chrono::seconds(0)));
}

TEST_F(CertificateAuthorityTest, LeafKeyIsZoogatesOwnSharedByAllLeavesAndNotTheCaKey) {
  auto first = mint("huggingface.co");
  auto second = mint("cdn-lfs.hf.co");
  ASSERT_TRUE(first && second);
  EXPECT_EQ(X509_check_private_key(first->certificate(), first->private_key()), 1);
  EXPECT_EQ(EVP_PKEY_eq(first->private_key(), second->private_key()), 1);
  EXPECT_TRUE(EVP_PKEY_is_a(first->private_key(), "EC"));
  EXPECT_EQ(EVP_PKEY_get_bits(first->private_key()), 256);

  Bio key_bio(BIO_new_file(key_path_.c_str(), "r"));
  Key ca_key(PEM_read_bio_PrivateKey(key_bio.get(), nullptr, nullptr, nullptr));
  ASSERT_TRUE(ca_key);
  EXPECT_NE(EVP_PKEY_eq(first->private_key(), ca_key.get()), 1);
  EXPECT_NE(EVP_PKEY_eq(X509_get0_pubkey(first->certificate()), X509_get0_pubkey(ca_.get())), 1);
}

TEST_F(CertificateAuthorityTest, MintsLeavesForIpLiterals) {
  for (const char* name : {"127.0.0.1", "::1", "[::1]", "2001:db8::5"}) {
    auto leaf = mint(name);
    ASSERT_TRUE(leaf) << name;
    std::string address = name;
    if (address.front() == '[') address = address.substr(1, address.size() - 2);
    EXPECT_EQ(verify(leaf->certificate(), ca_.get(), address, true), "ok") << name;
    const bool is_v6 = address.find(':') != std::string::npos;
    EXPECT_THAT(alternative_names(leaf->certificate()),
                ::testing::ElementsAre(is_v6 ? "IP bytes:16" : "IP bytes:4"))
        << name;
  }
}

TEST_F(CertificateAuthorityTest, NamesLongerThanACommonNameGetAnEmptySubjectAndACriticalSan) {
  const std::string name = std::string(60, 'a') + "." + std::string(60, 'b') + ".example";
  auto leaf = mint(name);
  ASSERT_TRUE(leaf);
  EXPECT_EQ(X509_NAME_entry_count(X509_get_subject_name(leaf->certificate())), 0);
  int critical = 0;
  GeneralNames names(
      static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(leaf->certificate(), NID_subject_alt_name, &critical, nullptr)));
  EXPECT_EQ(critical, 1);
  EXPECT_EQ(verify(leaf->certificate(), ca_.get(), name, false), "ok");
}

TEST(ServerNames, AreCanonicalized) {
  EXPECT_EQ(canonical_server_name("HuggingFace.CO"), "huggingface.co");
  EXPECT_EQ(canonical_server_name("hf.co."), "hf.co");
  EXPECT_EQ(canonical_server_name("localhost"), "localhost");
  EXPECT_EQ(canonical_server_name("xn--bcher-kva.example"), "xn--bcher-kva.example");
  EXPECT_EQ(canonical_server_name("3com.com"), "3com.com");
  EXPECT_EQ(canonical_server_name("[::1]"), "::1");
  EXPECT_EQ(canonical_server_name("::FFFF:1.2.3.4"), "::ffff:1.2.3.4");
  EXPECT_EQ(canonical_server_name("2001:DB8:0:0::1"), "2001:db8::1");
  EXPECT_EQ(canonical_server_name("10.0.0.1"), "10.0.0.1");
  EXPECT_EQ(canonical_server_name(std::string(63, 'a') + ".co"), std::string(63, 'a') + ".co");
}

TEST(ServerNames, RefusesWildcardsAndAnythingNotAHostNameOrIpLiteral) {
  std::string longest = std::string(63, 'a') + "." + std::string(63, 'b') + "." + std::string(63, 'c') + "." +
                        std::string(61, 'd');  // 253 characters
  ASSERT_EQ(longest.size(), 253u);
  EXPECT_TRUE(canonical_server_name(longest));
  for (const std::string& bad : {
           std::string(""), std::string("."), std::string("*.hf.co"), std::string("*"), std::string("a*.hf.co"),
           std::string("a..b"), std::string(".hf.co"), std::string("hf.co.."), std::string("-hf.co"),
           std::string("hf-.co"), std::string("a_b.example"), std::string("exa mple.com"),
           std::string("hf.co\0.evil", 11), std::string("b\xc3\xbc" "cher.example"), std::string("hf.co:443"),
           std::string("1.2.3"), std::string("0x7f.1"), std::string("127.1"), std::string("999.1.1.1"),
           std::string("fe80::1%eth0"), std::string("[hf.co]"), std::string("[1.2.3.4]"), std::string("[::1"),
           std::string(64, 'a') + ".co", longest + "e", std::string("hf.co/path"), std::string("DNS:x,IP:1.2.3.4"),
       }) {
    auto canonical = canonical_server_name(bad);
    EXPECT_FALSE(canonical) << bad << " -> " << (canonical ? *canonical : "");
    if (!canonical) {
      EXPECT_EQ(canonical.error().code, ErrorCode::kInvalidArgument);
    }
  }
}

TEST_F(CertificateAuthorityTest, MintingRefusesBadNames) {
  for (const char* bad : {"*.hf.co", "", "a..b", "evil.example,DNS:hf.co"}) {
    EXPECT_FALSE(authority_->mint_leaf(bad, std::chrono::hours(1))) << bad;
  }
}

TEST(CertificateAuthorityLoad, RefusesAKeyOfAnotherCertificate) {
  TemporaryFolder folder;
  ASSERT_TRUE(create_ca(folder.file("a.pem"), folder.file("a.key"), "A", std::chrono::days(1)));
  ASSERT_TRUE(create_ca(folder.file("b.pem"), folder.file("b.key"), "B", std::chrono::days(1)));
  auto mixed = CertificateAuthority::load(folder.file("a.pem"), folder.file("b.key"));
  ASSERT_FALSE(mixed);
  EXPECT_THAT(mixed.error().message, HasSubstr("is not the key of the certificate"));
}

TEST(CertificateAuthorityLoad, RefusesACertificateThatIsNotACa) {
  TemporaryFolder folder;
  ASSERT_TRUE(create_ca(folder.file("ca.pem"), folder.file("ca.key"), "CA", std::chrono::days(1)));
  auto authority = CertificateAuthority::load(folder.file("ca.pem"), folder.file("ca.key"));
  ASSERT_TRUE(authority);
  auto leaf = authority->mint_leaf("leaf.example", std::chrono::hours(1));
  ASSERT_TRUE(leaf);
  {
    std::ofstream(folder.file("leaf.pem")) << (*leaf)->chain_pem().substr(0, (*leaf)->chain_pem().find("-----END"))
                                           << "-----END CERTIFICATE-----\n";
    Bio bio(BIO_new_file(folder.file("leaf.key").c_str(), "w"));
    ASSERT_EQ(PEM_write_bio_PrivateKey(bio.get(), (*leaf)->private_key(), nullptr, nullptr, 0, nullptr, nullptr), 1);
  }
  auto not_a_ca = CertificateAuthority::load(folder.file("leaf.pem"), folder.file("leaf.key"));
  ASSERT_FALSE(not_a_ca);
  EXPECT_THAT(not_a_ca.error().message, HasSubstr("is not a CA certificate"));
}

TEST(CertificateAuthorityLoad, RefusesMissingAndMalformedFiles) {
  TemporaryFolder folder;
  ASSERT_TRUE(create_ca(folder.file("ca.pem"), folder.file("ca.key"), "CA", std::chrono::days(1)));
  EXPECT_EQ(CertificateAuthority::load(folder.file("none.pem"), folder.file("ca.key")).error().code, ErrorCode::kIo);
  std::ofstream(folder.file("junk.pem")) << "not a certificate\n";
  EXPECT_EQ(CertificateAuthority::load(folder.file("junk.pem"), folder.file("ca.key")).error().code,
            ErrorCode::kParse);
  EXPECT_EQ(CertificateAuthority::load(folder.file("ca.pem"), folder.file("junk.pem")).error().code,
            ErrorCode::kParse);
  // The certificate where the key should be.
  EXPECT_FALSE(CertificateAuthority::load(folder.file("ca.pem"), folder.file("ca.pem")));
}

TEST(CertificateAuthorityLoad, AcceptsAnRsaCaAndAChainAfterTheCa) {
  TemporaryFolder folder;
  ASSERT_TRUE(create_ca(folder.file("rsa.pem"), folder.file("rsa.key"), "RSA CA", std::chrono::days(2),
                        CaKeyType::kRsa3072));
  EXPECT_EQ(file_mode(folder.file("rsa.key")), 0600u);
  Bio key_bio(BIO_new_file(folder.file("rsa.key").c_str(), "r"));
  Key rsa_key(PEM_read_bio_PrivateKey(key_bio.get(), nullptr, nullptr, nullptr));
  ASSERT_TRUE(rsa_key);
  EXPECT_TRUE(EVP_PKEY_is_a(rsa_key.get(), "RSA"));
  EXPECT_EQ(EVP_PKEY_get_bits(rsa_key.get()), 3072);

  // An operator's file may carry the chain above its CA; here any second certificate stands in.
  ASSERT_TRUE(create_ca(folder.file("other.pem"), folder.file("other.key"), "Other", std::chrono::days(2)));
  std::ofstream(folder.file("chain.pem")) << read_text(folder.file("rsa.pem")) << read_text(folder.file("other.pem"));
  auto authority = CertificateAuthority::load(folder.file("chain.pem"), folder.file("rsa.key"));
  ASSERT_TRUE(authority) << authority.error().describe();
  auto leaf = authority->mint_leaf("huggingface.co", std::chrono::hours(1));
  ASSERT_TRUE(leaf);
  EXPECT_EQ((*leaf)->chain().size(), 2u);
  auto ca = certificate_from_pem(read_text(folder.file("rsa.pem")));
  EXPECT_EQ(verify((*leaf)->certificate(), ca.get(), "huggingface.co", false), "ok");
  // The leaf key is P-256 even under an RSA CA.
  EXPECT_TRUE(EVP_PKEY_is_a((*leaf)->private_key(), "EC"));
}

class CountingListener : public CertificateCacheListener {
 public:
  void on_certificate_cache_hit() override { ++hits; }
  void on_certificate_minted() override { ++mints; }
  std::atomic<int> hits{0};
  std::atomic<int> mints{0};
};

class LeafCacheTest : public CertificateAuthorityTest {
 protected:
  std::unique_ptr<LeafCertificateCache> make_cache(size_t capacity) {
    LeafCacheOptions options;
    options.capacity = capacity;
    options.leaf_lifetime = std::chrono::hours(2);
    options.renew_before = std::chrono::hours(1);
    options.now = [this] { return start_ + advanced_; };
    auto cache = LeafCertificateCache::create(*authority_, options, &listener_);
    EXPECT_TRUE(cache);
    return cache ? std::move(*cache) : nullptr;
  }
  std::shared_ptr<const LeafCertificate> get(LeafCertificateCache& cache, std::string_view name) {
    auto leaf = cache.get(name);
    EXPECT_TRUE(leaf) << name;
    return leaf ? *leaf : nullptr;
  }

  CountingListener listener_;
  Clock::time_point start_ = Clock::now();
  Clock::duration advanced_{};
};

TEST_F(LeafCacheTest, HitsShareOneLeafPerCanonicalName) {
  auto cache = make_cache(8);
  auto first = get(*cache, "huggingface.co");
  auto second = get(*cache, "HuggingFace.co.");
  EXPECT_EQ(first, second);
  EXPECT_EQ(listener_.mints, 1);
  EXPECT_EQ(listener_.hits, 1);
  EXPECT_EQ(cache->size(), 1u);
  EXPECT_EQ(verify(first->certificate(), ca_.get(), "huggingface.co", false), "ok");
}

TEST_F(LeafCacheTest, EvictsTheLeastRecentlyUsed) {
  auto cache = make_cache(2);
  auto a = get(*cache, "a.example");
  get(*cache, "b.example");
  get(*cache, "a.example");  // a is now more recent than b
  get(*cache, "c.example");  // evicts b
  EXPECT_EQ(cache->size(), 2u);
  EXPECT_EQ(listener_.mints, 3);
  EXPECT_EQ(get(*cache, "a.example"), a);
  EXPECT_EQ(listener_.mints, 3);
  get(*cache, "b.example");  // minted again, evicts c
  EXPECT_EQ(listener_.mints, 4);
  get(*cache, "c.example");
  EXPECT_EQ(listener_.mints, 5);
  // An evicted leaf stays usable by whoever still holds it.
  EXPECT_EQ(verify(a->certificate(), ca_.get(), "a.example", false), "ok");
}

TEST_F(LeafCacheTest, MintsAgainWhenALeafIsCloseToExpiry) {
  auto cache = make_cache(8);
  auto first = get(*cache, "hf.co");
  advanced_ = std::chrono::minutes(50);  // 70 minutes left: more than the one-hour margin
  EXPECT_EQ(get(*cache, "hf.co"), first);
  advanced_ = std::chrono::minutes(61);  // 59 minutes left
  auto renewed = get(*cache, "hf.co");
  EXPECT_NE(renewed, first);
  EXPECT_EQ(listener_.mints, 2);
  EXPECT_EQ(cache->size(), 1u);
}

TEST_F(LeafCacheTest, RefusesBadNamesWithoutMinting) {
  auto cache = make_cache(8);
  for (const char* bad : {"*.hf.co", "", "a..b", "under_score.example"}) {
    auto leaf = cache->get(bad);
    ASSERT_FALSE(leaf) << bad;
    EXPECT_EQ(leaf.error().code, ErrorCode::kInvalidArgument);
  }
  EXPECT_EQ(listener_.mints, 0);
  EXPECT_EQ(cache->size(), 0u);
}

TEST_F(LeafCacheTest, ShortLifetimesRenewAfterHalfTheirLife) {
  LeafCacheOptions options;
  options.leaf_lifetime = std::chrono::minutes(10);  // shorter than the default one-hour margin
  options.now = [this] { return start_ + advanced_; };
  auto cache = LeafCertificateCache::create(*authority_, options, &listener_);
  ASSERT_TRUE(cache);
  auto first = get(**cache, "hf.co");
  advanced_ = std::chrono::minutes(4);
  EXPECT_EQ(get(**cache, "hf.co"), first);
  advanced_ = std::chrono::minutes(6);
  EXPECT_NE(get(**cache, "hf.co"), first);
  EXPECT_EQ(listener_.mints, 2);
}

TEST_F(LeafCacheTest, RefusesUnusableOptions) {
  LeafCacheOptions no_capacity;
  no_capacity.capacity = 0;
  EXPECT_FALSE(LeafCertificateCache::create(*authority_, no_capacity, nullptr));
  LeafCacheOptions no_lifetime;
  no_lifetime.leaf_lifetime = std::chrono::seconds(0);
  EXPECT_FALSE(LeafCertificateCache::create(*authority_, no_lifetime, nullptr));
}

TEST_F(LeafCacheTest, IsSafeFromManyThreads) {
  auto cache = make_cache(4);
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 50; ++i) {
        const std::string name = "host" + std::to_string((i + t) % 6) + ".example";
        auto leaf = cache->get(name);
        if (!leaf || verify((*leaf)->certificate(), ca_.get(), name, false) != "ok") ++failures;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(failures, 0);
  EXPECT_EQ(listener_.hits + listener_.mints, 400);
  EXPECT_LE(cache->size(), 4u);
}

}  // namespace
}  // namespace zoogate::proxy
