// Backoff with each jitter mode, the choice between backoff and server hint, the deadline
// cut-off, and the client's x-stainless-* coordination headers.
#include "proxy/resilience/backoff.h"

#include <algorithm>

#include <gtest/gtest.h>

#include "tests/unit/fakes.h"

namespace bulwark::resilience {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

config::RetryConfig retryWith(config::Jitter jitter) {
  config::RetryConfig retry;  // base 1s, max 30s, base 2
  retry.jitter = jitter;
  return retry;
}

// The un-jittered exponential delay for the default config.
milliseconds ceiling(int retry) {
  return std::min<milliseconds>(seconds(30), seconds(1) * (1 << (retry - 1)));
}

TEST(BackoffTest, NoJitterIsThePlainExponential) {
  config::RetryConfig retry = retryWith(config::Jitter::kNone);
  fakes::ScriptedRandom random({0.5});
  Backoff backoff(retry, random);
  EXPECT_EQ(backoff.next(1), seconds(1));
  EXPECT_EQ(backoff.next(2), seconds(2));
  EXPECT_EQ(backoff.next(3), seconds(4));
  EXPECT_EQ(backoff.next(5), seconds(16));
  EXPECT_EQ(backoff.next(6), seconds(30));
}

TEST(BackoffTest, LargeRetryNumbersStayAtMaxDelay) {
  for (config::Jitter jitter :
       {config::Jitter::kNone, config::Jitter::kFull, config::Jitter::kEqual}) {
    config::RetryConfig retry = retryWith(jitter);
    fakes::ScriptedRandom random({fakes::kAlmostOne});
    Backoff backoff(retry, random);
    for (int n : {10, 64, 1000, 1 << 30}) {
      milliseconds d = backoff.next(n);
      EXPECT_LE(d, seconds(30)) << n;
      EXPECT_GE(d, seconds(29)) << n;
    }
  }
}

TEST(BackoffTest, FullJitterSpansZeroToTheCeiling) {
  config::RetryConfig retry = retryWith(config::Jitter::kFull);
  fakes::ScriptedRandom low({0.0});
  fakes::ScriptedRandom high({fakes::kAlmostOne});
  fakes::ScriptedRandom middle({0.5});
  for (int n = 1; n <= 8; ++n) {
    EXPECT_EQ(Backoff(retry, low).next(n), milliseconds(0)) << n;
    EXPECT_EQ(Backoff(retry, high).next(n), ceiling(n)) << n;
    EXPECT_EQ(Backoff(retry, middle).next(n), ceiling(n) / 2) << n;
  }
}

TEST(BackoffTest, EqualJitterSpansHalfToTheCeiling) {
  config::RetryConfig retry = retryWith(config::Jitter::kEqual);
  fakes::ScriptedRandom low({0.0});
  fakes::ScriptedRandom high({fakes::kAlmostOne});
  for (int n = 1; n <= 8; ++n) {
    EXPECT_EQ(Backoff(retry, low).next(n), ceiling(n) / 2) << n;
    EXPECT_EQ(Backoff(retry, high).next(n), ceiling(n)) << n;
  }
}

TEST(BackoffTest, SeededDrawsStayWithinEachModesBounds) {
  for (config::Jitter jitter : {config::Jitter::kFull, config::Jitter::kEqual}) {
    config::RetryConfig retry = retryWith(jitter);
    SeededRandom random(42);
    Backoff backoff(retry, random);
    const double floor_share = jitter == config::Jitter::kEqual ? 0.5 : 0.0;
    for (int draw = 0; draw < 2000; ++draw) {
      const int n = 1 + draw % 8;
      milliseconds d = backoff.next(n);
      EXPECT_GE(d.count(), static_cast<long>(floor_share * ceiling(n).count())) << n;
      EXPECT_LE(d, ceiling(n)) << n;
    }
  }
}

TEST(BackoffTest, SeededDrawsAreSpreadOut) {
  config::RetryConfig retry = retryWith(config::Jitter::kFull);
  SeededRandom random(7);
  Backoff backoff(retry, random);
  milliseconds lowest = seconds(30);
  milliseconds highest{0};
  for (int draw = 0; draw < 1000; ++draw) {
    milliseconds d = backoff.next(3);
    lowest = std::min(lowest, d);
    highest = std::max(highest, d);
  }
  EXPECT_LT(lowest, milliseconds(400));
  EXPECT_GT(highest, milliseconds(3600));
}

TEST(BackoffTest, DecorrelatedGrowsFromThreeTimesThePreviousDelay) {
  config::RetryConfig retry = retryWith(config::Jitter::kDecorrelated);
  fakes::ScriptedRandom top({fakes::kAlmostOne});
  Backoff backoff(retry, top);
  EXPECT_EQ(backoff.next(1), seconds(3));   // uniform[1s, 3 * 1s]
  EXPECT_EQ(backoff.next(2), seconds(9));   // uniform[1s, 3 * 3s]
  EXPECT_EQ(backoff.next(3), seconds(27));  // uniform[1s, 3 * 9s]
  EXPECT_EQ(backoff.next(4), seconds(30));  // capped
  EXPECT_EQ(backoff.next(5), seconds(30));  // and stays capped

  fakes::ScriptedRandom bottom({0.0});
  Backoff floor(retry, bottom);
  EXPECT_EQ(floor.next(1), seconds(1));
  EXPECT_EQ(floor.next(2), seconds(1));

  fakes::ScriptedRandom mixed({0.5, 0.0, 0.25});
  Backoff walk(retry, mixed);
  EXPECT_EQ(walk.next(1), seconds(2));          // 1 + 0.5 * (3 - 1)
  EXPECT_EQ(walk.next(2), seconds(1));          // the low end of [1, 6]
  EXPECT_EQ(walk.next(3), milliseconds(1500));  // 1 + 0.25 * (3 - 1)
}

TEST(BackoffTest, DecorrelatedSeededDrawsStayWithinBounds) {
  config::RetryConfig retry = retryWith(config::Jitter::kDecorrelated);
  SeededRandom random(1234);
  Backoff backoff(retry, random);
  milliseconds previous = retry.base_delay;
  for (int n = 1; n <= 2000; ++n) {
    milliseconds d = backoff.next(n);
    EXPECT_GE(d, retry.base_delay) << n;
    EXPECT_LE(d, std::min<milliseconds>(retry.max_delay, 3 * previous)) << n;
    previous = d;
  }
}

TEST(BackoffTest, HonoursBaseAndExponentFromConfig) {
  config::RetryConfig retry = retryWith(config::Jitter::kNone);
  retry.base_delay = milliseconds(250);
  retry.exponential_base = 3;
  retry.max_delay = seconds(5);
  fakes::ScriptedRandom random({0.0});
  Backoff backoff(retry, random);
  EXPECT_EQ(backoff.next(1), milliseconds(250));
  EXPECT_EQ(backoff.next(2), milliseconds(750));
  EXPECT_EQ(backoff.next(3), milliseconds(2250));
  EXPECT_EQ(backoff.next(4), seconds(5));
}

TEST(BackoffTest, NeverNegativeEvenForNonsenseInput) {
  config::RetryConfig retry = retryWith(config::Jitter::kFull);
  fakes::ScriptedRandom random({-3.0, 7.0});
  Backoff backoff(retry, random);
  EXPECT_EQ(backoff.next(0), milliseconds(0));
  EXPECT_EQ(backoff.next(-5), seconds(1));
}

class PlanRetryDelayTest : public testing::Test {
 protected:
  config::RetryConfig retry_;  // honor_retry_after, max_retry_after 60s
  fakes::FakeClock clock_;
  SteadyTime deadline_ = clock_.now() + seconds(600);
};

TEST_F(PlanRetryDelayTest, UsesTheBackoffWithoutAHint) {
  RetryDelay plan =
      planRetryDelay(retry_, std::nullopt, milliseconds(1200), clock_.now(), deadline_);
  EXPECT_TRUE(plan.retry);
  EXPECT_EQ(plan.delay, milliseconds(1200));
  EXPECT_EQ(plan.source, RetryDelay::Source::kBackoff);
  EXPECT_EQ(plan.why_not, "");
}

TEST_F(PlanRetryDelayTest, AServerHintReplacesTheBackoff) {
  RetryDelay plan = planRetryDelay(retry_, milliseconds(700), seconds(4), clock_.now(), deadline_);
  EXPECT_TRUE(plan.retry);
  EXPECT_EQ(plan.delay, milliseconds(700));
  EXPECT_EQ(plan.source, RetryDelay::Source::kServer);

  RetryDelay zero = planRetryDelay(retry_, milliseconds(0), seconds(4), clock_.now(), deadline_);
  EXPECT_TRUE(zero.retry);
  EXPECT_EQ(zero.delay, milliseconds(0));
  EXPECT_EQ(zero.source, RetryDelay::Source::kServer);
}

TEST_F(PlanRetryDelayTest, IgnoresHintsWhenNotHonoured) {
  retry_.honor_retry_after = false;
  RetryDelay plan = planRetryDelay(retry_, seconds(3600), seconds(2), clock_.now(), deadline_);
  EXPECT_TRUE(plan.retry);
  EXPECT_EQ(plan.delay, seconds(2));
  EXPECT_EQ(plan.source, RetryDelay::Source::kBackoff);
}

TEST_F(PlanRetryDelayTest, AHintAboveMaxRetryAfterMeansNoRetry) {
  RetryDelay at_limit = planRetryDelay(retry_, seconds(60), seconds(1), clock_.now(), deadline_);
  EXPECT_TRUE(at_limit.retry);
  RetryDelay over =
      planRetryDelay(retry_, milliseconds(60001), seconds(1), clock_.now(), deadline_);
  EXPECT_FALSE(over.retry);
  EXPECT_EQ(over.why_not, "retry_after_too_long");
}

TEST_F(PlanRetryDelayTest, NoRetryThatCannotStartBeforeTheDeadline) {
  clock_.advance(seconds(595));
  RetryDelay fits =
      planRetryDelay(retry_, std::nullopt, milliseconds(4999), clock_.now(), deadline_);
  EXPECT_TRUE(fits.retry);
  RetryDelay reaches = planRetryDelay(retry_, std::nullopt, seconds(5), clock_.now(), deadline_);
  EXPECT_FALSE(reaches.retry);
  EXPECT_EQ(reaches.why_not, "deadline");
  RetryDelay hinted = planRetryDelay(retry_, seconds(6), seconds(1), clock_.now(), deadline_);
  EXPECT_FALSE(hinted.retry);
  EXPECT_EQ(hinted.why_not, "deadline");
  clock_.advance(seconds(10));
  RetryDelay past = planRetryDelay(retry_, std::nullopt, milliseconds(0), clock_.now(), deadline_);
  EXPECT_FALSE(past.retry);
  EXPECT_EQ(past.why_not, "deadline");
}

http::Headers headers(std::initializer_list<http::Header> list) {
  return http::Headers(list);
}

TEST(RequestDeadlineTest, IsTheTotalTimeoutByDefault) {
  fakes::FakeClock clock;
  const config::TimeoutsConfig timeouts;  // total 600s
  EXPECT_EQ(requestDeadline(timeouts, {}, clock.now()), clock.now() + seconds(600));
}

TEST(RequestDeadlineTest, XStainlessTimeoutLowersIt) {
  fakes::FakeClock clock;
  const config::TimeoutsConfig timeouts;
  const SteadyTime start = clock.now();
  EXPECT_EQ(requestDeadline(timeouts, headers({{"x-stainless-timeout", "30"}}), start),
            start + seconds(30));
  EXPECT_EQ(requestDeadline(timeouts, headers({{"X-Stainless-Timeout", "12.5"}}), start),
            start + milliseconds(12500));
  EXPECT_EQ(requestDeadline(timeouts, headers({{"x-stainless-timeout", "600.0"}}), start),
            start + seconds(600));
}

TEST(RequestDeadlineTest, XStainlessTimeoutNeverRaisesIt) {
  fakes::FakeClock clock;
  const config::TimeoutsConfig timeouts;
  const SteadyTime start = clock.now();
  EXPECT_EQ(requestDeadline(timeouts, headers({{"x-stainless-timeout", "3600"}}), start),
            start + seconds(600));
}

TEST(RequestDeadlineTest, IgnoresMalformedOrNonPositiveTimeouts) {
  fakes::FakeClock clock;
  const config::TimeoutsConfig timeouts;
  const SteadyTime start = clock.now();
  for (const char* value : {"", "0", "0.0", "-5", "abc", "1e2", "10s", "1.2.3", "inf", "nan"}) {
    EXPECT_EQ(requestDeadline(timeouts, headers({{"x-stainless-timeout", value}}), start),
              start + seconds(600))
        << value;
  }
}

TEST(AttemptsAllowedTest, SdkRetriesGetASingleAttempt) {
  const config::RetryConfig retry;  // max_attempts 3
  EXPECT_EQ(attemptsAllowed(retry, {}), 3);
  EXPECT_EQ(attemptsAllowed(retry, headers({{"x-stainless-retry-count", "0"}})), 3);
  EXPECT_EQ(attemptsAllowed(retry, headers({{"x-stainless-retry-count", "1"}})), 1);
  EXPECT_EQ(attemptsAllowed(retry, headers({{"X-Stainless-Retry-Count", "2"}})), 1);
  EXPECT_EQ(attemptsAllowed(retry, headers({{"x-stainless-retry-count", "99999999999999999999"}})),
            1);
  for (const char* value : {"", "-1", "one", "1.5", "0x1"}) {
    EXPECT_EQ(attemptsAllowed(retry, headers({{"x-stainless-retry-count", value}})), 3) << value;
  }
}

TEST(AttemptsAllowedTest, FollowsMaxAttempts) {
  config::RetryConfig retry;
  retry.max_attempts = 5;
  EXPECT_EQ(attemptsAllowed(retry, {}), 5);
  EXPECT_EQ(attemptsAllowed(retry, headers({{"x-stainless-retry-count", "1"}})), 1);
}

}  // namespace
}  // namespace bulwark::resilience
