// Retry delays: exponential backoff with jitter, server hints, and the rule that
// no retry starts that cannot finish before the deadline. Pure apart from the Random&.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "config/config.h"
#include "proxy/http/header.h"
#include "proxy/resilience/clock.h"

namespace bulwark::resilience {

// Backoff for one request's successive retries. Not thread-safe; one per request.
class Backoff {
 public:
  Backoff(const config::RetryConfig& retry, Random& random);
  // The delay before retry number `retry` (1 = the first retry):
  // d = min(max_delay, base_delay * exponential_base^(retry-1)), then jitter:
  // full: uniform[0, d]; equal: d/2 + uniform[0, d/2];
  // decorrelated: min(max_delay, uniform[base_delay, 3 * previous]) (previous starts at
  // base_delay); none: d.
  Millis next(int retry);

 private:
  const config::RetryConfig& retry_;
  Random& random_;
  Millis previous_;
};

// "6m0s", "1.5s", "20ms", "1h2m3.5s", "250us", "0s" -> milliseconds (rounded up to whole
// ms). Negative, empty or malformed -> nullopt.
std::optional<Millis> parseGoDuration(std::string_view text);

// "Wed, 21 Oct 2015 07:28:00 GMT" (IMF-fixdate; also RFC 850 and asctime forms).
std::optional<WallTime> parseHttpDate(std::string_view text);

// The server's wait hint: retry-after-ms (or Azure's x-ms-retry-after-ms), then retry-after
// (seconds or HTTP date; a date in
// the past means 0), then for 429 only the larger of x-ratelimit-reset-requests /
// x-ratelimit-reset-tokens. Malformed values are skipped, falling through to the next form.
std::optional<Millis> serverRetryHint(const http::Headers& headers, int status, WallTime now);

struct RetryDelay {
  bool retry = false;
  Millis delay{0};
  enum class Source { kBackoff, kServer } source = Source::kBackoff;
  std::string why_not;  // when !retry: "retry_after_too_long", "deadline"
};

// Chooses the wait before the next attempt: the server hint when honour_retry_after and
// present (a hint above max_retry_after means no retry at all), else the backoff; and no
// retry when now + wait would reach the deadline.
RetryDelay planRetryDelay(const config::RetryConfig& retry, std::optional<Millis> server_hint,
                          Millis backoff, SteadyTime now, SteadyTime deadline);

// The request's overall deadline: timeouts.total, lowered by the client's
// x-stainless-timeout (seconds, may be fractional) when that is smaller.
SteadyTime requestDeadline(const config::TimeoutsConfig& timeouts, const http::Headers& request,
                           SteadyTime start);

// Attempts allowed for this request: 1 when x-stainless-retry-count is above 0 (the SDK is
// already retrying), else retry.max_attempts.
int attemptsAllowed(const config::RetryConfig& retry, const http::Headers& request);

}  // namespace bulwark::resilience
