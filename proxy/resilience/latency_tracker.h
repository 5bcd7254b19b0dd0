// Recent time to first byte, per model, for one upstream: the p95 that hedging waits for.
// A histogram over log-spaced buckets (10 ms to about 10 min) whose weights decay by sample:
// each new sample shrinks the older ones by 2 %, so it describes roughly the last 50. It
// answers only once it has seen kMinSamples samples. Thread-safe: every worker feeds it.
#pragma once

#include <array>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

#include "proxy/resilience/clock.h"

namespace bulwark::resilience {

class LatencyTracker {
 public:
  static constexpr int kMinSamples = 20;
  static constexpr std::size_t kMaxModels = 256;  // further models share one histogram
  static constexpr std::size_t kBuckets = 29;     // 10 ms * 1.5^i, i < 28, then the rest

  void record(std::string_view model, Millis latency);
  // The q-quantile (0 < q < 1) of the recent samples, as its bucket's upper bound; nullopt
  // before kMinSamples samples of this model.
  std::optional<Millis> quantile(std::string_view model, double q) const;

  // The upper bound of bucket i (the last one has none: it reports the largest bound).
  static Millis bucketBound(std::size_t i);

 private:
  struct Histogram {
    std::array<double, kBuckets> weights{};
    double total = 0;
    long long samples = 0;
  };
  const Histogram* find(std::string_view model) const;

  mutable std::mutex mutex_;
  std::map<std::string, Histogram, std::less<>> models_;
};

}  // namespace bulwark::resilience
