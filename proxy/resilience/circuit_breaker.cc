#include "proxy/resilience/circuit_breaker.h"

#include <algorithm>
#include <utility>

namespace bulwark::resilience {
namespace {

// What a caller turned away from a full HALF_OPEN breaker is told to wait. When the probe in
// flight will end is unknown; one second is the finest step a Retry-After header can carry,
// and a slot opens again as soon as that probe reports.
constexpr Millis kProbeBusyRetryAfter{1000};

}  // namespace

const char* breakerStateName(BreakerState state) {
  switch (state) {
    case BreakerState::kClosed:
      return "CLOSED";
    case BreakerState::kOpen:
      return "OPEN";
    case BreakerState::kHalfOpen:
      return "HALF_OPEN";
  }
  return "UNKNOWN";
}

CircuitBreaker::CircuitBreaker(const config::CircuitBreakerConfig& config, const Clock& clock)
    : clock_(clock),
      config_(config),
      current_recovery_(config.recovery_timeout),
      window_(config.window),
      min_requests_(config.min_requests),
      failure_rate_threshold_(config.failure_rate_threshold) {}

void CircuitBreaker::setTransitionListener(TransitionListener listener) {
  std::lock_guard lock(mutex_);
  listener_ = std::move(listener);
}

void CircuitBreaker::updateConfig(const config::CircuitBreakerConfig& config) {
  std::lock_guard lock(mutex_);
  // Buckets laid out for another window length cannot be re-sliced: the window starts over.
  // The state, the consecutive count and a running recovery period are kept.
  if (config.window != config_.window) clearWindowLocked();
  config_ = config;
  window_.setWindowLocked(config_.window);
  min_requests_.store(config_.min_requests, std::memory_order_relaxed);
  failure_rate_threshold_.store(config_.failure_rate_threshold, std::memory_order_relaxed);
  if (state_.load(std::memory_order_relaxed) == BreakerState::kClosed) {
    current_recovery_ = config_.recovery_timeout;
  } else {
    current_recovery_ = std::min(std::max(current_recovery_, config_.recovery_timeout),
                                 config_.max_recovery_timeout);
  }
}

CircuitBreaker::Admission CircuitBreaker::admit() {
  // The hot path: a CLOSED breaker admits without touching the mutex. An attempt admitted
  // just as another thread opens the breaker reports a non-probe outcome, which an OPEN
  // breaker ignores.
  if (state_.load(std::memory_order_acquire) == BreakerState::kClosed) return {true, false, {}};

  Admission admission;
  std::optional<std::pair<BreakerState, BreakerState>> transition;
  {
    std::lock_guard lock(mutex_);
    const SteadyTime now = clock_.now();
    switch (state_.load(std::memory_order_relaxed)) {
      case BreakerState::kClosed:  // closed by another thread since the check above
        admission.admitted = true;
        break;
      case BreakerState::kOpen:
        if (now < open_until_) {
          admission.retry_after = std::max(Millis(1), std::chrono::ceil<Millis>(open_until_ - now));
          break;
        }
        transition = transitionLocked(BreakerState::kHalfOpen, now);
        [[fallthrough]];
      case BreakerState::kHalfOpen:
        if (now < probe_elsewhere_until_) {
          // Another sidecar of the fleet probes; its verdict applies here too.
          admission.retry_after = kProbeBusyRetryAfter;
        } else if (probes_in_flight_ < config_.half_open_max_probes) {
          ++probes_in_flight_;
          admission.admitted = true;
          admission.probe = true;
        } else {
          admission.retry_after = kProbeBusyRetryAfter;
        }
        break;
    }
  }
  notify(transition);
  return admission;
}

void CircuitBreaker::setOutcomeListener(OutcomeListener listener) {
  std::lock_guard lock(mutex_);
  has_outcome_listener_.store(static_cast<bool>(listener), std::memory_order_relaxed);
  outcome_listener_ = std::move(listener);
}

void CircuitBreaker::record(bool counted_failure, bool probe) {
  // The common case, a success on a CLOSED breaker with no failure streak, decides nothing: it
  // is only counted in the window, without the lock. (With an outcome listener, as in a
  // fleet, every outcome goes the locked way: the listener needs the window's verdict.)
  if (!counted_failure && !probe &&
      state_.load(std::memory_order_acquire) == BreakerState::kClosed &&
      consecutive_failures_.load(std::memory_order_relaxed) == 0 &&
      !has_outcome_listener_.load(std::memory_order_relaxed) && countSuccess(clock_.now())) {
    return;
  }
  std::optional<std::pair<BreakerState, BreakerState>> transition;
  OutcomeListener outcome_listener;
  bool busy = false;
  {
    std::lock_guard lock(mutex_);
    const SteadyTime now = clock_.now();
    if (counted_failure) last_failure_ = clock_.wallNow();
    if (probe && probes_in_flight_ > 0) --probes_in_flight_;

    switch (state_.load(std::memory_order_relaxed)) {
      case BreakerState::kClosed: {
        // Includes a late probe whose sibling already closed the breaker: a fresh outcome
        // like any other.
        addToWindowLocked(counted_failure, now);
        if (!counted_failure) {
          consecutive_failures_ = 0;
        } else if (consecutive_failures_++ == 0) {
          streak_started_ = now;
        }
        int total = 0;
        int failures = 0;
        windowTotals(now, &total, &failures);
        // With min_requests outcomes in the window the failure share is worth a decision on
        // its own; below it, traffic is too light for a share and a streak decides.
        busy = total > 0 && total >= config_.min_requests;
        // failures / total rather than threshold * total: 7 / 10 rounds to the same double
        // as a configured 0.7, while 0.7 * 10 rounds above 7.
        const bool rate_tripped =
            busy && static_cast<double>(failures) / total >= config_.failure_rate_threshold;
        // Under busy traffic, random failures line up by the handful many times a minute;
        // a streak that has gone on for kBusyStreakSpan is an upstream that stopped
        // answering.
        const bool streak_tripped = consecutive_failures_ >= config_.failure_threshold &&
                                    (!busy || now - streak_started_ >= kBusyStreakSpan);
        if (rate_tripped || streak_tripped) {
          transition = transitionLocked(BreakerState::kOpen, now);
        }
        break;
      }
      case BreakerState::kHalfOpen:
        // Only a probe decides; attempts admitted before the breaker opened say nothing
        // about the upstream's recovery.
        if (!probe) break;
        if (counted_failure) {
          ++consecutive_failures_;
          // One failed probe on an upstream that answers most attempts is noise: the next
          // probe tries again. failure_threshold of them, with no success between (a success
          // closes it), mean it is still down.
          if (++probe_failures_ >= config_.failure_threshold) {
            transition = transitionLocked(BreakerState::kOpen, now);
          }
        } else {
          transition = transitionLocked(BreakerState::kClosed, now);
        }
        break;
      case BreakerState::kOpen:
        // Attempts admitted before the trip, or a probe outlived by a failed sibling.
        break;
    }
    outcome_listener = outcome_listener_;
  }
  notify(transition);
  if (outcome_listener) outcome_listener(counted_failure, busy);
}

bool CircuitBreaker::applyFleetStreak(int failures, Millis span, bool busy) {
  std::optional<std::pair<BreakerState, BreakerState>> transition;
  {
    std::lock_guard lock(mutex_);
    if (state_.load(std::memory_order_relaxed) != BreakerState::kClosed) return false;
    if (failures < config_.failure_threshold || (busy && span < kBusyStreakSpan)) return false;
    transition = transitionLocked(BreakerState::kOpen, clock_.now());
  }
  notify(transition);
  return transition.has_value();
}

void CircuitBreaker::applyFleetOpen(SteadyTime until, bool probe_elsewhere, Millis grace) {
  std::optional<std::pair<BreakerState, BreakerState>> transition;
  {
    std::lock_guard lock(mutex_);
    const SteadyTime now = clock_.now();
    if (until <= now) return;
    if (state_.load(std::memory_order_relaxed) != BreakerState::kOpen) {
      transition = transitionLocked(BreakerState::kOpen, now);
      open_until_ = until;
    } else {
      open_until_ = std::max(open_until_, until);
    }
    probe_elsewhere_until_ = probe_elsewhere ? open_until_ + grace : SteadyTime{};
  }
  notify(transition);
}

void CircuitBreaker::applyFleetClose() {
  std::optional<std::pair<BreakerState, BreakerState>> transition;
  {
    std::lock_guard lock(mutex_);
    transition = transitionLocked(BreakerState::kClosed, clock_.now());
  }
  notify(transition);
}

void CircuitBreaker::release(bool probe) {
  if (!probe) return;
  std::lock_guard lock(mutex_);
  if (probes_in_flight_ > 0) --probes_in_flight_;
}

CircuitBreaker::Snapshot CircuitBreaker::snapshot() const {
  std::lock_guard lock(mutex_);
  Snapshot snapshot;
  snapshot.state = state_.load(std::memory_order_relaxed);
  snapshot.consecutive_failures = consecutive_failures_;
  snapshot.last_failure = last_failure_;
  snapshot.current_recovery_timeout = current_recovery_;
  snapshot.open_until = open_until_;
  return snapshot;
}

std::optional<std::pair<BreakerState, BreakerState>> CircuitBreaker::transitionLocked(
    BreakerState to, SteadyTime now) {
  const BreakerState from = state_.load(std::memory_order_relaxed);
  if (from == to) return std::nullopt;
  switch (to) {
    case BreakerState::kOpen:
      // The first trip waits recovery_timeout; each re-trip from HALF_OPEN doubles it.
      if (from == BreakerState::kHalfOpen) {
        current_recovery_ = std::min(current_recovery_ * 2, config_.max_recovery_timeout);
      }
      open_until_ = now + current_recovery_;
      last_failure_ = clock_.wallNow();
      probe_elsewhere_until_ = SteadyTime{};  // its own trip: it probes for itself
      break;
    case BreakerState::kClosed:
      consecutive_failures_ = 0;
      probe_elsewhere_until_ = SteadyTime{};
      current_recovery_ = config_.recovery_timeout;
      clearWindowLocked();
      break;
    case BreakerState::kHalfOpen:
      probe_failures_ = 0;
      break;
  }
  state_.store(to, std::memory_order_release);
  return std::make_pair(from, to);
}

bool CircuitBreaker::countSuccess(SteadyTime now) {
  // A success can complete a window that trips (the min_requests-th outcome, with the share
  // of failures already past the threshold): that one is decided under the lock.
  int total = 0;
  int failures = 0;
  windowTotals(now, &total, &failures);
  ++total;
  if (failures > 0 && total >= min_requests_.load(std::memory_order_relaxed) &&
      static_cast<double>(failures) / total >=
          failure_rate_threshold_.load(std::memory_order_relaxed)) {
    return false;
  }
  // A bucket still holding an older period is reset under the lock (addToWindowLocked).
  return window_.tryAdd(now, 1, 0);
}

void CircuitBreaker::addToWindowLocked(bool failure, SteadyTime now) {
  window_.addLocked(now, 1, failure ? 1 : 0);
}

void CircuitBreaker::clearWindowLocked() {
  window_.clearLocked();
}

void CircuitBreaker::windowTotals(SteadyTime now, int* total, int* failures) const {
  const SlidingCounts::Totals totals = window_.totals(now);
  *total = static_cast<int>(totals.first);
  *failures = static_cast<int>(totals.second);
}

void CircuitBreaker::notify(std::optional<std::pair<BreakerState, BreakerState>> transition) {
  if (!transition) return;
  TransitionListener listener;
  {
    std::lock_guard lock(mutex_);
    listener = listener_;
  }
  if (listener) listener(transition->first, transition->second);
}

}  // namespace bulwark::resilience
