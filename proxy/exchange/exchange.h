// One client request's life, as a state machine:
//
//   admitted ──> attempting ──> committed ──> finished
//     │  ^        │    ^  └──────────────────────^ (an answer held whole, or an error)
//     v  │        v    │
//    queued      waiting (backoff) ──> queued
//
// admitted: the request is in, its body perhaps still arriving (a client that waits for
// 100 Continue). queued: its estimated cost does not fit the rate limit its upstream last
// reported; it waits its turn in that (upstream, model)'s queue. attempting: an attempt is in
// flight and nothing has reached the client, so a failure can still be retried; the head (and an
// error body, or a stream's first event) is held until the commit point. waiting: a backoff between
// attempts. committed: the response head went to the client and the body streams through with
// backpressure; a failure now ends the response honestly. finished: the access line is written.
//
// Two functions hold the bookkeeping: endAttempt() is the one place an attempt ends (its
// metric, its breaker outcome, its failure log, its lease and transfer), and finish() the one
// place the response ends (the access line). Owned by the client connection; single-threaded;
// destroying it cancels the attempt or the wait in progress. Attempts come from the
// context's AttemptFactory, so the machine runs in unit tests against a scripted fake.
#pragma once

#include <array>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "config/config.h"
#include "proxy/exchange/exchange_context.h"
#include "proxy/exchange/forwarding.h"
#include "proxy/exchange/upstream_lease.h"
#include "proxy/observe/usage.h"
#include "proxy/resilience/backoff.h"
#include "proxy/resilience/classify.h"
#include "proxy/resilience/endpoint.h"
#include "proxy/resilience/quota.h"
#include "proxy/resilience/quota_arbiter.h"
#include "proxy/resilience/retry_decision.h"
#include "proxy/resilience/sse_scanner.h"
#include "proxy/server/http_request.h"
#include "proxy/server/request_handler.h"
#include "proxy/server/response_sink.h"
#include "proxy/support/libevent.h"
#include "proxy/upstream/attempt.h"

namespace bulwark::exchange {

class Exchange final : public server::ActiveRequest {
 public:
  enum class Phase { kAdmitted, kQueued, kAttempting, kWaiting, kCommitted, kFinished };

  Exchange(const ExchangeContext& context, server::HttpRequest request, server::ResponseSink& sink);
  ~Exchange() override;
  Exchange(const Exchange&) = delete;
  Exchange& operator=(const Exchange&) = delete;

  void start();
  // server::ActiveRequest: shutdown_grace is over.
  void terminate() override;
  Phase phase() const { return phase_; }
  std::string_view requestId() const { return {request_id_.data(), request_id_.size()}; }
  // Attempts running now (more than one only while a hedge races the first).
  std::size_t running() const { return tries_.size(); }

 private:
  // Why the bytes before the commit point are being held. kFirstEvent: a 200 event stream,
  // until its first event (for the Responses API, its first event past the preamble).
  enum class Hold { kNone, kErrorBody, kFirstEvent };

  // One attempt: its transfer, its claim on an upstream, and what it received before the
  // commit point. Its transfer reports here; the try passes each event on with itself, so
  // several tries can run at once.
  struct Try final : upstream::AttemptObserver {
    Try(Exchange& exchange, int number, int upstream_index, const config::UpstreamConfig& upstream,
        UpstreamLease lease)
        : exchange(exchange),
          number(number),
          upstream_index(upstream_index),
          upstream(&upstream),
          lease(std::move(lease)) {}
    void onHead(upstream::ResponseHead&& h) override { exchange.onHead(*this, std::move(h)); }
    Flow onData(const char* data, std::size_t len) override {
      return exchange.onData(*this, data, len);
    }
    void onDone(upstream::TransferError error, const std::string& detail) override {
      exchange.onDone(*this, error, detail);  // may destroy this try: nothing after it
    }
    void onRequestStart() override { exchange.onRequestStart(*this); }
    BodyRead readBody(char* out, std::size_t max) override { return exchange.readBody(out, max); }
    void onBodySent(std::uint64_t bytes) override { exchange.onBodySent(*this, bytes); }
    bool isEventStream() const;

    Exchange& exchange;
    int number;  // the attempt's number, 1-based, in start order
    int upstream_index;
    const config::UpstreamConfig* upstream;
    UpstreamLease lease;
    std::string body;  // the body with the model renamed for this upstream, if it is
    std::unique_ptr<upstream::Transfer> transfer;  // declared after body: it points into it
    upstream::ResponseHead head;
    bool has_head = false;
    bool event_stream = false;  // the head: a 200 with Content-Type text/event-stream
    Hold hold = Hold::kNone;
    std::string held;                           // body bytes before the commit point (bounded)
    resilience::CommitPointScanner event_scan;  // where a held event stream's commit point is
    bool first_event_is_error = false;
    resilience::SteadyTime started;
    bool first_byte_seen = false;
    bool recorded = false;          // its metric is counted
    // It failed with a connection whose loss another attempt already counted: nothing goes
    // to the breaker for it (neither a failure nor a success).
    bool shared_loss = false;
    bool hedge = false;             // started by the hedge timer, racing the others
    std::string_view hedge_result;  // set once its race is decided ("won", "lost")
    // The (upstream, model) quota the response's x-ratelimit-* headers update, if the
    // request names a model; `reserved`: this attempt holds its cost there until the head.
    resilience::Quota* quota = nullptr;
    bool reserved = false;
    // Admission let it through (not a plain attempt); `modelled`: the quota knew a limit
    // then, so it said the request would fit.
    bool admitted = false;
    bool modelled = false;
    resilience::Quota::Hold quota_hold = 0;  // its reservation in `quota` while `reserved`
    void admittedBy(const resilience::Quota& q, resilience::Quota::Hold h) {
      reserved = admitted = true;
      modelled = q.knowsLimit();
      quota_hold = h;
    }
    resilience::QuotaArbiter::Ticket fleet;  // its reservation with the fleet, if any
    bool sent = false;                       // connected, and the request went out
    resilience::SteadyTime sent_at;          // when it went out: when the upstream counts it
  };

  // How an attempt ended, for endAttempt().
  struct AttemptEnd {
    std::string outcome;           // the metric's outcome: "200", "503", "timeout", ...
    bool breaker_failure = false;  // counts against the breaker
    // A failure to log ("upstream attempt failed"); none for a success or a cancellation.
    bool failed = false;
    bool retryable = false;
    std::string_view not_retried_because;
    std::string_view detail;
    const resilience::RetryDecision* retry = nullptr;  // the retry that follows, if any
  };

  static void onWaitOver(evutil_socket_t, short, void* arg);
  static void onDeadline(evutil_socket_t, short, void* arg);
  static void onHedgeTimer(evutil_socket_t, short, void* arg);
  static void onQueueTimer(evutil_socket_t, short, void* arg);
  static void onLosersCancelled(evutil_socket_t, short, void* arg);
  // Arms the hedge timer for the route's `after` (or its upstream's p95), when hedging applies.
  void armHedge(const Try& t);

  // A try's transfer events.
  void onHead(Try& t, upstream::ResponseHead&& head);
  upstream::AttemptObserver::Flow onData(Try& t, const char* data, std::size_t len);
  void onDone(Try& t, upstream::TransferError error, const std::string& detail);
  void onRequestStart(Try& t);
  upstream::AttemptObserver::BodyRead readBody(char* out, std::size_t max);
  void onBodySent(Try& t, std::uint64_t bytes);

  // Takes the route's settings: deadline, attempts, backoff, the first upstream.
  void applyRoute(const config::RouteConfig& route);
  // The first attempt of a request whose body was read whole.
  void startBuffered();
  // The first attempt of a request whose body streams to the upstream as it arrives.
  void startStreamed();
  // The request body (still arriving) has news: bytes, its end, a failure.
  void onBodyReadable();
  // The client's body turned out too large or malformed: Bulwark answers for it.
  void failBody();
  // No upstream admitted the first attempt: 503 circuit_open or overloaded.
  void rejectUnadmitted(const UpstreamSelection& selection);
  // Admits an attempt (the first, or a retry) and starts it: the breaker, the in-flight
  // limit and, with admission on, the rate limit. A request that does not fit any upstream
  // of the chain now queues at the one with the shortest wait.
  void admit(bool retry);
  // The local view admitted the attempt (its cost reserved in `quota`): in fleet mode the
  // fleet confirms it first (a short wait, bounded by cluster.timeout), then it starts.
  void confirmAndStart(UpstreamSelection selection, bool retry, resilience::Quota& quota,
                       resilience::Quota::Hold hold, double waited_seconds);
  // An upstream admitted the attempt (its cost reserved in `quota` as `hold`, if admission
  // applies).
  void startAdmitted(UpstreamSelection selection, bool retry, resilience::Quota* quota,
                     resilience::Quota::Hold hold = 0);
  // The try's reservation with the fleet ends, if it has one.
  void endFleetReservation(Try& t);
  // Nothing admitted an attempt: the first gets Bulwark's 503, a retry gives up.
  void refuse(const UpstreamSelection& selection, bool retry);
  // Waits in the queue of `index` for room, or refuses when it cannot come in time.
  void enqueue(int index, resilience::Quota& quota, resilience::Millis wait, bool retry);
  void armQueueTimer(resilience::Millis wait);
  // Leaves the queue (a no-op when not in it).
  void leaveQueue();
  // A 429 in OpenAI's shape that tells the SDK to come back after `wait` (a retry gives up
  // with the upstream's last answer instead).
  void refuseAdmission(int index, std::string_view reason, resilience::Millis wait, bool retry);
  // Reads a response head's x-ratelimit-* headers into the try's quota and the metrics, and
  // settles the try's reservation.
  void observeRateLimit(Try& t);
  // The admission settings of the request's route, as the quota applies them.
  resilience::QuotaRules quotaRules() const;
  // Whether `quota` holds requests back now (false in fallback); logs a fallback's end.
  bool modelAdmits(resilience::Quota& quota, const std::string& upstream, resilience::SteadyTime now);
  // A rate-limit 429 on an attempt the model said would fit.
  void noteSurprise(Try& t);
  // The time an attempt on upstream `index` needs before the deadline: its recent p95 time
  // to first byte, or kAttemptAllowance before it has one.
  resilience::Millis attemptAllowance(int index);
  // A try that held a reservation ends without a head: counted if the request went out.
  void dropReservation(Try& t);
  // The (order of) candidate upstreams for the next attempt: the route's chain; for a retry,
  // the ones after the upstream that failed, then that one.
  std::vector<int> candidates(bool retry) const;
  // Claims an upstream for the next attempt (breaker, in-flight limit, failover order).
  UpstreamSelection selectFor(bool retry) const;
  UpstreamSelection select(bool retry);  // selectFor(), counting breaker rejections
  void countRejections(const UpstreamSelection& selection);
  void startAttempt(UpstreamSelection selection, bool hedge = false);

  // The one place an attempt ends. Records its metric (once per attempt) and its breaker
  // outcome (the lease takes the first), logs a failure, then cancels the transfer and
  // gives back the lease. Without `end` (a cancellation: the client left, a body failure,
  // shutdown) nothing is recorded, and an unrecorded lease gives its breaker admission back,
  // so a cancelled probe frees its slot. `t` is gone afterwards.
  void endAttempt(Try& t, const AttemptEnd* end);
  // Cancels every running attempt (nothing recorded).
  void cancelAttempts();
  // The metric and breaker outcome of a try, without ending it (a response committed: the
  // attempt streams on).
  void recordAttempt(Try& t, std::string_view outcome, bool breaker_failure, bool success_at_end);
  // The one place the response ends: phase finished, timers off, the access line.
  void finish(int status, bool client_left = false);

  void afterFailedAttempt(Try& t, const resilience::Outcome& outcome, const std::string& detail);
  void giveUp(const resilience::Outcome& outcome, bool deadline_reached = false);
  upstream::AttemptObserver::Flow holdOrCommit(Try& t, const char* data, std::size_t len);
  void commit(Try& t, std::optional<std::uint64_t> content_length);
  // An upstream response read whole before the commit point (or a stream's first event).
  struct HeldResponse {
    upstream::ResponseHead head;
    std::string body;
    bool cut_stream = false;  // a 200 event stream ended after its (error) first event
    const config::UpstreamConfig* upstream = nullptr;
  };
  static HeldResponse takeHeldResponse(Try& t);
  void deliverResponse(const HeldResponse& response, bool gave_up);
  void respondWithError(int status, std::string_view code, std::string_view message,
                        long long retry_after_seconds = 0);
  // With `extra` headers; x-should-retry is false unless they set it.
  void respondWithError(int status, std::string_view code, std::string_view message,
                        http::Headers extra);
  // Ends a committed response that cannot go on. `count_for_breaker`: false when a broken
  // connection that cut it was counted already (see alreadyCountedLoss).
  void interruptStream(const std::string& why, bool count_for_breaker = true);
  // Whether `t` failed with a connection that broke under other requests too, and another
  // attempt already counted that break against the same breaker; the first failure of a
  // connection claims it.
  bool alreadyCountedLoss(const Try& t);
  // Sends body bytes to the client, counting them and reading token usage on the way.
  void forward(const char* data, std::size_t len);
  // After the commit point: forward(), in whole events for an event stream.
  void deliver(const char* data, std::size_t len);
  void flushPartialEvent();
  void appendBulwarkHeaders(http::Headers& headers, const config::UpstreamConfig& upstream) const;

  const ExchangeContext& context_;
  std::shared_ptr<const config::Config> config_;
  server::HttpRequest request_;
  server::ResponseSink& sink_;
  std::array<char, 16> request_id_{};  // hex digits
  Phase phase_ = Phase::kAdmitted;
  // The request's route: its timeouts, retry rules and failover chain. By path alone until
  // the body is read, then by path and model.
  const config::RouteConfig* route_ = nullptr;
  const config::UpstreamConfig* upstream_ = nullptr;  // the latest attempt's (or the winner's)
  int upstream_index_ = 0;
  RequestFacts facts_;  // model and stream flag, read once from the body
  std::string model_;   // for per-model breakers (scope: upstream_model)
  resilience::Outcome last_outcome_;
  std::optional<HeldResponse> last_response_;  // what the client gets if Bulwark gives up
  struct PendingRetry {
    std::string upstream;  // the upstream whose failure is being retried
    std::string reason;    // the outcome retried
    const char* source;    // "backoff" or "server"
    double delay_seconds;
  };
  PendingRetry pending_retry_;
  resilience::SteadyTime started_;
  resilience::SteadyTime deadline_;
  int max_attempts_ = 1;
  // A body held back until the client has sent all of it (it asked for "100 Continue").
  bool waiting_for_body_ = false;
  // The body streams: an attempt that consumed any of it cannot be repeated.
  bool streamed_ = false;
  std::uint64_t body_bytes_sent_ = 0;  // request body bytes sent upstream, all attempts
  resilience::EndpointTraits endpoint_;
  bool policies_apply_ = true;
  std::optional<resilience::Backoff> backoff_;  // the route's retry settings
  support::OnDemandEvent wait_timer_;
  support::InlineEvent deadline_timer_;  // every request arms it
  support::OnDemandEvent hedge_timer_;
  support::OnDemandEvent cancel_losers_;  // deferred: a winner's callback cannot cancel transfers
  support::OnDemandEvent queue_timer_;
  // Quota-aware admission: on for a request that names a model (its body read whole) on a
  // route with admission enabled. Its estimated cost, and its place in a queue while queued.
  bool admission_ = false;
  resilience::QuotaCost cost_;
  struct QueuePlace {
    resilience::Quota* quota = nullptr;
    resilience::Quota::Ticket ticket = 0;
    int index = -1;  // the upstream it waits for
    bool retry = false;
    resilience::SteadyTime since;
    resilience::SteadyTime until;  // max_wait, or the deadline if that comes first
  };
  QueuePlace queued_;
  // Admitted by the local view, waiting for the fleet's confirmation.
  struct Confirming {
    UpstreamSelection selection;
    resilience::Quota* quota;
    resilience::Quota::Hold hold;
    bool retry;
    double waited_seconds;
  };
  std::optional<Confirming> confirming_;
  std::shared_ptr<int> alive_;  // for callbacks that may outlive it; made on first use
  int hedges_ = 0;                                         // hedge attempts started
  int winner_ = 0;  // the attempt whose answer the client got

  std::vector<std::unique_ptr<Try>> tries_;  // the attempts running now
  int attempts_ = 0;                         // attempts started
  Try* committed_ = nullptr;                 // the attempt whose response the client gets
  // Of the head the client got, what the access line needs.
  int response_status_ = 0;
  std::string upstream_request_id_;
  // Takes them from the head that goes to the client.
  void noteResponseHead(const upstream::ResponseHead& head);
  std::optional<observe::UsageTap> usage_;

  std::uint64_t bytes_sent_ = 0;
  std::string tail_;           // the last two body bytes sent, to end an event stream cleanly
  bool whole_events_ = false;  // a committed event stream: forwarded event by event
  std::string partial_event_;  // the incomplete event at the end of what arrived
};

// The RequestHandler a worker installs: every request becomes an Exchange.
class ExchangeHandler final : public server::RequestHandler {
 public:
  explicit ExchangeHandler(const ExchangeContext& context) : context_(context) {}
  std::unique_ptr<server::ActiveRequest> handle(server::HttpRequest request,
                                                server::ResponseSink& sink) override;

 private:
  const ExchangeContext& context_;
};

}  // namespace bulwark::exchange
