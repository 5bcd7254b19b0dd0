#include "proxy/resilience/latency_tracker.h"

#include <cmath>

namespace bulwark::resilience {

namespace {
constexpr double kDecay = 0.98;
constexpr char kOtherModels[] = "\x01other";  // cannot be a model name from a JSON body
}  // namespace

Millis LatencyTracker::bucketBound(std::size_t i) {
  if (i >= kBuckets - 1) i = kBuckets - 2;
  return Millis(static_cast<long long>(std::ceil(10.0 * std::pow(1.5, static_cast<double>(i)))));
}

void LatencyTracker::record(std::string_view model, Millis latency) {
  std::size_t bucket = 0;
  while (bucket < kBuckets - 1 && latency > bucketBound(bucket)) ++bucket;
  std::lock_guard lock(mutex_);
  auto it = models_.find(model);
  if (it == models_.end()) {
    std::string key = models_.size() < kMaxModels ? std::string(model) : kOtherModels;
    it = models_.try_emplace(std::move(key)).first;
  }
  Histogram& h = it->second;
  for (double& w : h.weights) w *= kDecay;
  h.weights[bucket] += 1;
  h.total = h.total * kDecay + 1;
  ++h.samples;
}

const LatencyTracker::Histogram* LatencyTracker::find(std::string_view model) const {
  auto it = models_.find(model);
  if (it == models_.end()) it = models_.find(std::string_view(kOtherModels));
  return it == models_.end() ? nullptr : &it->second;
}

std::optional<Millis> LatencyTracker::quantile(std::string_view model, double q) const {
  std::lock_guard lock(mutex_);
  const Histogram* h = find(model);
  if (h == nullptr || h->samples < kMinSamples) return std::nullopt;
  double wanted = q * h->total;
  double seen = 0;
  for (std::size_t i = 0; i < kBuckets; ++i) {
    seen += h->weights[i];
    if (seen >= wanted) return bucketBound(i);
  }
  return bucketBound(kBuckets - 1);
}

}  // namespace bulwark::resilience
