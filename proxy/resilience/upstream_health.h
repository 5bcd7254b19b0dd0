// Shared, process-wide state of the configured upstreams: per upstream its circuit
// breaker(s) (one, or one per model with scope upstream_model), its retry budget and its
// in-flight count. Created at start, kept across reloads for upstreams that keep their name.
// Thread-safe: every worker uses it; lookups of an upstream's breaker for a model take a
// shared (reader) lock on that upstream only.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <vector>

#include "config/config.h"
#include "proxy/resilience/circuit_breaker.h"
#include "proxy/resilience/clock.h"
#include "proxy/resilience/latency_tracker.h"
#include "proxy/resilience/quota.h"
#include "proxy/resilience/retry_budget.h"

namespace bulwark::resilience {

class UpstreamHealth {
 public:
  UpstreamHealth(std::string name, const config::Config& config, const Clock& clock);
  UpstreamHealth(const UpstreamHealth&) = delete;
  UpstreamHealth& operator=(const UpstreamHealth&) = delete;

  const std::string& name() const { return name_; }
  void updateConfig(const config::Config& config);

  // The breaker for this request: the upstream's own with scope `upstream`, else the one of
  // `model` (empty model -> the upstream's own). At most kMaxModelBreakers distinct models;
  // further ones share one breaker.
  CircuitBreaker& breakerFor(std::string_view model);
  RetryBudget& budget() { return budget_; }
  // The breakers' failure-rate window (a fleet-wide streak is kept this long).
  Millis breakerWindow() const;
  // Recent time to first byte by model (hedging's p95).
  LatencyTracker& ttfb() { return ttfb_; }
  // The rate-limit quota of `model` on this upstream (OpenAI limits each model on its own).
  // At most kMaxModelBreakers distinct models; further ones share one quota.
  Quota& quotaFor(std::string_view model);
  // Every quota that has one, by model, for /health/detailed.
  std::vector<std::pair<std::string, const Quota*>> quotas() const;

  // In-flight requests on this upstream (all workers). tryEnter fails when max_inflight
  // (0 = unlimited) is reached; every successful tryEnter is paired with one leave.
  [[nodiscard]] bool tryEnter();
  void leave();
  int inflight() const { return inflight_.load(std::memory_order_relaxed); }

  // For /health/detailed: the worst state over this upstream's breakers, the largest
  // consecutive-failure count, and the latest failure time.
  CircuitBreaker::Snapshot summary() const;

  // Every breaker transition, with the model it belongs to ("" for the upstream's own).
  using TransitionListener = std::function<void(
      const std::string& upstream, const std::string& model, BreakerState from, BreakerState to)>;
  void setTransitionListener(TransitionListener listener);
  // Every outcome a breaker records (see CircuitBreaker::OutcomeListener), with the model it
  // belongs to: the fleet shares the streaks.
  using OutcomeListener = std::function<void(const std::string& upstream, const std::string& model,
                                             bool counted_failure, bool busy)>;
  void setOutcomeListener(OutcomeListener listener);

  static constexpr std::size_t kMaxModelBreakers = 256;

 private:
  CircuitBreaker& makeBreakerLocked(const std::string& model);
  // Gives `breaker` (of `model`, "" for the upstream's own) this upstream's listeners.
  void listenLocked(CircuitBreaker& breaker, const std::string& model);
  void listenAllLocked();

  const std::uint64_t id_;  // process-unique (per-thread lookup caches key on it)
  std::string name_;
  const Clock& clock_;
  mutable std::shared_mutex mutex_;  // guards scope_, breaker config, the model map
  config::BreakerScope scope_;
  std::atomic<bool> per_model_;  // scope_ is upstream_model: read without the lock
  config::CircuitBreakerConfig breaker_config_;
  std::unique_ptr<CircuitBreaker> own_breaker_;
  std::map<std::string, std::unique_ptr<CircuitBreaker>, std::less<>> model_breakers_;
  mutable std::shared_mutex quota_mutex_;  // guards the map; each quota locks itself
  std::map<std::string, std::unique_ptr<Quota>, std::less<>> quotas_;
  RetryBudget budget_;
  LatencyTracker ttfb_;
  std::atomic<int> max_inflight_;
  std::atomic<int> inflight_{0};
  TransitionListener listener_;
  OutcomeListener outcome_listener_;
};

// All upstreams, in config order, looked up by name. Reload keeps the state of upstreams
// whose name stays and creates the new ones. Safe for concurrent readers; reload() is
// called from the main thread only and never frees an entry (removed upstreams stay
// allocated, unused), so references handed out remain valid.
class UpstreamRegistry {
 public:
  UpstreamRegistry(const config::Config& config, const Clock& clock);
  UpstreamRegistry(const UpstreamRegistry&) = delete;
  UpstreamRegistry& operator=(const UpstreamRegistry&) = delete;

  void reload(const config::Config& config);
  // nullptr for a name that was never configured.
  UpstreamHealth* find(std::string_view name);
  // The upstreams of the current config, in priority order.
  std::vector<UpstreamHealth*> current() const;

  void setTransitionListener(UpstreamHealth::TransitionListener listener);
  void setOutcomeListener(UpstreamHealth::OutcomeListener listener);

 private:
  const std::uint64_t id_;  // process-unique (per-thread lookup caches key on it)
  const Clock& clock_;
  mutable std::shared_mutex mutex_;
  std::vector<std::unique_ptr<UpstreamHealth>> all_;
  std::vector<UpstreamHealth*> current_;
  UpstreamHealth::TransitionListener listener_;
  UpstreamHealth::OutcomeListener outcome_listener_;
};

}  // namespace bulwark::resilience
