// The window the circuit breaker and the retry budget count in: ten buckets of window / 10,
// lock-free adds to the current bucket, a stale bucket reset under the owner's lock.
#include "proxy/resilience/sliding_counts.h"

#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "tests/unit/fakes.h"

namespace bulwark::resilience {
namespace {

using std::chrono::milliseconds;

TEST(SlidingCountsTest, CountsLeaveTheWindowAfterItsLength) {
  fakes::FakeClock clock;
  SlidingCounts counts(milliseconds(1000));
  counts.addLocked(clock.now(), 1, 1);
  clock.advance(milliseconds(500));
  counts.addLocked(clock.now(), 2, 0);
  EXPECT_EQ(counts.totals(clock.now()).first, 3);
  EXPECT_EQ(counts.totals(clock.now()).second, 1);
  clock.advance(milliseconds(600));  // 1.1 s after the first: its bucket has left
  EXPECT_EQ(counts.totals(clock.now()).first, 2);
  EXPECT_EQ(counts.totals(clock.now()).second, 0);
  clock.advance(milliseconds(1000));
  EXPECT_EQ(counts.totals(clock.now()).first, 0);
}

TEST(SlidingCountsTest, TheLockFreeAddRefusesABucketOfAnOlderPeriod) {
  fakes::FakeClock clock;
  SlidingCounts counts(milliseconds(1000));
  EXPECT_FALSE(counts.tryAdd(clock.now(), 1, 0));  // never used: reset first
  counts.addLocked(clock.now(), 1, 0);
  EXPECT_TRUE(counts.tryAdd(clock.now(), 1, 0));
  clock.advance(milliseconds(1000));  // the same bucket slot, a new period
  EXPECT_FALSE(counts.tryAdd(clock.now(), 1, 0));
  EXPECT_EQ(counts.totals(clock.now()).first, 0);  // the old period is not counted either
  counts.addLocked(clock.now(), 1, 0);
  EXPECT_EQ(counts.totals(clock.now()).first, 1);
}

TEST(SlidingCountsTest, ANewWindowLengthStartsOverAndTheSameOneKeepsTheCounts) {
  fakes::FakeClock clock;
  SlidingCounts counts(milliseconds(1000));
  counts.addLocked(clock.now(), 5, 2);
  counts.setWindowLocked(milliseconds(1000));
  EXPECT_EQ(counts.totals(clock.now()).first, 5);
  counts.setWindowLocked(milliseconds(2000));
  EXPECT_EQ(counts.totals(clock.now()).first, 0);
  counts.addLocked(clock.now(), 1, 0);
  clock.advance(milliseconds(1500));  // inside the longer window
  EXPECT_EQ(counts.totals(clock.now()).first, 1);
  SlidingCounts tiny(milliseconds(3));  // buckets are at least 1 ms wide
  tiny.addLocked(clock.now(), 1, 0);
  EXPECT_EQ(tiny.totals(clock.now()).first, 1);
}

TEST(SlidingCountsTest, ThreadsAddingToTheCurrentBucketLoseNothing) {
  fakes::FakeClock clock;
  SlidingCounts counts(milliseconds(10000));
  counts.addLocked(clock.now(), 0, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 10000; ++i) ASSERT_TRUE(counts.tryAdd(clock.now(), 1, i % 2));
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(counts.totals(clock.now()).first, 40000);
  EXPECT_EQ(counts.totals(clock.now()).second, 20000);
}

}  // namespace
}  // namespace bulwark::resilience
