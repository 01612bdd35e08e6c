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

TEST(Utf8, AcceptsWellFormedAndRefusesEverythingElse) {
  EXPECT_TRUE(is_valid_utf8(""));
  EXPECT_TRUE(is_valid_utf8("plain"));
  EXPECT_TRUE(is_valid_utf8("\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80"));  // é € 😀
  EXPECT_TRUE(is_valid_utf8("\xF4\x8F\xBF\xBF"));                      // U+10FFFF
  EXPECT_FALSE(is_valid_utf8("\x80"));                                  // lone continuation byte
  EXPECT_FALSE(is_valid_utf8("\xC3"));                                  // truncated
  EXPECT_FALSE(is_valid_utf8("\xC0\xAF"));                              // overlong '/'
  EXPECT_FALSE(is_valid_utf8("\xE0\x80\xAF"));                          // overlong '/'
  EXPECT_FALSE(is_valid_utf8("\xED\xA0\x80"));                          // surrogate U+D800
  EXPECT_FALSE(is_valid_utf8("\xF4\x90\x80\x80"));                      // past U+10FFFF
  EXPECT_FALSE(is_valid_utf8("\xF8\x88\x80\x80\x80"));                  // 5-byte form
  EXPECT_FALSE(is_valid_utf8("\xC3\x28"));                              // bad continuation
  // Python's "surrogatepass", for pickled str only.
  EXPECT_TRUE(is_valid_utf8("\xED\xA0\x80", /*allow_surrogates=*/true));
  EXPECT_FALSE(is_valid_utf8("\xC0\xAF", /*allow_surrogates=*/true));
  // The eight-byte ASCII fast path must not skip a bad byte that follows it.
  EXPECT_FALSE(is_valid_utf8("abcdefgh\x80"));
  EXPECT_TRUE(is_valid_utf8("abcdefghijklmnop\xC3\xA9"));
}

}  // namespace
}  // namespace zoogate
