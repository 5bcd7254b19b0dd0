#include "proxy/exchange/upstream_lease.h"

#include <utility>

namespace bulwark::exchange {

UpstreamLease& UpstreamLease::operator=(UpstreamLease&& other) noexcept {
  if (this != &other) {
    reset();
    health_ = std::exchange(other.health_, nullptr);
    breaker_ = std::exchange(other.breaker_, nullptr);
    probe_ = other.probe_;
    recorded_ = other.recorded_;
  }
  return *this;
}

void UpstreamLease::recordOutcome(bool counted_failure) {
  if (breaker_ == nullptr || recorded_) return;
  recorded_ = true;
  breaker_->record(counted_failure, probe_);
}

void UpstreamLease::recordInterruption() {
  if (breaker_ == nullptr) return;
  if (!recorded_) {
    recordOutcome(true);
  } else {
    breaker_->record(true, false);
  }
}

void UpstreamLease::reset() {
  if (health_ == nullptr) return;
  if (!recorded_) breaker_->release(probe_);
  health_->leave();
  health_ = nullptr;
  breaker_ = nullptr;
  recorded_ = false;
}

UpstreamSelection selectUpstream(resilience::UpstreamRegistry& registry,
                                 const config::Config& config, const std::vector<int>& order,
                                 std::string_view model) {
  UpstreamSelection selection;
  for (int index : order) {
    resilience::UpstreamHealth* health = registry.find(config.upstreams[index].name);
    if (health == nullptr) continue;
    if (!health->tryEnter()) {
      selection.overloaded = true;
      continue;
    }
    resilience::CircuitBreaker& breaker = health->breakerFor(model);
    resilience::CircuitBreaker::Admission admission = breaker.admit();
    if (!admission.admitted) {
      health->leave();
      if (!selection.breaker_rejected || admission.retry_after < selection.retry_after) {
        selection.retry_after = admission.retry_after;
      }
      selection.breaker_rejected = true;
      selection.rejected_by_breaker.push_back(index);
      continue;
    }
    selection.index = index;
    selection.lease = UpstreamLease(*health, breaker, admission.probe);
    return selection;
  }
  return selection;
}

}  // namespace bulwark::exchange
