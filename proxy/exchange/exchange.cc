#include "proxy/exchange/exchange.h"

#include <algorithm>
#include <cstdio>
#include <utility>

#include "config/routes.h"

#include "proxy/exchange/forwarding.h"
#include "proxy/http/openai_error.h"
#include "proxy/observe/logger.h"
#include "proxy/resilience/request_cost.h"
#include "proxy/resilience/sse_boundary.h"
#include "proxy/resilience/sse_scanner.h"

namespace bulwark::exchange {

namespace {

using observe::LogValue;
using resilience::Outcome;
using upstream::TransferError;

// Bytes queued for a slow client before the upstream transfer is paused.
constexpr std::size_t kPauseThreshold = 64 * 1024;
// The most Bulwark holds before the commit point: an error body read whole before deciding,
// or the bytes of a stream's first event. Past it the response is committed as it is.
constexpr std::size_t kMaxHeldBytes = 64 * 1024;
// Said of a failure whose broken connection another request's failure already counted.
constexpr char kCountedOnce[] = " (the connection broke under other requests too: counted once)";

Outcome outcomeOfTransfer(TransferError error) {
  switch (error) {
    case TransferError::kConnect:
    case TransferError::kInternal:
      return Outcome::connectError();
    case TransferError::kFirstByteTimeout:
    case TransferError::kIdleTimeout:
      return Outcome::timeout();
    default:
      return Outcome::reset();
  }
}

std::optional<bool> xShouldRetry(const http::Headers& headers) {
  auto value = http::findHeader(headers, "x-should-retry");
  if (!value) return std::nullopt;
  if (http::equalsIgnoreCase(*value, "true")) return true;
  if (http::equalsIgnoreCase(*value, "false")) return false;
  return std::nullopt;
}

// 16 hex digits of randomness, written into the exchange itself (no allocation, no printf).
void newRequestId(resilience::Random& random, std::array<char, 16>& out) {
  unsigned long long bits = static_cast<unsigned long long>(random.uniform01() * 4294967296.0);
  bits = (bits << 32) | static_cast<unsigned long long>(random.uniform01() * 4294967296.0);
  static constexpr char kHex[] = "0123456789abcdef";
  for (std::size_t i = out.size(); i-- > 0; bits >>= 4) out[i] = kHex[bits & 0xf];
}

long long millisBetween(resilience::SteadyTime from, resilience::SteadyTime to) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(to - from).count();
}

std::string_view pathWithoutQuery(std::string_view path) {
  return path.substr(0, path.find('?'));
}

// A queued request checks again at least this often: reservations settle, and the headers
// of responses move the quota, sooner than a refill estimate foresees.
constexpr resilience::Millis kQueueRecheckMax{100};
// The time a queued request keeps for its attempt before the deadline while the upstream's
// time to first byte is not known yet.
constexpr resilience::Millis kAttemptAllowance{1000};
// A request the fleet found no room for checks again this soon.
constexpr resilience::Millis kFleetRecheck{20};

}  // namespace

Exchange::Exchange(const ExchangeContext& context, server::HttpRequest request,
                   server::ResponseSink& sink)
    : context_(context),
      config_(context.config()),
      request_(std::move(request)),
      sink_(sink),
      route_(&config_->default_route),
      backoff_(std::in_place, config_->default_route.retry, context.random) {
  newRequestId(context.random, request_id_);
}

Exchange::~Exchange() {
  sink_.onDrained(nullptr);
  if (request_.body_stream) request_.body_stream->onReadable(nullptr);
  cancelAttempts();  // cancels running transfers; the timers go with their events
  if (phase_ != Phase::kFinished && upstream_ != nullptr) finish(499, true);  // the client left
}

void Exchange::start() {
  started_ = context_.clock.now();
  endpoint_ = resilience::classifyEndpoint(request_.method, request_.path);
  policies_apply_ = endpoint_.retry_safe;
  wait_timer_.prepare(context_.base, -1, 0, &Exchange::onWaitOver, this);
  deadline_timer_.assign(context_.base, -1, 0, &Exchange::onDeadline, this);
  hedge_timer_.prepare(context_.base, -1, 0, &Exchange::onHedgeTimer, this);
  cancel_losers_.prepare(context_.base, -1, 0, &Exchange::onLosersCancelled, this);
  queue_timer_.prepare(context_.base, -1, 0, &Exchange::onQueueTimer, this);
  // A body already whole: its model picks the route at once.
  if (!request_.body_stream) {
    startBuffered();
    return;
  }
  // The route by path alone until the body (and its model) is in.
  applyRoute(config::routeFor(*config_, request_.path, ""));
  server::RequestBody& body = *request_.body_stream;
  body.onReadable([this] { onBodyReadable(); });
  if (!body.retained()) {
    startStreamed();
    return;
  }
  // The client waits for "100 Continue" before it sends a body small enough to hold: it is
  // told to go on only if an upstream would admit the request now (the lease is claimed
  // again, with the model, once the body is in; rejections are counted then, once).
  UpstreamSelection selection = selectFor(false);
  if (!selection.lease) {
    countRejections(selection);
    rejectUnadmitted(selection);
    return;
  }
  selection.lease.reset();
  waiting_for_body_ = true;
  sink_.sendContinue();
  onBodyReadable();  // it may have come whole already
}

void Exchange::applyRoute(const config::RouteConfig& route) {
  route_ = &route;
  deadline_ = resilience::requestDeadline(route.timeouts, request_.headers, started_);
  max_attempts_ = resilience::attemptsAllowed(route.retry, request_.headers);
  backoff_.emplace(route.retry, context_.random);
  upstream_index_ = static_cast<int>(route.upstreams.front());
  upstream_ = &config_->upstreams[upstream_index_];
  timeval until_deadline = support::toTimeval(std::max(0LL, millisBetween(started_, deadline_)));
  deadline_timer_.add(&until_deadline);
}

void Exchange::startBuffered() {
  // One pass over the body: the model and stream flag, and (when some route may admit by
  // rate limit) what the request will cost.
  resilience::CostCounter counter;
  bool may_admit = config_->default_route.admission.enabled;
  for (const config::RouteConfig& route : config_->routes) may_admit |= route.admission.enabled;
  may_admit &= policies_apply_;
  facts_ = readRequestFacts(request_.body, may_admit ? &counter : nullptr);
  applyRoute(config::routeFor(*config_, request_.path, facts_.model));
  if (config_->circuit_breaker.scope == config::BreakerScope::kUpstreamModel) {
    model_ = facts_.model;
  }
  const config::AdmissionConfig& admission = route_->admission;
  admission_ = admission.enabled && !facts_.model.empty() && policies_apply_;
  if (admission_) {
    resilience::CostRules rules{admission.bytes_per_token,
                                static_cast<double>(admission.default_output_tokens),
                                static_cast<double>(admission.image_tokens)};
    cost_ = counter.cost(rules, endpoint_.generates_output);
  }
  admit(false);
}

void Exchange::admit(bool retry) {
  if (!admission_) {
    UpstreamSelection selection = select(retry);
    if (!selection.lease) {
      refuse(selection, retry);
      return;
    }
    startAdmitted(std::move(selection), retry, nullptr);
    return;
  }
  // The first upstream of the chain whose breaker, in-flight limit and rate limit all admit
  // the attempt; else the queue of the one that will have room first.
  resilience::SteadyTime now = context_.clock.now();
  UpstreamSelection refused;
  int best = -1;
  resilience::Quota* best_quota = nullptr;
  resilience::Millis best_wait = resilience::Millis::max();
  for (int index : candidates(retry)) {
    UpstreamSelection selection = selectUpstream(context_.upstreams, *config_, {index}, model_);
    if (!selection.lease) {
      refused.breaker_rejected |= selection.breaker_rejected;
      refused.overloaded |= selection.overloaded;
      if (selection.breaker_rejected &&
          (refused.rejected_by_breaker.empty() || selection.retry_after < refused.retry_after)) {
        refused.retry_after = selection.retry_after;
      }
      for (int r : selection.rejected_by_breaker) refused.rejected_by_breaker.push_back(r);
      continue;
    }
    resilience::Quota& quota = selection.lease.health()->quotaFor(facts_.model);
    if (!modelAdmits(quota, config_->upstreams[index].name, now)) {
      // The model keeps being wrong for this (upstream, model): plain behaviour until it
      // stops, as with admission off.
      countRejections(refused);
      startAdmitted(std::move(selection), retry, nullptr);
      return;
    }
    resilience::Quota::Admission fit = quota.tryReserve(cost_, quotaRules(), now);
    if (fit.admitted) {
      countRejections(refused);
      confirmAndStart(std::move(selection), retry, quota, fit.hold, 0);
      return;
    }
    if (best < 0 || fit.wait < best_wait) {
      best = index;
      best_quota = &quota;
      best_wait = fit.wait;
    }
  }
  countRejections(refused);
  if (best < 0) {
    refuse(refused, retry);
    return;
  }
  enqueue(best, *best_quota, best_wait, retry);
}

void Exchange::confirmAndStart(UpstreamSelection selection, bool retry, resilience::Quota& quota,
                               resilience::Quota::Hold hold, double waited_seconds) {
  const std::string upstream = config_->upstreams[selection.index].name;
  resilience::QuotaArbiter* arbiter = context_.arbiter;
  const bool fleet = arbiter != nullptr && arbiter->active();
  // The newest view taken, marked before the view is read: a view taken in between only
  // makes the fleet bound the room by it once more, never admit on a view older than the mark.
  const long long seen = fleet ? arbiter->newestView(upstream, facts_.model) : 0;
  resilience::Quota::View view = quota.view(context_.clock.now());
  if (!fleet || (view.requests.limit <= 0 && view.tokens.limit <= 0)) {
    context_.metrics.admissionWait(upstream, waited_seconds);
    startAdmitted(std::move(selection), retry, &quota, hold);
    return;
  }
  // What the local view leaves, less the headroom: every sidecar's reservations together
  // must fit in it. A bucket without a known limit does not bound it.
  const double headroom = route_->admission.headroom;
  auto room = [&](const resilience::Quota::BucketView& b) {
    return b.limit > 0 ? b.remaining - std::min(headroom * b.limit, b.capacity / 4) : 1e18;
  };
  resilience::QuotaCost space{room(view.requests), room(view.tokens)};
  int index = selection.index;
  confirming_ = Confirming{std::move(selection), &quota, hold, retry, waited_seconds};
  phase_ = Phase::kQueued;
  if (!alive_) alive_ = std::make_shared<int>(0);  // made only for the fleet's answer
  std::weak_ptr<int> alive = alive_;
  resilience::QuotaCost cost = cost_;
  std::string model = facts_.model;
  arbiter->confirm(upstream, model, cost, space, headroom, seen,
                   [this, alive, arbiter, upstream, model, cost, index](
                       bool fits, resilience::QuotaArbiter::Ticket ticket) {
                     if (alive.expired() || !confirming_) {
                       // The request ended while the fleet answered: nothing goes out on this
                       // reservation.
                       if (fits) arbiter->end(upstream, model, cost, ticket);
                       return;
                     }
                     Confirming confirmed = std::move(*confirming_);
                     confirming_.reset();
                     phase_ = confirmed.retry ? Phase::kWaiting : Phase::kAdmitted;
                     if (!fits) {
                       // Other sidecars hold the room the local view saw: wait in the queue, and
                       // check again soon (the lease goes back meanwhile).
                       confirmed.quota->release(confirmed.hold);
                       enqueue(index, *confirmed.quota, kFleetRecheck, confirmed.retry);
                       return;
                     }
                     context_.metrics.admissionWait(upstream, confirmed.waited_seconds);
                     startAdmitted(std::move(confirmed.selection), confirmed.retry,
                                   confirmed.quota, confirmed.hold);
                     if (!tries_.empty()) tries_.back()->fleet = ticket;
                   });
}

void Exchange::endFleetReservation(Try& t) {
  if (!t.fleet.fleet_reserved || context_.arbiter == nullptr) return;
  context_.arbiter->end(t.upstream->name, facts_.model, cost_, t.fleet);
  t.fleet = {};
}

void Exchange::startAdmitted(UpstreamSelection selection, bool retry, resilience::Quota* quota,
                             resilience::Quota::Hold hold) {
  if (!retry) {
    selection.lease.health()->budget().recordRequest();
  } else {
    // Counted when the retry really starts (the breaker or the queue may stop it).
    const PendingRetry& pending = pending_retry_;
    context_.metrics.retry(pending.upstream, pending.reason, pending.source, pending.delay_seconds);
  }
  startAttempt(std::move(selection));
  if (quota != nullptr && !tries_.empty()) tries_.back()->admittedBy(*quota, hold);
}

void Exchange::refuse(const UpstreamSelection& selection, bool retry) {
  if (!retry) {
    rejectUnadmitted(selection);
    return;
  }
  // The breaker opened (or the upstreams filled up) during the wait: stop retrying.
  observe::logWarn(
      "retry abandoned",
      {{"request_id", requestId()},
       {"upstream", upstream_->name},
       {"attempt", attempts_},
       {"not_retried_because", selection.breaker_rejected ? "circuit_open" : "overloaded"}});
  giveUp(last_outcome_);
}

void Exchange::enqueue(int index, resilience::Quota& quota, resilience::Millis wait, bool retry) {
  const config::AdmissionConfig& admission = route_->admission;
  resilience::SteadyTime now = context_.clock.now();
  // The wait leaves the attempt its time before the deadline: a request admitted with no
  // time left would only run out of it upstream.
  resilience::SteadyTime until =
      std::min(deadline_ - attemptAllowance(index), now + admission.max_wait);
  // A wait that ends past the request's time is refused now: the client hears when to
  // come back at once, instead of after waiting for nothing.
  if (wait == resilience::Millis::max() || until <= now || wait > until - now) {
    refuseAdmission(index, "wait_exceeded", wait, retry);
    return;
  }
  std::optional<resilience::Quota::Ticket> ticket =
      quota.enqueue(cost_, static_cast<std::size_t>(admission.max_queue));
  if (!ticket) {
    refuseAdmission(index, "queue_full", wait, retry);
    return;
  }
  phase_ = Phase::kQueued;
  upstream_index_ = index;
  upstream_ = &config_->upstreams[index];
  queued_ = QueuePlace{&quota, *ticket, index, retry, now, until};
  context_.metrics.admissionQueue(upstream_->name, 1);
  armQueueTimer(wait);
}

void Exchange::armQueueTimer(resilience::Millis wait) {
  resilience::Millis left =
      std::chrono::ceil<resilience::Millis>(queued_.until - context_.clock.now());
  wait = std::clamp(std::min(wait, kQueueRecheckMax), resilience::Millis(1),
                    std::max(left, resilience::Millis(1)));
  timeval tv = support::toTimeval(wait.count());
  queue_timer_.add(&tv);
}

void Exchange::onQueueTimer(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<Exchange*>(arg);
  if (self->phase_ != Phase::kQueued || self->queued_.quota == nullptr) return;
  QueuePlace& place = self->queued_;
  resilience::SteadyTime now = self->context_.clock.now();
  resilience::Quota::Admission fit =
      place.quota->tryReserve(self->cost_, self->quotaRules(), now, place.ticket);
  if (!fit.admitted &&
      !self->modelAdmits(*place.quota, self->config_->upstreams[place.index].name, now)) {
    // The quota fell back while this request waited: it goes out as with admission off.
    int index = place.index;
    bool retry = place.retry;
    self->leaveQueue();
    self->phase_ = retry ? Phase::kWaiting : Phase::kAdmitted;
    UpstreamSelection selection =
        selectUpstream(self->context_.upstreams, *self->config_, {index}, self->model_);
    if (!selection.lease) {
      self->countRejections(selection);
      self->refuse(selection, retry);
      return;
    }
    self->startAdmitted(std::move(selection), retry, nullptr);
    return;
  }
  if (!fit.admitted) {
    if (now >= place.until) {
      bool retry = place.retry;
      int index = place.index;
      self->leaveQueue();
      self->refuseAdmission(index, "wait_exceeded", fit.wait, retry);
      return;
    }
    self->armQueueTimer(fit.wait);
    return;
  }
  // Admitted: the ticket is out of the queue, the cost reserved. The breaker and the
  // in-flight limit still have their say.
  resilience::Quota* quota = place.quota;
  bool retry = place.retry;
  int index = place.index;
  std::chrono::duration<double> waited = now - place.since;
  place.ticket = 0;
  self->leaveQueue();
  self->phase_ = retry ? Phase::kWaiting : Phase::kAdmitted;
  UpstreamSelection selection =
      selectUpstream(self->context_.upstreams, *self->config_, {index}, self->model_);
  if (!selection.lease) {
    quota->release(fit.hold);
    self->countRejections(selection);
    self->refuse(selection, retry);
    return;
  }
  self->confirmAndStart(std::move(selection), retry, *quota, fit.hold, waited.count());
}

void Exchange::leaveQueue() {
  if (queued_.quota == nullptr) return;
  if (queued_.ticket != 0) queued_.quota->leave(queued_.ticket);
  context_.metrics.admissionQueue(config_->upstreams[queued_.index].name, -1);
  queued_ = QueuePlace{};
  queue_timer_.del();
}

void Exchange::refuseAdmission(int index, std::string_view reason, resilience::Millis wait,
                               bool retry) {
  const config::UpstreamConfig& upstream = config_->upstreams[index];
  context_.metrics.admissionRejection(upstream.name, reason);
  if (retry) {
    // The upstream's own answer (its 429) goes to the client.
    observe::logWarn("retry abandoned",
                     {{"request_id", requestId()},
                      {"upstream", upstream.name},
                      {"attempt", attempts_},
                      {"not_retried_because", std::string("rate_limit_") + std::string(reason)}});
    giveUp(last_outcome_);
    return;
  }
  upstream_index_ = index;
  upstream_ = &upstream;
  // When it would fit; a wait beyond any limit (no refill rate known yet) says max_wait.
  long long ms = wait == resilience::Millis::max()
                     ? std::max<long long>(1000, route_->admission.max_wait.count())
                     : std::max<long long>(1, wait.count());
  std::string where = upstream.name + " (model " + facts_.model + ")";
  std::string message =
      reason == "queue_full"
          ? "Bulwark's admission queue for " + where + " is full (admission.max_queue " +
                std::to_string(route_->admission.max_queue) + "); retry after " +
                std::to_string(ms) + "ms"
          : "the rate limit of " + where + " has no room for this request within " +
                "admission.max_wait or its deadline; it would fit in " + std::to_string(ms) + "ms";
  respondWithError(
      429, reason == "queue_full" ? "rate_limit_queue_full" : "rate_limit_wait_exceeded", message,
      http::Headers{{"retry-after-ms", std::to_string(ms)},
                    {"Retry-After", std::to_string((ms + 999) / 1000)},
                    {"x-should-retry", "true"}});
}

resilience::QuotaRules Exchange::quotaRules() const {
  return {route_->admission.headroom, route_->admission.burst};
}

bool Exchange::modelAdmits(resilience::Quota& quota, const std::string& upstream,
                           resilience::SteadyTime now) {
  bool resumed = false;
  bool admits = quota.admitting(now, &resumed);
  if (resumed) {
    observe::logInfo("admission resumes",
                     {{"upstream", upstream},
                      {"model", facts_.model},
                      {"detail", "the fallback to plain retries is over"}});
  }
  return admits;
}

void Exchange::noteSurprise(Try& t) {
  resilience::SteadyTime now = context_.clock.now();
  resilience::RateLimitHeaders limits = resilience::parseRateLimitHeaders(t.head.headers);
  if (!t.quota->surprised(limits, cost_, now)) return;
  resilience::Quota::View view = t.quota->view(now);
  long long for_ms = view.fallback_until
                         ? std::chrono::ceil<resilience::Millis>(*view.fallback_until - now).count()
                         : 0;
  observe::logWarn(
      "admission falls back",
      {{"request_id", requestId()},
       {"upstream", t.upstream->name},
       {"model", facts_.model},
       {"surprises", view.surprises},
       {"fallback_ms", for_ms},
       {"detail",
        "rate-limit 429s on requests the quota model said would fit keep coming: requests go "
        "out as with admission off until the fallback ends"}});
}

resilience::Millis Exchange::attemptAllowance(int index) {
  resilience::UpstreamHealth* health = context_.upstreams.find(config_->upstreams[index].name);
  std::optional<resilience::Millis> p95;
  if (health != nullptr) p95 = health->ttfb().quantile(facts_.model, 0.95);
  return p95 ? *p95 : kAttemptAllowance;
}

void Exchange::observeRateLimit(Try& t) {
  if (t.quota == nullptr) return;
  resilience::RateLimitHeaders limits = resilience::parseRateLimitHeaders(t.head.headers);
  bool fresh = false;  // this answer's view is now the quota's
  if (limits.any()) {
    // The upstream counted the request, and took this view of its quota, when it arrived.
    resilience::SteadyTime as_of = t.sent ? t.sent_at : t.started;
    fresh = t.quota->observe(limits, context_.clock.now(), as_of, t.reserved ? t.quota_hold : 0);
    if (context_.arbiter != nullptr && context_.arbiter->active()) {
      context_.arbiter->observed(t.upstream->name, facts_.model, limits,
                                 context_.clock.wallNow() - (context_.clock.now() - as_of), cost_);
    }
    context_.metrics.rateLimit(t.upstream->name, facts_.model, "requests", limits.limit_requests,
                               limits.remaining_requests);
    context_.metrics.rateLimit(t.upstream->name, facts_.model, "tokens", limits.limit_tokens,
                               limits.remaining_tokens);
  }
  if (!t.reserved) return;
  t.reserved = false;
  // A view taken from this answer counts its request; an older view, or none, may not.
  if (fresh) {
    t.quota->settle(t.quota_hold);
  } else {
    t.quota->charge(t.quota_hold);
  }
  endFleetReservation(t);
}

void Exchange::dropReservation(Try& t) {
  if (!t.reserved) return;
  t.reserved = false;
  if (t.sent) {
    t.quota->charge(t.quota_hold);
  } else {
    t.quota->release(t.quota_hold);
  }
  endFleetReservation(t);
}

void Exchange::startStreamed() {
  // The body is not parsed (multipart uploads pass through untouched): no model, no stream
  // flag, no admission by rate limit. The 100 Continue goes to the client once the upstream
  // is connected.
  streamed_ = true;
  admit(false);
}

void Exchange::rejectUnadmitted(const UpstreamSelection& selection) {
  if (selection.breaker_rejected) {
    // Fail fast: every upstream's breaker is open. Retry-After says when one may admit.
    long long seconds = (selection.retry_after.count() + 999) / 1000;
    respondWithError(503, "circuit_open",
                     "the circuit breaker is open for every upstream; retry after " +
                         std::to_string(std::max(1LL, seconds)) + "s",
                     std::max(1LL, seconds));
  } else {
    respondWithError(503, "overloaded", "every upstream is at its max_inflight limit; retry later");
  }
}

void Exchange::onBodyReadable() {
  if (phase_ == Phase::kFinished || !request_.body_stream) return;
  server::RequestBody& body = *request_.body_stream;
  if (body.failure() != server::RequestBody::Failure::kNone && phase_ != Phase::kCommitted) {
    failBody();
    return;
  }
  if (waiting_for_body_) {
    if (body.retained() && !body.ended()) return;
    waiting_for_body_ = false;
    if (body.retained()) {
      request_.body = body.takeAll();
      startBuffered();
    } else {
      startStreamed();  // a chunked body that grew past the retry limit
    }
    return;
  }
  for (auto& t : tries_) t->transfer->bodyReadable();
}

void Exchange::failBody() {
  if (phase_ == Phase::kCommitted) return;  // the upstream answered already; it goes on
  wait_timer_.del();
  cancelAttempts();  // the upstream is not to blame: no outcome for its breaker
  if (request_.body_stream->failure() == server::RequestBody::Failure::kTooLarge) {
    respondWithError(413, "request_too_large",
                     "request body is larger than server.max_request_body (" +
                         std::to_string(config_->server.max_request_body) + " bytes)");
  } else {
    respondWithError(400, "bad_request", "malformed HTTP request: bad chunked request body");
  }
}

void Exchange::onRequestStart(Try& t) {
  t.sent = true;
  t.sent_at = context_.clock.now();
  if (t.reserved) t.quota->sent(t.quota_hold, t.sent_at);
  // The upstream is connected and the request about to go: a client waiting for
  // "100 Continue" may send its body now.
  if (streamed_) sink_.sendContinue();
}

upstream::AttemptObserver::BodyRead Exchange::readBody(char* out, std::size_t max) {
  using BodyState = upstream::AttemptObserver::BodyState;
  if (!request_.body_stream) return {0, BodyState::kFailed};
  server::RequestBody& body = *request_.body_stream;
  if (std::size_t n = body.read(out, max); n > 0) return {n, BodyState::kData};
  if (body.failure() != server::RequestBody::Failure::kNone) return {0, BodyState::kFailed};
  if (body.ended()) return {0, BodyState::kEnd};
  return {0, BodyState::kWait};
}

void Exchange::onBodySent(Try& t, std::uint64_t bytes) {
  body_bytes_sent_ += bytes;
  context_.metrics.requestBodyBytes(t.upstream->name, bytes);
}

std::vector<int> Exchange::candidates(bool retry) const {
  // The route's failover chain (the default route's is every upstream, in order).
  const std::vector<std::size_t>& chain = route_->upstreams;
  int n = static_cast<int>(chain.size());
  std::vector<int> order;
  if (!retry) {
    for (std::size_t index : chain) order.push_back(static_cast<int>(index));
  } else if (route_->retry.failover) {
    // The next upstreams after the one that failed, then (last) the failed one again.
    int at = static_cast<int>(
        std::find(chain.begin(), chain.end(), static_cast<std::size_t>(upstream_index_)) -
        chain.begin());
    for (int i = 1; i <= n; ++i) order.push_back(static_cast<int>(chain[(at + i) % n]));
  } else {
    order.push_back(upstream_index_);
  }
  return order;
}

UpstreamSelection Exchange::selectFor(bool retry) const {
  return selectUpstream(context_.upstreams, *config_, candidates(retry), model_);
}

UpstreamSelection Exchange::select(bool retry) {
  UpstreamSelection selection = selectFor(retry);
  countRejections(selection);
  return selection;
}

void Exchange::countRejections(const UpstreamSelection& selection) {
  for (int index : selection.rejected_by_breaker) {
    context_.metrics.breakerRejection(config_->upstreams[index].name);
  }
}

void Exchange::startAttempt(UpstreamSelection selection, bool hedge) {
  bool first_of_round = phase_ != Phase::kAttempting;
  phase_ = Phase::kAttempting;
  usage_.reset();
  upstream_index_ = selection.index;
  upstream_ = &config_->upstreams[selection.index];
  auto owned = std::make_unique<Try>(*this, ++attempts_, selection.index, *upstream_,
                                     std::move(selection.lease));
  Try& t = *owned;
  t.started = context_.clock.now();
  t.hedge = hedge;
  if (!facts_.model.empty()) t.quota = &t.lease.health()->quotaFor(facts_.model);

  upstream::AttemptRequest req;
  // Provider adaptation: this upstream's name for the model (an Azure deployment, a vLLM
  // model id), in the body and, for Azure's deployment-style API, in the path.
  std::string model = facts_.model.empty() ? std::string() : mappedModel(*t.upstream, facts_.model);
  req.url = upstreamUrl(*t.upstream, request_.path, model);
  req.method = request_.method;
  req.headers = upstreamRequestHeaders(request_.headers, *t.upstream);
  req.body = &request_.body;
  if (model != facts_.model && facts_.model_end > 0) {
    t.body = withModel(request_.body, facts_, model);
    req.body = &t.body;
  }
  if (streamed_) {
    req.stream_body = true;
    req.body_length = request_.body_stream->length();
  }
  req.ca_file = t.upstream->ca_file;
  req.proxy = t.upstream->proxy;
  // HTTP/2 only where the response is a bounded JSON answer: libcurl 7.88 grants every h2
  // stream a 32 MiB window and keeps reading a paused one, so a slow client of an event
  // stream or a download would make Bulwark buffer it. Over HTTP/1.1, TCP holds the upstream.
  // A streamed upload takes HTTP/1.1 too: one connection of its own, so a 500 MB body does
  // not queue the other requests' frames behind it on a shared connection.
  req.multiplex = !streamed_ && request_.method == "POST" && !facts_.stream && policies_apply_;
  req.identity_encoding = facts_.stream;
  req.connect_timeout = route_->timeouts.connect;
  req.first_byte_timeout = route_->timeouts.first_byte;
  req.idle_timeout = route_->timeouts.idle;
  t.transfer = context_.attempts.createAttempt(t, std::move(req));
  tries_.push_back(std::move(owned));
  if (first_of_round) armHedge(t);
  t.transfer->start();
}

void Exchange::armHedge(const Try& t) {
  // Only where a retry would be safe, never with a streamed body (it cannot be sent twice).
  const std::optional<config::HedgeConfig>& hedge = route_->hedge;
  if (!hedge || hedges_ >= hedge->max || !policies_apply_ || streamed_) return;
  std::optional<resilience::Millis> after = hedge->after;
  if (hedge->p95) after = t.lease.health()->ttfb().quantile(facts_.model, 0.95);
  if (!after) return;  // too few samples yet to know this upstream's p95
  timeval tv = support::toTimeval(after->count());
  hedge_timer_.add(&tv);
}

void Exchange::onHedgeTimer(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<Exchange*>(arg);
  if (self->phase_ != Phase::kAttempting || self->tries_.empty()) return;
  for (const auto& t : self->tries_) {
    if (t->has_head || t->first_byte_seen) return;  // an answer is coming
  }
  // The next upstream of the chain, as a retry would take it (the same one when alone).
  UpstreamSelection selection = self->select(true);
  if (!selection.lease) return;
  resilience::Quota* quota = nullptr;
  resilience::Quota::Hold hold = 0;
  if (self->admission_) {
    // A hedge never waits for room in the rate limit: it is only worth it at once.
    quota = &selection.lease.health()->quotaFor(self->facts_.model);
    resilience::SteadyTime now = self->context_.clock.now();
    if (!self->modelAdmits(*quota, self->config_->upstreams[selection.index].name, now)) {
      quota = nullptr;  // plain, as with admission off
    } else if (resilience::Quota::Admission fit =
                   quota->tryReserve(self->cost_, self->quotaRules(), now);
               fit.admitted) {
      hold = fit.hold;
    } else {
      return;
    }
  }
  if (!selection.lease.health()->budget().tryAcquire()) {
    if (quota != nullptr) quota->release(hold);
    self->context_.metrics.retryBudgetExhausted(self->config_->upstreams[selection.index].name);
    return;  // hedges spend the retry budget
  }
  ++self->hedges_;
  self->startAttempt(std::move(selection), /*hedge=*/true);
  if (quota != nullptr) self->tries_.back()->admittedBy(*quota, hold);
  self->armHedge(*self->tries_.back());  // the next hedge, if more are allowed
}

void Exchange::onLosersCancelled(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<Exchange*>(arg);
  for (std::size_t i = self->tries_.size(); i-- > 0;) {
    if (self->tries_[i].get() != self->committed_) self->endAttempt(*self->tries_[i], nullptr);
  }
}

bool Exchange::Try::isEventStream() const {
  return event_stream;
}

void Exchange::appendBulwarkHeaders(http::Headers& headers,
                                    const config::UpstreamConfig& upstream) const {
  headers.push_back({"x-bulwark-attempts", std::to_string(attempts_)});
  headers.push_back({"x-bulwark-upstream", upstream.name});
}

void Exchange::onHead(Try& t, upstream::ResponseHead&& head) {
  t.head = std::move(head);
  t.has_head = true;
  if (t.head.status == 200) {
    auto type = http::findHeader(t.head.headers, "content-type");
    t.event_stream = type && type->size() >= 17 &&
                     http::equalsIgnoreCase(type->substr(0, 17), "text/event-stream");
  }
  observeRateLimit(t);
  if (t.head.status >= 400) {
    t.hold = Hold::kErrorBody;
  } else if (t.isEventStream()) {
    t.hold = Hold::kFirstEvent;
    t.event_scan =
        resilience::CommitPointScanner(endpoint_.stream_kind, kMaxHeldBytes);
  } else {
    t.hold = Hold::kNone;
  }
}

upstream::AttemptObserver::Flow Exchange::onData(Try& t, const char* data, std::size_t len) {
  using Flow = upstream::AttemptObserver::Flow;
  if (!t.first_byte_seen) {
    t.first_byte_seen = true;
    resilience::SteadyTime::duration ttfb = context_.clock.now() - t.started;
    context_.metrics.timeToFirstByte(t.upstream->name, std::chrono::duration<double>(ttfb).count());
    t.lease.health()->ttfb().record(facts_.model,
                                    std::chrono::duration_cast<resilience::Millis>(ttfb));
  }
  // A race's loser, or any late bytes once the response is over: not the client's.
  if (phase_ == Phase::kFinished || (phase_ == Phase::kCommitted && &t != committed_)) {
    return Flow::kAbort;
  }
  if (phase_ != Phase::kCommitted) return holdOrCommit(t, data, len);
  if (sink_.pendingOutput() >= kPauseThreshold) {
    // The client reads slower than the upstream sends: hold the upstream until it drains.
    sink_.onDrained([this] {
      sink_.onDrained(nullptr);
      if (committed_ != nullptr) committed_->transfer->resume();
    });
    return Flow::kPause;
  }
  deliver(data, len);
  return Flow::kContinue;
}

void Exchange::deliver(const char* data, std::size_t len) {
  if (!whole_events_) {
    forward(data, len);
    return;
  }
  // An event stream goes out in whole events: if the upstream is cut inside an event, the
  // client never sees half of it (the SDKs would choke on its JSON before they reach the
  // stream_interrupted event). Upstreams send whole events per chunk, so normally nothing
  // is held and nothing is copied.
  if (partial_event_.empty()) {
    std::size_t end = resilience::lastEventEnd(std::string_view(data, len));
    if (end > 0) forward(data, end);
    partial_event_.assign(data + end, len - end);
  } else {
    partial_event_.append(data, len);
    std::size_t end = resilience::lastEventEnd(partial_event_);
    if (end > 0) {
      forward(partial_event_.data(), end);
      partial_event_.erase(0, end);
    }
  }
  if (partial_event_.size() > kMaxHeldBytes) flushPartialEvent();  // a huge event streams as is
}

void Exchange::flushPartialEvent() {
  if (partial_event_.empty()) return;
  forward(partial_event_.data(), partial_event_.size());
  partial_event_.clear();
}

void Exchange::forward(const char* data, std::size_t len) {
  sink_.sendBody(data, len);
  bytes_sent_ += len;
  if (len >= 2) {
    tail_.assign(data + len - 2, 2);
  } else if (len == 1) {
    tail_ = tail_.substr(tail_.empty() ? 0 : tail_.size() - 1) + data[0];
  }
  if (usage_) usage_->feed(data, len);
}

upstream::AttemptObserver::Flow Exchange::holdOrCommit(Try& t, const char* data, std::size_t len) {
  using Flow = upstream::AttemptObserver::Flow;
  if (t.hold == Hold::kNone) {
    commit(t, t.head.content_length);
    forward(data, len);
    return Flow::kContinue;
  }
  t.held.append(data, len);
  if (t.hold == Hold::kFirstEvent) {
    switch (t.event_scan.scan(t.held)) {
      case resilience::CommitPointScanner::Decision::kError:
        t.first_event_is_error = true;
        return Flow::kAbort;  // retried (or handed over) as stream_error once the attempt ends
      case resilience::CommitPointScanner::Decision::kNeedMore:
        // A Responses preamble is not held past timeouts.first_byte: the client would see
        // nothing for longer than Bulwark lets an upstream stay silent.
        if (t.event_scan.preambleEvents() == 0 ||
            context_.clock.now() - t.started < route_->timeouts.first_byte) {
          return Flow::kContinue;
        }
        break;
      case resilience::CommitPointScanner::Decision::kCommit:
        break;
    }
  } else if (t.held.size() <= kMaxHeldBytes) {
    return Flow::kContinue;  // an error body: read it whole before deciding
  }
  // The commit point: from here on the response belongs to the client.
  commit(t, t.hold == Hold::kFirstEvent ? std::nullopt : t.head.content_length);
  deliver(t.held.data(), t.held.size());
  t.held.clear();
  t.hold = Hold::kNone;
  return Flow::kContinue;
}

void Exchange::commit(Try& t, std::optional<std::uint64_t> content_length) {
  phase_ = Phase::kCommitted;
  committed_ = &t;
  winner_ = t.number;
  hedge_timer_.del();
  t.hedge_result = "won";
  if (tries_.size() > 1) {
    // The first to reach the commit point wins the race; the others are cancelled at once
    // (from the loop: this runs inside the winner's transfer callback).
    for (const auto& other : tries_) {
      if (other.get() != &t) other->hedge_result = "lost";
    }
    cancel_losers_.activate();
  }
  upstream_ = t.upstream;
  upstream_index_ = t.upstream_index;
  noteResponseHead(t.head);
  whole_events_ = t.isEventStream();
  // The upstream answered: for the breaker that is a success, unless an error status whose
  // policy counts (a committed error body too large to hold). A probe's answer closes (or
  // reopens) the breaker now, not when a long stream ends; any other success is recorded
  // once, at its end, as a success or an interruption.
  bool counted = t.head.status >= 400 &&
                 resilience::policyFor(route_->retry, Outcome::fromStatus(t.head.status)).breaker;
  recordAttempt(t, std::to_string(t.head.status), counted, /*success_at_end=*/true);
  if (t.head.status == 200) {
    std::string_view type = http::findHeader(t.head.headers, "content-type").value_or("");
    if (t.isEventStream()) {
      usage_.emplace(true);
    } else if (type.find("json") != std::string_view::npos) {
      usage_.emplace(false);
    }
  }
  // The upstream's head goes to the client as it is, filtered where it lies: the Try keeps
  // no other use for the hop-by-hop and framing headers this removes.
  http::Headers& headers = t.head.headers;
  stripForClient(headers);
  appendBulwarkHeaders(headers, *t.upstream);
  sink_.sendHead(t.head.status, headers, content_length);
}

void Exchange::onDone(Try& t, TransferError error, const std::string& detail) {
  if (phase_ == Phase::kFinished) return;
  if (phase_ == Phase::kCommitted) {
    if (&t != committed_) {  // a race's loser ended on its own
      endAttempt(t, nullptr);
      return;
    }
    if (error == TransferError::kNone) {
      flushPartialEvent();  // a stream that ended without a final blank line: as it was
      int status = t.head.status;
      AttemptEnd end{std::to_string(status)};
      endAttempt(t, &end);
      cancelAttempts();  // a race's losers, not yet cancelled from the loop
      sink_.finish();
      if (usage_) {
        if (std::optional<observe::TokenUsage> usage = usage_->finish()) {
          std::string model = usage->model.empty() ? facts_.model : usage->model;
          context_.metrics.tokens(upstream_->name, model, usage->prompt, usage->completion);
        }
      }
      finish(status);
    } else {
      // Answers cut by one broken connection count once, as the ones it failed earlier do.
      bool shared = error == TransferError::kReset && alreadyCountedLoss(t);
      interruptStream(std::string(upstream::transferErrorName(error)) + ": " + detail +
                          (shared ? kCountedOnce : ""),
                      /*count_for_breaker=*/!shared);
    }
    return;
  }
  if (error == TransferError::kNone && t.has_head) {
    Outcome outcome = Outcome::fromStatus(t.head.status);
    if (outcome.isSuccess()) {
      HeldResponse response = takeHeldResponse(t);  // a response with an empty body
      winner_ = t.number;
      for (const auto& other : tries_) other->hedge_result = other.get() == &t ? "won" : "lost";
      AttemptEnd end{outcome.name()};
      endAttempt(t, &end);
      deliverResponse(response, false);
    } else {
      afterFailedAttempt(t, outcome, detail);
    }
    return;
  }
  if (error == TransferError::kAborted && t.first_event_is_error) {
    afterFailedAttempt(t, Outcome::streamError(),
                       "the stream sent an error event before any output");
    return;
  }
  afterFailedAttempt(t, outcomeOfTransfer(error), detail);
}

bool Exchange::alreadyCountedLoss(const Try& t) {
  if (context_.connection_losses == nullptr || !t.transfer) return false;
  std::string_view connection = t.transfer->brokenConnection();
  if (connection.empty()) return false;
  return !context_.connection_losses->firstFailure(connection, t.lease.breaker(),
                                                   context_.clock.now());
}

void Exchange::afterFailedAttempt(Try& t, const Outcome& outcome, const std::string& detail) {
  // A retry fails over from the upstream that failed (after a race, not the latest started).
  upstream_index_ = t.upstream_index;
  upstream_ = t.upstream;
  resilience::AttemptFacts facts;
  facts.outcome = outcome;
  if (t.has_head) facts.x_should_retry = xShouldRetry(t.head.headers);
  if (outcome.kind == Outcome::Kind::kStatus) facts.error_body = t.held;
  facts.policies_apply = policies_apply_;
  resilience::Verdict verdict = resilience::classifyAttempt(route_->retry, facts);
  last_outcome_ = outcome;
  // One broken connection is one failure, counted with the first request it failed. Only a
  // failure the lease will record claims the connection (a probe that recorded its success
  // at the head records nothing more).
  std::string shared_detail;
  if (verdict.breaker_counted && !t.lease.recorded() && alreadyCountedLoss(t)) {
    verdict.breaker_counted = false;
    t.shared_loss = true;
    shared_detail = detail + kCountedOnce;
  }
  const std::string& attempt_detail = t.shared_loss ? shared_detail : detail;

  if (tries_.size() > 1) {
    // A race goes on: another attempt may still answer. This one lost; nothing to decide
    // (and no retry budget spent) until the last one ends.
    if (outcome.kind == Outcome::Kind::kStatus || outcome.kind == Outcome::Kind::kStreamError) {
      last_response_ = takeHeldResponse(t);
    }
    t.hedge_result = "lost";
    std::string outcome_name = outcome.name();
    AttemptEnd racing{outcome_name,    verdict.breaker_counted,
                      /*failed=*/true, verdict.retryable,
                      "hedged",        attempt_detail};
    endAttempt(t, &racing);
    return;
  }

  resilience::RetryInputs inputs;
  inputs.verdict = verdict;
  inputs.body_consumed = streamed_ && request_.body_stream->consumed() > 0;
  inputs.attempts_made = attempts_;
  inputs.max_attempts = max_attempts_;
  if (t.has_head && outcome.kind == Outcome::Kind::kStatus) {
    inputs.server_hint =
        resilience::serverRetryHint(t.head.headers, t.head.status, context_.clock.wallNow());
  }
  inputs.now = context_.clock.now();
  if (t.admitted && t.quota != nullptr && t.has_head && t.head.status == 429 && verdict.retryable) {
    // A rate-limit 429. An explicit wait (retry-after, retry-after-ms) pauses the whole
    // (upstream, model): every worker's requests, queued or new. Without one, the reset
    // headers say when the bucket is full again, far later than this request fits: the
    // retry waits in the admission queue instead, until the quota (just updated from this
    // answer's headers) has room for it.
    if (t.modelled) noteSurprise(t);
    // The wait the 429 names: an explicit header, else its message's "try again in".
    std::optional<resilience::Millis> pause =
        resilience::serverRetryHint(t.head.headers, 0, context_.clock.wallNow());
    if (!pause) pause = resilience::tryAgainIn(t.held);
    if (pause) {
      t.quota->cooldown(inputs.now + *pause);
      if (context_.arbiter != nullptr && context_.arbiter->active()) {
        context_.arbiter->cooledDown(t.upstream->name, facts_.model,
                                     context_.clock.wallNow() + *pause);
      }
    } else if (resilience::Quota::View quota = t.quota->view(inputs.now);
               quota.requests.limit > 0 || quota.tokens.limit > 0) {
      inputs.server_hint = resilience::Millis(0);
    }
  }
  inputs.deadline = deadline_;
  resilience::RetryDecision decision =
      resilience::decideRetry(route_->retry, inputs, *backoff_, t.lease.health()->budget());
  if (decision.budget_exhausted) context_.metrics.retryBudgetExhausted(t.upstream->name);

  if (outcome.kind == Outcome::Kind::kStatus || outcome.kind == Outcome::Kind::kStreamError) {
    last_response_ = takeHeldResponse(t);
  }
  std::string outcome_name = outcome.name();
  std::string upstream_name = t.upstream->name;
  std::string why_not = decision.retry ? "" : decision.why_not;
  AttemptEnd end{outcome_name,
                 verdict.breaker_counted,
                 /*failed=*/true,
                 verdict.retryable,
                 why_not,
                 attempt_detail,
                 decision.retry ? &decision : nullptr};
  endAttempt(t, &end);
  if (!decision.retry) {
    giveUp(outcome);
    return;
  }
  // Counted in the metrics when the retry really starts (the breaker may stop it).
  phase_ = Phase::kWaiting;
  pending_retry_ = PendingRetry{
      upstream_name, outcome_name,
      decision.source == resilience::RetryDelay::Source::kServer ? "server" : "backoff",
      static_cast<double>(decision.delay.count()) / 1000.0};
  timeval wait = support::toTimeval(decision.delay.count());
  wait_timer_.add(&wait);
}

void Exchange::recordAttempt(Try& t, std::string_view outcome, bool breaker_failure,
                             bool success_at_end) {
  if (!t.recorded) {
    t.recorded = true;
    context_.metrics.attempt(t.upstream->name, outcome);
  }
  // The lease keeps the first outcome it is given. A loss another attempt counted for the
  // whole connection records none: the lease gives its admission back.
  if (t.shared_loss) return;
  if (!success_at_end || breaker_failure || t.lease.probe()) t.lease.recordOutcome(breaker_failure);
}

void Exchange::endAttempt(Try& t, const AttemptEnd* end) {
  if (end != nullptr) {
    recordAttempt(t, end->outcome, end->breaker_failure, false);
    if (end->failed) {
      const resilience::RetryDecision* retry = end->retry;
      std::string_view upstream_request_id =
          t.has_head ? http::findHeader(t.head.headers, "x-request-id").value_or("") : "";
      observe::logWarn(
          "upstream attempt failed",
          {{"request_id", requestId()},
           {"upstream", t.upstream->name},
           {"attempt", t.number},
           {"max_attempts", max_attempts_},
           {"outcome", end->outcome},
           {"retryable", end->retryable},
           {"breaker_counted", end->breaker_failure},
           {"delay_ms",
            retry ? LogValue(static_cast<long long>(retry->delay.count())) : LogValue(nullptr)},
           {"delay_source",
            retry
                ? (retry->source == resilience::RetryDelay::Source::kServer ? "server" : "backoff")
                : ""},
           {"not_retried_because", end->not_retried_because},
           {"upstream_request_id", upstream_request_id},
           {"detail", end->detail}});
    }
  }
  if (committed_ == &t) committed_ = nullptr;
  if (t.hedge)
    context_.metrics.hedge(t.upstream->name, t.hedge_result.empty() ? "cancelled" : t.hedge_result);
  // Detached first: the transfer's cancellation may report its body bytes to the try.
  auto found = std::find_if(tries_.begin(), tries_.end(),
                            [&](const std::unique_ptr<Try>& owned) { return owned.get() == &t; });
  if (found == tries_.end()) return;
  std::unique_ptr<Try> owned = std::move(*found);
  tries_.erase(found);
  dropReservation(*owned);
  owned->transfer.reset();  // cancels a running transfer
  owned->lease.reset();     // an unrecorded outcome gives the breaker admission back
}

void Exchange::cancelAttempts() {
  while (!tries_.empty()) endAttempt(*tries_.back(), nullptr);
}

void Exchange::giveUp(const Outcome& outcome, bool deadline_reached) {
  // The last upstream response goes to the client as it was (even when a later attempt got
  // none), or Bulwark's own error when there never was one.
  if (last_response_) {
    deliverResponse(*last_response_, true);
  } else if (deadline_reached || context_.clock.now() >= deadline_) {
    respondWithError(504, "deadline_exceeded",
                     "timeouts.total was reached before the upstream answered");
  } else {
    respondWithError(502, "upstream_unavailable",
                     "the upstream could not be reached after " + std::to_string(attempts_) +
                         " attempt(s); last outcome: " + outcome.name());
  }
}

void Exchange::noteResponseHead(const upstream::ResponseHead& head) {
  response_status_ = head.status;
  upstream_request_id_ = http::findHeader(head.headers, "x-request-id").value_or("");
}

Exchange::HeldResponse Exchange::takeHeldResponse(Try& t) {
  return HeldResponse{t.head, std::move(t.held), t.hold == Hold::kFirstEvent, t.upstream};
}

void Exchange::deliverResponse(const HeldResponse& response, bool gave_up) {
  cancelAttempts();  // any still running (the caller ended, and recorded, the one answering)
  upstream_ = response.upstream;
  noteResponseHead(response.head);
  http::Headers headers;
  for (http::Header& h : clientResponseHeaders(response.head.headers)) {
    if (gave_up && http::equalsIgnoreCase(h.name, "x-should-retry")) continue;
    headers.push_back(std::move(h));
  }
  if (gave_up) headers.push_back({"x-should-retry", "false"});  // Bulwark already retried
  appendBulwarkHeaders(headers, *response.upstream);
  std::optional<std::uint64_t> length = response.body.size();
  if (request_.method == "HEAD") length = response.head.content_length;
  if (response.cut_stream) length.reset();  // the stream ended after its first event
  sink_.sendHead(response.head.status, headers, length);
  sink_.sendBody(response.body.data(), response.body.size());
  bytes_sent_ += response.body.size();
  sink_.finish();
  finish(response.head.status);
}

void Exchange::respondWithError(int status, std::string_view code, std::string_view message,
                                long long retry_after_seconds) {
  http::Headers extra;
  if (retry_after_seconds > 0)
    extra.push_back({"Retry-After", std::to_string(retry_after_seconds)});
  respondWithError(status, code, message, std::move(extra));
}

void Exchange::respondWithError(int status, std::string_view code, std::string_view message,
                                http::Headers extra) {
  cancelAttempts();
  std::string body = http::openAiErrorBody(code, message);
  http::Headers headers{{"Content-Type", "application/json"}};
  if (!http::findHeader(extra, "x-should-retry")) headers.push_back({"x-should-retry", "false"});
  for (http::Header& h : extra) headers.push_back(std::move(h));
  appendBulwarkHeaders(headers, *upstream_);
  sink_.sendHead(status, headers, body.size());
  sink_.sendBody(body.data(), body.size());
  bytes_sent_ += body.size();
  sink_.finish();
  finish(status);
}

void Exchange::interruptStream(const std::string& why, bool count_for_breaker) {
  observe::logWarn("stream interrupted after the commit point",
                   {{"request_id", requestId()},
                    {"upstream", upstream_->name},
                    {"attempt", committed_ != nullptr ? committed_->number : attempts_},
                    {"bytes_sent", bytes_sent_},
                    {"detail", why}});
  if (whole_events_) {
    // SDKs raise on an error event; a stream that just stopped would look complete.
    // The error event must start on an event boundary: after a cut inside an event, end
    // that (broken) event first, or the error would become part of its data.
    const char* boundary = tail_.empty() || tail_.ends_with("\n\n") ? ""
                           : tail_.ends_with("\n")                  ? "\n"
                                                                    : "\n\n";
    std::string event =
        boundary + std::string("data: ") +
        http::openAiErrorBody("stream_interrupted", "the upstream stream was interrupted: " + why) +
        "\n\n";
    sink_.sendBody(event.data(), event.size());
  }
  sink_.abort();
  context_.metrics.streamInterruption(upstream_->name);
  if (committed_ != nullptr && count_for_breaker) committed_->lease.recordInterruption();
  cancelAttempts();
  finish(response_status_);
}

void Exchange::terminate() {
  if (phase_ == Phase::kFinished) return;
  wait_timer_.del();
  if (phase_ == Phase::kCommitted) {
    interruptStream("Bulwark is shutting down (server.shutdown_grace reached)");
    return;
  }
  cancelAttempts();
  if (last_response_) {
    deliverResponse(*last_response_, true);
  } else {
    respondWithError(503, "shutting_down",
                     "Bulwark is shutting down and could not finish this request in time");
  }
}

void Exchange::onWaitOver(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<Exchange*>(arg);
  if (self->phase_ != Phase::kWaiting) return;
  self->admit(/*retry=*/true);
}

void Exchange::onDeadline(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<Exchange*>(arg);
  if (self->phase_ == Phase::kFinished) return;
  if (self->phase_ == Phase::kCommitted) {
    self->interruptStream("timeouts.total reached");
    return;
  }
  if (self->phase_ == Phase::kQueued) {
    // In the queue, or waiting for the fleet to confirm.
    bool retry = self->confirming_ ? self->confirming_->retry : self->queued_.retry;
    int index = self->confirming_ ? self->confirming_->selection.index : self->queued_.index;
    self->leaveQueue();
    self->refuseAdmission(index, "wait_exceeded", resilience::Millis(0), retry);
    return;
  }
  self->wait_timer_.del();
  // The attempts in flight ran out of the request's time: timeouts like any other, for the
  // breaker, the metrics and the logs.
  Outcome timeout = Outcome::timeout();
  AttemptEnd end{timeout.name(),  resilience::policyFor(self->route_->retry, timeout).breaker,
                 /*failed=*/true, /*retryable=*/false,
                 "deadline",      "timeouts.total reached"};
  while (!self->tries_.empty()) self->endAttempt(*self->tries_.back(), &end);
  self->giveUp(resilience::Outcome::timeout(), true);
}

void Exchange::finish(int status, bool client_left) {
  leaveQueue();
  if (confirming_) {
    // It ends while the fleet confirms: the local reservation goes back (the callback ends
    // the fleet's, when it comes).
    confirming_->quota->release(confirming_->hold);
    confirming_.reset();
  }
  phase_ = Phase::kFinished;
  deadline_timer_.del();
  wait_timer_.del();
  hedge_timer_.del();
  std::chrono::duration<double> duration = context_.clock.now() - started_;
  context_.metrics.requestFinished(upstream_->name, status, duration.count());
  std::string_view upstream_request_id = upstream_request_id_;
  observe::logInfo(
      "request",
      {{"request_id", requestId()},
       {"method", request_.method},
       {"path", pathWithoutQuery(request_.path)},
       {"status", status},
       {"attempts", attempts_},
       {"upstream", upstream_->name},
       {"duration_ms", millisBetween(started_, context_.clock.now())},
       {"bytes", bytes_sent_},
       {"request_bytes", request_.body_stream ? request_.body_stream->received()
                                              : static_cast<std::uint64_t>(request_.body.size())},
       {"upstream_request_id", upstream_request_id},
       {"hedges", hedges_},
       {"winning_attempt", winner_},
       {"client_left", client_left}});
}

std::unique_ptr<server::ActiveRequest> ExchangeHandler::handle(server::HttpRequest request,
                                                               server::ResponseSink& sink) {
  auto exchange = std::make_unique<Exchange>(context_, std::move(request), sink);
  exchange->start();
  return exchange;
}

}  // namespace bulwark::exchange
