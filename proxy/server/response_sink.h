// The client side of one request, as the exchange layer sees it: send a head, stream body
// bytes, finish or abort. Implemented by the client connection; used on its worker thread only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>

#include "proxy/http/header.h"

namespace bulwark::server {

class ResponseSink {
 public:
  virtual ~ResponseSink() = default;

  // Sends the status line and headers. Framing headers (Content-Length, Transfer-Encoding,
  // Connection) are the sink's business: pass the body length when it is known.
  virtual void sendHead(int status, const http::Headers& headers,
                        std::optional<std::uint64_t> content_length) = 0;
  // The request is admitted: a client that asked "Expect: 100-continue" is told to send its
  // body (once, and only before the response head). Nothing for any other client.
  virtual void sendContinue() = 0;
  // Queues body bytes for the client (copied). Never blocks.
  virtual void sendBody(const char* data, std::size_t len) = 0;
  // The response is complete. The request object may be destroyed after this returns,
  // from the event loop, never from inside this call.
  virtual void finish() = 0;
  // The response cannot be completed: the connection is closed without a proper end so the
  // client sees a truncated response. Deferred like finish().
  virtual void abort() = 0;

  // Bytes queued for the client and not yet written to its socket.
  virtual std::size_t pendingOutput() const = 0;
  // Called (from the event loop) once pendingOutput() drops below the low-water mark after
  // it was above it; used to resume a paused upstream transfer.
  virtual void onDrained(std::function<void()> callback) = 0;
};

}  // namespace bulwark::server
