#include "proxy/resilience/retry_budget.h"

#include <algorithm>
#include <chrono>

namespace bulwark::resilience {

RetryBudget::RetryBudget(const config::RetryBudgetConfig& config, const Clock& clock)
    : clock_(clock), config_(config), window_(config.window) {}

void RetryBudget::updateConfig(const config::RetryBudgetConfig& config) {
  std::lock_guard lock(mutex_);
  config_ = config;
  window_.setWindowLocked(config_.window);
}

void RetryBudget::recordRequest() {
  // Every request counts, and almost always into the bucket already current: an atomic
  // increment, without the lock. Only a bucket to reset takes it.
  if (window_.tryAdd(clock_.now(), 1, 0)) return;
  std::lock_guard lock(mutex_);
  window_.addLocked(clock_.now(), 1, 0);
}

bool RetryBudget::tryAcquire() {
  std::lock_guard lock(mutex_);
  const SteadyTime now = clock_.now();
  const Usage usage = usageLocked(now);
  // The tolerance absorbs binary rounding: 0.29 * 100 requests is 28.999999999999996 in
  // doubles and must still allow 29 retries.
  if (static_cast<double>(usage.retries + 1) > usage.allowed + 1e-9) return false;
  window_.addLocked(now, 0, 1);
  return true;
}

RetryBudget::Usage RetryBudget::usage() const {
  std::lock_guard lock(mutex_);
  return usageLocked(clock_.now());
}

RetryBudget::Usage RetryBudget::usageLocked(SteadyTime now) const {
  const SlidingCounts::Totals totals = window_.totals(now);
  Usage usage;
  usage.requests = totals.first;
  usage.retries = totals.second;
  const double window_seconds = std::chrono::duration<double>(config_.window).count();
  usage.allowed = std::max(config_.min_per_second * window_seconds,
                           config_.ratio * static_cast<double>(usage.requests));
  return usage;
}

}  // namespace bulwark::resilience
