#include "proxy/address_policy.h"

#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace zoogate::proxy {
namespace {

using ::testing::HasSubstr;

AddressClass class_of(const std::string& text) {
  return classify_address(boost::asio::ip::make_address(text)).kind;
}

void expect_class(AddressClass expected, std::initializer_list<const char*> addresses) {
  for (const char* text : addresses) {
    EXPECT_EQ(class_of(text), expected) << text << " is " << to_string(class_of(text)) << ", expected "
                                        << to_string(expected);
    EXPECT_EQ(is_public(boost::asio::ip::make_address(text)), expected == AddressClass::kPublic) << text;
  }
}

TEST(AddressClassification, Public) {
  expect_class(AddressClass::kPublic, {"8.8.8.8", "1.1.1.1", "18.160.0.1", "9.255.255.255", "11.0.0.0",
                                       "100.63.255.255", "100.128.0.0", "169.253.255.255", "169.255.0.0",
                                       "172.15.255.255", "172.32.0.0", "192.167.255.255", "192.169.0.0",
                                       "198.17.255.255", "198.20.0.0", "223.255.255.255", "2606:4700::1111",
                                       "2a00:1450:4001::200e", "2001:200::1", "3ffe::1"});
}

TEST(AddressClassification, Unspecified) {
  expect_class(AddressClass::kUnspecified, {"0.0.0.0", "0.1.2.3", "0.255.255.255", "::"});
}

TEST(AddressClassification, Loopback) {
  expect_class(AddressClass::kLoopback, {"127.0.0.1", "127.255.255.254", "127.1.2.3", "::1"});
}

TEST(AddressClassification, PrivateIncludingCarrierGradeNatAndUniqueLocal) {
  expect_class(AddressClass::kPrivate, {"10.0.0.0", "10.255.255.255", "172.16.0.1", "172.31.255.255",
                                        "192.168.0.1", "192.168.255.255", "100.64.0.1", "100.127.255.255",
                                        "fc00::1", "fd12:3456::1", "fdff:ffff::1", "fec0::1"});
}

TEST(AddressClassification, LinkLocal) {
  expect_class(AddressClass::kLinkLocal, {"169.254.0.1", "169.254.169.253", "169.254.255.255", "fe80::1",
                                          "febf:ffff::1"});
}

TEST(AddressClassification, CloudMetadataBeforeTheRangesHoldingIt) {
  expect_class(AddressClass::kCloudMetadata, {"169.254.169.254", "169.254.170.2", "169.254.170.23",
                                              "100.100.100.200", "192.0.0.192", "168.63.129.16",
                                              "fd00:ec2::254", "fd00:ec2::23", "fd20:ce::254"});
}

TEST(AddressClassification, MulticastAndBroadcast) {
  expect_class(AddressClass::kMulticast, {"224.0.0.1", "239.255.255.250", "ff02::1", "ff0e::fb"});
  expect_class(AddressClass::kBroadcast, {"255.255.255.255"});
}

TEST(AddressClassification, Documentation) {
  expect_class(AddressClass::kDocumentation, {"192.0.2.1", "198.51.100.7", "203.0.113.255", "2001:db8::1",
                                              "2001:db8:ffff::1", "3fff::1", "3fff:0fff::1"});
}

TEST(AddressClassification, Reserved) {
  expect_class(AddressClass::kReserved,
               {"240.0.0.1", "254.255.255.255", "198.18.0.1", "198.19.255.255", "192.0.0.8", "192.88.99.1",
                "2001::1", "2001:0:4136:e378:8000:63bf:3fff:fdd2" /* Teredo */, "2001:1ff::1",
                "100::1" /* discard */, "64:ff9b:1::1" /* local-use NAT64 */, "4000::1", "5f00::1",
                "1::1"});
}

TEST(AddressClassification, Ipv4MappedIsClassifiedByTheCarriedAddress) {
  expect_class(AddressClass::kLoopback, {"::ffff:127.0.0.1", "::ffff:7f00:1"});
  expect_class(AddressClass::kPrivate, {"::ffff:10.0.0.1", "::ffff:192.168.1.1", "::ffff:100.64.0.1"});
  expect_class(AddressClass::kCloudMetadata, {"::ffff:169.254.169.254", "::ffff:a9fe:a9fe"});
  expect_class(AddressClass::kLinkLocal, {"::ffff:169.254.1.1"});
  expect_class(AddressClass::kUnspecified, {"::ffff:0.0.0.0"});
  expect_class(AddressClass::kBroadcast, {"::ffff:255.255.255.255"});
  expect_class(AddressClass::kPublic, {"::ffff:8.8.8.8"});

  const auto classification = classify_address(boost::asio::ip::make_address("::ffff:10.1.2.3"));
  ASSERT_TRUE(classification.embedded_ipv4.has_value());
  EXPECT_EQ(classification.embedded_ipv4->to_string(), "10.1.2.3");
  EXPECT_EQ(classification.range, "10.0.0.0/8");
  EXPECT_THAT(std::string(classification.embedding), HasSubstr("IPv4-mapped"));
}

TEST(AddressClassification, OtherIpv4CarryingFormsAreClassifiedByTheCarriedAddress) {
  // IPv4-translated (SIIT), IPv4-compatible, NAT64 well-known prefix, 6to4.
  expect_class(AddressClass::kLoopback, {"::ffff:0:127.0.0.1", "::127.0.0.1", "64:ff9b::127.0.0.1",
                                         "64:ff9b::7f00:1", "2002:7f00:1::", "2002:7f00:0001:1234::5"});
  expect_class(AddressClass::kCloudMetadata, {"::ffff:0:169.254.169.254", "::169.254.169.254",
                                              "64:ff9b::169.254.169.254", "2002:a9fe:a9fe::1"});
  expect_class(AddressClass::kPrivate, {"::10.0.0.1", "64:ff9b::192.168.0.1", "2002:c0a8:0101::1"});
  expect_class(AddressClass::kUnspecified, {"::0.0.0.2", "2002::1"});
  expect_class(AddressClass::kPublic, {"64:ff9b::8.8.8.8", "2002:0808:0808::1", "::ffff:0:1.1.1.1"});

  const auto six_to_four = classify_address(boost::asio::ip::make_address("2002:0a00:0001::1"));
  ASSERT_TRUE(six_to_four.embedded_ipv4.has_value());
  EXPECT_EQ(six_to_four.embedded_ipv4->to_string(), "10.0.0.1");
  EXPECT_THAT(std::string(six_to_four.embedding), HasSubstr("6to4"));
}

TEST(AddressClassification, DescriptionsNameTheRangeAndTheCarrier) {
  EXPECT_EQ(describe_address(boost::asio::ip::make_address("10.1.2.3")), "10.1.2.3 is a private address (10.0.0.0/8)");
  EXPECT_EQ(describe_address(boost::asio::ip::make_address("::")), ":: is an unspecified address (::/128)");
  EXPECT_EQ(describe_address(boost::asio::ip::make_address("8.8.8.8")), "8.8.8.8 is a public address");
  EXPECT_EQ(describe_address(boost::asio::ip::make_address("::ffff:127.0.0.1")),
            "::ffff:127.0.0.1 is a loopback address (127.0.0.0/8, carried as 127.0.0.1 in IPv4-mapped "
            "::ffff:0:0/96)");
}

TEST(AddressClassification, EveryClassHasAName) {
  for (AddressClass kind : {AddressClass::kPublic, AddressClass::kUnspecified, AddressClass::kLoopback,
                            AddressClass::kPrivate, AddressClass::kLinkLocal, AddressClass::kCloudMetadata,
                            AddressClass::kMulticast, AddressClass::kBroadcast, AddressClass::kDocumentation,
                            AddressClass::kReserved}) {
    EXPECT_NE(to_string(kind), "unknown");
  }
}

DestinationVerdict check(const DestinationCheck& destinations, std::string_view host, const std::string& address) {
  return destinations.check(host, boost::asio::ip::make_address(address));
}

TEST(DestinationCheck, PublicAddressesAreAllowedForAnyHost) {
  DestinationCheck destinations({});
  EXPECT_TRUE(check(destinations, "huggingface.co", "18.160.0.1").allowed);
  EXPECT_TRUE(check(destinations, "cdn-lfs.hf.co", "2600:9000::1").allowed);
  EXPECT_TRUE(check(destinations, "8.8.8.8", "8.8.8.8").allowed);
}

TEST(DestinationCheck, NonPublicAddressesAreRefusedByDefault) {
  DestinationCheck destinations({});
  for (const char* address : {"127.0.0.1", "::1", "10.0.0.5", "169.254.1.1", "::ffff:127.0.0.1",
                              "64:ff9b::10.0.0.1", "2002:7f00:1::", "192.0.2.1", "240.0.0.1"}) {
    DestinationVerdict verdict = check(destinations, "evil.example", address);
    EXPECT_FALSE(verdict.allowed) << address;
    EXPECT_THAT(verdict.reason, HasSubstr("evil.example resolved to")) << address;
    EXPECT_THAT(verdict.reason, HasSubstr("does not allow")) << address;
  }
  DestinationVerdict verdict = check(destinations, "localhost", "127.0.0.1");
  EXPECT_EQ(verdict.address_class, AddressClass::kLoopback);
  EXPECT_EQ(verdict.reason,
            "localhost resolved to 127.0.0.1 is a loopback address (127.0.0.0/8), and the configuration does not "
            "allow non-public destinations for that host");
}

TEST(DestinationCheck, ConfiguredHostsMayReachNonPublicAddresses) {
  DestinationCheck destinations({"localhost", "*.corp.example", "127.0.0.1", "::1", "MIRROR.Internal"});
  EXPECT_TRUE(check(destinations, "localhost", "127.0.0.1").allowed);
  EXPECT_TRUE(check(destinations, "LOCALHOST.", "::1").allowed);
  EXPECT_TRUE(check(destinations, "models.corp.example", "10.1.2.3").allowed);
  EXPECT_TRUE(check(destinations, "a.b.corp.example", "fd00::5").allowed);
  EXPECT_TRUE(check(destinations, "mirror.internal", "192.168.1.1").allowed);
  EXPECT_TRUE(check(destinations, "127.0.0.1", "127.0.0.1").allowed);
  EXPECT_TRUE(check(destinations, "[::1]", "::1").allowed);
  // The suffix pattern does not cover the bare domain, and other hosts stay refused.
  EXPECT_FALSE(check(destinations, "corp.example", "10.1.2.3").allowed);
  EXPECT_FALSE(check(destinations, "localhost.evil.example", "127.0.0.1").allowed);
  EXPECT_FALSE(check(destinations, "127.0.0.2", "127.0.0.2").allowed);
}

TEST(DestinationCheck, MetadataUnspecifiedMulticastAndBroadcastAreRefusedEvenForConfiguredHosts) {
  DestinationCheck destinations({"*.corp.example", "metadata.google.internal"});
  for (const char* address : {"169.254.169.254", "fd00:ec2::254", "::ffff:169.254.169.254", "100.100.100.200",
                              "0.0.0.0", "::", "224.0.0.1", "ff02::1", "255.255.255.255"}) {
    for (const char* host : {"x.corp.example", "metadata.google.internal"}) {
      DestinationVerdict verdict = check(destinations, host, address);
      EXPECT_FALSE(verdict.allowed) << host << " " << address;
      EXPECT_THAT(verdict.reason, HasSubstr("never connects there")) << address;
    }
  }
  EXPECT_EQ(check(destinations, "x.corp.example", "169.254.169.254").address_class, AddressClass::kCloudMetadata);
}

}  // namespace
}  // namespace zoogate::proxy
