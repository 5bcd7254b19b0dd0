// One complete client request as the server hands it to the exchange layer.
// A plain value, moved along; the body is fully read (bounded by server.max_request_body).
#pragma once

#include <string>

#include "proxy/http/header.h"

namespace bulwark::server {

struct HttpRequest {
  std::string method;  // "POST"
  std::string target;  // as received: origin-form or absolute-form
  std::string path;    // origin-form path + "?" + query, always starting with '/'
  int http_major = 1;
  int http_minor = 1;
  http::Headers headers;
  std::string body;
  bool keep_alive = true;  // the client asked to keep the connection open afterwards
};

}  // namespace bulwark::server
