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
  Quota::Admission first = quota.tryReserve(cost, 0, clock.now());
  Quota::Admission second = quota.tryReserve(cost, 0, clock.now());
  EXPECT_TRUE(first.admitted && second.admitted);
  EXPECT_NE(first.hold, second.hold);
  Quota::Admission third = quota.tryReserve(cost, 0, clock.now());
  EXPECT_FALSE(third.admitted);  // 2000 - 1800 = 200 left
  EXPECT_GT(third.wait, milliseconds(0));
  EXPECT_EQ(third.hold, 0u);
  // The first one never reached the upstream: its 900 tokens come back.
  quota.release(first.hold);
  EXPECT_TRUE(quota.tryReserve(cost, 0, clock.now()).admitted);
  // The second one's response says what the server has left; it no longer counts twice.
  quota.observe(parseRateLimitHeaders(openAiHeaders(119, 1100, "3s")), clock.now());
  quota.settle(second.hold);
  quota.settle(second.hold);  // ended once: a second end changes nothing
  EXPECT_EQ(quota.view(clock.now()).tokens.reserved, 900);  // the third, still in flight
  EXPECT_EQ(quota.view(clock.now()).tokens.remaining, 1100);
}

TEST(QuotaTest, ABucketRefillsAtItsLimitPerMinuteWhateverTheResetSays) {
  fakes::FakeClock clock;
  Quota quota;
  // A limiter that holds its whole minute: 18000 of 20000 tokens come back within 54 s.
  quota.observe(parseRateLimitHeaders(openAiHeaders(120, 2000, "54s")), clock.now());
  EXPECT_EQ(quota.view(clock.now()).tokens.capacity, 20000);
  Quota::Admission wait = quota.tryReserve({1, 4000}, 0, clock.now());
  EXPECT_FALSE(wait.admitted);
  EXPECT_EQ(wait.wait, milliseconds(6000));  // 2000 more tokens at 20000 a minute
  clock.advance(milliseconds(5999));
  EXPECT_FALSE(quota.tryReserve({1, 4000}, 0, clock.now()).admitted);
  clock.advance(milliseconds(1));
  EXPECT_TRUE(quota.tryReserve({1, 4000}, 0, clock.now()).admitted);
  clock.advance(seconds(60));
  Quota::View v = quota.view(clock.now());
  EXPECT_EQ(v.tokens.remaining, 20000);  // never past the limit
  EXPECT_EQ(v.tokens.until_full, milliseconds(0));
}

TEST(QuotaTest, AShortBucketIsLearnedFromTheResetCrossCheck) {
  fakes::FakeClock clock;
  Quota quota;
  // 20000 a minute enforced as 2000 per 6 s: the bucket holds 1500 and is full in 1.5 s.
  // Read as a whole minute, (20000 - 1500) / 1.5 s would be a refill ten times too fast.
  quota.observe(parseRateLimitHeaders(openAiHeaders(120, 1500, "1.5s")), clock.now());
  Quota::View v = quota.view(clock.now());
  EXPECT_EQ(v.tokens.capacity, 2000);
  EXPECT_EQ(v.tokens.until_full, milliseconds(1500));
  Quota::Admission wait = quota.tryReserve({1, 1800}, 0, clock.now());
  EXPECT_FALSE(wait.admitted);
  EXPECT_EQ(wait.wait, milliseconds(900));  // 300 tokens at 1/3 per ms
  clock.advance(seconds(60));
  EXPECT_EQ(quota.view(clock.now()).tokens.remaining, 2000);  // the bucket, not the minute
  // More than the bucket ever holds waits for a full bucket; the upstream judges it.
  EXPECT_TRUE(quota.tryReserve({1, 5000}, 0, clock.now()).admitted);
}

TEST(QuotaTest, TheLearnedBurstIsNeverBelowTheLargestRemainingSeenLately) {
  fakes::FakeClock clock;
  Quota quota;
  quota.observe(parseRateLimitHeaders(openAiHeaders(120, 6000, "0s")), clock.now());
  EXPECT_EQ(quota.view(clock.now()).tokens.capacity, 6000);
  // A reset that understates the bucket does not take the room the limiter showed.
  clock.advance(seconds(1));
  quota.observe(parseRateLimitHeaders(openAiHeaders(120, 1000, "3s")), clock.now());
  EXPECT_EQ(quota.view(clock.now()).tokens.capacity, 6000);
  // Once that sighting is old, the cross-check decides again.
  clock.advance(Quota::kPeakWindow);
  quota.observe(parseRateLimitHeaders(openAiHeaders(120, 1000, "3s")), clock.now());
  EXPECT_EQ(quota.view(clock.now()).tokens.capacity, 2000);
}

TEST(QuotaTest, ASurpriseLowersTheBurstAtOnceAndItGrowsBackSlowly) {
  fakes::FakeClock clock;
  Quota quota;
  // A limiter whose reset speaks of the whole minute while it enforces 2000-token buckets.
  quota.observe(parseRateLimitHeaders(openAiHeaders(120, 2000, "54s")), clock.now());
  ASSERT_EQ(quota.view(clock.now()).tokens.capacity, 20000);
  clock.advance(seconds(30));  // the model refills toward 20000
  QuotaCost cost{1, 1500};
  Quota::Admission admitted = quota.tryReserve(cost, 0, clock.now());
  ASSERT_TRUE(admitted.admitted);
  http::Headers rejected = openAiHeaders(119, 300, "59.1s");
  quota.observe(parseRateLimitHeaders(rejected), clock.now());
  quota.settle(admitted.hold);
  EXPECT_FALSE(quota.surprised(parseRateLimitHeaders(rejected), cost, clock.now()));
  Quota::View v = quota.view(clock.now());
  EXPECT_EQ(v.tokens.capacity, 10000);  // halved, at once, for every worker
  EXPECT_EQ(v.requests.capacity, 120);  // the request bucket had room: it stays
  EXPECT_EQ(v.surprises, 1);
  // A second surprise halves again; never below the largest remaining seen (2000).
  for (int i = 0; i < 3; ++i) quota.surprised(parseRateLimitHeaders(rejected), cost, clock.now());
  EXPECT_EQ(quota.view(clock.now()).tokens.capacity, 2000);
  // The cross-check still says 20000: trust grows back by a tenth of the limit a minute.
  clock.advance(seconds(30));
  quota.observe(parseRateLimitHeaders(openAiHeaders(119, 1000, "57s")), clock.now());
  EXPECT_NEAR(quota.view(clock.now()).tokens.capacity, 3000, 1);
  // An answer that shows more room than the model holds raises it to that at once.
  quota.observe(parseRateLimitHeaders(openAiHeaders(119, 5000, "45s")), clock.now());
  EXPECT_NEAR(quota.view(clock.now()).tokens.capacity, 5000, 1);
}

TEST(QuotaTest, AFixedBurstIsTheUsersWord) {
  fakes::FakeClock clock;
  Quota quota;
  quota.observe(parseRateLimitHeaders(openAiHeaders(120, 20000, "0s")), clock.now());
  QuotaRules tenth{0, 0.1};
  Quota::Admission first = quota.tryReserve({1, 1500}, tenth, clock.now());
  EXPECT_TRUE(first.admitted);
  quota.charge(first.hold);
  // 2000 tokens at once, whatever the headers said: 500 left.
  Quota::Admission next = quota.tryReserve({1, 1000}, tenth, clock.now());
  EXPECT_FALSE(next.admitted);
  EXPECT_EQ(next.wait, milliseconds(1500));
  EXPECT_EQ(quota.view(clock.now()).tokens.capacity, 2000);
  // A surprise does not move it (it still counts toward a fallback).
  quota.surprised(parseRateLimitHeaders(openAiHeaders(119, 0, "6s")), {1, 1000}, clock.now());
  EXPECT_EQ(quota.view(clock.now()).tokens.capacity, 2000);
  EXPECT_EQ(quota.view(clock.now()).surprises, 1);
}

TEST(QuotaTest, TheHeadroomIsAtMostAQuarterOfAShortBurst) {
  fakes::FakeClock clock;
  Quota quota;
  // 60000 a minute as 1000 a second: 2 % of the limit (1200) would exceed the whole bucket.
  quota.observe(parseRateLimitHeaders({{"x-ratelimit-limit-tokens", "60000"},
                                       {"x-ratelimit-remaining-tokens", "1000"},
                                       {"x-ratelimit-reset-tokens", "0s"}}),
                clock.now());
  EXPECT_TRUE(quota.tryReserve({1, 750}, 0.02, clock.now()).admitted);
  EXPECT_FALSE(quota.tryReserve({1, 1}, 0.02, clock.now()).admitted);  // 250 kept free
}

TEST(QuotaTest, SurprisesThatKeepComingFallBackUntilTheyStop) {
  fakes::FakeClock clock;
  Quota quota;
  RateLimitHeaders rejected = parseRateLimitHeaders(openAiHeaders(100, 0, "54s"));
  quota.observe(rejected, clock.now());
  QuotaCost cost{1, 100};
  for (int i = 1; i < Quota::kFallbackSurprises; ++i) {
    EXPECT_FALSE(quota.surprised(rejected, cost, clock.now()));
  }
  EXPECT_TRUE(quota.admitting(clock.now()));
  EXPECT_TRUE(quota.surprised(rejected, cost, clock.now()));  // the fifth within a minute
  EXPECT_FALSE(quota.admitting(clock.now()));
  ASSERT_TRUE(quota.view(clock.now()).fallback_until.has_value());
  EXPECT_EQ(*quota.view(clock.now()).fallback_until, clock.now() + Quota::kFallbackFor);
  clock.advance(Quota::kFallbackFor);
  bool resumed = false;
  EXPECT_TRUE(quota.admitting(clock.now(), &resumed));
  EXPECT_TRUE(resumed);
  resumed = false;
  EXPECT_TRUE(quota.admitting(clock.now(), &resumed));
  EXPECT_FALSE(resumed);  // said once
  EXPECT_EQ(quota.view(clock.now()).surprises, 0);  // a fresh start
  // Falling back again soon after: twice as long.
  for (int i = 0; i < Quota::kFallbackSurprises; ++i) quota.surprised(rejected, cost, clock.now());
  EXPECT_EQ(*quota.view(clock.now()).fallback_until, clock.now() + 2 * Quota::kFallbackFor);
}

TEST(QuotaTest, FewSurprisesAmongManyAdmittedRequestsDoNotFallBack) {
  fakes::FakeClock clock;
  Quota quota;
  quota.observe(parseRateLimitHeaders({{"x-ratelimit-limit-requests", "100000"},
                                       {"x-ratelimit-remaining-requests", "100000"}}),
                clock.now());
  for (int i = 0; i < 500; ++i) ASSERT_TRUE(quota.tryReserve({1, 0}, 0, clock.now()).admitted);
  RateLimitHeaders rejected = parseRateLimitHeaders({{"x-ratelimit-remaining-requests", "0"}});
  for (int i = 0; i < 9; ++i) EXPECT_FALSE(quota.surprised(rejected, {1, 0}, clock.now()));
  EXPECT_TRUE(quota.surprised(rejected, {1, 0}, clock.now()));  // 10 of 500: 2 %
}

TEST(TryAgainInTest, ReadsOpenAisRateLimitMessage) {
  EXPECT_EQ(tryAgainIn(R"({"error":{"message":"Rate limit reached for gpt-4o-mini in )"
                       R"(organization org-x on tokens per min (TPM): Limit 20000, Used 19500, )"
                       R"(Requested 900. Please try again in 1.2s. Visit https://x","type":)"
                       R"("tokens","code":"rate_limit_exceeded"}})"),
            milliseconds(1200));
  EXPECT_EQ(tryAgainIn("Please try again in 20ms."), milliseconds(20));
  EXPECT_EQ(tryAgainIn("Please try again in 6m0s"), seconds(360));
  EXPECT_FALSE(tryAgainIn("Please try again later."));
  EXPECT_FALSE(tryAgainIn("try again in "));
  EXPECT_FALSE(tryAgainIn(""));
  EXPECT_FALSE(tryAgainIn(std::string(100, 'x') + "try again in " + std::string(100, '9')));
}

TEST(QuotaTest, HeadroomKeepsAShareFreeAndTooLargeWaitsForAFullBucket) {
  fakes::FakeClock clock;
  Quota quota;
  quota.observe(parseRateLimitHeaders(openAiHeaders(120, 20000, "0s")), clock.now());
  Quota::Admission small = quota.tryReserve({1, 1000}, 0.02, clock.now());
  ASSERT_TRUE(small.admitted);
  EXPECT_FALSE(quota.tryReserve({1, 18700}, 0.02, clock.now()).admitted);  // 400 kept free
  Quota::Admission large = quota.tryReserve({1, 18600}, 0.02, clock.now());
  EXPECT_TRUE(large.admitted);
  quota.settle(small.hold);
  quota.settle(large.hold);
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
  // (Neither says when it went out, so B's view is not known to count A.)
  Quota::Admission a = quota.tryReserve({1, 3000}, 0, clock.now());
  ASSERT_TRUE(a.admitted);
  clock.advance(milliseconds(100));
  Quota::Admission b = quota.tryReserve({1, 3000}, 0, clock.now());
  ASSERT_TRUE(b.admitted);
  clock.advance(milliseconds(200));
  EXPECT_TRUE(quota.observe(parseRateLimitHeaders(openAiHeaders(118, 14000, "18s")), clock.now(),
                            start + milliseconds(100)));
  quota.settle(b.hold);
  clock.advance(milliseconds(100));
  EXPECT_FALSE(
      quota.observe(parseRateLimitHeaders(openAiHeaders(119, 17000, "9s")), clock.now(), start));
  // A's stale 17000 is not taken: B's 14000, refilled at 1/3 token per ms for the 100 ms
  // since it arrived. And A's own cost is charged against that view, which may not count it
  // (A and B could have reached the upstream in either order).
  EXPECT_NEAR(quota.view(clock.now()).tokens.remaining, 14033.33, 0.01);
  quota.charge(a.hold);
  EXPECT_NEAR(quota.view(clock.now()).tokens.remaining, 11033.33, 0.01);
  EXPECT_EQ(quota.view(clock.now()).tokens.reserved, 0);
}

TEST(QuotaTest, ANewerViewCountsTheRequestsSentWellBeforeItsOwn) {
  fakes::FakeClock clock;
  Quota quota;
  const SteadyTime start = clock.now();
  quota.observe(parseRateLimitHeaders(openAiHeaders(120, 20000, "0s")), start);
  // A went out at start, B 30 ms later, C 200 ms later; all three are in flight.
  Quota::Admission a = quota.tryReserve({1, 3000}, 0, start);
  quota.sent(a.hold, start);
  Quota::Admission b = quota.tryReserve({1, 3000}, 0, start);
  quota.sent(b.hold, start + milliseconds(30));
  Quota::Admission c = quota.tryReserve({1, 3000}, 0, start);
  quota.sent(c.hold, start + milliseconds(200));
  // Sent, they are counted by the upstream: their cost has left what remains, so the bucket
  // refills from there.
  ASSERT_EQ(quota.view(start).tokens.reserved, 0);
  ASSERT_EQ(quota.view(start).tokens.remaining, 11000);
  // C's answer: its view counts C, and A and B, sent well before C.
  clock.advance(milliseconds(400));
  EXPECT_TRUE(quota.observe(parseRateLimitHeaders(openAiHeaders(117, 11000, "27s")), clock.now(),
                            start + milliseconds(200), c.hold));
  quota.settle(c.hold);
  Quota::View v = quota.view(clock.now());
  EXPECT_EQ(v.tokens.reserved, 0);  // nothing in flight is counted twice
  EXPECT_EQ(v.tokens.remaining, 11000);
  // A's and B's own (older) answers change nothing: C's view counts them already.
  EXPECT_FALSE(quota.observe(parseRateLimitHeaders(openAiHeaders(119, 17000, "9s")), clock.now(),
                             start));
  quota.charge(a.hold);
  quota.charge(b.hold);
  EXPECT_EQ(quota.view(clock.now()).tokens.remaining, 11000);
}

TEST(QuotaTest, AViewDoesNotCountARequestSentJustBeforeItsOwn) {
  fakes::FakeClock clock;
  Quota quota;
  const SteadyTime start = clock.now();
  quota.observe(parseRateLimitHeaders(openAiHeaders(120, 20000, "0s")), start);
  Quota::Admission a = quota.tryReserve({1, 3000}, 0, start);
  quota.sent(a.hold, start + milliseconds(180));  // may reach the upstream after B
  Quota::Admission b = quota.tryReserve({1, 3000}, 0, start);
  quota.sent(b.hold, start + milliseconds(200));
  clock.advance(milliseconds(400));
  EXPECT_TRUE(quota.observe(parseRateLimitHeaders(openAiHeaders(118, 17000, "9s")), clock.now(),
                            start + milliseconds(200), b.hold));
  quota.settle(b.hold);
  // B's view is taken less A, which it may not count.
  EXPECT_EQ(quota.view(clock.now()).tokens.remaining, 14000);
  // A's answer carries no view: it was counted when sent, and is not counted twice.
  quota.charge(a.hold);
  EXPECT_EQ(quota.view(clock.now()).tokens.remaining, 14000);
  // A later view, of a request sent well after A, counts A itself.
  Quota::Admission c = quota.tryReserve({1, 1000}, 0, clock.now());
  quota.sent(c.hold, start + milliseconds(400));
  EXPECT_TRUE(quota.observe(parseRateLimitHeaders(openAiHeaders(117, 13000, "21s")), clock.now(),
                            start + milliseconds(400), c.hold));
  quota.settle(c.hold);
  EXPECT_EQ(quota.view(clock.now()).tokens.remaining, 13000);
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
  Quota::Admission one = quota.tryReserve({1, 1}, 0, clock.now());  // refilled to now
  ASSERT_TRUE(one.admitted);
  quota.release(one.hold);
  // Another worker read the clock 150 ms ago, before it took the lock, for a newer view.
  EXPECT_TRUE(quota.observe(parseRateLimitHeaders(openAiHeaders(100, 1000, "57s")),
                            start + milliseconds(150), start + milliseconds(100)));
  EXPECT_NEAR(quota.view(clock.now()).tokens.remaining, 1000, 0.01);
}

TEST(QuotaTest, ChargeCountsWhatReachedTheUpstreamWithoutHeaders) {
  fakes::FakeClock clock;
  Quota quota;
  quota.observe(parseRateLimitHeaders(openAiHeaders(120, 20000, "0s")), clock.now());
  Quota::Admission timed_out = quota.tryReserve({1, 5000}, 0, clock.now());
  ASSERT_TRUE(timed_out.admitted);
  quota.charge(timed_out.hold);  // a timeout after the request went out: the upstream counted it
  Quota::View v = quota.view(clock.now());
  EXPECT_EQ(v.tokens.reserved, 0);
  EXPECT_EQ(v.tokens.remaining, 15000);
  EXPECT_EQ(v.requests.remaining, 119);
  Quota::Admission refused = quota.tryReserve({1, 5000}, 0, clock.now());
  ASSERT_TRUE(refused.admitted);
  quota.release(refused.hold);  // a connect failure: never counted
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
        if (Quota::Admission fit = quota.tryReserve({1, 10}, 0, clock.now()); fit.admitted) {
          ++admitted;
          quota.release(fit.hold);
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
