// What one upstream attempt came to, and the retry.policies lookup for it.
// Plain values and pure functions.
#pragma once

#include <string>

#include "config/config.h"

namespace bulwark::resilience {

struct Outcome {
  enum class Kind { kStatus, kConnectError, kTimeout, kReset, kStreamError };
  Kind kind = Kind::kStatus;
  int status = 0;  // for kStatus

  static Outcome fromStatus(int status) { return {Kind::kStatus, status}; }
  static Outcome connectError() { return {Kind::kConnectError, 0}; }
  static Outcome timeout() { return {Kind::kTimeout, 0}; }
  static Outcome reset() { return {Kind::kReset, 0}; }
  static Outcome streamError() { return {Kind::kStreamError, 0}; }

  // "503", "connect_error", "timeout", "reset", "stream_error": the metric label and the
  // policy key.
  std::string name() const;
  // A response the client can use as is: any status below 400.
  bool isSuccess() const { return kind == Kind::kStatus && status < 400; }
};

// The policy for an outcome: its own entry ("429"), else its class ("5xx"), else
// {retry: false, breaker: false}. Successes get {false, false}.
config::OutcomePolicy policyFor(const config::RetryConfig& retry, const Outcome& outcome);

}  // namespace bulwark::resilience
