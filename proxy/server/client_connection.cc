#include "proxy/server/client_connection.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <ctime>
#include <string>
#include <utility>

#include "proxy/http/openai_error.h"
#include "proxy/observe/logger.h"
#include "proxy/server/client_server.h"

namespace bulwark::server {

namespace {
// A streamed request body: what is held between the client and the upstream, and the most
// unparsed input read ahead from the client's socket meanwhile.
constexpr size_t kBodyWindow = 256 * 1024;
constexpr size_t kMaxStreamingInput = 64 * 1024;
// The most one read takes from the socket (as much as a bufferevent reads at once).
constexpr size_t kReadChunk = 16 * 1024;
// Lingering close: the longest wait for more input, the whole linger at most, and the most
// bytes discarded (past the largest upload a client could have started).
constexpr long long kLingerIdleMs = 5000;
constexpr long long kLingerTotalMs = 30000;
constexpr std::uint64_t kLingerMaxBytes = 1ull << 30;

long long monotonicMillis() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<long long>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

void appendNumber(std::string& out, std::uint64_t n) {
  char digits[24];
  auto [end, ec] = std::to_chars(digits, digits + sizeof digits, n);
  out.append(digits, end);
}

bool isFramingHeader(std::string_view name) {
  return http::equalsIgnoreCase(name, "content-length") ||
         http::equalsIgnoreCase(name, "transfer-encoding") ||
         http::equalsIgnoreCase(name, "connection");
}
}  // namespace

ClientConnection::ClientConnection(ClientServer& server, event_base* base, evutil_socket_t fd,
                                   const ConnectionLimits& limits, RequestHandler& handler)
    : server_(server), limits_(limits), handler_(handler), parser_(limits.parser) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);  // SSE chunks go out at once
  bev_.reset(bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE));
  timer_.assign(base, -1, 0, &ClientConnection::timerCallback, this);
  body_room_.prepare(base, -1, 0, &ClientConnection::bodyRoomCallback, this);
  // The bufferevent writes; reading is the connection's own (see readableCallback).
  bufferevent_setcb(bev_.get(), nullptr, &ClientConnection::writeCallback,
                    &ClientConnection::eventCallback, this);
  read_event_.assign(base, fd, EV_READ | EV_PERSIST, &ClientConnection::readableCallback, this);
  // A socket bufferevent keeps its input's end frozen for everyone but itself; this one never
  // reads, so its input is the connection's to fill.
  evbuffer_unfreeze(bufferevent_get_input(bev_.get()), 0);
  timeval write_timeout = support::toTimeval(limits_.idle_timeout_ms);
  bufferevent_set_timeouts(bev_.get(), nullptr, &write_timeout);
  flush_.assign(base, -1, 0, &ClientConnection::flushCallback, this);
  output_cb_ = evbuffer_add_cb(bufferevent_get_output(bev_.get()),
                               &ClientConnection::outputCallback, this);
  // EV_WRITE (on by default for a socket bufferevent) only while a write is unfinished.
  bufferevent_disable(bev_.get(), EV_WRITE);
  read_event_.add(nullptr);
  setDeadline(limits_.idle_timeout_ms);
}

ClientConnection::~ClientConnection() {
  // The output buffer may outlive this object inside libevent: it must not call back.
  if (output_cb_ != nullptr) evbuffer_remove_cb_entry(bufferevent_get_output(bev_.get()), output_cb_);
  if (body_) body_->onRoom(nullptr);
  // Cancel the request first: it may still hold this connection as its sink.
  active_.reset();
}

void ClientConnection::setDeadline(long long millis) {
  long long due = monotonicMillis() + millis;
  deadline_ms_ = due;
  // A deadline pushed later only moves the stamp: the event, firing early, sets itself again
  // for what is left. The event is re-armed only to fire sooner.
  if (timer_fires_ms_ != 0 && timer_fires_ms_ <= due) return;
  timeval tv = support::toTimeval(millis);
  timer_.add(&tv);
  timer_fires_ms_ = due;
}

void ClientConnection::clearDeadline() {
  deadline_ms_ = 0;  // an armed event fires and finds nothing due
}

void ClientConnection::kick() {
  // The response is done: what follows it (the next request, or the close) runs in the
  // same deferred pass that writes its last bytes, after them.
  after_response_pending_ = true;
  if (!flush_pending_) {
    flush_pending_ = true;
    flush_.activate();
  }
}

void ClientConnection::destroy() {
  server_.release(this);
}

void ClientConnection::readableCallback(evutil_socket_t fd, short, void* arg) {
  auto* self = static_cast<ClientConnection*>(arg);
  // One read of what the socket holds, up to kReadChunk, straight into the input buffer.
  // (A bufferevent asks the kernel how much is readable first: a system call per read.)
  evbuffer* input = bufferevent_get_input(self->bev_.get());
  evbuffer_iovec vec;
  if (evbuffer_reserve_space(input, kReadChunk, &vec, 1) < 1) {
    self->destroy();  // out of memory
    return;
  }
  ssize_t got = recv(fd, vec.iov_base, std::min(vec.iov_len, kReadChunk), MSG_DONTWAIT);
  if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
  if (got <= 0) {
    // The client closed or reset its side.
    if (self->phase_ == Phase::kActive && !self->response_done_) {
      observe::logDebug("client left before its response completed");
    }
    self->destroy();  // cancels the active request, if any
    return;
  }
  vec.iov_len = static_cast<std::size_t>(got);
  evbuffer_commit_space(input, &vec, 1);
  self->onInput();
}

void ClientConnection::onInput() {
  switch (phase_) {
    case Phase::kActive:
      if (!body_) {
        // Pipelined bytes wait in the input buffer; reading goes on to see EOF.
        boundInput();
        return;
      }
      break;  // the active request's body, still arriving
    case Phase::kClosing: {
      evbuffer* input = bufferevent_get_input(bev_.get());
      std::size_t discarded = evbuffer_get_length(input);
      evbuffer_drain(input, SIZE_MAX);
      if (lingering_) {
        linger_bytes_ += discarded;
        long long left = linger_ends_ms_ - monotonicMillis();
        if (linger_bytes_ > kLingerMaxBytes || left <= 0) {
          destroy();
          return;
        }
        setDeadline(std::min(kLingerIdleMs, left));
      }
      return;
    }
    default:
      break;
  }
  processInput();
}

void ClientConnection::boundInput() {
  bool full = evbuffer_get_length(bufferevent_get_input(bev_.get())) >= input_limit_;
  if (full == input_paused_) return;
  input_paused_ = full;
  if (full) {
    read_event_.del();
  } else {
    read_event_.add(nullptr);
  }
}

void ClientConnection::processInput() {
  bool head_begun = false;
  parseInput(head_begun);
  if (phase_ != Phase::kClosing) boundInput();
  // A request still arriving is timed once this pass has read what there was, so a request
  // that came whole (the usual case) moves no timer: the whole head within header_timeout
  // of its first byte, and then each gap between body bytes within it.
  if ((phase_ == Phase::kReadingHead && head_begun) || phase_ == Phase::kReadingBody) {
    setDeadline(limits_.header_timeout_ms);
  }
}

void ClientConnection::parseInput(bool& head_begun) {
  evbuffer* input = bufferevent_get_input(bev_.get());
  for (;;) {
    bool streaming = phase_ == Phase::kActive && body_ != nullptr;
    if (!streaming && phase_ != Phase::kIdle && phase_ != Phase::kReadingHead &&
        phase_ != Phase::kReadingBody) {
      break;
    }
    std::size_t limit = SIZE_MAX;
    if (streaming) {
      limit = body_->room();
      if (limit == 0) {
        // The upstream takes the body slower than the client sends it: the client waits
        // (TCP holds it once the input buffer is full) until the exchange makes room. Its
        // own clock stops meanwhile; the upstream's idle timeout covers this side.
        clearDeadline();
        return;
      }
    }
    evbuffer_iovec vec;
    if (evbuffer_peek(input, -1, nullptr, &vec, 1) < 1 || vec.iov_len == 0) {
      if (streaming) {
        // The client owes body bytes: a gap between them is timed, unless it is still
        // waiting for its 100 Continue (the exchange's own timeouts cover that wait).
        if (!expect_continue_ || continue_sent_) {
          setDeadline(limits_.header_timeout_ms);
        } else {
          clearDeadline();
        }
      }
      break;
    }
    if (phase_ == Phase::kIdle) {
      phase_ = Phase::kReadingHead;
      head_begun = true;
    }
    size_t consumed = 0;
    ParseStatus status = parser_.feed(static_cast<const char*>(vec.iov_base),
                                      std::min(vec.iov_len, limit), &consumed);
    evbuffer_drain(input, consumed);
    if (streaming && body_->retained() && body_->received() > limits_.parser.retry_body) {
      body_->stopRetaining();  // a chunked body grew past the retry limit: it streams
    }
    if (phase_ == Phase::kReadingHead && parser_.headComplete()) phase_ = Phase::kReadingBody;
    switch (status) {
      case ParseStatus::kNeedMore:
        if (consumed == 0) return;
        continue;
      case ParseStatus::kComplete:
        startRequest(parser_.takeRequest());
        return;
      case ParseStatus::kStreamStart:
        startStreamingRequest(parser_.takeRequest());
        continue;
      case ParseStatus::kBodyEnd:
        endBody();
        continue;
      case ParseStatus::kBadRequest:
      case ParseStatus::kHeadersTooLarge:
      case ParseStatus::kBodyTooLarge:
        if (streaming) {
          failBody(status);
          return;
        }
        keep_alive_ = false;
        linger_ = true;
        if (status == ParseStatus::kBadRequest) {
          sendError(400, "bad_request", "malformed HTTP request: " + parser_.errorDetail());
        } else if (status == ParseStatus::kHeadersTooLarge) {
          sendError(431, "bad_request", parser_.errorDetail());
        } else {
          sendError(413, "request_too_large",
                    "request body is larger than server.max_request_body (" +
                        std::to_string(limits_.parser.max_body) + " bytes)");
        }
        return;
    }
  }
}

void ClientConnection::startStreamingRequest(HttpRequest request) {
  std::optional<std::uint64_t> length = parser_.contentLength();
  // Held whole (and so retryable) when the client only waits for "100 Continue" and the
  // body is within the retry limit; a chunked body is held until it grows past it.
  bool retained = request.expect_continue && request.body.empty() &&
                  (!length || *length <= limits_.parser.retry_body);
  body_ = std::make_shared<RequestBody>(kBodyWindow, length, retained);
  body_->append(request.body.data(), request.body.size());  // a chunked body's start
  request.body.clear();
  request.body.shrink_to_fit();
  body_->onRoom([this] { body_room_.activate(); });
  parser_.streamBodyTo(body_.get());
  request.body_stream = body_;
  input_limit_ = kMaxStreamingInput;
  startRequest(std::move(request));
}

void ClientConnection::endBody() {
  if (!body_) return;
  body_->onRoom(nullptr);
  body_->end();
  body_.reset();
  input_limit_ = kMaxBufferedInput;
  clearDeadline();  // the response is the exchange's to time now
}

void ClientConnection::failBody(ParseStatus status) {
  // The exchange answers (413 or 400); what the client still sends is discarded.
  keep_alive_ = false;
  linger_ = true;
  std::shared_ptr<RequestBody> body = std::move(body_);
  parser_.streamBodyTo(nullptr);
  body->onRoom(nullptr);
  clearDeadline();
  body->fail(status == ParseStatus::kBodyTooLarge ? RequestBody::Failure::kTooLarge
                                                  : RequestBody::Failure::kMalformed);
}

void ClientConnection::bodyRoomCallback(evutil_socket_t, short, void* arg) {
  static_cast<ClientConnection*>(arg)->processInput();
}

void ClientConnection::startRequest(HttpRequest request) {
  clearDeadline();
  phase_ = Phase::kActive;
  head_sent_ = false;
  chunked_ = false;
  no_body_ = false;
  response_done_ = false;
  response_aborted_ = false;
  request_is_head_ = request.method == "HEAD";
  expect_continue_ = request.expect_continue;
  continue_sent_ = false;
  request_minor_ = request.http_major == 1 ? request.http_minor : 1;
  keep_alive_ = request.keep_alive && !draining_;
  if (request.method == "CONNECT" || request.path.empty()) {
    keep_alive_ = false;
    sendError(400, "bad_request",
              "CONNECT is not supported: Bulwark only forwards to its upstreams");
    return;
  }
  active_ = handler_.handle(std::move(request), *this);
}

void ClientConnection::sendError(int status, std::string_view code, std::string_view message) {
  if (phase_ != Phase::kActive) {
    // An error found while reading: answer it as if it were a request's response.
    clearDeadline();
    phase_ = Phase::kActive;
    head_sent_ = false;
    chunked_ = false;
    response_done_ = false;
    request_is_head_ = false;
  }
  std::string body = http::openAiErrorBody(code, message);
  http::Headers headers{{"Content-Type", "application/json"}, {"x-should-retry", "false"}};
  sendHead(status, headers, body.size());
  sendBody(body.data(), body.size());
  finish();
}

void ClientConnection::rejectAndClose(int status, std::string_view code, std::string_view message) {
  // No lingering here: this answers a connection over max_connections at once, before it
  // sent anything; holding it open would keep the server over its limit.
  keep_alive_ = false;
  sendError(status, code, message);
}

bool ClientConnection::drain() {
  draining_ = true;
  keep_alive_ = false;
  // A lingering connection has had its answer: shutting down does not wait for it.
  return phase_ == Phase::kIdle || lingering_;
}

void ClientConnection::sendHead(int status, const http::Headers& headers,
                                std::optional<std::uint64_t> content_length) {
  if (phase_ != Phase::kActive || head_sent_ || response_done_) return;
  head_sent_ = true;
  // Answered before the request body was read whole: the connection closes after this
  // response (with a lingering close), and says so.
  if (parser_.inRequest()) keep_alive_ = false;
  no_body_ = request_is_head_ || status < 200 || status == 204 || status == 304;
  // The head is built in one string and handed to the output buffer once; the string is the
  // thread's, kept between heads, so a head allocates nothing once the thread is warm.
  thread_local std::string head;
  head.clear();
  head.reserve(256 + headers.size() * 48);
  head += "HTTP/1.1 ";
  appendNumber(head, static_cast<std::uint64_t>(status));
  head += ' ';
  head += http::reasonPhrase(status);
  head += "\r\n";
  for (const http::Header& h : headers) {
    if (isFramingHeader(h.name)) continue;
    if (http::hasLineBreak(h.name) || http::hasLineBreak(h.value)) {
      continue;
    }
    head += h.name;
    head += ": ";
    head += h.value;
    head += "\r\n";
  }
  if (no_body_) {
    if (request_is_head_ && content_length) {
      head += "Content-Length: ";
      appendNumber(head, *content_length);
      head += "\r\n";
    }
  } else if (content_length) {
    head += "Content-Length: ";
    appendNumber(head, *content_length);
    head += "\r\n";
  } else if (request_minor_ >= 1) {
    chunked_ = true;
    head += "Transfer-Encoding: chunked\r\n";
  } else {
    keep_alive_ = false;  // HTTP/1.0 without a length: the close ends the body
  }
  if (!keep_alive_) {
    head += "Connection: close\r\n";
  } else if (request_minor_ == 0) {
    head += "Connection: keep-alive\r\n";
  }
  head += "\r\n";
  evbuffer_add(bufferevent_get_output(bev_.get()), head.data(), head.size());
}

void ClientConnection::sendContinue() {
  if (phase_ != Phase::kActive || !expect_continue_ || continue_sent_ || head_sent_ ||
      response_done_) {
    return;
  }
  continue_sent_ = true;
  static constexpr char kContinue[] = "HTTP/1.1 100 Continue\r\n\r\n";
  bufferevent_write(bev_.get(), kContinue, sizeof kContinue - 1);
  if (body_) setDeadline(limits_.header_timeout_ms);  // the body is owed from now on
}

void ClientConnection::sendBody(const char* data, std::size_t len) {
  if (phase_ != Phase::kActive || !head_sent_ || response_done_ || no_body_ || len == 0) return;
  evbuffer* out = bufferevent_get_output(bev_.get());
  if (chunked_) {
    evbuffer_add_printf(out, "%zx\r\n", len);
    evbuffer_add(out, data, len);
    evbuffer_add(out, "\r\n", 2);
  } else {
    evbuffer_add(out, data, len);
  }
}

void ClientConnection::finish() {
  if (phase_ != Phase::kActive || response_done_) return;
  if (chunked_) {
    evbuffer_add(bufferevent_get_output(bev_.get()), "0\r\n\r\n", 5);
  }
  response_done_ = true;
  kick();
}

void ClientConnection::abort() {
  if (phase_ != Phase::kActive || response_done_) return;
  response_done_ = true;
  response_aborted_ = true;
  keep_alive_ = false;
  kick();
}

void ClientConnection::terminate() {
  keep_alive_ = false;
  if (active_ && !response_done_) active_->terminate();
}

std::size_t ClientConnection::pendingOutput() const {
  return evbuffer_get_length(bufferevent_get_output(bev_.get()));
}

void ClientConnection::onDrained(std::function<void()> callback) {
  drained_callback_ = std::move(callback);
}

void ClientConnection::afterResponse() {
  if (phase_ != Phase::kActive || !response_done_) return;
  drained_callback_ = nullptr;
  active_.reset();
  if (parser_.inRequest()) {
    // Answered before its body was read whole (an early upstream answer, an error): the
    // connection cannot carry another request; the rest of the body is discarded.
    keep_alive_ = false;
    linger_ = true;
    parser_.streamBodyTo(nullptr);
    if (body_) {
      body_->onRoom(nullptr);
      body_.reset();
    }
  }
  if (!keep_alive_ || draining_) {
    closeAfterFlush();
    return;
  }
  phase_ = Phase::kIdle;
  setDeadline(limits_.idle_timeout_ms);
  processInput();  // a pipelined request may be waiting
}

void ClientConnection::closeAfterFlush() {
  phase_ = Phase::kClosing;
  clearDeadline();
  if (pendingOutput() == 0) {
    closeFlushed();
    return;
  }
  // The write callback closes once the output is flushed; the write timeout bounds the wait.
  // Reading goes on meanwhile, to notice a client that leaves.
  evbuffer_drain(bufferevent_get_input(bev_.get()), SIZE_MAX);
  boundInput();
}

void ClientConnection::closeFlushed() {
  if (!linger_) {
    destroy();
    return;
  }
  // Half-close: the client reads the answer to its end, then sees EOF; what it still
  // sends is read and dropped until it closes too, or the linger runs out.
  lingering_ = true;
  linger_ends_ms_ = monotonicMillis() + kLingerTotalMs;
  shutdown(bufferevent_getfd(bev_.get()), SHUT_WR);
  evbuffer_drain(bufferevent_get_input(bev_.get()), SIZE_MAX);
  if (input_paused_) read_event_.add(nullptr);
  input_paused_ = false;
  setDeadline(kLingerIdleMs);
}

void ClientConnection::outputCallback(evbuffer*, const evbuffer_cb_info* info, void* arg) {
  auto* self = static_cast<ClientConnection*>(arg);
  if (info->n_added == 0 || self->flush_pending_ || self->write_enabled_) return;
  self->flush_pending_ = true;
  self->flush_.activate();
}

void ClientConnection::flushCallback(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<ClientConnection*>(arg);
  bool after_response = std::exchange(self->after_response_pending_, false);
  // Writing can end the connection only when it was closing; an active one is still here.
  bool active = self->phase_ == Phase::kActive;
  self->flushOutput();
  if (active && after_response) self->afterResponse();
}

void ClientConnection::flushOutput() {
  flush_pending_ = false;
  if (write_enabled_) return;
  evbuffer* out = bufferevent_get_output(bev_.get());
  if (evbuffer_get_length(out) == 0) return;
  // A socket bufferevent keeps its output's start frozen for everyone but itself; its own
  // write callback unfreezes it around the write in the same way.
  evbuffer_unfreeze(out, 1);
  int written = evbuffer_write(out, bufferevent_getfd(bev_.get()));
  evbuffer_freeze(out, 1);
  if (evbuffer_get_length(out) > 0 || written < 0) {
    // The socket took part of it (or failed): the bufferevent writes the rest when it can,
    // under the write timeout, and reports an error through eventCallback.
    write_enabled_ = true;
    bufferevent_enable(bev_.get(), EV_WRITE);
    return;
  }
  onOutputDrained();  // may destroy this connection
}

void ClientConnection::writeCallback(bufferevent* bev, void* arg) {
  auto* self = static_cast<ClientConnection*>(arg);
  // Written out: back to writing straight to the socket.
  self->write_enabled_ = false;
  bufferevent_disable(bev, EV_WRITE);
  self->onOutputDrained();
}

void ClientConnection::onOutputDrained() {
  if (phase_ == Phase::kClosing) {
    if (!lingering_) closeFlushed();
    return;
  }
  if (drained_callback_) {
    std::function<void()> callback = drained_callback_;
    callback();
  }
}

void ClientConnection::eventCallback(bufferevent*, short what, void* arg) {
  // The write side: an error or the write timeout.
  auto* self = static_cast<ClientConnection*>(arg);
  if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT)) {
    if (self->phase_ == Phase::kActive && !self->response_done_) {
      observe::logDebug("client left before its response completed");
    }
    self->destroy();  // cancels the active request, if any
  }
}

void ClientConnection::timerCallback(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<ClientConnection*>(arg);
  self->timer_fires_ms_ = 0;
  if (self->deadline_ms_ == 0) return;
  long long left = self->deadline_ms_ - monotonicMillis();
  if (left > 0) {
    // Fired for an earlier deadline that has since moved later.
    timeval tv = support::toTimeval(left);
    self->timer_.add(&tv);
    self->timer_fires_ms_ = self->deadline_ms_;
    return;
  }
  if (self->phase_ == Phase::kReadingHead || self->phase_ == Phase::kReadingBody || self->body_) {
    observe::logDebug("client too slow sending its request; connection dropped");
  }
  self->destroy();
}

}  // namespace bulwark::server
