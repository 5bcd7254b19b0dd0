// An attempt's claim on one upstream: its in-flight slot and its circuit-breaker admission,
// given back exactly once (RAII), and the choice of upstream for an attempt.
// Single-threaded (the exchange's worker); the state it touches is thread-safe.
#pragma once

#include <string_view>
#include <vector>

#include "config/config.h"
#include "proxy/resilience/circuit_breaker.h"
#include "proxy/resilience/upstream_health.h"

namespace bulwark::exchange {

class UpstreamLease {
 public:
  UpstreamLease() = default;
  UpstreamLease(resilience::UpstreamHealth& health, resilience::CircuitBreaker& breaker, bool probe)
      : health_(&health), breaker_(&breaker), probe_(probe) {}
  UpstreamLease(UpstreamLease&& other) noexcept { *this = std::move(other); }
  UpstreamLease& operator=(UpstreamLease&& other) noexcept;
  UpstreamLease(const UpstreamLease&) = delete;
  UpstreamLease& operator=(const UpstreamLease&) = delete;
  ~UpstreamLease() { reset(); }

  explicit operator bool() const { return health_ != nullptr; }
  resilience::UpstreamHealth* health() const { return health_; }
  bool probe() const { return probe_; }
  // The breaker its outcome goes to, and whether it has recorded one.
  const resilience::CircuitBreaker* breaker() const { return breaker_; }
  bool recorded() const { return recorded_; }

  // Reports the attempt's outcome to the breaker; only the first call counts.
  void recordOutcome(bool counted_failure);
  // A response that failed after it was committed (already recorded as a success): counts
  // one more breaker failure.
  void recordInterruption();
  // Gives back the in-flight slot, and the breaker admission if no outcome was recorded.
  void reset();

 private:
  resilience::UpstreamHealth* health_ = nullptr;
  resilience::CircuitBreaker* breaker_ = nullptr;
  bool probe_ = false;
  bool recorded_ = false;
};

struct UpstreamSelection {
  int index = -1;  // into config.upstreams; -1 when none admitted the attempt
  UpstreamLease lease;
  bool breaker_rejected = false;         // some candidate's breaker said no
  bool overloaded = false;               // some candidate was at max_inflight
  resilience::Millis retry_after{0};     // the shortest wait among the rejecting breakers
  std::vector<int> rejected_by_breaker;  // candidates whose breaker refused the attempt
};

// Tries the candidates (indexes into config.upstreams) in order and takes the first whose
// in-flight limit and breaker both admit the attempt.
UpstreamSelection selectUpstream(resilience::UpstreamRegistry& registry,
                                 const config::Config& config, const std::vector<int>& order,
                                 std::string_view model);

}  // namespace bulwark::exchange
