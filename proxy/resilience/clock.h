// Time and randomness behind narrow interfaces, so every decision in resilience/ is tested
// with a fake clock and a seeded random source, never with sleeps.
// SystemClock is thread-safe; a SeededRandom belongs to one thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <random>

namespace bulwark::resilience {

using SteadyTime = std::chrono::steady_clock::time_point;
using WallTime = std::chrono::system_clock::time_point;
using Millis = std::chrono::milliseconds;

class Clock {
 public:
  virtual ~Clock() = default;
  virtual SteadyTime now() const = 0;    // for durations and deadlines
  virtual WallTime wallNow() const = 0;  // for HTTP dates (Retry-After) and logs
};

class SystemClock final : public Clock {
 public:
  SteadyTime now() const override { return std::chrono::steady_clock::now(); }
  WallTime wallNow() const override { return std::chrono::system_clock::now(); }
};

class Random {
 public:
  virtual ~Random() = default;
  // Uniform in [0, 1).
  virtual double uniform01() = 0;
};

class SeededRandom final : public Random {
 public:
  explicit SeededRandom(std::uint64_t seed) : engine_(seed) {}
  double uniform01() override { return std::uniform_real_distribution<double>(0.0, 1.0)(engine_); }

 private:
  std::mt19937_64 engine_;
};

}  // namespace bulwark::resilience
