// Signed manifests: the DSSE pre-authentication encoding, the OMS statement, the Sigstore bundle, and
// what opening a signed manifest refuses.
#include "mtd/dsse.h"

#include <gtest/gtest.h>

#include "common/encoding.h"
#include "tests/mtd/integrity_support.h"

namespace zoogate::mtd {
namespace {

using nlohmann::json;
using testing::archive_of;
using testing::new_key;
using testing::sanitize_bytes;
using testing::StateDictBuilder;

ArtifactManifest small_manifest() {
  StateDictBuilder builder;
  builder.add("w", {2, 2});
  return ArtifactManifest{"model.pt", {testing::sanitized_file_manifest(sanitize_bytes(archive_of(builder.tree())))}};
}

json parse(std::string_view text) { return json::parse(text, nullptr, false); }

std::span<const uint8_t> bytes_of(std::string_view text) {
  return {reinterpret_cast<const uint8_t*>(text.data()), text.size()};
}

json payload_of(const json& bundle) {
  auto payload = from_base64(bundle["dsseEnvelope"]["payload"].get<std::string>());
  return parse(std::string_view(reinterpret_cast<const char*>(payload->data()), payload->size()));
}

std::string with_payload(json bundle, const json& statement) {
  bundle["dsseEnvelope"]["payload"] = to_base64(bytes_of(canonical_json(statement)));
  return bundle.dump();
}

TEST(Dsse, PreAuthenticationEncodingIsTheDsseV1Format) {
  EXPECT_EQ(pre_authentication_encoding("application/vnd.in-toto+json", "{}"),
            "DSSEv1 28 application/vnd.in-toto+json 2 {}");
  EXPECT_EQ(pre_authentication_encoding("", ""), "DSSEv1 0  0 ");
  // Lengths count bytes, not characters.
  EXPECT_EQ(pre_authentication_encoding("t", "\xc3\xa9"), "DSSEv1 1 t 2 \xc3\xa9");
}

TEST(Dsse, StatementFollowsTheOpenSsfModelSigningFormat) {
  ArtifactManifest manifest = small_manifest();
  json statement = manifest_statement(manifest);
  EXPECT_EQ(statement["_type"], "https://in-toto.io/Statement/v1");
  EXPECT_EQ(statement["predicateType"], "https://model_signing/signature/v1.0");
  const json& resources = statement["predicate"]["resources"];
  ASSERT_EQ(resources.size(), 1u);
  EXPECT_EQ(resources[0]["name"], ".");
  EXPECT_EQ(resources[0]["algorithm"], "sha256");
  EXPECT_EQ(resources[0]["digest"], to_hex(manifest.files[0].facts.sha256));
  // The root digest is SHA-256 over the resources' raw digests in order.
  EXPECT_EQ(statement["subject"][0]["name"], "model.pt");
  EXPECT_EQ(statement["subject"][0]["digest"]["sha256"], to_hex(Sha256::of(manifest.files[0].facts.sha256)));
  EXPECT_EQ(statement["predicate"]["serialization"]["method"], "files");
  EXPECT_EQ(statement["predicate"]["serialization"]["hash_type"], "sha256");
  EXPECT_EQ(statement["predicate"]["zoogate"]["type"], "https://zoogate.dev/manifest/v1");
  // Canonical: the same manifest always serializes to the same bytes, keys sorted, no whitespace.
  const std::string text = canonical_json(statement);
  EXPECT_EQ(text, canonical_json(manifest_statement(manifest)));
  EXPECT_EQ(text.find_first_of(" \n"), std::string::npos);
  EXPECT_TRUE(text.starts_with(R"({"_type":)"));
}

TEST(Dsse, SignedBundleOpensWithTheKeyAndCarriesTheOmsKeyHint) {
  PrivateKey key = new_key();
  ArtifactManifest manifest = small_manifest();
  auto bundle_text = sign_manifest(manifest, key);
  ASSERT_TRUE(bundle_text) << bundle_text.error().describe();
  json bundle = parse(*bundle_text);
  EXPECT_EQ(bundle["mediaType"], "application/vnd.dev.sigstore.bundle.v0.3+json");
  EXPECT_EQ(bundle["verificationMaterial"]["publicKey"]["hint"], to_hex(Sha256::of(key.public_key().pem())));
  const json& envelope = bundle["dsseEnvelope"];
  EXPECT_EQ(envelope["payloadType"], "application/vnd.in-toto+json");
  EXPECT_EQ(envelope["signatures"][0]["keyid"], key.public_key().key_id());
  EXPECT_EQ(payload_of(bundle), manifest_statement(manifest));

  auto opened = open_signed_manifest(*bundle_text, key.public_key());
  ASSERT_TRUE(opened) << opened.error().describe();
  EXPECT_EQ(opened->key_id, key.public_key().key_id());
  EXPECT_EQ(canonical_json(manifest_to_json(opened->manifest)), canonical_json(manifest_to_json(manifest)));
  // A bare DSSE envelope opens too.
  EXPECT_TRUE(open_signed_manifest(envelope.dump(), key.public_key()));
}

TEST(Dsse, ChangedPayloadOtherKeysAndMalformedInputDoNotOpen) {
  PrivateKey key = new_key();
  auto bundle_text = sign_manifest(small_manifest(), key);
  ASSERT_TRUE(bundle_text);
  const json bundle = parse(*bundle_text);

  json statement = payload_of(bundle);
  statement["predicate"]["zoogate"]["files"][0]["tensors"][0]["sha256"] = std::string(64, '0');
  auto edited = open_signed_manifest(with_payload(bundle, statement), key.public_key());
  ASSERT_FALSE(edited);
  EXPECT_EQ(edited.error().code, ErrorCode::kIntegrity);

  auto other_key = open_signed_manifest(*bundle_text, new_key().public_key());
  ASSERT_FALSE(other_key);
  EXPECT_EQ(other_key.error().code, ErrorCode::kIntegrity);

  json unsigned_bundle = bundle;
  unsigned_bundle["dsseEnvelope"]["signatures"] = json::array();
  EXPECT_EQ(open_signed_manifest(unsigned_bundle.dump(), key.public_key()).error().code, ErrorCode::kIntegrity);

  for (std::string_view malformed : {"", "[]", "{\"dsseEnvelope\": 3}", "{\"payloadType\": \"x\"}",
                                     R"({"payloadType":"x","payload":"!!!!","signatures":[]})"}) {
    auto opened = open_signed_manifest(malformed, key.public_key());
    ASSERT_FALSE(opened) << malformed;
    EXPECT_EQ(opened.error().code, ErrorCode::kParse) << malformed;
  }
}

// A statement signed by the right key must still be consistent: its OMS part is what other tools check.
TEST(Dsse, SignedButInconsistentStatementsAreRefused) {
  PrivateKey key = new_key();
  const json statement = manifest_statement(small_manifest());
  auto sign_statement = [&](const json& body) {
    const std::string payload = canonical_json(body);
    auto signature = key.sign(bytes_of(pre_authentication_encoding(kInTotoPayloadType, payload)));
    json envelope = {{"payloadType", kInTotoPayloadType},
                     {"payload", to_base64(bytes_of(payload))},
                     {"signatures", json::array({{{"keyid", ""}, {"sig", to_base64(*signature)}}})}};
    return envelope.dump();
  };
  ASSERT_TRUE(open_signed_manifest(sign_statement(statement), key.public_key()));

  std::vector<json> broken(5, statement);
  broken[0]["predicate"]["resources"][0]["digest"] = std::string(64, 'a');
  broken[1]["subject"][0]["digest"]["sha256"] = std::string(64, 'a');
  broken[2]["predicateType"] = "https://example.com/other";
  broken[3]["predicate"].erase("zoogate");
  broken[4]["_type"] = "https://in-toto.io/Statement/v0.1";
  for (size_t i = 0; i < broken.size(); ++i) {
    auto opened = open_signed_manifest(sign_statement(broken[i]), key.public_key());
    ASSERT_FALSE(opened) << i;
    EXPECT_EQ(opened.error().code, ErrorCode::kParse) << i;
  }
}

}  // namespace
}  // namespace zoogate::mtd
