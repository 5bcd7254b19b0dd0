#include "proxy/resilience/upstream_health.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>
#include <utility>

#include "proxy/support/thread_memo.h"

namespace bulwark::resilience {
namespace {

struct QuotaMemoTag {};
struct UpstreamMemoTag {};
using QuotaMemo = support::ThreadMemo<QuotaMemoTag, Quota*>;
using UpstreamMemo = support::ThreadMemo<UpstreamMemoTag, UpstreamHealth*>;

// The breaker shared by models beyond kMaxModelBreakers; also the metrics' overflow label.
constexpr std::string_view kOtherModels = "other";

int maxInflightOf(const std::string& name, const config::Config& config) {
  for (const config::UpstreamConfig& upstream : config.upstreams) {
    if (upstream.name == name) return upstream.max_inflight;
  }
  return 0;
}

int severity(BreakerState state) {
  switch (state) {
    case BreakerState::kClosed:
      return 0;
    case BreakerState::kHalfOpen:
      return 1;
    case BreakerState::kOpen:
      return 2;
  }
  return 0;
}

// Folds one breaker's snapshot into the upstream's summary.
void mergeInto(CircuitBreaker::Snapshot& summary, const CircuitBreaker::Snapshot& one) {
  if (severity(one.state) > severity(summary.state)) summary.state = one.state;
  summary.consecutive_failures = std::max(summary.consecutive_failures, one.consecutive_failures);
  if (one.last_failure && (!summary.last_failure || *one.last_failure > *summary.last_failure)) {
    summary.last_failure = one.last_failure;
  }
  summary.current_recovery_timeout =
      std::max(summary.current_recovery_timeout, one.current_recovery_timeout);
}

// A breaker's listener that reports to the upstream's with the upstream and model added;
// it holds its own copy, so the breaker never reads UpstreamHealth state.
CircuitBreaker::TransitionListener forwardTransitions(
    const UpstreamHealth::TransitionListener& listener, const std::string& upstream,
    const std::string& model) {
  if (!listener) return nullptr;
  return [listener, upstream, model](BreakerState from, BreakerState to) {
    listener(upstream, model, from, to);
  };
}

}  // namespace

UpstreamHealth::UpstreamHealth(std::string name, const config::Config& config, const Clock& clock)
    : id_(support::newMemoOwner()),
      name_(std::move(name)),
      clock_(clock),
      scope_(config.circuit_breaker.scope),
      per_model_(config.circuit_breaker.scope == config::BreakerScope::kUpstreamModel),
      breaker_config_(config.circuit_breaker),
      own_breaker_(std::make_unique<CircuitBreaker>(config.circuit_breaker, clock)),
      budget_(config.retry.budget, clock),
      max_inflight_(maxInflightOf(name_, config)) {}

void UpstreamHealth::updateConfig(const config::Config& config) {
  std::unique_lock lock(mutex_);
  // Breakers of another scope stay allocated (references to them may be in use) but new
  // lookups follow the new scope.
  scope_ = config.circuit_breaker.scope;
  per_model_.store(scope_ == config::BreakerScope::kUpstreamModel, std::memory_order_release);
  breaker_config_ = config.circuit_breaker;
  own_breaker_->updateConfig(breaker_config_);
  for (auto& [model, breaker] : model_breakers_) breaker->updateConfig(breaker_config_);
  budget_.updateConfig(config.retry.budget);
  max_inflight_.store(maxInflightOf(name_, config), std::memory_order_relaxed);
}

CircuitBreaker& UpstreamHealth::breakerFor(std::string_view model) {
  if (model.empty() || !per_model_.load(std::memory_order_acquire)) return *own_breaker_;
  {
    std::shared_lock lock(mutex_);
    if (scope_ == config::BreakerScope::kUpstream) return *own_breaker_;
    if (auto it = model_breakers_.find(model); it != model_breakers_.end()) return *it->second;
    if (model_breakers_.size() >= kMaxModelBreakers) {
      if (auto it = model_breakers_.find(kOtherModels); it != model_breakers_.end()) {
        return *it->second;
      }
    }
  }
  // First use of this model (or of the overflow breaker): look again under the writer lock,
  // since another thread or a reload may have come first.
  std::unique_lock lock(mutex_);
  if (scope_ == config::BreakerScope::kUpstream) return *own_breaker_;
  if (auto it = model_breakers_.find(model); it != model_breakers_.end()) return *it->second;
  if (model_breakers_.size() >= kMaxModelBreakers) {
    if (auto it = model_breakers_.find(kOtherModels); it != model_breakers_.end()) {
      return *it->second;
    }
    return makeBreakerLocked(std::string(kOtherModels));
  }
  return makeBreakerLocked(std::string(model));
}

CircuitBreaker& UpstreamHealth::makeBreakerLocked(const std::string& model) {
  auto breaker = std::make_unique<CircuitBreaker>(breaker_config_, clock_);
  listenLocked(*breaker, model);
  CircuitBreaker& result = *breaker;
  model_breakers_.emplace(model, std::move(breaker));
  return result;
}

Millis UpstreamHealth::breakerWindow() const {
  std::shared_lock lock(mutex_);
  return breaker_config_.window;
}

Quota& UpstreamHealth::quotaFor(std::string_view model) {
  // Quotas are never removed, and a model keeps the quota it was first given.
  if (Quota* const* recalled = QuotaMemo::find(id_, model)) return **recalled;
  Quota* found = nullptr;
  {
    std::shared_lock lock(quota_mutex_);
    if (auto it = quotas_.find(model); it != quotas_.end()) found = it->second.get();
  }
  if (found == nullptr) {
    std::unique_lock lock(quota_mutex_);
    if (auto it = quotas_.find(model); it != quotas_.end()) {
      found = it->second.get();
    } else {
      std::string key(quotas_.size() >= kMaxModelBreakers ? kOtherModels : model);
      std::unique_ptr<Quota>& quota = quotas_[key];
      if (!quota) quota = std::make_unique<Quota>();
      found = quota.get();
    }
  }
  QuotaMemo::remember(id_, model, found);
  return *found;
}

std::vector<std::pair<std::string, const Quota*>> UpstreamHealth::quotas() const {
  std::shared_lock lock(quota_mutex_);
  std::vector<std::pair<std::string, const Quota*>> out;
  for (const auto& [model, quota] : quotas_) out.emplace_back(model, quota.get());
  return out;
}

bool UpstreamHealth::tryEnter() {
  const int max = max_inflight_.load(std::memory_order_relaxed);
  int current = inflight_.load(std::memory_order_relaxed);
  do {
    if (max > 0 && current >= max) return false;
  } while (!inflight_.compare_exchange_weak(current, current + 1, std::memory_order_relaxed));
  return true;
}

void UpstreamHealth::leave() {
  inflight_.fetch_sub(1, std::memory_order_relaxed);
}

CircuitBreaker::Snapshot UpstreamHealth::summary() const {
  std::shared_lock lock(mutex_);
  CircuitBreaker::Snapshot summary = own_breaker_->snapshot();
  // Model breakers left over from an earlier upstream_model scope get no more traffic (and
  // so would never leave OPEN): they no longer speak for the upstream.
  if (scope_ == config::BreakerScope::kUpstreamModel) {
    for (const auto& [model, breaker] : model_breakers_) mergeInto(summary, breaker->snapshot());
  }
  return summary;
}

void UpstreamHealth::listenLocked(CircuitBreaker& breaker, const std::string& model) {
  breaker.setTransitionListener(forwardTransitions(listener_, name_, model));
  CircuitBreaker::OutcomeListener outcomes;
  if (outcome_listener_) {
    outcomes = [listener = outcome_listener_, upstream = name_, model](bool failure, bool busy) {
      listener(upstream, model, failure, busy);
    };
  }
  breaker.setOutcomeListener(std::move(outcomes));
}

void UpstreamHealth::listenAllLocked() {
  listenLocked(*own_breaker_, "");
  for (auto& [model, breaker] : model_breakers_) listenLocked(*breaker, model);
}

void UpstreamHealth::setTransitionListener(TransitionListener listener) {
  std::unique_lock lock(mutex_);
  listener_ = std::move(listener);
  listenAllLocked();
}

void UpstreamHealth::setOutcomeListener(OutcomeListener listener) {
  std::unique_lock lock(mutex_);
  outcome_listener_ = std::move(listener);
  listenAllLocked();
}

UpstreamRegistry::UpstreamRegistry(const config::Config& config, const Clock& clock)
    : id_(support::newMemoOwner()), clock_(clock) {
  for (const config::UpstreamConfig& upstream : config.upstreams) {
    all_.push_back(std::make_unique<UpstreamHealth>(upstream.name, config, clock_));
    current_.push_back(all_.back().get());
  }
}

void UpstreamRegistry::reload(const config::Config& config) {
  std::unique_lock lock(mutex_);
  std::vector<UpstreamHealth*> current;
  for (const config::UpstreamConfig& upstream : config.upstreams) {
    auto it = std::find_if(all_.begin(), all_.end(),
                           [&](const auto& health) { return health->name() == upstream.name; });
    if (it != all_.end()) {
      (*it)->updateConfig(config);
      current.push_back(it->get());
      continue;
    }
    all_.push_back(std::make_unique<UpstreamHealth>(upstream.name, config, clock_));
    if (listener_) all_.back()->setTransitionListener(listener_);
    if (outcome_listener_) all_.back()->setOutcomeListener(outcome_listener_);
    current.push_back(all_.back().get());
  }
  current_ = std::move(current);
}

UpstreamHealth* UpstreamRegistry::find(std::string_view name) {
  // Entries are never removed and a name keeps its entry: each thread remembers its finds.
  if (UpstreamHealth* const* recalled = UpstreamMemo::find(id_, name)) return *recalled;
  UpstreamHealth* found = nullptr;
  {
    std::shared_lock lock(mutex_);
    for (const auto& health : all_) {
      if (health->name() == name) {
        found = health.get();
        break;
      }
    }
  }
  if (found != nullptr) UpstreamMemo::remember(id_, name, found);
  return found;
}

std::vector<UpstreamHealth*> UpstreamRegistry::current() const {
  std::shared_lock lock(mutex_);
  return current_;
}

void UpstreamRegistry::setTransitionListener(UpstreamHealth::TransitionListener listener) {
  std::unique_lock lock(mutex_);
  listener_ = std::move(listener);
  for (const auto& health : all_) health->setTransitionListener(listener_);
}

void UpstreamRegistry::setOutcomeListener(UpstreamHealth::OutcomeListener listener) {
  std::unique_lock lock(mutex_);
  outcome_listener_ = std::move(listener);
  for (const auto& health : all_) health->setOutcomeListener(outcome_listener_);
}

}  // namespace bulwark::resilience
