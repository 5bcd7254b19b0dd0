// When an HTTP/2 connection breaks, each of its streams reports the same loss: only the
// first report of a connection within the window counts for the circuit breaker.
#include "proxy/resilience/connection_losses.h"

#include <string>

#include <gtest/gtest.h>

#include "tests/unit/fakes.h"

namespace bulwark::resilience {
namespace {

using std::chrono::milliseconds;

constexpr const char* kConn = "127.0.0.1:40001->10.0.0.1:443";
// What a failure counts against (a breaker), compared by address.
const int kBreaker = 0;
const int kOtherBreaker = 0;

TEST(ConnectionLossesTest, OnlyTheFirstFailureOfAConnectionCounts) {
  fakes::FakeClock clock;
  ConnectionLosses losses(milliseconds(1000));
  EXPECT_TRUE(losses.firstFailure(kConn, &kBreaker, clock.now()));
  for (int stream = 0; stream < 50; ++stream) {
    EXPECT_FALSE(losses.firstFailure(kConn, &kBreaker, clock.now())) << stream;
  }
  clock.advance(milliseconds(1000));
  EXPECT_FALSE(losses.firstFailure(kConn, &kBreaker, clock.now()));  // still within the window
  // Another connection, even to the same upstream, is a loss of its own.
  EXPECT_TRUE(losses.firstFailure("127.0.0.1:40002->10.0.0.1:443", &kBreaker, clock.now()));
  EXPECT_TRUE(losses.firstFailure("127.0.0.1:40001->10.0.0.2:443", &kBreaker, clock.now()));
}

TEST(ConnectionLossesTest, EachBreakerCountsTheConnectionOnce) {
  // One connection carried requests for two models, each with a breaker of its own.
  fakes::FakeClock clock;
  ConnectionLosses losses;
  EXPECT_TRUE(losses.firstFailure(kConn, &kBreaker, clock.now()));
  EXPECT_TRUE(losses.firstFailure(kConn, &kOtherBreaker, clock.now()));
  EXPECT_FALSE(losses.firstFailure(kConn, &kBreaker, clock.now()));
  EXPECT_FALSE(losses.firstFailure(kConn, &kOtherBreaker, clock.now()));
}

TEST(ConnectionLossesTest, AFailureAfterTheWindowCountsAgain) {
  fakes::FakeClock clock;
  ConnectionLosses losses(milliseconds(1000));
  EXPECT_TRUE(losses.firstFailure(kConn, &kBreaker, clock.now()));
  clock.advance(milliseconds(1001));
  EXPECT_TRUE(losses.firstFailure(kConn, &kBreaker, clock.now()));
  EXPECT_FALSE(losses.firstFailure(kConn, &kBreaker, clock.now()));
}

TEST(ConnectionLossesTest, AnUnknownConnectionAlwaysCounts) {
  fakes::FakeClock clock;
  ConnectionLosses losses;
  EXPECT_TRUE(losses.firstFailure("", &kBreaker, clock.now()));
  EXPECT_TRUE(losses.firstFailure("", &kBreaker, clock.now()));
}

TEST(ConnectionLossesTest, MemoryIsBoundedToTheLatestLosses) {
  fakes::FakeClock clock;
  ConnectionLosses losses;
  const auto name = [](std::size_t i) { return "127.0.0.1:" + std::to_string(30000 + i); };
  for (std::size_t i = 0; i < ConnectionLosses::kRemembered; ++i) {
    EXPECT_TRUE(losses.firstFailure(name(i), &kBreaker, clock.now()));
  }
  for (std::size_t i = 0; i < ConnectionLosses::kRemembered; ++i) {
    EXPECT_FALSE(losses.firstFailure(name(i), &kBreaker, clock.now())) << i;
  }
  // One more loss takes the oldest one's place: that one is forgotten, the rest are not.
  EXPECT_TRUE(losses.firstFailure(name(ConnectionLosses::kRemembered), &kBreaker, clock.now()));
  EXPECT_TRUE(losses.firstFailure(name(0), &kBreaker, clock.now()));
  EXPECT_FALSE(losses.firstFailure(name(2), &kBreaker, clock.now()));
}

}  // namespace
}  // namespace bulwark::resilience
