// A circuit breaker for one upstream (or one upstream + model):
//   CLOSED -> OPEN when the counted failure share over `window` reaches
//   failure_rate_threshold with at least min_requests outcomes in the window, or on a streak
//   of failure_threshold consecutive counted failures. While the window holds min_requests
//   outcomes or more (busy traffic) a streak must also have lasted kBusyStreakSpan: at 100
//   attempts a second a run of five 503s takes 50 ms and comes from noise, a second of
//   nothing but failures does not.
//   OPEN -> HALF_OPEN once the recovery timeout has passed (it doubles on each re-trip up to
//   max_recovery_timeout and resets when the breaker closes).
//   HALF_OPEN admits at most half_open_max_probes concurrent probes: a probe that succeeds
//   closes it; failure_threshold counted probe failures (with no success between them, as any
//   success closes it) reopen it. One unlucky probe on a noisy upstream only costs a retry.
// In a fleet (sidecars sharing state through Redis) the fleet's counts feed it too: the
// fleet-wide streak trips it by the same rules, and another sidecar's trip or probe result
// opens or closes it (apply* below; the fleet layer calls them, the breaker never does I/O).
// Thread-safe: shared by every worker. admit() on a CLOSED breaker takes no lock, and neither
// does recording a success on a CLOSED breaker with no failure streak (a few atomic loads and
// one increment of the window); other outcomes take this breaker's own mutex (never a global
// one).
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "config/config.h"
#include "proxy/resilience/clock.h"
#include "proxy/resilience/sliding_counts.h"

namespace bulwark::resilience {

enum class BreakerState : int { kClosed = 0, kOpen = 1, kHalfOpen = 2 };
const char* breakerStateName(BreakerState state);  // "CLOSED", "OPEN", "HALF_OPEN"

class CircuitBreaker {
 public:
  // How long a streak of consecutive failures must have lasted to open the breaker while the
  // window holds min_requests outcomes or more.
  static constexpr Millis kBusyStreakSpan{1000};

  // Called after every state change, outside the breaker's lock, on the thread that caused
  // it. Must be thread-safe.
  using TransitionListener = std::function<void(BreakerState from, BreakerState to)>;

  CircuitBreaker(const config::CircuitBreakerConfig& config, const Clock& clock);
  CircuitBreaker(const CircuitBreaker&) = delete;
  CircuitBreaker& operator=(const CircuitBreaker&) = delete;

  void setTransitionListener(TransitionListener listener);
  // Applies new settings (SIGHUP reload) without forgetting state.
  void updateConfig(const config::CircuitBreakerConfig& config);

  struct Admission {
    bool admitted = false;
    bool probe = false;     // admitted as a HALF_OPEN probe: report it with probe = true
    Millis retry_after{0};  // when rejected: time until the breaker lets a probe through
  };
  // Asks to send one attempt. An admitted attempt must be followed by exactly one
  // record() or release().
  Admission admit();

  // The outcome of an admitted attempt: counted_failure when its policy says breaker: true.
  // Anything else (success, or a failure the breaker does not count) resets the
  // consecutive-failure count, and closes a HALF_OPEN breaker when it was a probe.
  void record(bool counted_failure, bool probe);
  // An admitted attempt ended without an outcome (the client left): frees its probe slot.
  void release(bool probe);

  // Every outcome record() takes, after it is applied: `busy` when the window holds
  // min_requests outcomes or more. Called outside the lock, on the recording thread.
  using OutcomeListener = std::function<void(bool counted_failure, bool busy)>;
  void setOutcomeListener(OutcomeListener listener);

  // The fleet-wide streak: `failures` consecutive counted failures across the fleet, the
  // first `span` ago. Trips a CLOSED breaker by the local streak rule (when `busy`, the streak
  // must also have lasted kBusyStreakSpan). Returns whether it opened.
  bool applyFleetStreak(int failures, Millis span, bool busy);
  // Another sidecar opened its breaker until `until`: this one opens until then too (a
  // breaker already OPEN takes the later time), so the fleet moves to HALF_OPEN together.
  // With `probe_elsewhere`, that sidecar sends the probe: this one admits none of its own
  // until `until` + `grace` (its verdict comes as applyFleetClose() or another open; if it
  // never comes, this breaker probes for itself after the grace).
  void applyFleetOpen(SteadyTime until, bool probe_elsewhere = false, Millis grace = Millis(0));
  // Another sidecar's probe succeeded: an OPEN or HALF_OPEN breaker closes.
  void applyFleetClose();

  struct Snapshot {
    BreakerState state = BreakerState::kClosed;
    int consecutive_failures = 0;
    std::optional<WallTime> last_failure;  // the last counted failure, if any
    Millis current_recovery_timeout{0};
    SteadyTime open_until{};  // while OPEN: when it lets a probe through
  };
  Snapshot snapshot() const;
  BreakerState state() const { return state_.load(std::memory_order_acquire); }

 private:
  // All below with mutex_ held. Returns the transition to report, if any.
  std::optional<std::pair<BreakerState, BreakerState>> transitionLocked(BreakerState to,
                                                                        SteadyTime now);
  // Counts a success in the current bucket without the lock; false when the bucket must be
  // reset first (the caller then takes the locked way).
  bool countSuccess(SteadyTime now);
  void addToWindowLocked(bool failure, SteadyTime now);
  void clearWindowLocked();
  // The outcomes and counted failures in the window (atomic reads: no lock needed).
  void windowTotals(SteadyTime now, int* total, int* failures) const;
  void notify(std::optional<std::pair<BreakerState, BreakerState>> transition);

  const Clock& clock_;
  mutable std::mutex mutex_;
  config::CircuitBreakerConfig config_;
  std::atomic<BreakerState> state_{BreakerState::kClosed};
  std::atomic<int> consecutive_failures_{0};  // written under the lock, read without it too
  SteadyTime streak_started_{};  // the first failure of the current streak
  int probe_failures_ = 0;       // counted failures of probes since entering HALF_OPEN
  std::optional<WallTime> last_failure_;
  SteadyTime open_until_{};
  Millis current_recovery_;
  int probes_in_flight_ = 0;
  SteadyTime probe_elsewhere_until_{};  // another sidecar probes for the fleet until then
  SlidingCounts window_;  // outcomes, counted failures
  // Copies of config_ values the lock-free success path reads; set under the lock.
  std::atomic<int> min_requests_;
  std::atomic<double> failure_rate_threshold_;
  TransitionListener listener_;
  OutcomeListener outcome_listener_;
  std::atomic<bool> has_outcome_listener_{false};
};

}  // namespace bulwark::resilience
