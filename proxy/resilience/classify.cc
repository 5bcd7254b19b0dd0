#include "proxy/resilience/classify.h"

#include <algorithm>
#include <array>
#include <utility>
#include <vector>

#include <rapidjson/document.h>

namespace bulwark::resilience {
namespace {

// A JSON string or number (kept as written) as text; anything else (null, objects) as "".
std::string scalarText(const rapidjson::Value& object, const char* key) {
  auto it = object.FindMember(key);
  if (it == object.MemberEnd() || !it->value.IsString()) return {};
  return std::string(it->value.GetString(), it->value.GetStringLength());
}

bool isListed(const std::vector<std::string>& codes, const std::string& value) {
  return !value.empty() && std::find(codes.begin(), codes.end(), value) != codes.end();
}

// Outcomes that prove the upstream did not act on the request: it was never delivered, or
// the upstream turned it away (rate limit, overload) before processing it.
bool provablyUnprocessed(const Outcome& outcome) {
  return outcome.kind == Outcome::Kind::kConnectError ||
         (outcome.kind == Outcome::Kind::kStatus &&
          (outcome.status == 429 || outcome.status == 503));
}

}  // namespace

ErrorIdentity parseErrorIdentity(std::string_view body) {
  // Iterative parsing keeps hostile nesting ("[[[[...") off the call stack; numbers stay
  // text so a numeric code reads back exactly as the upstream wrote it.
  constexpr unsigned kFlags =
      rapidjson::kParseIterativeFlag | rapidjson::kParseNumbersAsStringsFlag;
  rapidjson::Document document;
  document.Parse<kFlags>(body.data(), body.size());
  if (document.HasParseError() || !document.IsObject()) return {};
  // Searched as const: rapidjson 1.1's mutable iterators make == ambiguous under C++20.
  const rapidjson::Value& root = document;
  auto error = root.FindMember("error");
  if (error == root.MemberEnd() || !error->value.IsObject()) return {};
  return {scalarText(error->value, "type"), scalarText(error->value, "code")};
}

Verdict classifyAttempt(const config::RetryConfig& retry, const AttemptFacts& facts) {
  Verdict verdict;
  if (facts.outcome.isSuccess()) {
    verdict.success = true;
    return verdict;
  }
  const config::OutcomePolicy policy = policyFor(retry, facts.outcome);
  verdict.breaker_counted = policy.breaker;
  verdict.retryable = policy.retry;
  if (!verdict.retryable) verdict.reason = "policy";

  if (facts.x_should_retry.has_value()) {
    verdict.retryable = *facts.x_should_retry;
    verdict.reason = verdict.retryable ? "" : "x-should-retry";
  }

  // Out of quota or billing limit: waiting will not help, whatever the headers say.
  if (facts.outcome.kind == Outcome::Kind::kStatus && facts.outcome.status == 429) {
    ErrorIdentity identity = parseErrorIdentity(facts.error_body);
    for (std::string* value : {&identity.code, &identity.type}) {
      if (isListed(retry.non_retryable_429_codes, *value)) {
        verdict.retryable = false;
        verdict.reason = std::move(*value);
        break;
      }
    }
  }

  if (!facts.policies_apply && verdict.retryable && !provablyUnprocessed(facts.outcome)) {
    verdict.retryable = false;
    verdict.reason = "not_idempotent";
  }
  return verdict;
}

}  // namespace bulwark::resilience
