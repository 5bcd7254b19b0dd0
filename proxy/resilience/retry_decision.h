// Whether a failed attempt is followed by another, and after how long: the classification's
// verdict, then the request's own limits (a streamed body partly sent, max_attempts), the
// wait (the server's hint or the backoff, never past the deadline), and last the upstream's
// retry budget. Pure apart from the budget and backoff it is given, which hold their own state.
#pragma once

#include <optional>
#include <string>

#include "config/config.h"
#include "proxy/resilience/backoff.h"
#include "proxy/resilience/classify.h"
#include "proxy/resilience/clock.h"
#include "proxy/resilience/retry_budget.h"

namespace bulwark::resilience {

struct RetryInputs {
  Verdict verdict;              // classifyAttempt() of the failed attempt
  bool body_consumed = false;   // it consumed part of a streamed body Bulwark did not keep
  int attempts_made = 1;        // including the failed one
  int max_attempts = 1;         // attemptsAllowed() for this request
  std::optional<Millis> server_hint;  // serverRetryHint() of its response, if it had one
  SteadyTime now;
  SteadyTime deadline;
};

struct RetryDecision {
  bool retry = false;
  Millis delay{0};
  RetryDelay::Source source = RetryDelay::Source::kBackoff;
  // When !retry, why (for not_retried_because): the verdict's reason, "body_streamed",
  // "max_attempts", "retry_after_too_long", "deadline" or "retry_budget".
  std::string why_not;
  bool budget_exhausted = false;  // the budget refused it (counted in the metrics)
};

// The budget is asked last, and only when everything else allows the retry: a refusal that
// has another reason never spends it. `backoff` is advanced only then too.
RetryDecision decideRetry(const config::RetryConfig& retry, const RetryInputs& inputs,
                          Backoff& backoff, RetryBudget& budget);

}  // namespace bulwark::resilience
