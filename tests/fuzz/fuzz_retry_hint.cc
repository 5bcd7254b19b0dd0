// Fuzz target: server retry hints (retry-after-ms, retry-after seconds or HTTP date,
// x-ratelimit-reset-* Go durations) from hostile header values.
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "proxy/resilience/backoff.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  if (auto d = bulwark::resilience::parseGoDuration(text); d && d->count() < 0) std::abort();
  (void)bulwark::resilience::parseHttpDate(text);
  // Split the input over the four hint headers.
  std::size_t q = text.size() / 4;
  bulwark::http::Headers headers{
      {"retry-after-ms", std::string(text.substr(0, q))},
      {"retry-after", std::string(text.substr(q, q))},
      {"x-ratelimit-reset-requests", std::string(text.substr(2 * q, q))},
      {"x-ratelimit-reset-tokens", std::string(text.substr(3 * q))},
  };
  auto now = std::chrono::system_clock::time_point(std::chrono::seconds(1'800'000'000));
  for (int status : {429, 503}) {
    auto hint = bulwark::resilience::serverRetryHint(headers, status, now);
    if (hint && hint->count() < 0) std::abort();
  }
  return 0;
}
