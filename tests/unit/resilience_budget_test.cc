// The retry budget's arithmetic with a fake clock: the min_per_second floor, the ratio of
// requests, the sliding window, and hammering from threads.
#include "proxy/resilience/retry_budget.h"

#include <atomic>
#include <cmath>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "tests/unit/fakes.h"

namespace bulwark::resilience {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

config::RetryBudgetConfig budgetConfig(double ratio, double min_per_second,
                                       milliseconds window = seconds(10)) {
  config::RetryBudgetConfig config;
  config.ratio = ratio;
  config.min_per_second = min_per_second;
  config.window = window;
  return config;
}

int acquireAll(RetryBudget& budget, int at_most = 100000) {
  int acquired = 0;
  while (acquired < at_most && budget.tryAcquire()) ++acquired;
  return acquired;
}

void recordRequests(RetryBudget& budget, int n) {
  for (int i = 0; i < n; ++i) budget.recordRequest();
}

TEST(RetryBudgetTest, TheFloorComesFromMinPerSecondTimesTheWindow) {
  fakes::FakeClock clock;
  RetryBudget budget(budgetConfig(0.2, 10, seconds(10)), clock);
  EXPECT_EQ(budget.usage().allowed, 100);
  EXPECT_EQ(acquireAll(budget), 100);
  EXPECT_FALSE(budget.tryAcquire());
  RetryBudget::Usage usage = budget.usage();
  EXPECT_EQ(usage.requests, 0);
  EXPECT_EQ(usage.retries, 100);
}

TEST(RetryBudgetTest, AFractionalFloorRoundsDown) {
  fakes::FakeClock clock;
  RetryBudget budget(budgetConfig(0, 0.25, seconds(10)), clock);  // 2.5 retries
  EXPECT_EQ(acquireAll(budget), 2);
}

TEST(RetryBudgetTest, WithoutAFloorRetriesAreARatioOfRequests) {
  fakes::FakeClock clock;
  RetryBudget budget(budgetConfig(0.2, 0), clock);
  EXPECT_FALSE(budget.tryAcquire()) << "no requests, no floor: no retries";
  recordRequests(budget, 10);
  EXPECT_DOUBLE_EQ(budget.usage().allowed, 2);
  EXPECT_EQ(acquireAll(budget), 2);
  recordRequests(budget, 4);  // 14 requests: 2.8
  EXPECT_FALSE(budget.tryAcquire());
  budget.recordRequest();  // 15: 3
  EXPECT_TRUE(budget.tryAcquire());
  EXPECT_FALSE(budget.tryAcquire());
  RetryBudget::Usage usage = budget.usage();
  EXPECT_EQ(usage.requests, 15);
  EXPECT_EQ(usage.retries, 3);
}

TEST(RetryBudgetTest, DecimalRatiosAreNotShortChangedByRounding) {
  fakes::FakeClock clock;
  RetryBudget budget(budgetConfig(0.29, 0), clock);  // 0.29 * 100 = 28.999999999999996
  recordRequests(budget, 100);
  EXPECT_EQ(acquireAll(budget), 29);
}

TEST(RetryBudgetTest, TheLargerOfFloorAndRatioApplies) {
  fakes::FakeClock clock;
  RetryBudget budget(budgetConfig(0.2, 1, seconds(10)), clock);  // floor 10
  recordRequests(budget, 20);                                    // ratio 4: the floor wins
  EXPECT_EQ(budget.usage().allowed, 10);
  EXPECT_EQ(acquireAll(budget), 10);
  recordRequests(budget, 80);  // ratio 20: the ratio wins
  EXPECT_DOUBLE_EQ(budget.usage().allowed, 20);
  EXPECT_EQ(acquireAll(budget), 10);
  EXPECT_EQ(budget.usage().retries, 20);
}

TEST(RetryBudgetTest, ASpentBudgetRefillsAsTheWindowMoves) {
  fakes::FakeClock clock;
  RetryBudget budget(budgetConfig(0.2, 1, seconds(10)), clock);
  EXPECT_EQ(acquireAll(budget), 10);
  clock.advance(seconds(5));
  EXPECT_FALSE(budget.tryAcquire()) << "the retries are still in the window";
  clock.advance(seconds(5));
  EXPECT_EQ(budget.usage().retries, 0);
  EXPECT_EQ(acquireAll(budget), 10);
}

TEST(RetryBudgetTest, RequestsLeaveTheWindowToo) {
  fakes::FakeClock clock;
  RetryBudget budget(budgetConfig(0.5, 0, seconds(10)), clock);
  recordRequests(budget, 10);  // at t = 0
  clock.advance(seconds(6));
  recordRequests(budget, 4);  // at t = 6
  EXPECT_EQ(budget.usage().requests, 14);
  EXPECT_DOUBLE_EQ(budget.usage().allowed, 7);
  clock.advance(seconds(4));  // t = 10: the first ten are out
  RetryBudget::Usage usage = budget.usage();
  EXPECT_EQ(usage.requests, 4);
  EXPECT_DOUBLE_EQ(usage.allowed, 2);
  EXPECT_EQ(acquireAll(budget), 2);
  clock.advance(seconds(10));  // t = 20: everything is out
  EXPECT_EQ(budget.usage().requests, 0);
  EXPECT_EQ(budget.usage().retries, 0);
  EXPECT_FALSE(budget.tryAcquire());
}

TEST(RetryBudgetTest, RetriesTakenEarlierInTheWindowStillCount) {
  fakes::FakeClock clock;
  RetryBudget budget(budgetConfig(0.5, 0, seconds(10)), clock);
  recordRequests(budget, 8);
  EXPECT_EQ(acquireAll(budget, 3), 3);
  clock.advance(seconds(9));
  EXPECT_EQ(acquireAll(budget), 1);  // 4 allowed, 3 already taken 9 s ago
  clock.advance(seconds(1));         // the requests and the first 3 retries leave
  EXPECT_EQ(budget.usage().retries, 1);
  EXPECT_FALSE(budget.tryAcquire());
}

TEST(RetryBudgetTest, UpdateConfigAppliesTheNewRatio) {
  fakes::FakeClock clock;
  RetryBudget budget(budgetConfig(0.1, 0), clock);
  recordRequests(budget, 50);
  EXPECT_EQ(acquireAll(budget), 5);
  budget.updateConfig(budgetConfig(0.2, 0));
  RetryBudget::Usage usage = budget.usage();
  EXPECT_EQ(usage.requests, 50);
  EXPECT_EQ(usage.retries, 5);
  EXPECT_EQ(acquireAll(budget), 5);
}

TEST(RetryBudgetTest, ANewWindowLengthStartsTheWindowOver) {
  fakes::FakeClock clock;
  RetryBudget budget(budgetConfig(0.5, 0, seconds(10)), clock);
  recordRequests(budget, 10);
  budget.updateConfig(budgetConfig(0.5, 0, seconds(30)));
  EXPECT_EQ(budget.usage().requests, 0);
  recordRequests(budget, 2);
  EXPECT_EQ(acquireAll(budget), 1);
}

// Every thread records a request and then asks for a retry. The clock stands still, so the
// allowance only grows: at the end exactly floor(allowed) retries were granted, never more.
TEST(RetryBudgetHammerTest, ConcurrentRequestsAndRetries) {
  constexpr int kThreads = 8;
  constexpr int kIterations = 20000;
  fakes::AtomicFakeClock clock;
  RetryBudget budget(budgetConfig(0.2, 10, seconds(10)), clock);
  std::atomic<long> granted{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < kIterations; ++i) {
        budget.recordRequest();
        if (budget.tryAcquire()) granted.fetch_add(1, std::memory_order_relaxed);
        if (i % 1000 == 0) {
          RetryBudget::Usage usage = budget.usage();
          EXPECT_LE(static_cast<double>(usage.retries), usage.allowed + 1e-9);
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  RetryBudget::Usage usage = budget.usage();
  EXPECT_EQ(usage.requests, long{kThreads} * kIterations);
  EXPECT_EQ(usage.retries, granted.load());
  EXPECT_EQ(usage.retries, static_cast<long>(std::floor(usage.allowed + 1e-9)));
  EXPECT_EQ(usage.retries, kThreads * kIterations / 5);
}

// The same with a moving clock: the window slides under the threads' feet. Nothing to count
// exactly; the budget must stay consistent and free of races.
TEST(RetryBudgetHammerTest, ConcurrentUseWhileTheWindowSlides) {
  constexpr int kThreads = 8;
  constexpr int kIterations = 20000;
  fakes::AtomicFakeClock clock;
  RetryBudget budget(budgetConfig(0.2, 0, milliseconds(100)), clock);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kIterations; ++i) {
        if (t == 0 && i % 16 == 0) clock.advance(milliseconds(1));
        budget.recordRequest();
        (void)budget.tryAcquire();
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  RetryBudget::Usage usage = budget.usage();
  EXPECT_GT(usage.requests, 0);
  EXPECT_LE(usage.retries, usage.requests);
  clock.advance(milliseconds(100));
  EXPECT_EQ(budget.usage().requests, 0);
  EXPECT_EQ(budget.usage().retries, 0);
}

}  // namespace
}  // namespace bulwark::resilience
