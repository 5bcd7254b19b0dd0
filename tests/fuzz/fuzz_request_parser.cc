// Fuzz target: client request parsing with Bulwark's limits, fed in irregular pieces the way
// a socket delivers them, pipelined requests included.
#include <cstdint>
#include <cstdlib>

#include "proxy/server/request_parser.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  bulwark::server::ParserLimits limits;
  limits.max_header_bytes = 4096;
  limits.max_headers = 32;
  limits.max_body = 8192;
  bulwark::server::RequestParser parser(limits);
  const char* p = reinterpret_cast<const char*>(data);
  std::size_t left = size;
  std::size_t step = size > 0 ? (data[0] % 17) + 1 : 1;
  while (left > 0) {
    std::size_t n = left < step ? left : step;
    std::size_t consumed = 0;
    bulwark::server::ParseStatus status = parser.feed(p, n, &consumed);
    if (consumed > n) std::abort();
    if (status == bulwark::server::ParseStatus::kComplete) {
      bulwark::server::HttpRequest request = parser.takeRequest();
      if (request.body.size() > limits.max_body) std::abort();
      if (!request.path.empty() && request.path.front() != '/') std::abort();
    } else if (status != bulwark::server::ParseStatus::kNeedMore) {
      return 0;  // a refused request closes the connection
    }
    if (consumed == 0 && status == bulwark::server::ParseStatus::kNeedMore) break;
    p += consumed;
    left -= consumed;
  }
  (void)parser.finish();
  return 0;
}
