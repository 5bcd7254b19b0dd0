// Two counts over a sliding window of time (a breaker's outcomes and failures, a budget's
// requests and retries), kept in ten buckets of window / 10 each (at least 1 ms): what was
// counted leaves the window at most `window` later. An add to the bucket already current is
// an atomic increment without the owner's lock; resetting a bucket for a new period, and
// changing the window, take it. Pure; the clock is the caller's.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>

#include "proxy/resilience/clock.h"

namespace bulwark::resilience {

class SlidingCounts {
 public:
  static constexpr int kBuckets = 10;

  struct Totals {
    std::int64_t first = 0;
    std::int64_t second = 0;
  };

  explicit SlidingCounts(Millis window) : width_ms_(widthFor(window)) {}
  SlidingCounts(const SlidingCounts&) = delete;
  SlidingCounts& operator=(const SlidingCounts&) = delete;

  // Adds to the current bucket if it already holds the current period; false when it must be
  // reset first (then the caller takes its lock and calls addLocked).
  bool tryAdd(SteadyTime now, std::int64_t first, std::int64_t second) {
    std::int64_t start = 0;
    Bucket& bucket = bucketAt(now, &start);
    if (bucket.start_ms.load(std::memory_order_acquire) != start) return false;
    add(bucket, first, second);
    return true;
  }

  // With the owner's lock held: resets the current bucket if it holds an older period.
  void addLocked(SteadyTime now, std::int64_t first, std::int64_t second) {
    std::int64_t start = 0;
    Bucket& bucket = bucketAt(now, &start);
    if (bucket.start_ms.load(std::memory_order_relaxed) != start) reset(bucket, start);
    add(bucket, first, second);
  }

  // The counts in the window (atomic reads: no lock needed).
  Totals totals(SteadyTime now) const {
    const std::int64_t width = width_ms_.load(std::memory_order_relaxed);
    const std::int64_t now_ms = steadyMs(now);
    const std::int64_t newest = now_ms - now_ms % width;
    // The current bucket and the kBuckets - 1 before it. Empty buckets (start 0) hold zeros.
    const std::int64_t oldest = newest - (kBuckets - 1) * width;
    Totals totals;
    for (const Bucket& bucket : buckets_) {
      const std::int64_t start = bucket.start_ms.load(std::memory_order_acquire);
      if (start < oldest || start > newest) continue;
      totals.first += bucket.first.load(std::memory_order_relaxed);
      totals.second += bucket.second.load(std::memory_order_relaxed);
    }
    return totals;
  }

  // With the owner's lock held.
  void clearLocked() {
    for (Bucket& bucket : buckets_) reset(bucket, 0);
  }

  // With the owner's lock held. Buckets laid out for another window length cannot be
  // re-sliced: a new length starts the window over.
  void setWindowLocked(Millis window) {
    const std::int64_t width = widthFor(window);
    if (width == width_ms_.load(std::memory_order_relaxed)) return;
    clearLocked();
    width_ms_.store(width, std::memory_order_relaxed);
  }

 private:
  struct Bucket {
    std::atomic<std::int64_t> start_ms{0};  // the bucket's period (steady ms); 0 = empty
    std::atomic<std::int64_t> first{0};
    std::atomic<std::int64_t> second{0};
  };

  static std::int64_t widthFor(Millis window) {
    return std::max<std::int64_t>(1, window.count() / kBuckets);
  }
  static std::int64_t steadyMs(SteadyTime t) {
    return std::chrono::duration_cast<Millis>(t.time_since_epoch()).count();
  }
  Bucket& bucketAt(SteadyTime now, std::int64_t* start) {
    const std::int64_t width = width_ms_.load(std::memory_order_relaxed);
    const std::int64_t now_ms = steadyMs(now);
    *start = now_ms - now_ms % width;
    return buckets_[static_cast<std::size_t>((now_ms / width) % kBuckets)];
  }
  static void add(Bucket& bucket, std::int64_t first, std::int64_t second) {
    if (first != 0) bucket.first.fetch_add(first, std::memory_order_relaxed);
    if (second != 0) bucket.second.fetch_add(second, std::memory_order_relaxed);
  }
  static void reset(Bucket& bucket, std::int64_t start) {
    bucket.first.store(0, std::memory_order_relaxed);
    bucket.second.store(0, std::memory_order_relaxed);
    bucket.start_ms.store(start, std::memory_order_release);
  }

  std::array<Bucket, kBuckets> buckets_;
  std::atomic<std::int64_t> width_ms_;
};

}  // namespace bulwark::resilience
