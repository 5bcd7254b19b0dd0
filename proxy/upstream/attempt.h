// One attempt = one upstream HTTP exchange on one pooled curl easy handle. Reports the
// response head, streams body bytes (with pause/resume for a slow client), and enforces the
// per-attempt timeouts. It only moves bytes and reports what happened: no policy here.
// Single-threaded (the worker's loop). Destroying a running attempt cancels it.
#pragma once

#include <curl/curl.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "proxy/http/header.h"
#include "proxy/support/curl.h"
#include "proxy/support/libevent.h"

namespace bulwark::upstream {

class UpstreamClient;

// How an attempt ended, at the transport level.
enum class TransferError {
  kNone,              // the response arrived whole
  kConnect,           // DNS, TCP or TLS failed: nothing reached the upstream
  kFirstByteTimeout,  // no first body byte within timeouts.first_byte
  kIdleTimeout,       // a gap between body bytes longer than timeouts.idle
  kReset,             // the connection closed or broke mid-exchange
  kProtocol,          // the upstream's reply was not valid HTTP
  kInternal,          // Bulwark could not start the transfer
  kAborted,           // the observer asked to stop (onData returned kAbort)
};
const char* transferErrorName(TransferError e);

struct AttemptRequest {
  std::string url;     // absolute, built from a configured base_url only
  std::string method;  // "POST"
  http::Headers headers;
  const std::string* body = nullptr;  // not owned; must outlive the attempt
  // The body is read through AttemptObserver::readBody as it arrives, instead of `body`:
  // sent on HTTP/1.1 (chunked when its length is unknown) after the upstream's
  // "100 Continue", so an upstream that refuses at the head has read none of it.
  bool stream_body = false;
  std::optional<std::uint64_t> body_length;
  std::string ca_file;
  std::string proxy;  // empty: the environment's proxy variables apply
  // Ask for the multiplexed lane (h2 by ALPN); the client grants it to https origins that
  // have not answered without h2. Otherwise HTTP/1.1, one transfer per connection.
  bool multiplex = false;
  // Ask for an uncompressed body (a compressed one is still decoded): an event stream's
  // events are small and each concurrent gzip stream costs a 32 KiB inflate window.
  bool identity_encoding = false;
  std::chrono::milliseconds connect_timeout{5000};
  std::chrono::milliseconds first_byte_timeout{120000};
  std::chrono::milliseconds idle_timeout{120000};
};

struct ResponseHead {
  int status = 0;
  http::Headers headers;  // as received, in order
  std::optional<std::uint64_t> content_length;
};

class AttemptObserver {
 public:
  enum class Flow { kContinue, kPause, kAbort };
  // What a streamed body has for the transfer right now.
  enum class BodyState { kData, kWait, kEnd, kFailed };
  struct BodyRead {
    std::size_t bytes = 0;
    BodyState state = BodyState::kWait;
  };
  virtual ~AttemptObserver() = default;
  // The upstream is connected and the request is about to be sent.
  virtual void onRequestStart() {}
  // A streamed body's next bytes (copied into `out`). kWait: none now; call
  // Attempt::bodyReadable() when there are. Called from inside a curl callback.
  virtual BodyRead readBody(char* /*out*/, std::size_t /*max*/) { return {0, BodyState::kFailed}; }
  // Once per started attempt, as it ends (or is cancelled): request body bytes it sent.
  virtual void onBodySent(std::uint64_t /*bytes*/) {}
  // The final (non-1xx) response head. Called from inside a curl callback: do not destroy
  // the attempt here.
  virtual void onHead(ResponseHead&& head) = 0;  // the attempt gives its head away
  // Body bytes. Return kPause to leave them unconsumed: the same bytes are offered again
  // after resume(); kAbort to end the attempt (onDone(kAborted) follows from the loop).
  // Called from inside a curl callback: do not destroy the attempt here.
  virtual Flow onData(const char* data, std::size_t len) = 0;
  // The attempt is over (never called from inside a curl callback); the observer may
  // destroy the attempt from here.
  virtual void onDone(TransferError error, const std::string& detail) = 0;
};

// One running attempt as the exchange drives it. Destroying it cancels the transfer.
class Transfer {
 public:
  virtual ~Transfer() = default;
  // Starts the transfer; on failure, onDone(kInternal) is called from the event loop.
  virtual void start() = 0;
  // Continues a transfer paused by onData returning kPause.
  virtual void resume() = 0;
  // A streamed body has more bytes (or has ended, or failed): the upload goes on.
  virtual void bodyReadable() = 0;
  // After onDone(kReset) for a connection that broke under the transfer (not a reset of its
  // stream alone): the connection, named by its local and remote addresses, the same name
  // for every request it carried. Empty when the connection is unknown or did not break.
  virtual std::string_view brokenConnection() const { return {}; }
};

// Where an exchange's attempts come from: the worker's UpstreamClient (libcurl), or a
// scripted fake in the exchange's unit tests.
class AttemptFactory {
 public:
  virtual ~AttemptFactory() = default;
  virtual std::unique_ptr<Transfer> createAttempt(AttemptObserver& observer,
                                                  AttemptRequest request) = 0;
};

class Attempt final : public Transfer {
 public:
  Attempt(UpstreamClient& client, AttemptObserver& observer, AttemptRequest request);
  ~Attempt() override;
  Attempt(const Attempt&) = delete;
  Attempt& operator=(const Attempt&) = delete;

  void start() override;
  void resume() override;
  void bodyReadable() override;
  std::string_view brokenConnection() const override { return broken_connection_; }
  bool paused() const { return paused_; }
  bool receivedBody() const { return body_started_; }

 private:
  friend class UpstreamClient;

  static size_t headerCallback(char* data, size_t size, size_t nmemb, void* userdata);
  static size_t writeCallback(char* data, size_t size, size_t nmemb, void* userdata);
  static size_t readCallback(char* buffer, size_t size, size_t nitems, void* userdata);
  static void onUploadReady(evutil_socket_t, short, void* arg);
  static int prereqCallback(void* clientp, char* conn_primary_ip, char* conn_local_ip,
                            int conn_primary_port, int conn_local_port);
  static void onTimeout(evutil_socket_t, short, void* arg);
  static void onDeferredFailure(evutil_socket_t, short, void* arg);

  void onCurlDone(CURLcode result);
  void nameBrokenConnection();
  void finish(TransferError error, const std::string& detail);
  void detach();
  // Sets the handle's options; on a warm handle (see UpstreamClient::acquireHandle) only
  // those that change from request to request.
  bool configure(bool warm);
  bool setHeaders();
  // The phase's timer: `error` when `timeout` passes with no further setTimer/clearTimer.
  void setTimer(TransferError error, std::chrono::milliseconds timeout);
  void armTimerAt(std::chrono::steady_clock::time_point at, std::chrono::milliseconds in);
  void clearTimer();
  // The pause state both directions should have: receive and send are paused separately.
  int pauseMask() const;
  void reportBodySent();

  UpstreamClient& client_;
  AttemptObserver& observer_;
  AttemptRequest request_;
  CURL* handle_ = nullptr;  // borrowed from the client's pool while running
  // A plain held-body POST: its handle may go back to the pool with its options kept, under
  // profile_ (what the static options depend on).
  bool warm_eligible_ = false;
  std::string profile_;
  bool in_multi_ = false;
  // The request headers handed to curl: a curl_slist over one string, so building it costs
  // two allocations, not two per header (curl only reads the list, for the transfer's life).
  std::string header_text_;
  std::vector<curl_slist> header_nodes_;
  support::InlineEvent timer_;
  support::OnDemandEvent deferred_;
  support::OnDemandEvent upload_ready_;  // deferred unpause of a streamed upload
  TransferError timer_error_ = TransferError::kFirstByteTimeout;
  std::chrono::steady_clock::time_point due_{};       // when the current phase times out
  std::chrono::steady_clock::time_point fires_at_{};  // when the armed timer event fires
  bool timer_armed_ = false;
  ResponseHead head_;
  bool head_done_ = false;
  // Read from the head as its lines arrive: a Transfer-Encoding header, and a
  // Content-Encoding (the first one) other than identity, which curl decodes.
  bool head_chunked_ = false;
  bool head_decoded_ = false;
  bool head_coding_seen_ = false;
  bool body_started_ = false;
  bool paused_ = false;
  bool upload_paused_ = false;  // a streamed body waits for the client's next bytes
  bool body_sent_reported_ = false;
  bool aborted_ = false;
  bool bad_framing_ = false;  // conflicting Content-Length headers in the response
  // curl's prereq callback runs once per copy of the request about to be sent: while it is
  // 0, no byte of the request has left Bulwark, which is what makes a retry of a
  // non-idempotent request safe.
  int requests_sent_ = 0;
  bool done_ = false;
  bool completed_ = false;  // curl finished the transfer successfully
  // The addresses of the connection the request first went out on (see brokenConnection()).
  struct Address {
    std::array<char, 48> ip{};  // an IPv6 address in text is at most 45 bytes
    int port = 0;
    void set(const char* text, int p) {
      std::size_t n = text == nullptr ? 0 : strnlen(text, ip.size() - 1);
      if (n > 0) std::memcpy(ip.data(), text, n);
      ip[n] = '\0';
      port = p;
    }
  };
  struct {
    Address local;
    Address remote;
  } sent_on_;
  std::string broken_connection_;  // see brokenConnection()
  char error_buffer_[CURL_ERROR_SIZE] = {};
};

}  // namespace bulwark::upstream
