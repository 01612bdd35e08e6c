#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "common/encoding.h"

namespace zoogate {
namespace {

TEST(Hex, RoundTripAndRejectsBadInput) {
  std::vector<uint8_t> bytes = {0x00, 0x7f, 0xff, 0x10};
  EXPECT_EQ(to_hex(bytes), "007fff10");
  EXPECT_EQ(from_hex("007FFF10"), bytes);
  EXPECT_FALSE(from_hex("abc"));
  EXPECT_FALSE(from_hex("zz"));
}

TEST(Base64, MatchesRfc4648Vectors) {
  auto text = [](std::string_view s) {
    return std::vector<uint8_t>(s.begin(), s.end());
  };
  EXPECT_EQ(to_base64(text("")), "");
  EXPECT_EQ(to_base64(text("f")), "Zg==");
  EXPECT_EQ(to_base64(text("fo")), "Zm8=");
  EXPECT_EQ(to_base64(text("foobar")), "Zm9vYmFy");
  EXPECT_EQ(from_base64("Zm8="), text("fo"));
  EXPECT_EQ(from_base64("Zg=="), text("f"));
  EXPECT_FALSE(from_base64("Zg="));
}

}  // namespace
}  // namespace zoogate
