// One client request as the server hands it to the exchange layer. A plain value, moved
// along. Usually the body has been read whole (bounded by server.retry_body_limit); a larger
// body, or one whose head asked "Expect: 100-continue", is handed over as it arrives.
#pragma once

#include <memory>
#include <string>

#include "proxy/http/header.h"
#include "proxy/server/request_body.h"

namespace bulwark::server {

struct HttpRequest {
  std::string method;  // "POST"
  std::string target;  // as received: origin-form or absolute-form
  std::string path;    // origin-form path + "?" + query, always starting with '/'
  int http_major = 1;
  int http_minor = 1;
  http::Headers headers;
  std::string body;
  // Set when the body is still arriving: `body` is empty and the bytes come through here.
  std::shared_ptr<RequestBody> body_stream;
  // The client waits for "100 Continue" before it sends the body (ResponseSink::sendContinue).
  bool expect_continue = false;
  bool keep_alive = true;  // the client asked to keep the connection open afterwards
};

}  // namespace bulwark::server
