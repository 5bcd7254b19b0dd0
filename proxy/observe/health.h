// The /health/detailed document (the shape of the original user story):
// {"status":"ok|degraded|down","timestamp":"...","services":{"<upstream>":{"circuitBreaker":
//  "CLOSED","failureCount":0,"healthy":true,"lastFailureTime":null,"inflight":0,
//  "quotas":{"<model>":{"requests":{"limit":..,"remaining":..,"reserved":..,"reset_ms":..},
//  "tokens":{...},"queued":0,"cooldown_ms":0}}}}}
// A quota appears once a request for its model went to the upstream.
#pragma once

#include <string>

#include "proxy/observe/timestamp.h"
#include "proxy/resilience/clock.h"
#include "proxy/resilience/upstream_health.h"

namespace bulwark::observe {

// Fleet mode's part: "cluster":{"redis":"host:port/db","up":true} (absent without a fleet).
struct ClusterHealth {
  std::string redis;  // never with its password
  bool up = false;
};

std::string healthDetailedJson(const resilience::UpstreamRegistry& upstreams,
                               resilience::WallTime now, resilience::SteadyTime steady_now,
                               const ClusterHealth* cluster = nullptr);

}  // namespace bulwark::observe
