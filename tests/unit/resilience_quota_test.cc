// The quota model with a fake clock: seeded from headers, refilled over time, held by
// reservations, paused by a cooldown, and never blocking before it knows a limit.
#include "proxy/resilience/quota.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

#include "tests/unit/fakes.h"

namespace bulwark::resilience {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

http::Headers openAiHeaders(int remaining_requests, int remaining_tokens, const char* reset_tokens) {
  return {{"x-ratelimit-limit-requests", "120"},
          {"x-ratelimit-limit-tokens", "20000"},
          {"x-ratelimit-remaining-requests", std::to_string(remaining_requests)},
          {"x-ratelimit-remaining-tokens", std::to_string(remaining_tokens)},
          {"x-ratelimit-reset-requests", "500ms"},
          {"x-ratelimit-reset-tokens", reset_tokens}};
}

TEST(RateLimitHeadersTest, ReadsOpenAisHeadersAndSkipsBadOnes) {
  RateLimitHeaders h = parseRateLimitHeaders(openAiHeaders(119, 19000, "3s"));
  EXPECT_EQ(h.limit_requests, 120);
  EXPECT_EQ(h.limit_tokens, 20000);
  EXPECT_EQ(h.remaining_requests, 119);
  EXPECT_EQ(h.remaining_tokens, 19000);
  EXPECT_EQ(h.reset_requests, milliseconds(500));
  EXPECT_EQ(h.reset_tokens, seconds(3));
  RateLimitHeaders bad = parseRateLimitHeaders(
      {{"x-ratelimit-limit-tokens", "lots"}, {"x-ratelimit-remaining-tokens", "-5"},
       {"x-ratelimit-reset-tokens", "soon"}});
  EXPECT_FALSE(bad.any());
  EXPECT_FALSE(parseRateLimitHeaders({{"content-type", "application/json"}}).any());
}

TEST(QuotaTest, BeforeAnyHeadersNothingBlocks) {
  fakes::FakeClock clock;
  Quota quota;
  for (int i = 0; i < 1000; ++i) {
    EXPECT_TRUE(quota.tryReserve({1, 100000}, 0.02, clock.now()).admitted);
  }
}

TEST(QuotaTest, ReservationsHoldWhatIsInFlightUntilSettled) {
  fakes::FakeClock clock;
  Quota quota;
  quota.observe(parseRateLimitHeaders(openAiHeaders(120, 2000, "0s")), clock.now());
  QuotaCost cost{1, 900};
  EXPECT_TRUE(quota.tryReserve(cost, 0, clock.now()).admitted);
  EXPECT_TRUE(quota.tryReserve(cost, 0, clock.now()).admitted);
  Quota::Admission third = quota.tryReserve(cost, 0, clock.now());
  EXPECT_FALSE(third.admitted);  // 2000 - 1800 = 200 left
  EXPECT_GT(third.wait, milliseconds(0));
  // The first one never reached the upstream: its 900 tokens come back.
  quota.release(cost);
  EXPECT_TRUE(quota.tryReserve(cost, 0, clock.now()).admitted);
  // The second one's response says what the server has left; it no longer counts twice.
  quota.observe(parseRateLimitHeaders(openAiHeaders(119, 1100, "3s")), clock.now());
  quota.settle(cost);
  EXPECT_EQ(quota.view(clock.now()).tokens.reserved, 900);  // the third, still in flight
  EXPECT_EQ(quota.view(clock.now()).tokens.remaining, 1100);
}

TEST(QuotaTest, ABucketRefillsAtTheRateTheHeadersImply) {
  fakes::FakeClock clock;
  Quota quota;
  // 18000 of 20000 tokens to come back within 9 s: 2 tokens per ms.
  quota.observe(parseRateLimitHeaders(openAiHeaders(120, 2000, "9s")), clock.now());
  Quota::Admission wait = quota.tryReserve({1, 4000}, 0, clock.now());
  EXPECT_FALSE(wait.admitted);
  EXPECT_EQ(wait.wait, milliseconds(1000));  // 2000 more tokens at 2/ms
  clock.advance(milliseconds(999));
  EXPECT_FALSE(quota.tryReserve({1, 4000}, 0, clock.now()).admitted);
  clock.advance(milliseconds(1));
  EXPECT_TRUE(quota.tryReserve({1, 4000}, 0, clock.now()).admitted);
  clock.advance(seconds(60));
  Quota::View v = quota.view(clock.now());
  EXPECT_EQ(v.tokens.remaining, 20000);  // never past the limit
  EXPECT_EQ(v.tokens.until_full, milliseconds(0));
}

TEST(QuotaTest, HeadroomKeepsAShareFreeAndTooLargeNeverFits) {
  fakes::FakeClock clock;
  Quota quota;
  quota.observe(parseRateLimitHeaders(openAiHeaders(120, 20000, "0s")), clock.now());
  EXPECT_FALSE(quota.tryReserve({1, 19700}, 0.02, clock.now()).admitted);  // 400 kept free
  EXPECT_TRUE(quota.tryReserve({1, 19600}, 0.02, clock.now()).admitted);
  EXPECT_EQ(quota.tryReserve({1, 30000}, 0.02, clock.now()).wait, Millis::max());
}

TEST(QuotaTest, ACooldownPausesEveryAdmissionUntilItEnds) {
  fakes::FakeClock clock;
  Quota quota;
  quota.observe(parseRateLimitHeaders(openAiHeaders(120, 20000, "0s")), clock.now());
  quota.cooldown(clock.now() + milliseconds(1500));
  Quota::Admission paused = quota.tryReserve({1, 1}, 0, clock.now());
  EXPECT_FALSE(paused.admitted);
  EXPECT_EQ(paused.wait, milliseconds(1500));
  ASSERT_TRUE(quota.view(clock.now()).cooldown_until.has_value());
  clock.advance(milliseconds(1500));
  EXPECT_TRUE(quota.tryReserve({1, 1}, 0, clock.now()).admitted);
  EXPECT_FALSE(quota.view(clock.now()).cooldown_until.has_value());
}

TEST(QuotaTest, AzureStyleRemainingWithoutALimitIsKeptButNeverBlocks) {
  fakes::FakeClock clock;
  Quota quota;
  quota.observe(parseRateLimitHeaders({{"x-ratelimit-remaining-tokens", "5"}}), clock.now());
  EXPECT_EQ(quota.view(clock.now()).tokens.remaining, 5);
  EXPECT_TRUE(quota.tryReserve({1, 1000}, 0.02, clock.now()).admitted);
}

TEST(QuotaTest, WorkersReservingAtOnceLoseNothing) {
  fakes::AtomicFakeClock clock;
  Quota quota;
  quota.observe(parseRateLimitHeaders(openAiHeaders(120, 20000, "0s")), clock.now());
  std::vector<std::thread> workers;
  std::atomic<int> admitted{0};
  for (int w = 0; w < 4; ++w) {
    workers.emplace_back([&] {
      for (int i = 0; i < 2000; ++i) {
        if (quota.tryReserve({1, 10}, 0, clock.now()).admitted) {
          ++admitted;
          quota.release({1, 10});
        }
      }
    });
  }
  for (std::thread& t : workers) t.join();
  EXPECT_EQ(admitted.load(), 8000);  // each released before the next: all fit
  Quota::View v = quota.view(clock.now());
  EXPECT_EQ(v.requests.reserved, 0);
  EXPECT_EQ(v.tokens.reserved, 0);
}

}  // namespace
}  // namespace bulwark::resilience
