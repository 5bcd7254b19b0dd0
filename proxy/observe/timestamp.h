// ISO-8601 UTC timestamps with milliseconds ("2026-11-28T14:00:00.000Z"), for logs and
// /health/detailed.
#pragma once

#include <chrono>
#include <string>

namespace bulwark::observe {

std::string isoTimestamp(std::chrono::system_clock::time_point time);
inline std::string isoTimestampNow() {
  return isoTimestamp(std::chrono::system_clock::now());
}

}  // namespace bulwark::observe
