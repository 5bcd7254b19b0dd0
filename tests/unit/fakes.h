// Test doubles for the resilience decisions: a clock that moves only when a test says so, and
// a Random that plays back a script. No sleeps, no real randomness.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "proxy/resilience/clock.h"

namespace bulwark::fakes {

class FakeClock final : public resilience::Clock {
 public:
  // Starts at an arbitrary steady time and at 2026-11-28T14:00:00Z on the wall.
  FakeClock()
      : steady_(std::chrono::hours(1000)),
        wall_(std::chrono::sys_days(std::chrono::year(2026) / 11 / 28) + std::chrono::hours(14)) {}

  resilience::SteadyTime now() const override { return steady_; }
  resilience::WallTime wallNow() const override { return wall_; }

  // Moves both clocks forward, as real time would.
  void advance(std::chrono::milliseconds by) {
    steady_ += by;
    wall_ += by;
  }
  void setWall(resilience::WallTime wall) { wall_ = wall; }

 private:
  resilience::SteadyTime steady_;
  resilience::WallTime wall_;
};

// A FakeClock that many threads may read and advance at once, for hammer tests of shared
// state: both clocks move together by one atomic offset.
class AtomicFakeClock final : public resilience::Clock {
 public:
  resilience::SteadyTime now() const override { return steady_start_ + elapsed(); }
  resilience::WallTime wallNow() const override {
    return wall_start_ + std::chrono::duration_cast<resilience::WallTime::duration>(elapsed());
  }
  void advance(std::chrono::milliseconds by) {
    elapsed_ms_.fetch_add(by.count(), std::memory_order_relaxed);
  }

 private:
  std::chrono::milliseconds elapsed() const {
    return std::chrono::milliseconds(elapsed_ms_.load(std::memory_order_relaxed));
  }

  resilience::SteadyTime steady_start_{std::chrono::hours(1000)};
  resilience::WallTime wall_start_{std::chrono::sys_days(std::chrono::year(2026) / 11 / 28) +
                                   std::chrono::hours(14)};
  std::atomic<std::int64_t> elapsed_ms_{0};
};

// Returns the scripted values in order, starting over after the last one.
class ScriptedRandom final : public resilience::Random {
 public:
  explicit ScriptedRandom(std::vector<double> values) : values_(std::move(values)) {}

  double uniform01() override {
    ++calls_;
    if (values_.empty()) return 0;
    return values_[next_++ % values_.size()];
  }
  int calls() const { return calls_; }

 private:
  std::vector<double> values_;
  std::size_t next_ = 0;
  int calls_ = 0;
};

// The largest double below 1: the top of uniform01()'s range.
inline constexpr double kAlmostOne = 1.0 - 1.0 / (1ull << 53);

}  // namespace bulwark::fakes
