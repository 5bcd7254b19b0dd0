// Per-upstream shared state: breaker scopes and the model cap, in-flight limits, summaries,
// transition listeners, registry reloads, and hammering from threads.
#include "proxy/resilience/upstream_health.h"

#include <atomic>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <gtest/gtest.h>

#include "tests/unit/fakes.h"

namespace bulwark::resilience {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

constexpr BreakerState kClosed = BreakerState::kClosed;
constexpr BreakerState kOpen = BreakerState::kOpen;
constexpr BreakerState kHalfOpen = BreakerState::kHalfOpen;

config::UpstreamConfig upstream(std::string name, int max_inflight = 0) {
  config::UpstreamConfig config;
  config.name = std::move(name);
  config.base_url = "http://127.0.0.1:1";
  config.max_inflight = max_inflight;
  return config;
}

config::Config configWith(std::vector<config::UpstreamConfig> upstreams,
                          config::BreakerScope scope = config::BreakerScope::kUpstream) {
  config::Config config;
  config.upstreams = std::move(upstreams);
  config.circuit_breaker.scope = scope;
  config.circuit_breaker.failure_threshold = 2;
  config.circuit_breaker.recovery_timeout = seconds(10);
  config.circuit_breaker.max_recovery_timeout = seconds(40);
  return config;
}

void trip(CircuitBreaker& breaker, int threshold = 2) {
  for (int i = 0; i < threshold; ++i) {
    ASSERT_TRUE(breaker.admit().admitted);
    breaker.record(/*counted_failure=*/true, /*probe=*/false);
  }
  ASSERT_EQ(breaker.state(), kOpen);
}

std::vector<std::string> names(const std::vector<UpstreamHealth*>& upstreams) {
  std::vector<std::string> result;
  for (const UpstreamHealth* health : upstreams) result.push_back(health->name());
  return result;
}

struct Seen {
  std::string upstream;
  std::string model;
  BreakerState from;
  BreakerState to;
  bool operator==(const Seen&) const = default;
};

TEST(UpstreamHealthTest, ScopeUpstreamHasOneBreakerForEveryModel) {
  fakes::FakeClock clock;
  UpstreamHealth health("openai", configWith({upstream("openai")}), clock);
  CircuitBreaker& own = health.breakerFor("");
  EXPECT_EQ(&health.breakerFor("gpt-4o"), &own);
  EXPECT_EQ(&health.breakerFor("gpt-4o-mini"), &own);
  trip(health.breakerFor("gpt-4o"));
  EXPECT_EQ(health.breakerFor("gpt-4o-mini").state(), kOpen);
}

TEST(UpstreamHealthTest, ScopeUpstreamModelHasOneBreakerPerModel) {
  fakes::FakeClock clock;
  UpstreamHealth health(
      "openai", configWith({upstream("openai")}, config::BreakerScope::kUpstreamModel), clock);
  CircuitBreaker& own = health.breakerFor("");
  CircuitBreaker& gpt4o = health.breakerFor("gpt-4o");
  CircuitBreaker& mini = health.breakerFor("gpt-4o-mini");
  EXPECT_NE(&gpt4o, &own);
  EXPECT_NE(&gpt4o, &mini);
  EXPECT_NE(&mini, &own);
  EXPECT_EQ(&health.breakerFor("gpt-4o"), &gpt4o);
  trip(gpt4o);
  EXPECT_EQ(mini.state(), kClosed);
  EXPECT_EQ(own.state(), kClosed);
  EXPECT_EQ(health.breakerFor("gpt-4o").state(), kOpen);
}

TEST(UpstreamHealthTest, ModelsBeyondTheCapShareOneBreaker) {
  fakes::FakeClock clock;
  UpstreamHealth health(
      "openai", configWith({upstream("openai")}, config::BreakerScope::kUpstreamModel), clock);
  std::set<const CircuitBreaker*> distinct;
  for (std::size_t i = 0; i < UpstreamHealth::kMaxModelBreakers; ++i) {
    distinct.insert(&health.breakerFor("model-" + std::to_string(i)));
  }
  EXPECT_EQ(distinct.size(), UpstreamHealth::kMaxModelBreakers);
  CircuitBreaker& overflow = health.breakerFor("one-too-many");
  EXPECT_EQ(distinct.count(&overflow), 0u);
  EXPECT_EQ(&health.breakerFor("two-too-many"), &overflow);
  EXPECT_EQ(&health.breakerFor("other"), &overflow);
  // Models seen before the cap keep their own.
  EXPECT_EQ(distinct.count(&health.breakerFor("model-7")), 1u);
  trip(overflow);
  EXPECT_EQ(health.breakerFor("three-too-many").state(), kOpen);
  EXPECT_EQ(health.breakerFor("model-7").state(), kClosed);
}

TEST(UpstreamHealthTest, InflightIsLimitedByMaxInflight) {
  fakes::FakeClock clock;
  UpstreamHealth health("openai", configWith({upstream("openai", 2)}), clock);
  EXPECT_TRUE(health.tryEnter());
  EXPECT_TRUE(health.tryEnter());
  EXPECT_FALSE(health.tryEnter());
  EXPECT_EQ(health.inflight(), 2);
  health.leave();
  EXPECT_EQ(health.inflight(), 1);
  EXPECT_TRUE(health.tryEnter());
  EXPECT_FALSE(health.tryEnter());
}

TEST(UpstreamHealthTest, ZeroMaxInflightMeansUnlimited) {
  fakes::FakeClock clock;
  UpstreamHealth health("openai", configWith({upstream("openai", 0)}), clock);
  for (int i = 0; i < 10000; ++i) ASSERT_TRUE(health.tryEnter());
  EXPECT_EQ(health.inflight(), 10000);
}

TEST(UpstreamHealthTest, MaxInflightComesFromTheUpstreamsOwnEntry) {
  fakes::FakeClock clock;
  config::Config config = configWith({upstream("a", 5), upstream("b", 1)});
  UpstreamHealth b("b", config, clock);
  EXPECT_TRUE(b.tryEnter());
  EXPECT_FALSE(b.tryEnter());
}

TEST(UpstreamHealthTest, UpdateConfigAppliesToEveryBreakerBudgetAndLimit) {
  fakes::FakeClock clock;
  config::Config config = configWith({upstream("openai", 1)}, config::BreakerScope::kUpstreamModel);
  UpstreamHealth health("openai", config, clock);
  CircuitBreaker& gpt4o = health.breakerFor("gpt-4o");
  CircuitBreaker& own = health.breakerFor("");
  ASSERT_TRUE(health.tryEnter());
  ASSERT_FALSE(health.tryEnter());

  config.upstreams[0].max_inflight = 3;
  config.circuit_breaker.failure_threshold = 4;
  config.retry.budget.ratio = 0;
  config.retry.budget.min_per_second = 0;
  health.updateConfig(config);

  EXPECT_TRUE(health.tryEnter());
  EXPECT_TRUE(health.tryEnter());
  EXPECT_FALSE(health.tryEnter());
  EXPECT_FALSE(health.budget().tryAcquire());
  for (CircuitBreaker* breaker : {&gpt4o, &own}) {
    for (int i = 0; i < 3; ++i) breaker->record(true, false);
    EXPECT_EQ(breaker->state(), kClosed);
    breaker->record(true, false);
    EXPECT_EQ(breaker->state(), kOpen);
  }
}

TEST(UpstreamHealthTest, AScopeChangeKeepsOldBreakersButRoutesNewLookups) {
  fakes::FakeClock clock;
  config::Config config = configWith({upstream("openai")}, config::BreakerScope::kUpstreamModel);
  UpstreamHealth health("openai", config, clock);
  CircuitBreaker& gpt4o = health.breakerFor("gpt-4o");
  trip(gpt4o);

  config.circuit_breaker.scope = config::BreakerScope::kUpstream;
  health.updateConfig(config);
  CircuitBreaker& own = health.breakerFor("");
  EXPECT_EQ(&health.breakerFor("gpt-4o"), &own);
  EXPECT_EQ(gpt4o.state(), kOpen);  // still valid, just no longer handed out
  EXPECT_EQ(health.summary().state, kClosed) << "an unused breaker no longer speaks for it";

  config.circuit_breaker.scope = config::BreakerScope::kUpstreamModel;
  health.updateConfig(config);
  EXPECT_EQ(&health.breakerFor("gpt-4o"), &gpt4o);
  EXPECT_EQ(health.summary().state, kOpen);
}

TEST(UpstreamHealthTest, SummaryIsTheWorstOfItsBreakers) {
  fakes::FakeClock clock;
  UpstreamHealth health(
      "openai", configWith({upstream("openai")}, config::BreakerScope::kUpstreamModel), clock);
  CircuitBreaker::Snapshot summary = health.summary();
  EXPECT_EQ(summary.state, kClosed);
  EXPECT_EQ(summary.consecutive_failures, 0);
  EXPECT_FALSE(summary.last_failure.has_value());

  CircuitBreaker& a = health.breakerFor("a");
  CircuitBreaker& b = health.breakerFor("b");
  CircuitBreaker& c = health.breakerFor("c");
  trip(a);
  clock.advance(seconds(3));
  trip(b);
  const WallTime b_tripped = clock.wallNow();
  clock.advance(seconds(7));
  ASSERT_TRUE(a.admit().probe);  // a: HALF_OPEN
  c.record(true, false);         // c: CLOSED with one failure
  const WallTime latest = clock.wallNow();
  summary = health.summary();
  EXPECT_EQ(summary.state, kOpen);
  EXPECT_EQ(summary.consecutive_failures, 2);
  EXPECT_EQ(summary.last_failure, latest);

  ASSERT_FALSE(b.admit().admitted);
  clock.advance(seconds(3));
  ASSERT_TRUE(b.admit().probe);
  b.record(false, true);  // b closes; a stays HALF_OPEN
  summary = health.summary();
  EXPECT_EQ(summary.state, kHalfOpen);
  EXPECT_EQ(summary.last_failure, latest);
  EXPECT_NE(summary.last_failure, b_tripped);
}

TEST(UpstreamHealthTest, TheListenerHearsEveryBreakerWithItsModel) {
  fakes::FakeClock clock;
  UpstreamHealth health(
      "openai", configWith({upstream("openai")}, config::BreakerScope::kUpstreamModel), clock);
  CircuitBreaker& early = health.breakerFor("early");
  std::vector<Seen> seen;
  health.setTransitionListener([&](const std::string& upstream, const std::string& model,
                                   BreakerState from, BreakerState to) {
    seen.push_back({upstream, model, from, to});
  });
  trip(early);
  trip(health.breakerFor(""));
  trip(health.breakerFor("late"));
  EXPECT_EQ(seen, (std::vector<Seen>{{"openai", "early", kClosed, kOpen},
                                     {"openai", "", kClosed, kOpen},
                                     {"openai", "late", kClosed, kOpen}}));
}

TEST(UpstreamRegistryTest, HoldsTheConfiguredUpstreamsInOrder) {
  fakes::FakeClock clock;
  UpstreamRegistry registry(configWith({upstream("primary"), upstream("fallback")}), clock);
  EXPECT_EQ(names(registry.current()), (std::vector<std::string>{"primary", "fallback"}));
  ASSERT_NE(registry.find("fallback"), nullptr);
  EXPECT_EQ(registry.find("fallback")->name(), "fallback");
  EXPECT_EQ(registry.find("fallback"), registry.current()[1]);
  EXPECT_EQ(registry.find("nope"), nullptr);
}

TEST(UpstreamRegistryTest, ReloadKeepsStateAddsAndRemoves) {
  fakes::FakeClock clock;
  config::Config config = configWith({upstream("a"), upstream("b", 1)});
  UpstreamRegistry registry(config, clock);
  UpstreamHealth* a = registry.find("a");
  UpstreamHealth* b = registry.find("b");
  trip(a->breakerFor(""));
  ASSERT_TRUE(a->tryEnter());

  config.upstreams = {upstream("c"), upstream("a", 1)};
  registry.reload(config);

  EXPECT_EQ(names(registry.current()), (std::vector<std::string>{"c", "a"}));
  EXPECT_EQ(registry.find("a"), a) << "a kept name keeps its state";
  EXPECT_EQ(a->breakerFor("").state(), kOpen);
  EXPECT_EQ(a->inflight(), 1);
  EXPECT_FALSE(a->tryEnter()) << "its new max_inflight applies";
  ASSERT_NE(registry.find("c"), nullptr);
  EXPECT_EQ(registry.find("c")->breakerFor("").state(), kClosed);
  // b is gone from the list but stays allocated for whoever still holds it.
  EXPECT_EQ(registry.find("b"), b);
  EXPECT_TRUE(b->tryEnter());
  b->leave();

  config.upstreams = {upstream("b")};
  registry.reload(config);
  EXPECT_EQ(names(registry.current()), (std::vector<std::string>{"b"}));
  EXPECT_EQ(registry.find("b"), b) << "a name that comes back gets its old entry";
}

TEST(UpstreamRegistryTest, LookupsRememberedByAThreadBelongToTheirOwnRegistry) {
  // A thread remembers what it looked up; another registry (even one at the address a
  // destroyed one had) with the same names must still answer with its own entries.
  fakes::FakeClock clock;
  config::Config config = configWith({upstream("a")});
  for (int round = 0; round < 3; ++round) {
    auto registry = std::make_unique<UpstreamRegistry>(config, clock);
    UpstreamHealth* a = registry->find("a");
    ASSERT_NE(a, nullptr);
    EXPECT_EQ(a, registry->current()[0]);
    EXPECT_EQ(registry->find("a"), a) << "remembered, the same entry";
    EXPECT_EQ(&a->quotaFor("gpt-4o"), &a->quotaFor("gpt-4o"));
    EXPECT_NE(&a->quotaFor("gpt-4o"), &a->quotaFor("gpt-4o-mini"));
    EXPECT_EQ(registry->find("b"), nullptr);
    config::Config more = config;
    more.upstreams.push_back(upstream("b"));
    registry->reload(more);
    ASSERT_NE(registry->find("b"), nullptr) << "a name not found before is looked up again";
    EXPECT_EQ(registry->find("b")->name(), "b");
  }
}

TEST(UpstreamHealthTest, QuotasRememberedByAThreadBelongToTheirOwnUpstream) {
  fakes::FakeClock clock;
  config::Config config = configWith({upstream("a")});
  UpstreamHealth first("a", config, clock);
  UpstreamHealth second("a", config, clock);
  Quota& mine = first.quotaFor("gpt-4o");
  EXPECT_EQ(&first.quotaFor("gpt-4o"), &mine);
  EXPECT_NE(&second.quotaFor("gpt-4o"), &mine);
  EXPECT_EQ(second.quotas().size(), 1u);
}

TEST(UpstreamRegistryTest, TheListenerReachesUpstreamsAddedLater) {
  fakes::FakeClock clock;
  config::Config config = configWith({upstream("a")}, config::BreakerScope::kUpstreamModel);
  UpstreamRegistry registry(config, clock);
  std::vector<Seen> seen;
  registry.setTransitionListener([&](const std::string& upstream, const std::string& model,
                                     BreakerState from, BreakerState to) {
    seen.push_back({upstream, model, from, to});
  });
  config.upstreams.push_back(upstream("b"));
  registry.reload(config);
  trip(registry.find("a")->breakerFor(""));
  trip(registry.find("b")->breakerFor("gpt-4o"));
  EXPECT_EQ(seen, (std::vector<Seen>{{"a", "", kClosed, kOpen}, {"b", "gpt-4o", kClosed, kOpen}}));
}

// Threads look up model breakers (creating them), enter and leave under a limit, and use the
// breakers and budget, while the main thread reloads the registry and reads summaries.
TEST(UpstreamHealthHammerTest, ConcurrentLookupsLimitsAndReloads) {
  constexpr int kThreads = 8;
  constexpr int kIterations = 20000;
  constexpr int kMaxInflight = 3;
  fakes::AtomicFakeClock clock;
  config::Config config = configWith({upstream("a", kMaxInflight), upstream("b")},
                                     config::BreakerScope::kUpstreamModel);
  config.circuit_breaker.recovery_timeout = milliseconds(1);
  config.circuit_breaker.max_recovery_timeout = milliseconds(4);
  UpstreamRegistry registry(config, clock);
  std::atomic<int> transitions{0};
  registry.setTransitionListener(
      [&](const std::string&, const std::string&, BreakerState, BreakerState) {
        transitions.fetch_add(1, std::memory_order_relaxed);
      });
  UpstreamHealth* a = registry.find("a");
  std::atomic<int> over_limit{0};
  std::atomic<bool> done{false};

  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kIterations; ++i) {
        if (i % 64 == 0) clock.advance(milliseconds(1));
        const std::string model = "model-" + std::to_string((i * 7 + t) % 300);
        CircuitBreaker& breaker = a->breakerFor(model);
        if (a->tryEnter()) {
          if (a->inflight() > kMaxInflight) over_limit.fetch_add(1);
          CircuitBreaker::Admission admission = breaker.admit();
          if (admission.admitted) breaker.record(/*counted_failure=*/i % 3 == 0, admission.probe);
          a->leave();
        }
        a->budget().recordRequest();
        (void)a->budget().tryAcquire();
        if (i % 256 == 0) {
          for (UpstreamHealth* health : registry.current()) (void)health->summary();
        }
      }
    });
  }
  std::thread reloader([&] {
    for (int round = 0; round < 50; ++round) {
      config::Config next = config;
      if (round % 2 == 1) next.upstreams.push_back(upstream("c" + std::to_string(round)));
      next.circuit_breaker.failure_threshold = 2 + round % 3;
      registry.reload(next);
      (void)registry.find("b");
    }
    done = true;
  });
  for (std::thread& thread : threads) thread.join();
  reloader.join();

  EXPECT_TRUE(done);
  EXPECT_EQ(over_limit.load(), 0);
  EXPECT_EQ(a->inflight(), 0);
  EXPECT_GT(transitions.load(), 0);
  // 300 model names: 256 breakers of their own, the rest share "other".
  std::set<const CircuitBreaker*> distinct;
  for (int m = 0; m < 300; ++m) distinct.insert(&a->breakerFor("model-" + std::to_string(m)));
  EXPECT_EQ(distinct.size(), UpstreamHealth::kMaxModelBreakers + 1);
  EXPECT_EQ(names(registry.current()), (std::vector<std::string>{"a", "b", "c49"}));
}

}  // namespace
}  // namespace bulwark::resilience
