// The retry decision with a fake clock: the order of the checks, and that the budget and the
// backoff are spent only by a retry that happens.
#include "proxy/resilience/retry_decision.h"

#include <gtest/gtest.h>

#include "tests/unit/fakes.h"

namespace bulwark::resilience {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

class RetryDecisionTest : public ::testing::Test {
 protected:
  RetryDecisionTest() : backoff_(retry_, random_), budget_(budgetConfig(), clock_) {
    retry_.base_delay = milliseconds(100);
    retry_.max_delay = milliseconds(100);
    retry_.jitter = config::Jitter::kNone;
  }

  static config::RetryBudgetConfig budgetConfig() {
    config::RetryBudgetConfig config;
    config.ratio = 0;
    config.min_per_second = 0.2;  // 2 retries in the 10 s window
    return config;
  }

  RetryInputs retryable(int attempts_made = 1) {
    RetryInputs in;
    in.verdict.retryable = true;
    in.attempts_made = attempts_made;
    in.max_attempts = 3;
    in.now = clock_.now();
    in.deadline = clock_.now() + seconds(60);
    return in;
  }

  RetryDecision decide(const RetryInputs& in) { return decideRetry(retry_, in, backoff_, budget_); }

  config::RetryConfig retry_;
  fakes::FakeClock clock_;
  SeededRandom random_{1};
  Backoff backoff_;
  RetryBudget budget_;
};

TEST_F(RetryDecisionTest, ARetryableFailureWaitsTheBackoff) {
  RetryDecision d = decide(retryable());
  EXPECT_TRUE(d.retry);
  EXPECT_EQ(d.delay, milliseconds(100));
  EXPECT_EQ(d.source, RetryDelay::Source::kBackoff);
  EXPECT_EQ(d.why_not, "");
}

TEST_F(RetryDecisionTest, TheServersHintWins) {
  RetryInputs in = retryable();
  in.server_hint = milliseconds(750);
  RetryDecision d = decide(in);
  EXPECT_TRUE(d.retry);
  EXPECT_EQ(d.delay, milliseconds(750));
  EXPECT_EQ(d.source, RetryDelay::Source::kServer);
}

TEST_F(RetryDecisionTest, EachReasonNotToRetrySpendsNoBudget) {
  RetryInputs policy = retryable();
  policy.verdict.retryable = false;
  policy.verdict.reason = "insufficient_quota";
  EXPECT_EQ(decide(policy).why_not, "insufficient_quota");

  RetryInputs streamed = retryable();
  streamed.body_consumed = true;
  EXPECT_EQ(decide(streamed).why_not, "body_streamed");

  EXPECT_EQ(decide(retryable(3)).why_not, "max_attempts");

  RetryInputs late = retryable();
  late.deadline = clock_.now() + milliseconds(50);  // the backoff would pass it
  EXPECT_EQ(decide(late).why_not, "deadline");

  RetryInputs too_long = retryable();
  too_long.server_hint = retry_.max_retry_after + seconds(1);
  EXPECT_EQ(decide(too_long).why_not, "retry_after_too_long");

  // None of those took a retry from the budget: both are still there.
  EXPECT_TRUE(decide(retryable()).retry);
  EXPECT_TRUE(decide(retryable()).retry);
  RetryDecision spent = decide(retryable());
  EXPECT_FALSE(spent.retry);
  EXPECT_EQ(spent.why_not, "retry_budget");
  EXPECT_TRUE(spent.budget_exhausted);
}

TEST_F(RetryDecisionTest, TheBudgetRefillsWithTime) {
  EXPECT_TRUE(decide(retryable()).retry);
  EXPECT_TRUE(decide(retryable()).retry);
  EXPECT_FALSE(decide(retryable()).retry);
  clock_.advance(seconds(11));  // the window has moved past both retries
  EXPECT_TRUE(decide(retryable()).retry);
}

}  // namespace
}  // namespace bulwark::resilience
