#include "proxy/resilience/retry_decision.h"

namespace bulwark::resilience {

RetryDecision decideRetry(const config::RetryConfig& retry, const RetryInputs& inputs,
                          Backoff& backoff, RetryBudget& budget) {
  RetryDecision decision;
  if (!inputs.verdict.retryable) {
    decision.why_not = inputs.verdict.reason;
    return decision;
  }
  if (inputs.body_consumed) {
    decision.why_not = "body_streamed";  // part of the body is gone, and was not kept
    return decision;
  }
  if (inputs.attempts_made >= inputs.max_attempts) {
    decision.why_not = "max_attempts";
    return decision;
  }
  RetryDelay plan = planRetryDelay(retry, inputs.server_hint, backoff.next(inputs.attempts_made),
                                   inputs.now, inputs.deadline);
  if (!plan.retry) {
    decision.why_not = plan.why_not;
    return decision;
  }
  if (!budget.tryAcquire()) {
    // Retries must not multiply the load on a struggling upstream.
    decision.why_not = "retry_budget";
    decision.budget_exhausted = true;
    return decision;
  }
  decision.retry = true;
  decision.delay = plan.delay;
  decision.source = plan.source;
  return decision;
}

}  // namespace bulwark::resilience
