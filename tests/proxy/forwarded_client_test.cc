#include "proxy/forwarded_client.h"

#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace zoogate::proxy {
namespace {

std::vector<config::AddressRange> ranges(std::initializer_list<const char*> texts) {
  std::vector<config::AddressRange> parsed;
  for (const char* text : texts) {
    auto range = config::AddressRange::parse(text);
    EXPECT_TRUE(range.has_value()) << text;
    if (range) parsed.push_back(*range);
  }
  return parsed;
}

const std::vector<config::AddressRange> kBalancers = ranges({"10.0.0.0/8", "fd00::/8"});

TEST(ForwardedClient, AnUntrustedPeerIsTheClientWhateverItSays) {
  EXPECT_EQ(forwarded_client("203.0.113.7", "198.51.100.1", kBalancers), "203.0.113.7");
  EXPECT_EQ(forwarded_client("203.0.113.7", "", kBalancers), "203.0.113.7");
  EXPECT_EQ(forwarded_client("10.0.0.2", "198.51.100.1", {}), "10.0.0.2");
  EXPECT_EQ(forwarded_client("unknown", "198.51.100.1", kBalancers), "unknown");
}

TEST(ForwardedClient, ATrustedPeerNamesTheClient) {
  EXPECT_EQ(forwarded_client("10.0.0.2", "203.0.113.7", kBalancers), "203.0.113.7");
  EXPECT_EQ(forwarded_client("fd00::2", "2001:db8::7", kBalancers), "2001:db8::7");
  EXPECT_EQ(forwarded_client("10.0.0.2", " 203.0.113.7\t", kBalancers), "203.0.113.7");
}

TEST(ForwardedClient, WhatTheClientWroteItselfIsNeverRead) {
  // The client sent "X-Forwarded-For: 10.0.0.9, 198.51.100.1"; the balancer appended its address.
  EXPECT_EQ(forwarded_client("10.0.0.2", "10.0.0.9, 198.51.100.1, 203.0.113.7", kBalancers), "203.0.113.7");
}

TEST(ForwardedClient, TrustedProxiesInAChainAreSkipped) {
  EXPECT_EQ(forwarded_client("10.0.0.2", "203.0.113.7, 10.0.0.3, fd00::4", kBalancers), "203.0.113.7");
  // Every entry trusted: the leftmost is the furthest anyone can see.
  EXPECT_EQ(forwarded_client("10.0.0.2", "10.0.0.9,10.0.0.3", kBalancers), "10.0.0.9");
}

TEST(ForwardedClient, AnEntryThatIsNoAddressEndsTheWalkAtTheLastBelievedAddress) {
  EXPECT_EQ(forwarded_client("10.0.0.2", "", kBalancers), "10.0.0.2");
  EXPECT_EQ(forwarded_client("10.0.0.2", "203.0.113.7, unknown", kBalancers), "10.0.0.2");
  EXPECT_EQ(forwarded_client("10.0.0.2", "unknown, 10.0.0.3", kBalancers), "10.0.0.3");
  EXPECT_EQ(forwarded_client("10.0.0.2", "203.0.113.7,", kBalancers), "10.0.0.2");
  for (const char* junk : {"_hidden", "[2001:db8::1", "[203.0.113.7]", "203.0.113.7:80:81", "2001:db8::1]",
                           "[2001:db8::1]x", "203.0.113.7 198.51.100.1"}) {
    EXPECT_EQ(forwarded_client("10.0.0.2", junk, kBalancers), "10.0.0.2") << junk;
  }
}

TEST(ForwardedClient, PortsAndBracketsAreDropped) {
  EXPECT_EQ(forwarded_client("10.0.0.2", "203.0.113.7:5678", kBalancers), "203.0.113.7");
  EXPECT_EQ(forwarded_client("10.0.0.2", "[2001:db8::7]:443", kBalancers), "2001:db8::7");
  EXPECT_EQ(forwarded_client("10.0.0.2", "[2001:db8::7]", kBalancers), "2001:db8::7");
}

TEST(ForwardedClient, Ipv4MappedAddressesCountAsIpv4) {
  // A dual-stack listener gives an IPv4 balancer as ::ffff:10.0.0.2.
  EXPECT_EQ(forwarded_client("::ffff:10.0.0.2", "203.0.113.7", kBalancers), "203.0.113.7");
  EXPECT_EQ(forwarded_client("10.0.0.2", "::ffff:203.0.113.7", kBalancers), "203.0.113.7");
  EXPECT_EQ(forwarded_client("10.0.0.2", "203.0.113.7, ::ffff:10.0.0.3", kBalancers), "203.0.113.7");
}

TEST(ForwardedClient, TrustIsByRange) {
  EXPECT_TRUE(is_trusted_proxy("10.1.2.3", kBalancers));
  EXPECT_TRUE(is_trusted_proxy("::ffff:10.1.2.3", kBalancers));
  EXPECT_TRUE(is_trusted_proxy("fd12::1", kBalancers));
  EXPECT_FALSE(is_trusted_proxy("11.0.0.1", kBalancers));
  EXPECT_FALSE(is_trusted_proxy("fe80::1", kBalancers));
  EXPECT_FALSE(is_trusted_proxy("10.1.2.3", {}));
  EXPECT_FALSE(is_trusted_proxy("unknown", kBalancers));
}

TEST(ForwardedUser, AUserNameOrNothing) {
  EXPECT_EQ(forwarded_user("alice"), "alice");
  EXPECT_EQ(forwarded_user(" alice@corp.example\t"), "alice@corp.example");
  EXPECT_EQ(forwarded_user("CORP\\alice"), "CORP\\alice");
  for (std::string_view refused : {"", " ", "alice smith", "alice:secret", "caf\xc3\xa9", "a\x01"}) {
    EXPECT_EQ(forwarded_user(refused), std::nullopt) << refused;
  }
  EXPECT_EQ(forwarded_user(std::string(64, 'a')), std::string(64, 'a'));
  EXPECT_EQ(forwarded_user(std::string(65, 'a')), std::nullopt);
}

TEST(ForwardedScheme, HttpOrHttpsOnly) {
  EXPECT_EQ(forwarded_scheme("https"), "https");
  EXPECT_EQ(forwarded_scheme(" HTTPS\t"), "https");
  EXPECT_EQ(forwarded_scheme("http"), "http");
  for (std::string_view refused : {"", "ftp", "https, http", "https:", "wss"}) {
    EXPECT_EQ(forwarded_scheme(refused), std::nullopt) << refused;
  }
}

TEST(MtdScope, TheUserWhereKnownElseTheAddress) {
  EXPECT_EQ(mtd_scope(std::string("alice"), "203.0.113.7"), "user:alice");
  EXPECT_EQ(mtd_scope(std::nullopt, "203.0.113.7"), "203.0.113.7");
  EXPECT_EQ(mtd_scope(std::string(), "203.0.113.7"), "203.0.113.7");
}

}  // namespace
}  // namespace zoogate::proxy
