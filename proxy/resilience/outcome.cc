#include "proxy/resilience/outcome.h"

namespace bulwark::resilience {

std::string Outcome::name() const {
  switch (kind) {
    case Kind::kStatus:
      return std::to_string(status);
    case Kind::kConnectError:
      return "connect_error";
    case Kind::kTimeout:
      return "timeout";
    case Kind::kReset:
      return "reset";
    case Kind::kStreamError:
      return "stream_error";
  }
  return "unknown";
}

config::OutcomePolicy policyFor(const config::RetryConfig& retry, const Outcome& outcome) {
  if (outcome.isSuccess()) return {};
  if (auto it = retry.policies.find(outcome.name()); it != retry.policies.end()) {
    return it->second;
  }
  // A status without its own entry falls back to its class: 503 -> "5xx".
  if (outcome.kind == Outcome::Kind::kStatus && outcome.status >= 100 && outcome.status <= 999) {
    std::string class_key = std::to_string(outcome.status / 100) + "xx";
    if (auto it = retry.policies.find(class_key); it != retry.policies.end()) return it->second;
  }
  return {};
}

}  // namespace bulwark::resilience
