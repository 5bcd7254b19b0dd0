// What one worker gives every exchange it runs: where its attempts come from (the upstream
// client) and its event loop, its clock and random source, and the configuration snapshot
// current when a request arrives.
#pragma once

#include <memory>

#include "config/config.h"
#include "proxy/observe/metrics.h"
#include "proxy/resilience/clock.h"
#include "proxy/resilience/connection_losses.h"
#include "proxy/resilience/quota_arbiter.h"
#include "proxy/resilience/upstream_health.h"
#include "proxy/upstream/attempt.h"

namespace bulwark::exchange {

struct ExchangeContext {
  upstream::AttemptFactory& attempts;
  event_base* base;
  resilience::Clock& clock;
  resilience::Random& random;               // the worker's own: single-threaded
  resilience::UpstreamRegistry& upstreams;  // breakers, budgets, in-flight counts (shared)
  observe::Metrics& metrics;                // shared, thread-safe
  // The live configuration; an exchange keeps the snapshot it started with.
  std::shared_ptr<const config::Config> (*current_config)(void* arg);
  void* current_config_arg;
  // Fleet mode: confirms admissions against every sidecar's reservations (none: alone).
  resilience::QuotaArbiter* arbiter = nullptr;
  // The worker's broken connections, so that the requests one connection carried count once
  // for the breaker (none: each failure counts).
  resilience::ConnectionLosses* connection_losses = nullptr;

  std::shared_ptr<const config::Config> config() const {
    return current_config(current_config_arg);
  }
};

}  // namespace bulwark::exchange
