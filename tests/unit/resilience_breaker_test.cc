// The circuit breaker's transitions with a fake clock: the consecutive and rate rules, OPEN
// fail-fast, HALF_OPEN probes, the doubling recovery timeout, and hammering from threads.
// Then the shipped defaults against simulated traffic: random failures at volume never trip
// them, a real outage does, fast.
#include "proxy/resilience/circuit_breaker.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <random>
#include <thread>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "tests/unit/fakes.h"

namespace bulwark::resilience {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using Transition = std::pair<BreakerState, BreakerState>;

constexpr BreakerState kClosed = BreakerState::kClosed;
constexpr BreakerState kOpen = BreakerState::kOpen;
constexpr BreakerState kHalfOpen = BreakerState::kHalfOpen;

// Threshold 3 consecutive; the rate rule is out of reach unless a test lowers min_requests.
config::CircuitBreakerConfig testConfig() {
  config::CircuitBreakerConfig config;
  config.failure_threshold = 3;
  config.failure_rate_threshold = 0.5;
  config.window = seconds(10);
  config.min_requests = 1000;
  config.recovery_timeout = seconds(10);
  config.max_recovery_timeout = seconds(35);
  config.half_open_max_probes = 1;
  return config;
}

class BreakerTest : public testing::Test {
 protected:
  void SetUp() override {
    breaker_ = std::make_unique<CircuitBreaker>(config_, clock_);
    breaker_->setTransitionListener(
        [this](BreakerState from, BreakerState to) { transitions_.emplace_back(from, to); });
  }

  // Outcomes of admitted non-probe attempts.
  void fail(int n = 1) {
    for (int i = 0; i < n; ++i) {
      ASSERT_TRUE(breaker_->admit().admitted);
      breaker_->record(/*counted_failure=*/true, /*probe=*/false);
    }
  }
  void succeed(int n = 1) {
    for (int i = 0; i < n; ++i) {
      ASSERT_TRUE(breaker_->admit().admitted);
      breaker_->record(/*counted_failure=*/false, /*probe=*/false);
    }
  }
  void trip() {
    fail(config_.failure_threshold);
    ASSERT_EQ(breaker_->state(), kOpen);
  }
  // Waits out the recovery period and takes the probe it allows.
  void probe() {
    clock_.advance(breaker_->snapshot().current_recovery_timeout);
    CircuitBreaker::Admission admission = breaker_->admit();
    ASSERT_TRUE(admission.admitted);
    ASSERT_TRUE(admission.probe);
    ASSERT_EQ(breaker_->state(), kHalfOpen);
  }
  // The probe taken by probe() fails, and so do the next ones, failure_threshold in all:
  // the breaker reopens.
  void failTheProbes() {
    breaker_->record(/*counted_failure=*/true, /*probe=*/true);
    for (int i = 1; i < config_.failure_threshold; ++i) {
      ASSERT_EQ(breaker_->state(), kHalfOpen);
      CircuitBreaker::Admission admission = breaker_->admit();
      ASSERT_TRUE(admission.probe);
      breaker_->record(true, true);
    }
    ASSERT_EQ(breaker_->state(), kOpen);
  }

  fakes::FakeClock clock_;
  config::CircuitBreakerConfig config_ = testConfig();
  std::unique_ptr<CircuitBreaker> breaker_;
  std::vector<Transition> transitions_;
};

TEST(BreakerStateNameTest, NamesEveryState) {
  EXPECT_STREQ(breakerStateName(kClosed), "CLOSED");
  EXPECT_STREQ(breakerStateName(kOpen), "OPEN");
  EXPECT_STREQ(breakerStateName(kHalfOpen), "HALF_OPEN");
}

TEST_F(BreakerTest, StartsClosedAndAdmitsPlainAttempts) {
  CircuitBreaker::Admission admission = breaker_->admit();
  EXPECT_TRUE(admission.admitted);
  EXPECT_FALSE(admission.probe);
  CircuitBreaker::Snapshot snapshot = breaker_->snapshot();
  EXPECT_EQ(snapshot.state, kClosed);
  EXPECT_EQ(snapshot.consecutive_failures, 0);
  EXPECT_FALSE(snapshot.last_failure.has_value());
  EXPECT_EQ(snapshot.current_recovery_timeout, seconds(10));
}

TEST_F(BreakerTest, OpensOnConsecutiveCountedFailures) {
  fail(2);
  EXPECT_EQ(breaker_->state(), kClosed);
  EXPECT_EQ(breaker_->snapshot().consecutive_failures, 2);
  clock_.advance(seconds(1));
  fail();
  CircuitBreaker::Snapshot snapshot = breaker_->snapshot();
  EXPECT_EQ(snapshot.state, kOpen);
  EXPECT_EQ(snapshot.consecutive_failures, 3);
  EXPECT_EQ(snapshot.last_failure, clock_.wallNow());
  EXPECT_EQ(snapshot.current_recovery_timeout, seconds(10));
  EXPECT_EQ(transitions_, (std::vector<Transition>{{kClosed, kOpen}}));
}

TEST_F(BreakerTest, AnUncountedOutcomeResetsTheConsecutiveCount) {
  fail(2);
  succeed();  // a success, or a failure whose policy says breaker: false
  EXPECT_EQ(breaker_->snapshot().consecutive_failures, 0);
  fail(2);
  EXPECT_EQ(breaker_->state(), kClosed);
  fail();
  EXPECT_EQ(breaker_->state(), kOpen);
}

TEST_F(BreakerTest, LastFailureIsTheLatestCountedFailure) {
  fail();
  const WallTime first = clock_.wallNow();
  EXPECT_EQ(breaker_->snapshot().last_failure, first);
  clock_.advance(seconds(5));
  succeed();
  EXPECT_EQ(breaker_->snapshot().last_failure, first);
}

TEST_F(BreakerTest, RateRuleWaitsForMinRequests) {
  config_.failure_threshold = 100;
  config_.min_requests = 10;
  breaker_->updateConfig(config_);
  for (int i = 0; i < 4; ++i) {
    fail();
    succeed();
  }
  fail();  // 5 of 9 failed: above the rate, below the minimum
  EXPECT_EQ(breaker_->state(), kClosed);
  succeed();  // 5 of 10: exactly at the threshold
  EXPECT_EQ(breaker_->state(), kOpen);
  EXPECT_EQ(transitions_, (std::vector<Transition>{{kClosed, kOpen}}));
}

TEST_F(BreakerTest, RateRuleStaysClosedBelowTheThreshold) {
  config_.failure_threshold = 100;
  config_.min_requests = 10;
  breaker_->updateConfig(config_);
  for (int i = 0; i < 50; ++i) {
    succeed(3);
    fail(2);  // never more than 40 % failures
  }
  EXPECT_EQ(breaker_->state(), kClosed);
}

TEST_F(BreakerTest, RateRuleMatchesADecimalThresholdExactly) {
  config_.failure_threshold = 100;
  config_.min_requests = 10;
  config_.failure_rate_threshold = 0.7;  // 0.7 * 10 is 7.000000000000001 in doubles
  breaker_->updateConfig(config_);
  succeed(3);
  for (int i = 0; i < 7; ++i) fail();
  EXPECT_EQ(breaker_->state(), kOpen);
}

TEST_F(BreakerTest, OutcomesOlderThanTheWindowLeaveIt) {
  config_.failure_threshold = 100;
  config_.min_requests = 10;
  breaker_->updateConfig(config_);
  fail(5);
  clock_.advance(seconds(10));  // the whole window later
  fail(5);
  EXPECT_EQ(breaker_->state(), kClosed) << "the first five failures must have left the window";
  clock_.advance(seconds(5));
  fail(4);
  EXPECT_EQ(breaker_->state(), kClosed);
  fail();  // the five from 5 s ago are still in the window: 10 of 10
  EXPECT_EQ(breaker_->state(), kOpen);
}

TEST_F(BreakerTest, OldSuccessesStopDilutingTheRate) {
  config_.failure_threshold = 100;
  config_.min_requests = 10;
  breaker_->updateConfig(config_);
  succeed(30);
  clock_.advance(seconds(10));
  fail(5);
  succeed(4);
  EXPECT_EQ(breaker_->state(), kClosed);  // 5 of 9: below min_requests
  fail();
  EXPECT_EQ(breaker_->state(), kOpen);  // 6 of 10, the 30 successes gone
}

TEST_F(BreakerTest, OpenRejectsWithTheTimeLeftUntilHalfOpen) {
  trip();
  CircuitBreaker::Admission admission = breaker_->admit();
  EXPECT_FALSE(admission.admitted);
  EXPECT_FALSE(admission.probe);
  EXPECT_EQ(admission.retry_after, seconds(10));
  clock_.advance(milliseconds(4250));
  EXPECT_EQ(breaker_->admit().retry_after, milliseconds(5750));
  clock_.advance(milliseconds(5749));
  admission = breaker_->admit();
  EXPECT_FALSE(admission.admitted);
  EXPECT_EQ(admission.retry_after, milliseconds(1));
  EXPECT_EQ(breaker_->state(), kOpen);
}

TEST_F(BreakerTest, OpenStaysOpenInSnapshotsUntilSomeoneAsks) {
  trip();
  clock_.advance(seconds(60));
  EXPECT_EQ(breaker_->snapshot().state, kOpen);
  EXPECT_TRUE(breaker_->admit().probe);
  EXPECT_EQ(breaker_->snapshot().state, kHalfOpen);
}

TEST_F(BreakerTest, HalfOpenAfterTheRecoveryTimeout) {
  trip();
  clock_.advance(seconds(10));
  CircuitBreaker::Admission admission = breaker_->admit();
  EXPECT_TRUE(admission.admitted);
  EXPECT_TRUE(admission.probe);
  EXPECT_EQ(breaker_->state(), kHalfOpen);
  EXPECT_EQ(transitions_, (std::vector<Transition>{{kClosed, kOpen}, {kOpen, kHalfOpen}}));
}

TEST_F(BreakerTest, HalfOpenAdmitsOneProbeAtATime) {
  trip();
  probe();
  CircuitBreaker::Admission second = breaker_->admit();
  EXPECT_FALSE(second.admitted);
  EXPECT_FALSE(second.probe);
  EXPECT_GT(second.retry_after, milliseconds(0));
  EXPECT_LE(second.retry_after, seconds(1));

  breaker_->release(/*probe=*/true);  // the probe's client went away
  EXPECT_EQ(breaker_->state(), kHalfOpen);
  CircuitBreaker::Admission third = breaker_->admit();
  EXPECT_TRUE(third.admitted);
  EXPECT_TRUE(third.probe);
  EXPECT_FALSE(breaker_->admit().admitted);
}

TEST_F(BreakerTest, HalfOpenAdmitsUpToMaxProbes) {
  config_.half_open_max_probes = 3;
  breaker_->updateConfig(config_);
  trip();
  probe();
  EXPECT_TRUE(breaker_->admit().probe);
  EXPECT_TRUE(breaker_->admit().probe);
  EXPECT_FALSE(breaker_->admit().admitted);
  breaker_->release(true);
  EXPECT_TRUE(breaker_->admit().probe);
  EXPECT_FALSE(breaker_->admit().admitted);
}

TEST_F(BreakerTest, AProbeSuccessCloses) {
  trip();
  probe();
  breaker_->record(/*counted_failure=*/false, /*probe=*/true);
  CircuitBreaker::Snapshot snapshot = breaker_->snapshot();
  EXPECT_EQ(snapshot.state, kClosed);
  EXPECT_EQ(snapshot.consecutive_failures, 0);
  EXPECT_EQ(snapshot.current_recovery_timeout, seconds(10));
  CircuitBreaker::Admission admission = breaker_->admit();
  EXPECT_TRUE(admission.admitted);
  EXPECT_FALSE(admission.probe);
  // A fresh count: it takes the full threshold again to trip.
  fail(2);
  EXPECT_EQ(breaker_->state(), kClosed);
  EXPECT_EQ(transitions_,
            (std::vector<Transition>{{kClosed, kOpen}, {kOpen, kHalfOpen}, {kHalfOpen, kClosed}}));
}

TEST_F(BreakerTest, ClosingClearsTheRateWindow) {
  config_.failure_threshold = 100;
  config_.min_requests = 10;
  breaker_->updateConfig(config_);
  fail(10);
  ASSERT_EQ(breaker_->state(), kOpen);
  probe();
  breaker_->record(false, true);
  ASSERT_EQ(breaker_->state(), kClosed);
  fail(9);
  EXPECT_EQ(breaker_->state(), kClosed) << "the failures that tripped it must be forgotten";
}

TEST_F(BreakerTest, FailedProbesReopenWithADoubledTimeoutUpToTheMax) {
  trip();
  probe();
  failTheProbes();
  EXPECT_EQ(breaker_->state(), kOpen);
  EXPECT_EQ(breaker_->snapshot().current_recovery_timeout, seconds(20));
  EXPECT_EQ(breaker_->snapshot().last_failure, clock_.wallNow());
  EXPECT_EQ(breaker_->admit().retry_after, seconds(20));
  clock_.advance(milliseconds(19999));
  EXPECT_FALSE(breaker_->admit().admitted);

  clock_.advance(milliseconds(1));
  EXPECT_TRUE(breaker_->admit().probe);
  failTheProbes();
  EXPECT_EQ(breaker_->snapshot().current_recovery_timeout, seconds(35));  // 40 s, capped
  EXPECT_EQ(breaker_->admit().retry_after, seconds(35));

  probe();
  failTheProbes();
  EXPECT_EQ(breaker_->snapshot().current_recovery_timeout, seconds(35));
  EXPECT_EQ(transitions_, (std::vector<Transition>{{kClosed, kOpen},
                                                   {kOpen, kHalfOpen},
                                                   {kHalfOpen, kOpen},
                                                   {kOpen, kHalfOpen},
                                                   {kHalfOpen, kOpen},
                                                   {kOpen, kHalfOpen},
                                                   {kHalfOpen, kOpen}}));
}

TEST_F(BreakerTest, TheRecoveryTimeoutResetsOnceClosed) {
  trip();
  probe();
  failTheProbes();
  probe();
  failTheProbes();
  ASSERT_EQ(breaker_->snapshot().current_recovery_timeout, seconds(35));
  probe();
  breaker_->record(false, true);
  ASSERT_EQ(breaker_->state(), kClosed);
  EXPECT_EQ(breaker_->snapshot().current_recovery_timeout, seconds(10));
  trip();
  EXPECT_EQ(breaker_->admit().retry_after, seconds(10));
}

TEST_F(BreakerTest, OutcomesOfAttemptsAdmittedBeforeTheTripDoNotMoveIt) {
  // Three attempts admitted while CLOSED; the breaker opens before the last ones report.
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(breaker_->admit().admitted);
  for (int i = 0; i < 3; ++i) breaker_->record(true, false);
  ASSERT_EQ(breaker_->state(), kOpen);
  clock_.advance(seconds(1));
  breaker_->record(/*counted_failure=*/false, /*probe=*/false);
  EXPECT_EQ(breaker_->state(), kOpen);
  clock_.advance(seconds(1));
  breaker_->record(/*counted_failure=*/true, /*probe=*/false);
  EXPECT_EQ(breaker_->state(), kOpen);
  EXPECT_EQ(breaker_->snapshot().last_failure, clock_.wallNow());
  // Still due to half-open 10 s after the trip, not after the late failure.
  EXPECT_EQ(breaker_->admit().retry_after, seconds(8));
  EXPECT_EQ(transitions_.size(), 1u);
}

TEST_F(BreakerTest, OnlyAProbeDecidesHalfOpen) {
  ASSERT_TRUE(breaker_->admit().admitted);  // a slow attempt from before the trip
  trip();
  probe();
  breaker_->record(/*counted_failure=*/false, /*probe=*/false);
  EXPECT_EQ(breaker_->state(), kHalfOpen);
  breaker_->record(true, false);
  EXPECT_EQ(breaker_->state(), kHalfOpen);
  breaker_->record(false, true);
  EXPECT_EQ(breaker_->state(), kClosed);
}

TEST_F(BreakerTest, AProbeThatOutlivesTheDecisionIsAnOrdinaryOutcome) {
  config_.half_open_max_probes = 2;
  breaker_->updateConfig(config_);
  trip();
  probe();
  ASSERT_TRUE(breaker_->admit().probe);
  breaker_->record(false, true);
  ASSERT_EQ(breaker_->state(), kClosed);
  breaker_->record(true, true);  // the other probe, late
  EXPECT_EQ(breaker_->state(), kClosed);
  EXPECT_EQ(breaker_->snapshot().consecutive_failures, 1);
}

TEST_F(BreakerTest, ALateProbeKeepsItsSlotUntilItReports) {
  config_.half_open_max_probes = 2;
  breaker_->updateConfig(config_);
  trip();
  probe();
  ASSERT_TRUE(breaker_->admit().probe);  // a slow probe
  failTheProbes();                       // the others fail in the other slot: OPEN for 20 s
  clock_.advance(seconds(20));
  EXPECT_TRUE(breaker_->admit().probe);
  EXPECT_FALSE(breaker_->admit().admitted) << "the slow probe still holds a slot";
  breaker_->release(true);
  EXPECT_TRUE(breaker_->admit().probe);
}

TEST_F(BreakerTest, TheListenerRunsOutsideTheLockAndSeesEachChangeOnce) {
  std::vector<BreakerState> seen_in_listener;
  breaker_->setTransitionListener([&](BreakerState from, BreakerState to) {
    transitions_.emplace_back(from, to);
    // Would deadlock if called with the breaker's mutex held.
    seen_in_listener.push_back(breaker_->snapshot().state);
  });
  trip();
  EXPECT_FALSE(breaker_->admit().admitted);
  probe();
  EXPECT_FALSE(breaker_->admit().admitted);
  failTheProbes();
  probe();
  breaker_->record(false, true);
  succeed(5);
  std::vector<Transition> expected = {{kClosed, kOpen},
                                      {kOpen, kHalfOpen},
                                      {kHalfOpen, kOpen},
                                      {kOpen, kHalfOpen},
                                      {kHalfOpen, kClosed}};
  EXPECT_EQ(transitions_, expected);
  EXPECT_EQ(seen_in_listener,
            (std::vector<BreakerState>{kOpen, kHalfOpen, kOpen, kHalfOpen, kClosed}));
}

TEST_F(BreakerTest, UpdateConfigKeepsTheStateAndAppliesNewThresholds) {
  fail(2);
  config_.failure_threshold = 2;
  config_.recovery_timeout = seconds(4);
  config_.max_recovery_timeout = seconds(6);
  breaker_->updateConfig(config_);
  EXPECT_EQ(breaker_->snapshot().consecutive_failures, 2);
  EXPECT_EQ(breaker_->state(), kClosed);
  fail();
  ASSERT_EQ(breaker_->state(), kOpen);
  EXPECT_EQ(breaker_->admit().retry_after, seconds(4));

  config_.failure_threshold = 1;  // now one failed probe reopens it
  breaker_->updateConfig(config_);
  EXPECT_EQ(breaker_->state(), kOpen);
  probe();
  breaker_->record(true, true);
  EXPECT_EQ(breaker_->state(), kOpen);
  EXPECT_EQ(breaker_->snapshot().current_recovery_timeout, seconds(6));
}

TEST_F(BreakerTest, ReleasingAPlainAttemptChangesNothing) {
  ASSERT_TRUE(breaker_->admit().admitted);
  breaker_->release(/*probe=*/false);
  fail(2);
  breaker_->release(false);
  EXPECT_EQ(breaker_->snapshot().consecutive_failures, 2);
  EXPECT_EQ(breaker_->state(), kClosed);
}

TEST_F(BreakerTest, UnderBusyTrafficAStreakMustLastASecond) {
  config_.min_requests = 20;  // the window holds enough outcomes for the rate rule
  breaker_->updateConfig(config_);
  succeed(20);
  fail(10);  // ten in a row within a millisecond: noise at volume
  EXPECT_EQ(breaker_->state(), kClosed);
  EXPECT_EQ(breaker_->snapshot().consecutive_failures, 10);
  clock_.advance(CircuitBreaker::kBusyStreakSpan - milliseconds(1));
  fail();
  EXPECT_EQ(breaker_->state(), kClosed);
  clock_.advance(milliseconds(1));
  fail();  // a second of nothing but failures
  EXPECT_EQ(breaker_->state(), kOpen);
  EXPECT_EQ(transitions_, (std::vector<Transition>{{kClosed, kOpen}}));
}

TEST_F(BreakerTest, UnderBusyTrafficASuccessRestartsTheStreak) {
  config_.min_requests = 20;
  breaker_->updateConfig(config_);
  succeed(20);
  fail(5);
  clock_.advance(milliseconds(900));
  succeed();
  fail(5);  // the streak starts again here
  clock_.advance(milliseconds(900));
  fail();
  EXPECT_EQ(breaker_->state(), kClosed) << "1.8 s of failures, but not one streak of a second";
  clock_.advance(milliseconds(100));
  fail();
  EXPECT_EQ(breaker_->state(), kOpen);
}

TEST_F(BreakerTest, AStreakOpensAtOnceWhileTheWindowIsLight) {
  config_.min_requests = 20;
  breaker_->updateConfig(config_);
  succeed(16);
  fail(3);  // 19 outcomes: below min_requests, the plain count decides
  EXPECT_EQ(breaker_->state(), kOpen);
}

TEST_F(BreakerTest, TheStreakThatMadeTheWindowBusyMustLastASecond) {
  config_.min_requests = 20;
  breaker_->updateConfig(config_);
  succeed(18);
  fail(3);  // 21 outcomes, the third failure among them: busy traffic, a 0 ms streak
  EXPECT_EQ(breaker_->state(), kClosed);
  clock_.advance(seconds(1));
  fail();
  EXPECT_EQ(breaker_->state(), kOpen);
}

TEST_F(BreakerTest, OneFailedProbeLeavesItHalfOpenForTheNextProbe) {
  trip();
  probe();
  breaker_->record(/*counted_failure=*/true, /*probe=*/true);  // noise on a recovered upstream
  EXPECT_EQ(breaker_->state(), kHalfOpen);
  EXPECT_EQ(breaker_->snapshot().current_recovery_timeout, seconds(10));
  CircuitBreaker::Admission next = breaker_->admit();  // the slot is free again
  ASSERT_TRUE(next.probe);
  EXPECT_FALSE(breaker_->admit().admitted) << "others still fail fast";
  breaker_->record(/*counted_failure=*/false, /*probe=*/true);
  EXPECT_EQ(breaker_->state(), kClosed);
  EXPECT_EQ(breaker_->snapshot().current_recovery_timeout, seconds(10)) << "never doubled";
  EXPECT_EQ(transitions_,
            (std::vector<Transition>{{kClosed, kOpen}, {kOpen, kHalfOpen}, {kHalfOpen, kClosed}}));
}

// ---- fleet mode: the fleet's counts and decisions, applied ----

TEST_F(BreakerTest, TheFleetsStreakTripsItByTheLocalRules) {
  std::vector<std::pair<bool, bool>> outcomes;
  breaker_->setOutcomeListener(
      [&](bool failure, bool busy) { outcomes.emplace_back(failure, busy); });
  fail();
  succeed();
  EXPECT_EQ(outcomes, (std::vector<std::pair<bool, bool>>{{true, false}, {false, false}}));
  EXPECT_FALSE(breaker_->applyFleetStreak(2, milliseconds(10), false));  // below the threshold
  // Busy traffic: a streak across the fleet must have lasted kBusyStreakSpan too.
  EXPECT_FALSE(breaker_->applyFleetStreak(3, milliseconds(200), true));
  EXPECT_EQ(breaker_->state(), kClosed);
  EXPECT_TRUE(breaker_->applyFleetStreak(3, milliseconds(10), false));
  EXPECT_EQ(breaker_->state(), kOpen);
  EXPECT_EQ(transitions_, (std::vector<Transition>{{kClosed, kOpen}}));
  EXPECT_FALSE(breaker_->applyFleetStreak(9, seconds(5), false));  // open already
}

TEST_F(BreakerTest, AnotherSidecarsOpenHoldsItOpenAndItsProbeDecides) {
  breaker_->applyFleetOpen(clock_.now() + seconds(4), /*probe_elsewhere=*/true, seconds(10));
  EXPECT_EQ(breaker_->state(), kOpen);
  EXPECT_FALSE(breaker_->admit().admitted);
  clock_.advance(seconds(4));
  // HALF_OPEN with the fleet, but the other sidecar sends the probe.
  CircuitBreaker::Admission waiting = breaker_->admit();
  EXPECT_FALSE(waiting.admitted);
  EXPECT_EQ(breaker_->state(), kHalfOpen);
  breaker_->applyFleetClose();  // its probe succeeded
  EXPECT_EQ(breaker_->state(), kClosed);
  EXPECT_TRUE(breaker_->admit().admitted);
  breaker_->record(false, false);
  EXPECT_EQ(transitions_,
            (std::vector<Transition>{{kClosed, kOpen}, {kOpen, kHalfOpen}, {kHalfOpen, kClosed}}));
}

TEST_F(BreakerTest, WithoutTheOtherSidecarsVerdictItProbesAfterTheGrace) {
  breaker_->applyFleetOpen(clock_.now() + seconds(4), /*probe_elsewhere=*/true, seconds(10));
  clock_.advance(seconds(14));
  CircuitBreaker::Admission probe = breaker_->admit();
  EXPECT_TRUE(probe.admitted);
  EXPECT_TRUE(probe.probe);
}

TEST_F(BreakerTest, ALaterOpenFromTheFleetExtendsAnOpenBreaker) {
  trip();
  SteadyTime own = breaker_->snapshot().open_until;
  breaker_->applyFleetOpen(own - seconds(1));  // earlier: kept
  EXPECT_EQ(breaker_->snapshot().open_until, own);
  breaker_->applyFleetOpen(own + seconds(3));
  EXPECT_EQ(breaker_->snapshot().open_until, own + seconds(3));
  EXPECT_EQ(transitions_, (std::vector<Transition>{{kClosed, kOpen}}));
}

TEST_F(BreakerTest, ProbeFailuresCountOnlyWithinOneHalfOpenPeriod) {
  trip();
  probe();
  breaker_->record(true, true);
  ASSERT_TRUE(breaker_->admit().probe);
  breaker_->record(true, true);  // two of three
  ASSERT_TRUE(breaker_->admit().probe);
  breaker_->record(false, true);
  ASSERT_EQ(breaker_->state(), kClosed);
  trip();
  probe();
  breaker_->record(true, true);
  ASSERT_TRUE(breaker_->admit().probe);
  breaker_->record(true, true);
  EXPECT_EQ(breaker_->state(), kHalfOpen) << "the earlier period's failures were forgotten";
}

// Many threads admit and report on one breaker while the clock moves. Probes in flight never
// exceed the maximum, every transition is a legal edge, the transitions add up to the final
// state, and no probe slot leaks.
TEST(BreakerHammerTest, SuccessesCountedWithoutTheLockAreNoneLost) {
  // Successes on a CLOSED breaker with no streak skip the lock; the rate rule still needs
  // every one of them: with 8000 successes in the window, the 8000th failure (50 %) trips it,
  // the 7999th does not.
  constexpr int kThreads = 8;
  constexpr int kEach = 1000;
  config::CircuitBreakerConfig config;
  config.failure_threshold = 1000000;  // the streak rule out of reach
  config.failure_rate_threshold = 0.5;
  config.window = seconds(60);
  config.min_requests = 10;
  config.recovery_timeout = seconds(10);
  config.max_recovery_timeout = seconds(10);
  fakes::AtomicFakeClock clock;
  CircuitBreaker breaker(config, clock);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&breaker] {
      for (int i = 0; i < kEach; ++i) {
        ASSERT_TRUE(breaker.admit().admitted);
        breaker.record(/*counted_failure=*/false, /*probe=*/false);
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  for (int i = 0; i < kThreads * kEach - 1; ++i) breaker.record(true, false);
  EXPECT_EQ(breaker.state(), BreakerState::kClosed);
  breaker.record(true, false);
  EXPECT_EQ(breaker.state(), BreakerState::kOpen);
}

TEST(BreakerHammerTest, ConcurrentAdmitAndRecord) {
  constexpr int kThreads = 8;
  constexpr int kIterations = 20000;
  config::CircuitBreakerConfig config;
  config.failure_threshold = 4;
  config.failure_rate_threshold = 0.5;
  config.window = milliseconds(50);
  config.min_requests = 20;
  config.recovery_timeout = milliseconds(2);
  config.max_recovery_timeout = milliseconds(8);
  config.half_open_max_probes = 2;
  fakes::AtomicFakeClock clock;
  CircuitBreaker breaker(config, clock);

  // [from][to]
  std::atomic<int> edges[3][3] = {};
  breaker.setTransitionListener([&](BreakerState from, BreakerState to) {
    edges[static_cast<int>(from)][static_cast<int>(to)].fetch_add(1);
  });
  std::atomic<int> probes_in_flight{0};
  std::atomic<int> max_probes_seen{0};
  std::atomic<long> admitted{0};
  std::atomic<long> rejected{0};

  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 random(static_cast<unsigned>(t) + 1);
      std::uniform_int_distribution<int> percent(0, 99);
      for (int i = 0; i < kIterations; ++i) {
        if (i % 64 == 0) clock.advance(milliseconds(1));
        CircuitBreaker::Admission admission = breaker.admit();
        if (!admission.admitted) {
          EXPECT_GT(admission.retry_after, milliseconds(0));
          rejected.fetch_add(1, std::memory_order_relaxed);
          continue;
        }
        admitted.fetch_add(1, std::memory_order_relaxed);
        if (admission.probe) {
          int now_in_flight = probes_in_flight.fetch_add(1) + 1;
          int seen = max_probes_seen.load();
          while (now_in_flight > seen &&
                 !max_probes_seen.compare_exchange_weak(seen, now_in_flight)) {
          }
        }
        int roll = percent(random);
        // Counted down before the breaker frees the slot, so this count never exceeds the
        // breaker's own.
        if (admission.probe) probes_in_flight.fetch_sub(1);
        // 55 % failures, 40 % successes: over the 50 % rate threshold, so a closed breaker
        // trips at its min_requests-th outcome whatever the interleaving, rather than only on
        // a lucky early streak.
        if (roll < 5) {
          breaker.release(admission.probe);
        } else {
          breaker.record(/*counted_failure=*/roll < 60, admission.probe);
        }
        if (i % 512 == 0) (void)breaker.snapshot();
      }
    });
  }
  for (std::thread& thread : threads) thread.join();

  EXPECT_EQ(admitted + rejected, long{kThreads} * kIterations);
  EXPECT_LE(max_probes_seen.load(), config.half_open_max_probes);

  auto edge = [&](BreakerState from, BreakerState to) {
    return edges[static_cast<int>(from)][static_cast<int>(to)].load();
  };
  EXPECT_EQ(edge(kClosed, kHalfOpen), 0);
  EXPECT_EQ(edge(kOpen, kClosed), 0);
  EXPECT_GT(edge(kClosed, kOpen), 0) << "the hammer should exercise the transitions";
  EXPECT_GT(edge(kOpen, kHalfOpen), 0);
  const int into_open = edge(kClosed, kOpen) + edge(kHalfOpen, kOpen);
  const int out_of_open = edge(kOpen, kHalfOpen);
  const int into_half_open = edge(kOpen, kHalfOpen);
  const int out_of_half_open = edge(kHalfOpen, kOpen) + edge(kHalfOpen, kClosed);
  const BreakerState final_state = breaker.state();
  EXPECT_EQ(into_open - out_of_open, final_state == kOpen ? 1 : 0);
  EXPECT_EQ(into_half_open - out_of_half_open, final_state == kHalfOpen ? 1 : 0);

  // Drive it to HALF_OPEN: with no slot leaked, exactly half_open_max_probes probes get in.
  if (breaker.state() == kClosed) {
    clock.advance(config.window);  // an empty window: a plain streak opens it
    for (int i = 0; i < config.failure_threshold; ++i) breaker.record(true, false);
  } else if (breaker.state() == kHalfOpen) {
    for (int i = 0; i < config.failure_threshold && breaker.state() == kHalfOpen; ++i) {
      CircuitBreaker::Admission admission = breaker.admit();
      ASSERT_TRUE(admission.probe) << "a probe slot leaked";
      breaker.record(true, true);
    }
  }
  ASSERT_EQ(breaker.state(), kOpen);
  clock.advance(config.max_recovery_timeout);
  for (int i = 0; i < config.half_open_max_probes; ++i) {
    EXPECT_TRUE(breaker.admit().probe) << "a probe slot leaked";
  }
  EXPECT_FALSE(breaker.admit().admitted);
}

// ---- The shipped defaults against simulated traffic ----

// One breaker with the shipped defaults (config::CircuitBreakerConfig{}) fed `per_second`
// outcomes a second, each a counted failure with a given probability drawn from a seeded
// generator (mt19937_64 and its own conversion to [0, 1), so every standard library draws the
// same sequence). Rejected attempts are counted and dropped, as a client would see them.
class TrafficSimulation {
 public:
  explicit TrafficSimulation(std::uint64_t seed) : random_(seed) {
    breaker_.setTransitionListener([this](BreakerState from, BreakerState to) {
      transitions_.emplace_back(from, to);
      if (to == kOpen) ++opens_;
      if (from == kHalfOpen && to == kOpen) ++reopens_;
    });
  }

  // Runs `duration` of traffic, or until `stop` returns true after an outcome.
  template <typename Stop>
  void run(int per_second, double failure_share, milliseconds duration, Stop stop) {
    const milliseconds step(1000 / per_second);
    for (milliseconds elapsed{0}; elapsed < duration; elapsed += step) {
      clock_.advance(step);
      CircuitBreaker::Admission admission = breaker_.admit();
      if (!admission.admitted) {
        ++rejected_;
        continue;
      }
      const bool failed = draw() < failure_share;
      breaker_.record(failed, admission.probe);
      ++outcomes_;
      if (failed) ++failures_;
      if (stop()) return;
    }
  }
  void run(int per_second, double failure_share, milliseconds duration) {
    run(per_second, failure_share, duration, [] { return false; });
  }
  // Runs a total outage until the breaker opens (at most a minute); returns how long it took
  // and how many failures it saw.
  std::pair<milliseconds, int> outageUntilOpen(int per_second) {
    const resilience::SteadyTime start = clock_.now();
    const int failures_before = failures_;
    run(per_second, 1.0, seconds(60), [this] { return breaker_.state() == kOpen; });
    return {std::chrono::duration_cast<milliseconds>(clock_.now() - start),
            failures_ - failures_before};
  }

  double draw() { return static_cast<double>(random_() >> 11) * 0x1.0p-53; }

  fakes::FakeClock clock_;
  CircuitBreaker breaker_{config::CircuitBreakerConfig{}, clock_};
  std::mt19937_64 random_;
  std::vector<Transition> transitions_;
  int opens_ = 0;
  int reopens_ = 0;
  long outcomes_ = 0;
  long failures_ = 0;
  long rejected_ = 0;
};

TEST(ShippedDefaultsTest, AreTheOnesDocumented) {
  const config::CircuitBreakerConfig defaults;
  EXPECT_EQ(defaults.failure_threshold, 5);
  EXPECT_EQ(defaults.failure_rate_threshold, 0.5);
  EXPECT_EQ(defaults.window, seconds(30));
  EXPECT_EQ(defaults.min_requests, 20);
  EXPECT_EQ(defaults.recovery_timeout, seconds(60));
  EXPECT_EQ(defaults.max_recovery_timeout, std::chrono::minutes(5));
  EXPECT_EQ(defaults.half_open_max_probes, 1);
}

TEST(ShippedDefaultsTest, TwentyPercentRandomFailuresAt100PerSecondFor150sNeverTrip) {
  for (std::uint64_t seed = 1; seed <= 10; ++seed) {
    TrafficSimulation sim(seed);
    sim.run(100, 0.20, seconds(150));
    EXPECT_EQ(sim.opens_, 0) << "seed " << seed;
    EXPECT_EQ(sim.rejected_, 0) << "seed " << seed;
    EXPECT_NEAR(static_cast<double>(sim.failures_) / sim.outcomes_, 0.20, 0.01);
  }
}

TEST(ShippedDefaultsTest, TenPercentRandomFailuresAt100PerSecondFor10MinutesNeverTrip) {
  for (std::uint64_t seed = 1; seed <= 3; ++seed) {
    TrafficSimulation sim(seed);
    sim.run(100, 0.10, std::chrono::minutes(10));
    EXPECT_EQ(sim.opens_, 0) << "seed " << seed;
    EXPECT_EQ(sim.outcomes_, 60000);
  }
}

TEST(ShippedDefaultsTest, ATotalOutageAt100PerSecondOpensWithinTwoSeconds) {
  for (double noise : {0.0, 0.20}) {
    TrafficSimulation sim(7);
    sim.run(100, noise, seconds(60));  // a busy window first: the rate rule alone would need 15 s
    ASSERT_EQ(sim.opens_, 0);
    auto [took, failures] = sim.outageUntilOpen(100);
    EXPECT_EQ(sim.breaker_.state(), kOpen) << "noise " << noise;
    EXPECT_LE(took, seconds(2)) << "noise " << noise;
    EXPECT_GE(took, CircuitBreaker::kBusyStreakSpan) << "noise " << noise;
    EXPECT_LE(failures, 101 + 10) << "noise " << noise;  // the streak, plus what noise began
  }
}

TEST(ShippedDefaultsTest, ATotalOutageAtOneRequestASecondOpensOnTheFifthFailure) {
  TrafficSimulation cold(1);
  EXPECT_EQ(cold.outageUntilOpen(1).second, 5) << "from a cold start";

  TrafficSimulation warm(1);
  warm.run(1, 0.0, seconds(120));  // 30 outcomes in the window: busy, but a second apart
  auto [took, failures] = warm.outageUntilOpen(1);
  EXPECT_EQ(failures, 5);
  EXPECT_EQ(took, seconds(5));
  EXPECT_EQ(warm.opens_, 1);
}

TEST(ShippedDefaultsTest, AMajorityOfFailuresOpensItByTheRateRule) {
  TrafficSimulation sim(3);
  sim.run(100, 0.0, seconds(60));
  sim.run(100, 0.60, seconds(60), [&] { return sim.breaker_.state() == kOpen; });
  EXPECT_EQ(sim.opens_, 1);
  // 60 % failures against a window of successes: the share reaches 0.5 after ~25 s.
  EXPECT_LE(sim.outcomes_, 6000 + 3000);
}

TEST(ShippedDefaultsTest, ARecoveredButNoisyUpstreamClosesAfterOneRecoveryTimeout) {
  // 200 outages, each followed by an upstream that answers 80 % of attempts: the probes
  // close the breaker every time, and the recovery timeout never doubles.
  TrafficSimulation sim(11);
  for (int outage = 0; outage < 200; ++outage) {
    sim.outageUntilOpen(100);
    ASSERT_EQ(sim.breaker_.state(), kOpen);
    EXPECT_EQ(sim.breaker_.snapshot().current_recovery_timeout, seconds(60));
    sim.run(100, 0.20, seconds(62), [&] { return sim.breaker_.state() == kClosed; });
    ASSERT_EQ(sim.breaker_.state(), kClosed) << "outage " << outage;
    sim.run(100, 0.20, seconds(30));  // the noise goes on
  }
  EXPECT_EQ(sim.opens_, 200);
  EXPECT_EQ(sim.reopens_, 0);
}

TEST(ShippedDefaultsTest, AnUpstreamThatStaysDownIsProbedLessAndLessOften) {
  TrafficSimulation sim(5);
  sim.outageUntilOpen(100);
  sim.run(100, 1.0, std::chrono::minutes(30));
  // Open after 5 failures (a cold window), then each HALF_OPEN period fails its five probes
  // at once and reopens with the wait doubled: 60 s, 120 s, 240 s, then 300 s (the maximum).
  // Reopened at 1, 3, 7, 12, 17, 22 and 27 minutes.
  EXPECT_EQ(sim.breaker_.snapshot().current_recovery_timeout, std::chrono::minutes(5));
  EXPECT_EQ(sim.reopens_, 7);
  EXPECT_EQ(sim.failures_, 5 + 5 * 7);
}

}  // namespace
}  // namespace bulwark::resilience
