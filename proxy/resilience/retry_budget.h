// The retry budget of one upstream: over a sliding `window`, retries may add at most `ratio`
// of the requests, and always at least min_per_second * window.
// Thread-safe, shared by every worker: counting a request is an atomic increment; taking a
// retry (and resetting a bucket) takes its own small mutex.
#pragma once

#include <cstdint>
#include <mutex>

#include "config/config.h"
#include "proxy/resilience/clock.h"
#include "proxy/resilience/sliding_counts.h"

namespace bulwark::resilience {

class RetryBudget {
 public:
  RetryBudget(const config::RetryBudgetConfig& config, const Clock& clock);
  RetryBudget(const RetryBudget&) = delete;
  RetryBudget& operator=(const RetryBudget&) = delete;

  void updateConfig(const config::RetryBudgetConfig& config);

  // A client request's first attempt went to this upstream.
  void recordRequest();
  // Takes one retry from the budget; false when it is spent (the retry must not be made).
  [[nodiscard]] bool tryAcquire();

  // Requests and retries currently in the window (for tests and health output).
  struct Usage {
    std::int64_t requests = 0;
    std::int64_t retries = 0;
    double allowed = 0;  // retries the window allows right now
  };
  Usage usage() const;

 private:
  Usage usageLocked(SteadyTime now) const;

  const Clock& clock_;
  mutable std::mutex mutex_;
  config::RetryBudgetConfig config_;
  SlidingCounts window_;  // requests, retries
};

}  // namespace bulwark::resilience
