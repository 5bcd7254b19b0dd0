// Classifying a finished attempt: whether to retry it and whether the
// circuit breaker counts it. Pure: no I/O, no clock.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "config/config.h"
#include "proxy/resilience/outcome.h"

namespace bulwark::resilience {

// The `type` and `code` of an OpenAI error body {"error":{"type":..,"code":..}}; empty
// strings when absent or when the body is not such JSON. Never throws, any input.
struct ErrorIdentity {
  std::string type;
  std::string code;
};
ErrorIdentity parseErrorIdentity(std::string_view body);

struct AttemptFacts {
  Outcome outcome;
  std::optional<bool> x_should_retry;  // the upstream's x-should-retry header, if any
  std::string_view error_body;         // the whole body of a status >= 400 response
  bool policies_apply = true;          // classifyEndpoint(method, path).retry_safe
};

struct Verdict {
  bool success = false;          // nothing to retry: hand the response over
  bool retryable = false;        // worth another attempt (before budget/attempt/deadline checks)
  bool breaker_counted = false;  // counts as a failure for the circuit breaker
  std::string reason;            // why not retryable, for logs ("policy", "x-should-retry",
                                 // "insufficient_quota", "not_idempotent"), empty otherwise
};

Verdict classifyAttempt(const config::RetryConfig& retry, const AttemptFacts& facts);

}  // namespace bulwark::resilience
