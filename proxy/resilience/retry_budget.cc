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
    : clock_(clock), config_(config), width_ms_(bucketWidthMs(config.window, kBuckets)) {}

void RetryBudget::updateConfig(const config::RetryBudgetConfig& config) {
  std::lock_guard lock(mutex_);
  // Buckets laid out for another window length cannot be re-sliced: the window starts over.
  if (config.window != config_.window) {
    for (Bucket& bucket : buckets_) resetLocked(bucket, 0);
  }
  config_ = config;
  width_ms_.store(bucketWidthMs(config_.window, kBuckets), std::memory_order_relaxed);
}

void RetryBudget::recordRequest() {
  // Every request counts, and almost always into the bucket already current: an atomic
  // increment, without the lock. Only a bucket to reset takes it.
  const std::int64_t now_ms = steadyMs(clock_.now());
  const std::int64_t width = width_ms_.load(std::memory_order_relaxed);
  Bucket& bucket = buckets_[static_cast<std::size_t>((now_ms / width) % kBuckets)];
  if (bucket.start_ms.load(std::memory_order_acquire) == now_ms - now_ms % width) {
    bucket.requests.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  std::lock_guard lock(mutex_);
  currentBucketLocked(clock_.now()).requests.fetch_add(1, std::memory_order_relaxed);
}

bool RetryBudget::tryAcquire() {
  std::lock_guard lock(mutex_);
  const SteadyTime now = clock_.now();
  const Usage usage = usageLocked(now);
  // The tolerance absorbs binary rounding: 0.29 * 100 requests is 28.999999999999996 in
  // doubles and must still allow 29 retries.
  if (static_cast<double>(usage.retries + 1) > usage.allowed + 1e-9) return false;
  currentBucketLocked(now).retries.fetch_add(1, std::memory_order_relaxed);
  return true;
}

RetryBudget::Usage RetryBudget::usage() const {
  std::lock_guard lock(mutex_);
  return usageLocked(clock_.now());
}

RetryBudget::Bucket& RetryBudget::currentBucketLocked(SteadyTime now) {
  const std::int64_t width = width_ms_.load(std::memory_order_relaxed);
  const std::int64_t now_ms = steadyMs(now);
  const std::int64_t start = now_ms - now_ms % width;
  Bucket& bucket = buckets_[static_cast<std::size_t>((now_ms / width) % kBuckets)];
  if (bucket.start_ms.load(std::memory_order_relaxed) != start) resetLocked(bucket, start);
  return bucket;
}

void RetryBudget::resetLocked(Bucket& bucket, std::int64_t start) {
  bucket.requests.store(0, std::memory_order_relaxed);
  bucket.retries.store(0, std::memory_order_relaxed);
  bucket.start_ms.store(start, std::memory_order_release);
}

RetryBudget::Usage RetryBudget::usageLocked(SteadyTime now) const {
  const std::int64_t width = width_ms_.load(std::memory_order_relaxed);
  const std::int64_t now_ms = steadyMs(now);
  const std::int64_t newest = now_ms - now_ms % width;
  // The current bucket and the kBuckets - 1 before it: a request or retry leaves the window
  // at most `window` after it was counted. Empty buckets (start 0) hold zeros.
  const std::int64_t oldest = newest - (kBuckets - 1) * width;
  Usage usage;
  for (const Bucket& bucket : buckets_) {
    const std::int64_t start = bucket.start_ms.load(std::memory_order_acquire);
    if (start < oldest || start > newest) continue;
    usage.requests += bucket.requests.load(std::memory_order_relaxed);
    usage.retries += bucket.retries.load(std::memory_order_relaxed);
  }
  const double window_seconds = std::chrono::duration<double>(config_.window).count();
  usage.allowed = std::max(config_.min_per_second * window_seconds,
                           config_.ratio * static_cast<double>(usage.requests));
  return usage;
}

}  // namespace bulwark::resilience
