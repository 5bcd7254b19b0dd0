// Fuzz target: the error-body classifier (OpenAI error type/code, 429 quota codes) and the
// "try again in" wait a rate-limit error's message names.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "config/config.h"
#include "proxy/resilience/classify.h"
#include "proxy/resilience/quota.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view body(reinterpret_cast<const char*>(data), size);
  (void)bulwark::resilience::parseErrorIdentity(body);
  static const bulwark::config::RetryConfig retry;
  bulwark::resilience::AttemptFacts facts;
  facts.outcome = bulwark::resilience::Outcome::fromStatus(429);
  facts.error_body = body;
  (void)bulwark::resilience::classifyAttempt(retry, facts);
  if (auto wait = bulwark::resilience::tryAgainIn(body); wait && wait->count() < 0) std::abort();
  return 0;
}
