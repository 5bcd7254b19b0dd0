#include "proxy/upstream/attempt.h"

#include <array>
#include <cassert>
#include <charconv>
#include <cstring>
#include <string_view>

#include "proxy/upstream/upstream_client.h"

namespace bulwark::upstream {

namespace {

TransferError classifyCurlCode(CURLcode code, bool request_sent) {
  switch (code) {
    case CURLE_OK:
      return TransferError::kNone;
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_CONNECT:
    case CURLE_OPERATION_TIMEDOUT:  // only the connect timeout is set on the handle
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
      return TransferError::kConnect;
    case CURLE_WEIRD_SERVER_REPLY:
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_BAD_CONTENT_ENCODING:
    case CURLE_RANGE_ERROR:
      return TransferError::kProtocol;
    default:
      // A failure before the request went out means the upstream never saw it.
      return request_sent ? TransferError::kReset : TransferError::kConnect;
  }
}

// Whether curl ended the transfer because its connection ended (what every transfer on a
// connection that breaks is told), rather than because of this request alone: a reset of
// its stream only (RST_STREAM), a callback's abort, and the rest count for the request.
bool connectionEnded(CURLcode code, const char* error_text) {
  switch (code) {
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    case CURLE_HTTP2:
      return true;
    case CURLE_HTTP2_STREAM:
      // Later curl versions report the streams a connection's end cut with this code too,
      // and say so in the message.
      return std::strstr(error_text, "before end of the underlying") != nullptr;
    default:
      return false;
  }
}

}  // namespace

const char* transferErrorName(TransferError e) {
  switch (e) {
    case TransferError::kNone:
      return "none";
    case TransferError::kConnect:
      return "connect_error";
    case TransferError::kFirstByteTimeout:
      return "first_byte_timeout";
    case TransferError::kIdleTimeout:
      return "idle_timeout";
    case TransferError::kReset:
      return "reset";
    case TransferError::kProtocol:
      return "protocol_error";
    case TransferError::kInternal:
      return "internal_error";
    case TransferError::kAborted:
      return "aborted";
  }
  return "unknown";
}

Attempt::Attempt(UpstreamClient& client, AttemptObserver& observer, AttemptRequest request)
    : client_(client), observer_(observer), request_(std::move(request)) {
  request_.multiplex = request_.multiplex && client_.multiplexes(request_.url);
  warm_eligible_ = !request_.stream_body && request_.method == "POST";
  if (warm_eligible_) {
    profile_.reserve(4 + request_.proxy.size() + request_.ca_file.size());
    profile_.append(request_.multiplex ? "h2\n" : "h1\n").append(request_.proxy);
    profile_.append("\n").append(request_.ca_file);
  }
  timer_.assign(client_.base(), -1, 0, &Attempt::onTimeout, this);
  deferred_.prepare(client_.base(), -1, 0, &Attempt::onDeferredFailure, this);
  upload_ready_.prepare(client_.base(), -1, 0, &Attempt::onUploadReady, this);
}

Attempt::~Attempt() {
  if (!done_) {
    done_ = true;
    reportBodySent();
    detach();
  }
  // Options are kept only after a transfer that ended normally: an abandoned one has
  // FORBID_REUSE set (see detach()).
  bool keep_options = warm_eligible_ && completed_ && !aborted_;
  client_.releaseHandle(handle_, keep_options ? &profile_ : nullptr);
}

void Attempt::start() {
  bool warm = false;
  handle_ = client_.acquireHandle(warm_eligible_ ? &profile_ : nullptr, &warm);
  if (handle_ == nullptr || !configure(warm) || !client_.add(handle_, request_.multiplex)) {
    deferred_.activate();
    return;
  }
  in_multi_ = true;
  // Until the request is about to be written (the prereq callback), the transfer may wait in
  // libcurl for a connection or a stream slot, which no curl timeout covers. Nothing has been
  // sent then, so running out of this time is a connect failure: safe to retry anywhere.
  // The event is set for the first-byte part alone: a reused connection starts sending in
  // this same loop pass, and its first-byte deadline, later than that, only moves the stamp.
  // A transfer still waiting for its connection then is checked again for what is left.
  timer_error_ = TransferError::kConnect;
  auto now = std::chrono::steady_clock::now();
  due_ = now + request_.connect_timeout + request_.first_byte_timeout;
  armTimerAt(now + request_.first_byte_timeout, request_.first_byte_timeout);
}

bool Attempt::configure(bool warm) {
  CURL* h = handle_;
  bool ok = true;
  auto set = [&ok](CURLcode rc) { ok = ok && rc == CURLE_OK; };
  // What changes from one request to the next.
  set(curl_easy_setopt(h, CURLOPT_URL, request_.url.c_str()));
  set(curl_easy_setopt(h, CURLOPT_PRIVATE, this));
  set(curl_easy_setopt(h, CURLOPT_ERRORBUFFER, error_buffer_));
  set(curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS,
                       static_cast<long>(request_.connect_timeout.count())));
  set(curl_easy_setopt(h, CURLOPT_HEADERDATA, this));
  set(curl_easy_setopt(h, CURLOPT_WRITEDATA, this));
  set(curl_easy_setopt(h, CURLOPT_PREREQDATA, this));
  if (warm) {
    // The same profile's last transfer was a plain POST too: the rest is already set.
    set(curl_easy_setopt(h, CURLOPT_POSTFIELDS, request_.body ? request_.body->data() : ""));
    set(curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE,
                         static_cast<curl_off_t>(request_.body ? request_.body->size() : 0)));
    return setHeaders() && ok;
  }
  set(curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L));
  set(curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https"));
  set(curl_easy_setopt(h, CURLOPT_PATH_AS_IS, 1L));  // the path goes out exactly as received
  set(curl_easy_setopt(
      h, CURLOPT_HTTP_VERSION,
      static_cast<long>(request_.multiplex ? CURL_HTTP_VERSION_2TLS : CURL_HTTP_VERSION_1_1)));
  set(curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L));
  if (!request_.proxy.empty()) {
    // A configured proxy applies to this upstream whatever NO_PROXY says.
    set(curl_easy_setopt(h, CURLOPT_PROXY, request_.proxy.c_str()));
    set(curl_easy_setopt(h, CURLOPT_NOPROXY, ""));
  } else if (!client_.environmentProxy()) {
    // No proxy at all; an empty no-proxy list also spares curl reading no_proxy and NO_PROXY
    // from the environment on every transfer.
    set(curl_easy_setopt(h, CURLOPT_PROXY, ""));
    set(curl_easy_setopt(h, CURLOPT_NOPROXY, ""));
  }
  // A proxy's "200 Connection established" is not the upstream's answer.
  set(curl_easy_setopt(h, CURLOPT_SUPPRESS_CONNECT_HEADERS, 1L));
  // Bulwark negotiates compression with the upstream itself (deflate, gzip, br, zstd) and
  // decodes: the WAN carries compressed bytes, and everything that reads a body (error
  // classification, the first-event scanner, the usage tap) sees plain bytes. The client,
  // on loopback, gets identity bytes.
  set(curl_easy_setopt(h, CURLOPT_ACCEPT_ENCODING, ""));
  // libcurl copies a TLS HTTP/1.1 request into an upload buffer (64 KiB by default) that
  // lives as long as the transfer: the smallest size it takes is plenty for a request head.
  set(curl_easy_setopt(h, CURLOPT_UPLOAD_BUFFERSIZE, 16384L));
  // A transfer that finds a connection still negotiating waits to multiplex on it rather
  // than opening one connection (and one TLS handshake) per request in a burst. Only on the
  // multiplexed lane: libcurl 7.88 also parks a transfer that cannot multiplex while
  // another connection to the host is connecting, which serialised HTTP/1.1 handshakes.
  if (request_.multiplex) set(curl_easy_setopt(h, CURLOPT_PIPEWAIT, 1L));
  set(curl_easy_setopt(h, CURLOPT_SHARE, client_.share()));
  set(curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, &Attempt::headerCallback));
  set(curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, &Attempt::writeCallback));
  set(curl_easy_setopt(h, CURLOPT_PREREQFUNCTION, &Attempt::prereqCallback));
  if (!request_.ca_file.empty()) set(curl_easy_setopt(h, CURLOPT_CAINFO, request_.ca_file.c_str()));

  const std::string& method = request_.method;
  bool has_body = request_.body != nullptr && !request_.body->empty();
  if (request_.stream_body) {
    set(curl_easy_setopt(h, CURLOPT_POST, 1L));
    set(curl_easy_setopt(h, CURLOPT_READFUNCTION, &Attempt::readCallback));
    set(curl_easy_setopt(h, CURLOPT_READDATA, this));
    set(curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE,
                         request_.body_length ? static_cast<curl_off_t>(*request_.body_length)
                                              : static_cast<curl_off_t>(-1)));
    if (method != "POST") set(curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method.c_str()));
    // The body goes out in libcurl's default upload buffer (64 KiB): fewer, larger writes.
    set(curl_easy_setopt(h, CURLOPT_UPLOAD_BUFFERSIZE, 65536L));
    set(curl_easy_setopt(h, CURLOPT_EXPECT_100_TIMEOUT_MS, 1000L));
  } else if (method == "HEAD") {
    set(curl_easy_setopt(h, CURLOPT_NOBODY, 1L));
  } else if (method == "GET" && !has_body) {
    set(curl_easy_setopt(h, CURLOPT_HTTPGET, 1L));
  } else if (has_body || method == "POST" || method == "PUT" || method == "PATCH") {
    static const std::string kEmpty;
    const std::string& body = has_body ? *request_.body : kEmpty;
    set(curl_easy_setopt(h, CURLOPT_POSTFIELDS, body.data()));
    set(curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body.size())));
    if (method != "POST") set(curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method.c_str()));
  } else {
    set(curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method.c_str()));
  }

  return setHeaders() && ok;
}

bool Attempt::setHeaders() {
  // The request headers go out as the client sent them (after the exchange's filtering);
  // curl's own defaults that the client did not ask for are suppressed.
  std::size_t size = 64;
  for (const http::Header& hdr : request_.headers) size += hdr.name.size() + hdr.value.size() + 3;
  header_text_.clear();
  header_text_.reserve(size);
  // Where each line starts in header_text_ (which may still move as it grows): on the stack
  // for the usual few dozen headers. Lines: one per header, and at most four below that set
  // or suppress curl's defaults (Accept, Accept-Encoding, Content-Type, Expect).
  constexpr std::size_t kOwnLines = 4;
  const std::size_t most = request_.headers.size() + kOwnLines;
  std::array<std::size_t, 32> inline_starts;
  std::vector<std::size_t> heap_starts;
  std::size_t* starts = inline_starts.data();
  if (most > inline_starts.size()) {
    heap_starts.resize(most);
    starts = heap_starts.data();
  }
  std::size_t lines = 0;
  auto add = [&](std::string_view a, std::string_view b = {}, std::string_view c = {}) {
    assert(lines < most);
    starts[lines++] = header_text_.size();
    header_text_.append(a).append(b).append(c).push_back('\0');
  };
  bool has_accept = false;
  bool has_content_type = false;
  for (const http::Header& hdr : request_.headers) {
    has_accept = has_accept || http::equalsIgnoreCase(hdr.name, "accept");
    has_content_type = has_content_type || http::equalsIgnoreCase(hdr.name, "content-type");
    if (hdr.value.empty()) {
      add(hdr.name, ";");  // curl's syntax for a header with an empty value
    } else {
      add(hdr.name, ": ", hdr.value);
    }
  }
  if (!has_accept) add("Accept:");
  if (request_.identity_encoding) add("Accept-Encoding: identity");
  if (!has_content_type) add("Content-Type:");
  // A streamed body waits for the upstream's "100 Continue" (or its early answer: then none
  // of the body was read, and the request can go elsewhere). A held body goes at once.
  add(request_.stream_body ? "Expect: 100-continue" : "Expect:");
  // Linked only now: header_text_ no longer grows, so the pointers into it stay valid.
  header_nodes_.assign(lines, curl_slist{});
  for (std::size_t i = 0; i < lines; ++i) {
    header_nodes_[i].data = header_text_.data() + starts[i];
    header_nodes_[i].next = i + 1 < lines ? &header_nodes_[i + 1] : nullptr;
  }
  return curl_easy_setopt(handle_, CURLOPT_HTTPHEADER, header_nodes_.data()) == CURLE_OK;
}

void Attempt::setTimer(TransferError error, std::chrono::milliseconds timeout) {
  timer_error_ = error;
  due_ = std::chrono::steady_clock::now() + timeout;
  // A deadline pushed later (every body chunk does) only moves due_: the event, firing early,
  // sets itself again for what is left. The event is re-armed only to fire sooner.
  if (timer_armed_ && fires_at_ <= due_) return;
  armTimerAt(due_, timeout);
}

void Attempt::armTimerAt(std::chrono::steady_clock::time_point at,
                         std::chrono::milliseconds in) {
  timeval tv = support::toTimeval(in.count());
  timer_.add(&tv);
  fires_at_ = at;
  timer_armed_ = true;
}

void Attempt::clearTimer() {
  if (!timer_armed_) return;
  timer_.del();
  timer_armed_ = false;
}

int Attempt::prereqCallback(void* clientp, char* conn_primary_ip, char* conn_local_ip,
                            int conn_primary_port, int conn_local_port) {
  auto* self = static_cast<Attempt*>(clientp);
  if (self->requests_sent_ == 0) {
    self->sent_on_.local.set(conn_local_ip, conn_local_port);
    self->sent_on_.remote.set(conn_primary_ip, conn_primary_port);
  }
  if (++self->requests_sent_ > 1) {
    // curl re-sends a request silently when a reused connection dies before answering. The
    // upstream may have processed the first copy: that is Bulwark's policy to judge, with
    // its own accounting and backoff, so the transfer ends here as a reset.
    return CURL_PREREQFUNC_ABORT;
  }
  // Connected (or reusing a connection) and about to send: the first-byte clock starts.
  self->setTimer(TransferError::kFirstByteTimeout, self->request_.first_byte_timeout);
  self->observer_.onRequestStart();
  return CURL_PREREQFUNC_OK;
}

size_t Attempt::readCallback(char* buffer, size_t size, size_t nitems, void* userdata) {
  auto* self = static_cast<Attempt*>(userdata);
  AttemptObserver::BodyRead read = self->observer_.readBody(buffer, size * nitems);
  switch (read.state) {
    case AttemptObserver::BodyState::kData:
      if (!self->head_done_) {
        // Uploading: the upstream must keep taking the body; a stall is an idle timeout.
        self->setTimer(TransferError::kIdleTimeout, self->request_.idle_timeout);
      }
      return read.bytes;
    case AttemptObserver::BodyState::kWait:
      // The client has not sent more yet: its own timeout covers it.
      self->upload_paused_ = true;
      if (!self->head_done_) self->clearTimer();
      return CURL_READFUNC_PAUSE;
    case AttemptObserver::BodyState::kEnd:
      if (!self->head_done_) {
        self->setTimer(TransferError::kFirstByteTimeout, self->request_.first_byte_timeout);
      }
      return 0;
    case AttemptObserver::BodyState::kFailed:
      break;
  }
  return CURL_READFUNC_ABORT;
}

void Attempt::bodyReadable() {
  if (upload_paused_ && !done_) upload_ready_.activate();
}

void Attempt::onUploadReady(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<Attempt*>(arg);
  if (!self->upload_paused_ || self->done_) return;
  self->upload_paused_ = false;
  if (!self->head_done_) {
    self->setTimer(TransferError::kIdleTimeout, self->request_.idle_timeout);
  }
  curl_easy_pause(self->handle_, self->pauseMask());  // may call the read callback right here
}

int Attempt::pauseMask() const {
  return (paused_ ? CURLPAUSE_RECV : 0) | (upload_paused_ ? CURLPAUSE_SEND : 0);
}

void Attempt::reportBodySent() {
  if (body_sent_reported_ || handle_ == nullptr || requests_sent_ == 0) return;
  body_sent_reported_ = true;
  curl_off_t bytes = 0;
  if (curl_easy_getinfo(handle_, CURLINFO_SIZE_UPLOAD_T, &bytes) == CURLE_OK && bytes > 0) {
    observer_.onBodySent(static_cast<std::uint64_t>(bytes));
  }
}

size_t Attempt::headerCallback(char* data, size_t size, size_t nmemb, void* userdata) {
  auto* self = static_cast<Attempt*>(userdata);
  size_t len = size * nmemb;
  if (self->head_done_) return len;  // trailers are not forwarded
  std::string_view line(data, len);
  ResponseHead& head = self->head_;
  if (line.starts_with("HTTP/")) {
    head = ResponseHead{};  // a new status line (after a 1xx, a fresh head)
    head.headers.reserve(16);
    self->head_chunked_ = false;
    self->head_decoded_ = false;
    self->head_coding_seen_ = false;
    size_t space = line.find(' ');
    if (space != std::string_view::npos) {
      std::string_view code = line.substr(space + 1, 3);
      std::from_chars(code.data(), code.data() + code.size(), head.status);
    }
    return len;
  }
  std::string_view trimmed = http::trimWhitespace(line, /*and_line_ends=*/true);
  if (trimmed.empty()) {
    if (head.status >= 200) {
      if (self->head_chunked_) head.content_length.reset();
      if (self->head_decoded_) {
        // curl decodes the body: its length and coding are no longer what the headers say.
        std::erase_if(head.headers, [](const http::Header& hdr) {
          return http::equalsIgnoreCase(hdr.name, "content-encoding") ||
                 http::equalsIgnoreCase(hdr.name, "content-length");
        });
        head.content_length.reset();
      }
      self->head_done_ = true;
      if (self->request_.multiplex) {
        long version = 0;
        curl_easy_getinfo(self->handle_, CURLINFO_HTTP_VERSION, &version);
        if (version != CURL_HTTP_VERSION_2_0) self->client_.noteHttp1Only(self->request_.url);
      }
      self->observer_.onHead(std::move(head));
    }
    return len;
  }
  if (line.front() == ' ' || line.front() == '\t') {
    if (!head.headers.empty()) {
      head.headers.back().value += ' ';
      head.headers.back().value += trimmed;
    }
    return len;
  }
  size_t colon = trimmed.find(':');
  if (colon == std::string_view::npos) return len;
  http::Header h{std::string(http::trimWhitespace(trimmed.substr(0, colon))),
                 std::string(http::trimWhitespace(trimmed.substr(colon + 1)))};
  if (h.name.size() == 17 && http::equalsIgnoreCase(h.name, "transfer-encoding")) {
    self->head_chunked_ = true;
  } else if (h.name.size() == 16 && http::equalsIgnoreCase(h.name, "content-encoding")) {
    // The first one counts, as a lookup by name would find it.
    if (!self->head_coding_seen_) self->head_decoded_ = !http::equalsIgnoreCase(h.value, "identity");
    self->head_coding_seen_ = true;
  } else if (http::equalsIgnoreCase(h.name, "content-length")) {
    std::uint64_t n = 0;
    auto [ptr, ec] = std::from_chars(h.value.data(), h.value.data() + h.value.size(), n);
    bool valid = ec == std::errc() && ptr == h.value.data() + h.value.size() && !h.value.empty();
    if (!valid || (head.content_length && *head.content_length != n)) {
      // Conflicting or malformed framing (RFC 9112 §6.3): the response cannot be trusted, so
      // it is never passed on; the attempt fails like a broken connection.
      self->bad_framing_ = true;
      return 0;
    }
    head.content_length = n;
  }
  head.headers.push_back(std::move(h));
  return len;
}

size_t Attempt::writeCallback(char* data, size_t size, size_t nmemb, void* userdata) {
  auto* self = static_cast<Attempt*>(userdata);
  size_t len = size * nmemb;
  self->body_started_ = true;
  switch (self->observer_.onData(data, len)) {
    case AttemptObserver::Flow::kContinue:
      break;
    case AttemptObserver::Flow::kPause:
      // A slow client: the idle clock stops until it has drained.
      self->paused_ = true;
      self->clearTimer();
      return CURL_WRITEFUNC_PAUSE;
    case AttemptObserver::Flow::kAbort:
      self->aborted_ = true;
      // The stream is abandoned: its connection must not go back to the cache with the
      // reset still unsent (see detach()).
      curl_easy_setopt(self->handle_, CURLOPT_FORBID_REUSE, 1L);
      return 0;  // curl ends the transfer with CURLE_WRITE_ERROR
  }
  self->setTimer(TransferError::kIdleTimeout, self->request_.idle_timeout);
  return len;
}

void Attempt::resume() {
  if (!paused_ || done_) return;
  paused_ = false;
  setTimer(TransferError::kIdleTimeout, request_.idle_timeout);
  curl_easy_pause(handle_, pauseMask());  // may deliver the held bytes right here
}

void Attempt::onTimeout(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<Attempt*>(arg);
  self->timer_armed_ = false;
  auto now = std::chrono::steady_clock::now();
  if (now < self->due_) {  // the deadline moved on since the event was set
    auto left = std::chrono::ceil<std::chrono::milliseconds>(self->due_ - now);
    self->armTimerAt(self->due_, left);
    return;
  }
  const char* detail = "no data within timeouts.idle";
  if (self->timer_error_ == TransferError::kFirstByteTimeout) {
    detail = "no response within timeouts.first_byte";
  } else if (self->timer_error_ == TransferError::kConnect) {
    detail = "no upstream connection within timeouts.connect + timeouts.first_byte";
  }
  self->finish(self->timer_error_, detail);
}

void Attempt::onDeferredFailure(evutil_socket_t, short, void* arg) {
  static_cast<Attempt*>(arg)->finish(TransferError::kInternal, "could not start the transfer");
}

void Attempt::onCurlDone(CURLcode result) {
  completed_ = result == CURLE_OK;
  TransferError error = classifyCurlCode(result, requests_sent_ > 0);
  if (bad_framing_) {
    error = TransferError::kProtocol;
  } else if (aborted_) {
    error = TransferError::kAborted;
  } else if (requests_sent_ > 1) {
    error = TransferError::kReset;
  }
  if (error == TransferError::kNone && !head_done_) error = TransferError::kProtocol;
  std::string detail;
  if (bad_framing_) {
    detail = "the upstream's response has conflicting or malformed Content-Length headers";
  } else if (requests_sent_ > 1) {
    detail = "the connection closed before the upstream answered";
  } else if (result != CURLE_OK) {
    detail = error_buffer_[0] != '\0' ? error_buffer_ : curl_easy_strerror(result);
  }
  if (error == TransferError::kReset &&
      (requests_sent_ > 1 || connectionEnded(result, error_buffer_))) {
    nameBrokenConnection();
  }
  finish(error, detail);
}

void Attempt::nameBrokenConnection() {
  // The connection the request first went out on (a silent re-send, see prereqCallback, is
  // on another one).
  if (requests_sent_ == 0 || sent_on_.local.port <= 0 || sent_on_.remote.port <= 0) return;
  broken_connection_.append(sent_on_.local.ip.data())
      .append(":")
      .append(std::to_string(sent_on_.local.port))
      .append("->")
      .append(sent_on_.remote.ip.data())
      .append(":")
      .append(std::to_string(sent_on_.remote.port));
}

void Attempt::finish(TransferError error, const std::string& detail) {
  if (done_) return;
  done_ = true;
  reportBodySent();
  detach();
  observer_.onDone(error, detail);  // may destroy this attempt: nothing after this line
}

void Attempt::detach() {
  clearTimer();
  if (!in_multi_) return;
  in_multi_ = false;
  if (completed_) {
    client_.remove(handle_, request_.multiplex);
    return;
  }
  // Cancelled before its end (the client left, a timeout, an aborted first event). The
  // upstream must learn at once, or it goes on generating (and billing) tokens for nobody.
  // Over HTTP/1.1 removing the handle closes the connection. Over HTTP/2, libcurl 7.88
  // queues the RST_STREAM in its own output buffer and sends it only with the connection's
  // next frame, and puts a connection whose last stream this was back in its cache, RST
  // unsent. So: a connection with no other stream is not reused (closed now), and one that
  // carries other streams is made to flush.
  // (Before a response, curl cannot tell which protocol the stream got; offering h2 is
  // enough reason to flush.)
  curl_easy_setopt(handle_, CURLOPT_FORBID_REUSE, 1L);
  client_.remove(handle_, request_.multiplex);
  if (request_.multiplex) client_.flushMultiplexedConnections();
}

}  // namespace bulwark::upstream
