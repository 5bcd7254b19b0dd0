#include "proxy/server/request_body.h"

#include <gtest/gtest.h>

#include <string>

namespace bulwark::server {
namespace {

std::string readAll(RequestBody& body) {
  std::string out(body.buffered(), '\0');
  out.resize(body.read(out.data(), out.size()));
  return out;
}

TEST(RequestBodyTest, AStreamedBodyHoldsAtMostItsWindow) {
  RequestBody body(8, 20, false);
  int rooms = 0;
  body.onRoom([&] { ++rooms; });
  EXPECT_EQ(body.room(), 8u);
  body.append("abcde", 5);
  EXPECT_EQ(body.room(), 3u);
  body.append("fgh", 3);
  EXPECT_EQ(body.room(), 0u);
  char out[4];
  ASSERT_EQ(body.read(out, 4), 4u);
  EXPECT_EQ(std::string(out, 4), "abcd");
  EXPECT_EQ(rooms, 1);  // the window had been full: the writer may go on
  EXPECT_EQ(body.room(), 4u);
  body.append("ijkl", 4);
  EXPECT_EQ(readAll(body), "efghijkl");
  EXPECT_EQ(body.received(), 12u);
  EXPECT_EQ(body.consumed(), 12u);
  EXPECT_EQ(body.length(), 20u);
}

TEST(RequestBodyTest, TheReaderHearsOfBytesTheEndAndFailures) {
  RequestBody body(8, std::nullopt, false);
  int news = 0;
  body.onReadable([&] { ++news; });
  body.append("x", 1);
  body.end();
  EXPECT_EQ(news, 2);
  EXPECT_TRUE(body.ended());
  EXPECT_EQ(body.room(), 0u);
  body.append("y", 1);  // after the end: ignored
  EXPECT_EQ(readAll(body), "x");

  RequestBody failing(8, std::nullopt, false);
  failing.append("abc", 3);
  failing.fail(RequestBody::Failure::kTooLarge);
  EXPECT_EQ(failing.failure(), RequestBody::Failure::kTooLarge);
  EXPECT_EQ(failing.buffered(), 0u);  // nothing of a failed body is sent on
  failing.end();
  EXPECT_FALSE(failing.ended());
}

TEST(RequestBodyTest, ARetainedBodyIsTakenWholeOrBecomesStreamed) {
  RequestBody body(4, std::nullopt, true);
  body.append("0123456789", 10);  // no window while retained
  EXPECT_GT(body.room(), 0u);
  body.end();
  EXPECT_EQ(body.takeAll(), "0123456789");

  RequestBody growing(4, std::nullopt, true);
  int news = 0;
  growing.onReadable([&] { ++news; });
  growing.append("012345", 6);
  growing.stopRetaining();
  EXPECT_FALSE(growing.retained());
  EXPECT_EQ(news, 2);
  EXPECT_EQ(growing.room(), 0u);  // over its window until read
  EXPECT_EQ(readAll(growing), "012345");
  EXPECT_EQ(growing.room(), 4u);
}

}  // namespace
}  // namespace bulwark::server
