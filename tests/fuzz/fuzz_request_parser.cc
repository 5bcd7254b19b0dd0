// Fuzz target: client request parsing with Bulwark's limits, fed in irregular pieces the way
// a socket delivers them, pipelined requests included, and bodies over the retry limit
// streamed through a small window the way the connection feeds them.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <memory>

#include "proxy/server/request_body.h"
#include "proxy/server/request_parser.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  bulwark::server::ParserLimits limits;
  limits.max_header_bytes = 4096;
  limits.max_headers = 32;
  limits.max_body = 8192;
  limits.retry_body = 1024;
  bulwark::server::RequestParser parser(limits);
  std::unique_ptr<bulwark::server::RequestBody> body;
  std::uint64_t streamed = 0;
  const char* p = reinterpret_cast<const char*>(data);
  std::size_t left = size;
  std::size_t step = size > 0 ? (data[0] % 17) + 1 : 1;
  while (left > 0) {
    std::size_t n = left < step ? left : step;
    if (body) {
      // Read the window out as an upstream would, and never feed more than it has room for.
      char sink[256];
      while (std::size_t got = body->read(sink, sizeof sink)) streamed += got;
      n = std::min(n, body->room());
      if (n == 0) std::abort();  // an emptied window always has room
    }
    std::size_t consumed = 0;
    bulwark::server::ParseStatus status = parser.feed(p, n, &consumed);
    if (consumed > n) std::abort();
    if (status == bulwark::server::ParseStatus::kComplete) {
      bulwark::server::HttpRequest request = parser.takeRequest();
      if (request.body.size() > limits.max_body) std::abort();
      if (!request.path.empty() && request.path.front() != '/') std::abort();
    } else if (status == bulwark::server::ParseStatus::kStreamStart) {
      if (body) std::abort();  // one streamed body at a time
      bulwark::server::HttpRequest request = parser.takeRequest();
      if (request.body.size() > limits.max_body) std::abort();
      body = std::make_unique<bulwark::server::RequestBody>(512, parser.contentLength(), false);
      body->append(request.body.data(), request.body.size());
      parser.streamBodyTo(body.get());
    } else if (status == bulwark::server::ParseStatus::kBodyEnd) {
      if (!body) std::abort();
      streamed += body->buffered();
      if (streamed > limits.max_body) std::abort();
      body.reset();
      streamed = 0;
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
