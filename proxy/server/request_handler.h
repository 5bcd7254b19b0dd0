// The seam between the server side and the exchange layer: the server hands over each
// complete request and keeps the returned object alive until the response is finished or
// the client leaves; destroying it cancels everything the request still has in flight.
#pragma once

#include <memory>

#include "proxy/server/http_request.h"
#include "proxy/server/response_sink.h"

namespace bulwark::server {

class ActiveRequest {
 public:
  virtual ~ActiveRequest() = default;
  // The server is shutting down and the grace period is over: answer or end the response
  // now (through the sink, as usual).
  virtual void terminate() = 0;
};

class RequestHandler {
 public:
  virtual ~RequestHandler() = default;
  // `sink` outlives the returned object. The handler must not call sink.finish()/abort()
  // synchronously from inside handle() more than once; calling it once is allowed.
  virtual std::unique_ptr<ActiveRequest> handle(HttpRequest request, ResponseSink& sink) = 0;
};

}  // namespace bulwark::server
