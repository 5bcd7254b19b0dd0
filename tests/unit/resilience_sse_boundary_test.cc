#include "proxy/resilience/sse_boundary.h"

#include <gtest/gtest.h>

namespace bulwark::resilience {
namespace {

TEST(SseBoundaryTest, FindsTheLastCompleteEventEnd) {
  EXPECT_EQ(lastEventEnd("data: a\n\ndata: b\n\n"), 18u);
  EXPECT_EQ(lastEventEnd("data: a\n\ndata: b"), 9u);
  EXPECT_EQ(lastEventEnd("data: a\r\n\r\ndata: par"), 11u);
  EXPECT_EQ(lastEventEnd("data: a\r\rdata"), 9u);
  EXPECT_EQ(lastEventEnd("data: half"), 0u);
  EXPECT_EQ(lastEventEnd("data: a\n"), 0u);
  EXPECT_EQ(lastEventEnd(""), 0u);
  EXPECT_EQ(lastEventEnd("\n\n"), 2u);
}

}  // namespace
}  // namespace bulwark::resilience
