#include "proxy/resilience/retry_budget.h"

#include <algorithm>
#include <chrono>

namespace bulwark::resilience {
namespace {

// Each of the kBuckets buckets covers window / kBuckets (at least 1 ms).
std::int64_t bucketWidthMs(config::Duration window, int buckets) {
  return std::max<std::int64_t>(1, window.count() / buckets);
}

std::int64_t steadyMs(SteadyTime t) {
  return std::chrono::duration_cast<Millis>(t.time_since_epoch()).count();
}

}  // namespace

RetryBudget::RetryBudget(const config::RetryBudgetConfig& config, const Clock& clock)
    : clock_(clock), config_(config), buckets_(kBuckets) {}

void RetryBudget::updateConfig(const config::RetryBudgetConfig& config) {
  std::lock_guard lock(mutex_);
  // Buckets laid out for another window length cannot be re-sliced: the window starts over.
  if (config.window != config_.window) std::fill(buckets_.begin(), buckets_.end(), Bucket{});
  config_ = config;
}

void RetryBudget::recordRequest() {
  std::lock_guard lock(mutex_);
  ++currentBucketLocked(clock_.now()).requests;
}

bool RetryBudget::tryAcquire() {
  std::lock_guard lock(mutex_);
  const SteadyTime now = clock_.now();
  const Usage usage = usageLocked(now);
  // The tolerance absorbs binary rounding: 0.29 * 100 requests is 28.999999999999996 in
  // doubles and must still allow 29 retries.
  if (static_cast<double>(usage.retries + 1) > usage.allowed + 1e-9) return false;
  ++currentBucketLocked(now).retries;
  return true;
}

RetryBudget::Usage RetryBudget::usage() const {
  std::lock_guard lock(mutex_);
  return usageLocked(clock_.now());
}

RetryBudget::Bucket& RetryBudget::currentBucketLocked(SteadyTime now) {
  const std::int64_t width = bucketWidthMs(config_.window, kBuckets);
  const std::int64_t now_ms = steadyMs(now);
  const std::int64_t start = now_ms - now_ms % width;
  Bucket& bucket = buckets_[static_cast<std::size_t>((now_ms / width) % kBuckets)];
  if (bucket.start_ms != start) bucket = Bucket{start, 0, 0};
  return bucket;
}

RetryBudget::Usage RetryBudget::usageLocked(SteadyTime now) const {
  const std::int64_t width = bucketWidthMs(config_.window, kBuckets);
  const std::int64_t now_ms = steadyMs(now);
  const std::int64_t newest = now_ms - now_ms % width;
  // The current bucket and the kBuckets - 1 before it: a request or retry leaves the window
  // at most `window` after it was counted. Empty buckets (start 0) hold zeros.
  const std::int64_t oldest = newest - (kBuckets - 1) * width;
  Usage usage;
  for (const Bucket& bucket : buckets_) {
    if (bucket.start_ms < oldest || bucket.start_ms > newest) continue;
    usage.requests += bucket.requests;
    usage.retries += bucket.retries;
  }
  const double window_seconds = std::chrono::duration<double>(config_.window).count();
  usage.allowed = std::max(config_.min_per_second * window_seconds,
                           config_.ratio * static_cast<double>(usage.requests));
  return usage;
}

}  // namespace bulwark::resilience
