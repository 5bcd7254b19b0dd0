// Case-insensitive header name comparison: the eight-bytes-at-a-time version against the
// byte-by-byte definition, over every byte value and lengths on both sides of a word.
#include "proxy/http/header.h"

#include <gtest/gtest.h>

#include <random>
#include <string>

namespace bulwark::http {
namespace {

bool byteByByte(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (asciiLower(a[i]) != asciiLower(b[i])) return false;
  }
  return true;
}

TEST(HeaderTest, EveryBytePairComparesAsItsAsciiLowercase) {
  // Each pair of byte values, alone and at every place of a 17-byte name (two words and one
  // more byte, so the overlapping last word is covered too).
  for (int x = 0; x < 256; ++x) {
    for (int y = 0; y < 256; ++y) {
      std::string a(1, static_cast<char>(x));
      std::string b(1, static_cast<char>(y));
      ASSERT_EQ(equalsIgnoreCase(a, b), byteByByte(a, b)) << x << " " << y;
      for (std::size_t at : {0u, 7u, 8u, 12u, 16u}) {
        std::string long_a = "x-Ratelimit-Limit";
        std::string long_b = "X-RATELIMIT-limit";
        long_a[at] = static_cast<char>(x);
        long_b[at] = static_cast<char>(y);
        ASSERT_EQ(equalsIgnoreCase(long_a, long_b), byteByByte(long_a, long_b))
            << x << " " << y << " at " << at;
      }
    }
  }
}

TEST(HeaderTest, RandomNamesOfEveryLengthAgreeWithTheDefinition) {
  std::mt19937 random(7);
  const std::string alphabet = "aAzZ@[`{-_09\x80\xc1\xe1";
  for (int round = 0; round < 20000; ++round) {
    std::size_t n = random() % 40;
    std::string a, b;
    for (std::size_t i = 0; i < n; ++i) {
      a += alphabet[random() % alphabet.size()];
      // Mostly the same letter in the other case, sometimes another byte.
      char c = a.back();
      if (random() % 8 == 0)
        c = alphabet[random() % alphabet.size()];
      else if (c >= 'a' && c <= 'z')
        c = static_cast<char>(c - 32);
      b += c;
    }
    ASSERT_EQ(equalsIgnoreCase(a, b), byteByByte(a, b)) << a << " / " << b;
  }
  EXPECT_TRUE(equalsIgnoreCase("X-RateLimit-Remaining-Requests", "x-ratelimit-remaining-requests"));
  EXPECT_FALSE(
      equalsIgnoreCase("x-ratelimit-remaining-requests", "x-ratelimit-remaining-requestz"));
  EXPECT_FALSE(equalsIgnoreCase("content-length", "content-lengt"));
}

TEST(HeaderTest, ALineBreakAnywhereIsFound) {
  // Every length up to three words, the CR or LF at every place, among every other byte.
  for (std::size_t n = 0; n <= 24; ++n) {
    std::string clean;
    for (std::size_t i = 0; i < n; ++i) {
      char c = static_cast<char>((i * 37 + 11) % 256);
      clean += (c == '\r' || c == '\n') ? 'x' : c;
    }
    EXPECT_FALSE(hasLineBreak(clean)) << n;
    for (std::size_t at = 0; at < n; ++at) {
      for (char br : {'\r', '\n'}) {
        std::string dirty = clean;
        dirty[at] = br;
        EXPECT_TRUE(hasLineBreak(dirty)) << n << " at " << at;
      }
    }
  }
  // Bytes one away from CR and LF (and 0x8D, 0x8A: CR and LF with the top bit) are not.
  EXPECT_FALSE(hasLineBreak(std::string("\x0c\x0e\x09\x0b\x8d\x8a\x0c\x0e\x09", 9)));
}

}  // namespace
}  // namespace bulwark::http
