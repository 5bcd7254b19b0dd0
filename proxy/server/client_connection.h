// One accepted client connection: reads and parses requests (one at a time, pipelined ones
// queued in the input buffer), enforces the server limits, frames responses, and notices a
// client that leaves at any moment. Lives on one worker thread; owned by its ClientServer.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string_view>

#include "proxy/server/request_handler.h"
#include "proxy/server/request_parser.h"
#include "proxy/server/response_sink.h"
#include "proxy/support/libevent.h"

namespace bulwark::server {

class ClientServer;

struct ConnectionLimits {
  ParserLimits parser;
  long long header_timeout_ms = 10000;
  long long idle_timeout_ms = 75000;
};

class ClientConnection final : public ResponseSink {
 public:
  ClientConnection(ClientServer& server, event_base* base, evutil_socket_t fd,
                   const ConnectionLimits& limits, RequestHandler& handler);
  ~ClientConnection() override;
  ClientConnection(const ClientConnection&) = delete;
  ClientConnection& operator=(const ClientConnection&) = delete;

  // Answers with one of Bulwark's own errors and closes (used for max_connections).
  void rejectAndClose(int status, std::string_view code, std::string_view message);
  // Draining: a busy connection closes after its current response. Returns true when the
  // connection is idle and should be released now.
  bool drain();
  bool busy() const { return active_ != nullptr; }
  // Shutdown grace is over: the active request ends now.
  void terminate();

  // ResponseSink
  void sendHead(int status, const http::Headers& headers,
                std::optional<std::uint64_t> content_length) override;
  void sendContinue() override;
  void sendBody(const char* data, std::size_t len) override;
  void finish() override;
  void abort() override;
  std::size_t pendingOutput() const override;
  void onDrained(std::function<void()> callback) override;

 private:
  enum class Phase {
    kIdle,         // waiting for the first byte of the next request
    kReadingHead,  // part of a request head received
    kReadingBody,  // head complete, body arriving
    kActive,       // request handed to the exchange; response pending or streaming
    kClosing,      // flushing the last bytes, then closing (lingering, if asked)
  };

  static void readableCallback(evutil_socket_t fd, short, void* arg);
  // New input is in the buffer: what the phase makes of it.
  void onInput();
  static void writeCallback(bufferevent* bev, void* arg);
  static void eventCallback(bufferevent* bev, short what, void* arg);
  static void timerCallback(evutil_socket_t, short, void* arg);
  static void bodyRoomCallback(evutil_socket_t, short, void* arg);
  // Output is written straight to the socket, once per loop pass (flushCallback), and the
  // bufferevent's write event is enabled only while a write is left unfinished: a response
  // that fits the socket buffer costs no epoll_ctl and no extra loop pass.
  static void outputCallback(evbuffer* buffer, const evbuffer_cb_info* info, void* arg);
  static void flushCallback(evutil_socket_t, short, void* arg);
  void flushOutput();
  // The output is written out: what the bufferevent's write callback did.
  void onOutputDrained();

  // Parses buffered input, then times a request still arriving.
  void processInput();
  // Unparsed input is bounded (input_limit_): reading pauses while that much waits, and
  // resumes once it is parsed. (A read watermark would do the same, but libevent then runs
  // a callback and re-adds the read event at every change of the input buffer.)
  void boundInput();
  // The parsing loop; head_begun is set when a request's first byte was read.
  void parseInput(bool& head_begun);
  void startRequest(HttpRequest request);
  // A request handed over with its body still to come (the parser's kStreamStart).
  void startStreamingRequest(HttpRequest request);
  // The streamed body ended, or the client sent something that cannot be a body.
  void endBody();
  void failBody(ParseStatus status);
  void sendError(int status, std::string_view code, std::string_view message);
  void closeAfterFlush();
  // The output is flushed: close now, or first linger (see linger_).
  void closeFlushed();
  void destroy();
  // The connection's one timer: the deadline is a monotonic stamp (0: none), and the event
  // is re-armed only to fire sooner than it already will (timer_fires_ms_, 0: not armed).
  void setDeadline(long long millis);
  void clearDeadline();
  // The response is done: after its output is written, the next request or the close.
  void kick();
  void afterResponse();

  ClientServer& server_;
  ConnectionLimits limits_;
  RequestHandler& handler_;
  RequestParser parser_;
  support::BuffereventPtr bev_;
  // The socket's read event (after bev_: it is removed before the bufferevent closes the
  // socket).
  support::InlineEvent read_event_;
  support::InlineEvent timer_;
  long long deadline_ms_ = 0;
  long long timer_fires_ms_ = 0;
  support::OnDemandEvent body_room_;  // deferred: the exchange made room in body_
  // Deferred: write the output at the end of this loop pass, then (after_response_pending_)
  // go on to the next request or close.
  support::InlineEvent flush_;
  evbuffer_cb_entry* output_cb_ = nullptr;
  // Unparsed input kept while a request is active (pipelined requests). Past this, reading
  // pauses until the current response is done.
  static constexpr std::size_t kMaxBufferedInput = 1024 * 1024;
  std::size_t input_limit_ = kMaxBufferedInput;
  bool input_paused_ = false;
  bool flush_pending_ = false;
  bool after_response_pending_ = false;
  bool write_enabled_ = false;  // the bufferevent finishes a write the socket did not take
  Phase phase_ = Phase::kIdle;
  std::unique_ptr<ActiveRequest> active_;
  // The active request's body while it is still arriving (shared with the exchange).
  std::shared_ptr<RequestBody> body_;

  // Response state of the active request.
  bool head_sent_ = false;
  bool chunked_ = false;
  bool no_body_ = false;  // HEAD request, 1xx/204/304
  bool keep_alive_ = true;
  bool response_done_ = false;
  bool response_aborted_ = false;
  bool request_is_head_ = false;
  bool expect_continue_ = false;  // the client waits for "100 Continue"
  bool continue_sent_ = false;
  int request_minor_ = 1;
  bool draining_ = false;
  std::function<void()> drained_callback_;
  bool drain_wanted_ = false;
  // An answer sent before the request was read whole (413, 400, 431): the
  // client may still be sending. Closing with unread bytes queued makes the kernel send a
  // reset, which can destroy the answer before the client reads it. So, like nginx's
  // lingering close, Bulwark half-closes and reads and discards what still comes, bounded in
  // time and bytes, then closes.
  bool linger_ = false;
  bool lingering_ = false;  // half-closed, discarding input
  long long linger_ends_ms_ = 0;  // monotonic deadline of the whole linger
  std::uint64_t linger_bytes_ = 0;
};

}  // namespace bulwark::server
