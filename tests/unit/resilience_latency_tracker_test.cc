// The p95 hedging waits for: nothing before enough samples, the recent samples weigh most.
#include "proxy/resilience/latency_tracker.h"

#include <gtest/gtest.h>

namespace bulwark::resilience {
namespace {

using std::chrono::milliseconds;

TEST(LatencyTrackerTest, AnswersOnlyAfterEnoughSamples) {
  LatencyTracker tracker;
  for (int i = 0; i < LatencyTracker::kMinSamples - 1; ++i) tracker.record("gpt-4o", milliseconds(100));
  EXPECT_EQ(tracker.quantile("gpt-4o", 0.95), std::nullopt);
  tracker.record("gpt-4o", milliseconds(100));
  ASSERT_TRUE(tracker.quantile("gpt-4o", 0.95).has_value());
  EXPECT_EQ(tracker.quantile("o3", 0.95), std::nullopt);  // per model
}

TEST(LatencyTrackerTest, TheP95IsTheBucketBoundAboveNineteenOfTwenty) {
  LatencyTracker tracker;
  for (int i = 0; i < 95; ++i) tracker.record("m", milliseconds(100));
  for (int i = 0; i < 5; ++i) tracker.record("m", milliseconds(3000));
  std::optional<Millis> p50 = tracker.quantile("m", 0.5);
  std::optional<Millis> p99 = tracker.quantile("m", 0.99);
  ASSERT_TRUE(p50 && p99);
  EXPECT_GE(*p50, milliseconds(100));
  EXPECT_LT(*p50, milliseconds(150));  // the bucket holding 100 ms: (77, 114]
  EXPECT_GE(*p99, milliseconds(3000));
  EXPECT_LT(*p99, milliseconds(4500));
}

TEST(LatencyTrackerTest, RecentSamplesOutweighOldOnes) {
  LatencyTracker tracker;
  for (int i = 0; i < 200; ++i) tracker.record("m", milliseconds(5000));
  for (int i = 0; i < 200; ++i) tracker.record("m", milliseconds(50));
  EXPECT_LT(*tracker.quantile("m", 0.95), milliseconds(100));  // the slow past has decayed
}

TEST(LatencyTrackerTest, ManyModelsShareOneHistogramPastTheLimit) {
  LatencyTracker tracker;
  for (std::size_t m = 0; m < LatencyTracker::kMaxModels; ++m) {
    tracker.record("model-" + std::to_string(m), milliseconds(10));
  }
  for (int i = 0; i < LatencyTracker::kMinSamples; ++i) tracker.record("late-a", milliseconds(200));
  EXPECT_TRUE(tracker.quantile("late-b", 0.95).has_value());  // the shared histogram
}

}  // namespace
}  // namespace bulwark::resilience
