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

http::Headers openAiHeaders(int remaining_requests, int remaining_tokens,
                            const char* reset_tokens) {
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
  RateLimitHeaders bad = parseRateLimitHeaders({{"x-ratelimit-limit-tokens", "lots"},
                                                {"x-ratelimit-remaining-tokens", "-5"},
                                                {"x-ratelimit-reset-tokens", "soon"}});
  EXPECT_FALSE(bad.any());
  EXPECT_FALSE(parseRateLimitHeaders({{"content-type", "application/json"}}).any());
  // Whole numbers are the usual form; a fraction, an exponent or one past 64 bits still reads.
  RateLimitHeaders odd = parseRateLimitHeaders({{"x-ratelimit-limit-requests", " 12.5 "},
                                                {"x-ratelimit-limit-tokens", "2e3"},
                                                {"x-ratelimit-remaining-tokens",
                                                 "18446744073709551616"},
                                                {"x-ratelimit-remaining-requests", "7x"}});
  EXPECT_EQ(odd.limit_requests, 12.5);
  EXPECT_EQ(odd.limit_tokens, 2000);
  EXPECT_EQ(odd.remaining_tokens, 18446744073709551616.0);
  EXPECT_FALSE(odd.remaining_requests);
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

TEST(QuotaTest, HeadroomKeepsAShareFreeAndTooLargeWaitsForAFullBucket) {
  fakes::FakeClock clock;
  Quota quota;
  quota.observe(parseRateLimitHeaders(openAiHeaders(120, 20000, "0s")), clock.now());
  ASSERT_TRUE(quota.tryReserve({1, 1000}, 0.02, clock.now()).admitted);
  EXPECT_FALSE(quota.tryReserve({1, 18700}, 0.02, clock.now()).admitted);  // 400 kept free
  EXPECT_TRUE(quota.tryReserve({1, 18600}, 0.02, clock.now()).admitted);
  quota.settle({1, 1000});
  quota.settle({1, 18600});
  // 10000 tokens left of 20000, refilling at 1/3 token per ms.
  quota.observe(parseRateLimitHeaders(openAiHeaders(118, 10000, "30s")), clock.now());
  // More than the limit less the headroom: it waits for a full bucket, then the upstream
  // judges it.
  Quota::Admission big = quota.tryReserve({1, 30000}, 0.02, clock.now());
  EXPECT_FALSE(big.admitted);
  EXPECT_EQ(big.wait, milliseconds(30000));
  clock.advance(milliseconds(30000));
  EXPECT_TRUE(quota.tryReserve({1, 30000}, 0.02, clock.now()).admitted);
}

TEST(QuotaTest, TheQueueIsFirstComeFirstServed) {
  fakes::FakeClock clock;
  Quota quota;
  // 2000 tokens left, refilling at 1/3 token per ms.
  quota.observe(parseRateLimitHeaders(openAiHeaders(100, 2000, "54s")), clock.now());
  ASSERT_TRUE(quota.tryReserve({1, 1500}, 0, clock.now()).admitted);
  // A large request does not fit: it queues.
  Quota::Admission large = quota.tryReserve({1, 1000}, 0, clock.now());
  ASSERT_FALSE(large.admitted);
  EXPECT_EQ(large.wait, milliseconds(1500));
  std::optional<Quota::Ticket> first = quota.enqueue({1, 1000}, 2);
  ASSERT_TRUE(first.has_value());
  // A small newcomer would fit, but waits behind it: for both to fit.
  Quota::Admission small = quota.tryReserve({1, 100}, 0, clock.now());
  EXPECT_FALSE(small.admitted);
  EXPECT_EQ(small.wait, milliseconds(1800));
  std::optional<Quota::Ticket> second = quota.enqueue({1, 100}, 2);
  ASSERT_TRUE(second.has_value());
  EXPECT_FALSE(quota.enqueue({1, 1}, 2).has_value());  // max_queue reached
  EXPECT_EQ(quota.queued(), 2u);
  // The second ticket may not pass the first, even once its own cost fits.
  clock.advance(milliseconds(600));
  EXPECT_FALSE(quota.tryReserve({1, 100}, 0, clock.now(), *second).admitted);
  clock.advance(milliseconds(900));
  EXPECT_TRUE(quota.tryReserve({1, 1000}, 0, clock.now(), *first).admitted);
  EXPECT_EQ(quota.queued(), 1u);
  clock.advance(milliseconds(300));
  EXPECT_TRUE(quota.tryReserve({1, 100}, 0, clock.now(), *second).admitted);
  EXPECT_EQ(quota.queued(), 0u);
}

TEST(QuotaTest, ARequestThatLeavesTheQueueNoLongerHoldsOthersBack) {
  fakes::FakeClock clock;
  Quota quota;
  quota.observe(parseRateLimitHeaders(openAiHeaders(100, 0, "60s")), clock.now());
  std::optional<Quota::Ticket> gone = quota.enqueue({1, 5000}, 10);
  ASSERT_TRUE(gone.has_value());
  clock.advance(milliseconds(303));  // 101 tokens back
  EXPECT_FALSE(quota.tryReserve({1, 100}, 0, clock.now()).admitted);
  quota.leave(*gone);  // its client hung up
  EXPECT_TRUE(quota.tryReserve({1, 100}, 0, clock.now()).admitted);
}

TEST(QuotaTest, AnswersArrivingOutOfOrderNeverRaiseTheViewWithAStaleCount) {
  fakes::FakeClock clock;
  Quota quota;
  const SteadyTime start = clock.now();
  // Request A went out at start, B 100 ms later; B's answer (which counts A and B) comes
  // first, then A's, whose headers were taken before B was counted.
  ASSERT_TRUE(quota.tryReserve({1, 3000}, 0, clock.now()).admitted);  // A
  clock.advance(milliseconds(100));
  ASSERT_TRUE(quota.tryReserve({1, 3000}, 0, clock.now()).admitted);  // B
  clock.advance(milliseconds(200));
  EXPECT_TRUE(quota.observe(parseRateLimitHeaders(openAiHeaders(118, 14000, "18s")), clock.now(),
                            start + milliseconds(100)));
  quota.settle({1, 3000});  // B
  clock.advance(milliseconds(100));
  EXPECT_FALSE(
      quota.observe(parseRateLimitHeaders(openAiHeaders(119, 17000, "9s")), clock.now(), start));
  // A's stale 17000 is not taken: B's 14000, refilled at 1/3 token per ms for the 100 ms
  // since it arrived. And A's own cost is charged against that view, which may not count it
  // (A and B could have reached the upstream in either order).
  EXPECT_NEAR(quota.view(clock.now()).tokens.remaining, 14033.33, 0.01);
  quota.charge({1, 3000});  // A
  EXPECT_NEAR(quota.view(clock.now()).tokens.remaining, 11033.33, 0.01);
  EXPECT_EQ(quota.view(clock.now()).tokens.reserved, 0);
}

TEST(QuotaTest, AnotherSidecarsStaleViewCountsItsRequestInstead) {
  fakes::FakeClock clock;
  Quota quota;
  const SteadyTime start = clock.now();
  quota.observe(parseRateLimitHeaders(openAiHeaders(100, 10000, "0s")), clock.now());
  // A newer view from another sidecar is taken like one of this sidecar's own.
  EXPECT_TRUE(quota.observeOthers(parseRateLimitHeaders(openAiHeaders(90, 8000, "0s")), clock.now(),
                                  start, {1, 500}));
  EXPECT_EQ(quota.view(clock.now()).tokens.remaining, 8000);
  // An older one is not; its request is counted against the view held, and nothing this
  // sidecar reserved is touched.
  ASSERT_TRUE(quota.tryReserve({1, 1000}, 0, clock.now()).admitted);
  EXPECT_FALSE(quota.observeOthers(parseRateLimitHeaders(openAiHeaders(95, 9000, "0s")),
                                   clock.now(), start - milliseconds(5), {1, 500}));
  Quota::View v = quota.view(clock.now());
  EXPECT_EQ(v.tokens.remaining, 7500);
  EXPECT_EQ(v.requests.remaining, 89);
  EXPECT_EQ(v.tokens.reserved, 1000);
  EXPECT_EQ(v.requests.reserved, 1);
}

TEST(QuotaTest, AWorkersLateClockReadingNeverCreditsARefillTwice) {
  fakes::FakeClock clock;
  Quota quota;
  const SteadyTime start = clock.now();
  quota.observe(parseRateLimitHeaders(openAiHeaders(100, 2000, "54s")), start);  // 1/3 per ms
  clock.advance(milliseconds(300));
  quota.view(clock.now());
  ASSERT_TRUE(quota.tryReserve({1, 1}, 0, clock.now()).admitted);  // refilled to now
  quota.release({1, 1});
  // Another worker read the clock 150 ms ago, before it took the lock, for a newer view.
  EXPECT_TRUE(quota.observe(parseRateLimitHeaders(openAiHeaders(100, 1000, "57s")),
                            start + milliseconds(150), start + milliseconds(100)));
  EXPECT_NEAR(quota.view(clock.now()).tokens.remaining, 1000, 0.01);
}

TEST(QuotaTest, ChargeCountsWhatReachedTheUpstreamWithoutHeaders) {
  fakes::FakeClock clock;
  Quota quota;
  quota.observe(parseRateLimitHeaders(openAiHeaders(120, 20000, "0s")), clock.now());
  ASSERT_TRUE(quota.tryReserve({1, 5000}, 0, clock.now()).admitted);
  quota.charge({1, 5000});  // a timeout after the request went out: the upstream counted it
  Quota::View v = quota.view(clock.now());
  EXPECT_EQ(v.tokens.reserved, 0);
  EXPECT_EQ(v.tokens.remaining, 15000);
  EXPECT_EQ(v.requests.remaining, 119);
  ASSERT_TRUE(quota.tryReserve({1, 5000}, 0, clock.now()).admitted);
  quota.release({1, 5000});  // a connect failure: never counted
  EXPECT_EQ(quota.view(clock.now()).tokens.remaining, 15000);
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
