// The exchange's state machine against a scripted attempt transport: the client leaving in
// every phase, each attempt's outcome counted exactly once, and a half-open probe slot never
// leaked. Real breaker, budget and metrics; a fake clock; a libevent loop turned by hand for
// the (zero-length) backoff timer.
#include "proxy/exchange/exchange.h"

#include <event2/event.h>
#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "config/loader.h"
#include "proxy/observe/logger.h"
#include "proxy/observe/metrics.h"
#include "proxy/resilience/upstream_health.h"
#include "tests/unit/fakes.h"

namespace bulwark::exchange {
namespace {

using upstream::AttemptObserver;
using upstream::TransferError;

// One attempt the test drives by hand through its observer.
class FakeTransfer;

class FakeAttempts final : public upstream::AttemptFactory {
 public:
  std::unique_ptr<upstream::Transfer> createAttempt(AttemptObserver& observer,
                                                    upstream::AttemptRequest request) override;
  FakeTransfer* current() { return live.empty() ? nullptr : live.back(); }

  std::vector<FakeTransfer*> live;  // attempts not yet destroyed
  std::vector<std::string> urls;    // every attempt created, in order
};

class FakeTransfer final : public upstream::Transfer {
 public:
  FakeTransfer(FakeAttempts& owner, AttemptObserver& observer)
      : owner_(owner), observer(observer) {}
  ~FakeTransfer() override { std::erase(owner_.live, this); }
  void start() override { started = true; }
  void resume() override { ++resumed; }
  void bodyReadable() override {}

  // The upstream answers with `status` and `body`, whole. May destroy this transfer.
  void answer(int status, const std::string& body = "{}",
              const std::string& type = "application/json", http::Headers extra = {}) {
    upstream::ResponseHead head;
    head.status = status;
    head.headers = {{"content-type", type}};
    for (http::Header& h : extra) head.headers.push_back(std::move(h));
    head.content_length = body.size();
    observer.onRequestStart();
    observer.onHead(std::move(head));
    if (!body.empty()) observer.onData(body.data(), body.size());
    observer.onDone(TransferError::kNone, "");
  }

  // The head of a 200 JSON answer and its first bytes arrive; the rest does not yet.
  void beginAnswer(const std::string& first_bytes) {
    upstream::ResponseHead head;
    head.status = 200;
    head.headers = {{"content-type", "application/json"}};
    observer.onRequestStart();
    observer.onHead(std::move(head));
    observer.onData(first_bytes.data(), first_bytes.size());
  }
  // The transfer ends with `error`. May destroy this transfer.
  void fail(TransferError error, const std::string& detail) { observer.onDone(error, detail); }
  std::string_view brokenConnection() const override { return broken; }

  FakeAttempts& owner_;
  AttemptObserver& observer;
  bool started = false;
  int resumed = 0;
  std::string broken;  // what brokenConnection() says
};

std::unique_ptr<upstream::Transfer> FakeAttempts::createAttempt(AttemptObserver& observer,
                                                                upstream::AttemptRequest request) {
  auto transfer = std::make_unique<FakeTransfer>(*this, observer);
  live.push_back(transfer.get());
  urls.push_back(request.url);
  return transfer;
}

class FakeSink final : public server::ResponseSink {
 public:
  void sendHead(int s, const http::Headers& h, std::optional<std::uint64_t>) override {
    status = s;
    headers = h;
  }
  void sendContinue() override { ++continues; }
  void sendBody(const char* data, std::size_t len) override { body.append(data, len); }
  void finish() override { finished = true; }
  void abort() override { aborted = true; }
  std::size_t pendingOutput() const override { return 0; }
  void onDrained(std::function<void()>) override {}

  int status = 0;
  http::Headers headers;
  std::string body;
  int continues = 0;
  bool finished = false;
  bool aborted = false;
};

// The fleet, scripted: confirm() calls are kept for the test to answer.
class FakeArbiter final : public resilience::QuotaArbiter {
 public:
  struct Call {
    resilience::QuotaCost cost;
    resilience::QuotaCost room;
    double headroom = 0;
    long long seen = 0;
    std::function<void(bool, Ticket)> done;
  };
  bool active() const override { return true; }
  void confirm(const std::string&, const std::string&, const resilience::QuotaCost& cost,
               const resilience::QuotaCost& room, double headroom, long long seen,
               std::function<void(bool, Ticket)> done) override {
    calls.push_back({cost, room, headroom, seen, std::move(done)});
  }
  long long newestView(const std::string&, const std::string&) const override { return newest; }
  void end(const std::string&, const std::string&, const resilience::QuotaCost& cost,
           Ticket ticket) override {
    if (ticket.fleet_reserved) ended_tokens += cost.tokens;
  }
  void observed(const std::string&, const std::string&, const resilience::RateLimitHeaders&,
                resilience::WallTime, const resilience::QuotaCost&) override {
    ++views;
  }
  void cooledDown(const std::string&, const std::string&, resilience::WallTime) override {}
  // Answers the oldest pending confirm().
  void answer(bool fits) {
    Call call = std::move(calls.front());
    calls.erase(calls.begin());
    call.done(fits, Ticket{fits});
  }

  long long newest = 0;
  std::vector<Call> calls;
  double ended_tokens = 0;
  int views = 0;
};

constexpr char kConfig[] = R"yaml(
upstreams:
  - name: main
    base_url: http://127.0.0.1:9
retry:
  max_attempts: 3
  base_delay: 0ms
  max_delay: 0ms
  jitter: none
  budget: {ratio: 1.0, min_per_second: 1000}
circuit_breaker:
  failure_threshold: 1
  min_requests: 1000
  recovery_timeout: 10s
routes:
  - name: hedged
    match: {path: /v1/embeddings}
    hedge: {after: 1ms}
)yaml";

class ExchangeTest : public ::testing::Test {
 protected:
  ExchangeTest()
      : config_(load()),
        registry_(*config_, clock_),
        metrics_(config_->metrics),
        base_(event_base_new()),
        context_{attempts_, base_, clock_, random_, registry_, metrics_, &ExchangeTest::current,
                 this} {
    observe::Logger::get().configure(config::LogLevel::kError, config::LogFormat::kJson);
  }
  ~ExchangeTest() override {
    exchanges_.clear();
    event_base_free(base_);
  }

  static std::shared_ptr<const config::Config> load() {
    config::LoadResult result = config::loadConfigString(
        kConfig, [](const std::string&) { return std::optional<std::string>(); });
    EXPECT_TRUE(result.ok());
    return std::make_shared<const config::Config>(result.config.value_or(config::Config{}));
  }
  static std::shared_ptr<const config::Config> current(void* self) {
    return static_cast<ExchangeTest*>(self)->config_;
  }

  // A new client request, started. (/v1/embeddings takes the hedged route.)
  Exchange& request(const std::string& body = R"({"model":"gpt-4o"})",
                    const std::string& path = "/v1/chat/completions") {
    server::HttpRequest req;
    req.method = "POST";
    req.target = req.path = path;
    req.headers = {{"Content-Type", "application/json"}};
    req.body = body;
    sinks_.push_back(std::make_unique<FakeSink>());
    exchanges_.push_back(std::make_unique<Exchange>(context_, std::move(req), *sinks_.back()));
    exchanges_.back()->start();
    return *exchanges_.back();
  }
  FakeSink& sink() { return *sinks_.back(); }
  // The client leaves: the connection destroys its exchange.
  void leave() { exchanges_.pop_back(); }
  // Runs what is due on the loop (a zero-length backoff wait).
  void turnLoop() { event_base_loop(base_, EVLOOP_NONBLOCK); }

  // The rate limit of gpt-4o on "main", as a response's headers would report it: 1000 tokens
  // a minute, `tokens_left` of them left (refilling at 1/60 token per ms).
  resilience::Quota& quotaReports(int tokens_left) {
    resilience::Quota& quota = registry_.find("main")->quotaFor("gpt-4o");
    long long reset_ms = (1000 - tokens_left) * 60;
    quota.observe(resilience::parseRateLimitHeaders(
                      {{"x-ratelimit-limit-tokens", "1000"},
                       {"x-ratelimit-remaining-tokens", std::to_string(tokens_left)},
                       {"x-ratelimit-reset-tokens", std::to_string(reset_ms) + "ms"}}),
                  clock_.now());
    return quota;
  }

  resilience::CircuitBreaker& breaker() { return registry_.find("main")->breakerFor(""); }
  int inflight() { return registry_.find("main")->inflight(); }

  // The value of one series in the Prometheus text, 0 when absent.
  double metric(const std::string& name, const std::map<std::string, std::string>& labels) {
    std::istringstream text(metrics_.serialize());
    std::string line;
    while (std::getline(text, line)) {
      if (line.rfind(name + "{", 0) != 0) continue;
      bool all = true;
      for (const auto& [k, v] : labels) {
        all = all && line.find(k + "=\"" + v + "\"") != std::string::npos;
      }
      if (all) return std::stod(line.substr(line.rfind(' ') + 1));
    }
    return 0;
  }
  double attempts(const std::string& outcome) {
    return metric("bulwark_upstream_attempts_total", {{"upstream", "main"}, {"outcome", outcome}});
  }
  double requests(const std::string& code) {
    return metric("bulwark_requests_total", {{"upstream", "main"}, {"code", code}});
  }

  // Trips the breaker and waits out its recovery: the next admission is the probe.
  void halfOpen() {
    ASSERT_TRUE(breaker().admit().admitted);
    breaker().record(true, false);
    ASSERT_EQ(breaker().snapshot().state, resilience::BreakerState::kOpen);
    clock_.advance(std::chrono::seconds(11));
  }

  fakes::FakeClock clock_;
  resilience::SeededRandom random_{7};
  std::shared_ptr<const config::Config> config_;
  resilience::UpstreamRegistry registry_;
  observe::Metrics metrics_;
  event_base* base_;
  FakeAttempts attempts_;
  ExchangeContext context_;
  resilience::ConnectionLosses losses_;  // given to context_ by the tests that use it
  std::vector<std::unique_ptr<FakeSink>> sinks_;
  std::vector<std::unique_ptr<Exchange>> exchanges_;
};

TEST_F(ExchangeTest, ASuccessIsCountedOnceAndFinishes) {
  Exchange& ex = request();
  EXPECT_EQ(ex.phase(), Exchange::Phase::kAttempting);
  ASSERT_TRUE(attempts_.current()->started);
  attempts_.current()->answer(200, R"({"id":"x"})");
  EXPECT_EQ(ex.phase(), Exchange::Phase::kFinished);
  EXPECT_EQ(sink().status, 200);
  EXPECT_TRUE(sink().finished);
  EXPECT_EQ(attempts("200"), 1);
  EXPECT_EQ(requests("200"), 1);
  EXPECT_EQ(inflight(), 0);
  EXPECT_TRUE(attempts_.live.empty());
}

// (429 is retried and, by default, not counted by the breaker, which here opens at one
// counted failure.)
TEST_F(ExchangeTest, ARetriedFailureCountsEachAttemptOnce) {
  Exchange& ex = request();
  attempts_.current()->answer(429);
  ASSERT_EQ(ex.phase(), Exchange::Phase::kWaiting);
  EXPECT_TRUE(attempts_.live.empty());  // the failed transfer is gone during the wait
  EXPECT_EQ(inflight(), 0);
  turnLoop();
  ASSERT_EQ(ex.phase(), Exchange::Phase::kAttempting);
  attempts_.current()->answer(200);
  EXPECT_EQ(attempts("429"), 1);
  EXPECT_EQ(attempts("200"), 1);
  EXPECT_EQ(requests("200"), 1);
  EXPECT_EQ(metric("bulwark_retries_total", {{"upstream", "main"}, {"reason", "429"}}), 1);
  EXPECT_EQ(attempts_.urls.size(), 2u);
}

TEST_F(ExchangeTest, GivingUpHandsTheLastAnswerOverOnce) {
  request();
  for (int i = 0; i < 3; ++i) {
    ASSERT_NE(attempts_.current(), nullptr) << i;
    attempts_.current()->answer(429, R"({"error":{"message":"slow down"}})");
    turnLoop();
  }
  EXPECT_EQ(sink().status, 429);
  EXPECT_NE(sink().body.find("slow down"), std::string::npos);
  EXPECT_EQ(attempts("429"), 3);
  EXPECT_EQ(requests("429"), 1);
  EXPECT_EQ(attempts_.urls.size(), 3u);
}

TEST_F(ExchangeTest, TheClientLeavingWhileAttemptingCancelsAndCountsNoOutcome) {
  request();
  ASSERT_EQ(attempts_.live.size(), 1u);
  leave();
  EXPECT_TRUE(attempts_.live.empty());  // the transfer is cancelled
  EXPECT_EQ(inflight(), 0);
  EXPECT_EQ(requests("499"), 1);
  EXPECT_EQ(metric("bulwark_upstream_attempts_total", {{"upstream", "main"}}), 0);
  // No outcome for the breaker: one failure would have opened it (failure_threshold 1).
  EXPECT_EQ(breaker().snapshot().state, resilience::BreakerState::kClosed);
}

TEST_F(ExchangeTest, TheClientLeavingDuringTheWaitStartsNoRetry) {
  request();
  attempts_.current()->answer(429);
  leave();
  turnLoop();
  EXPECT_EQ(attempts_.urls.size(), 1u);
  EXPECT_EQ(attempts("429"), 1);
  EXPECT_EQ(requests("499"), 1);
  EXPECT_EQ(inflight(), 0);
}

TEST_F(ExchangeTest, TheClientLeavingMidStreamIsCountedOnce) {
  Exchange& ex = request(R"({"model":"gpt-4o","stream":true})");
  upstream::ResponseHead head;
  head.status = 200;
  head.headers = {{"content-type", "text/event-stream"}};
  FakeTransfer* t = attempts_.current();
  t->observer.onHead(std::move(head));
  std::string event = "data: {\"choices\":[]}\n\n";
  t->observer.onData(event.data(), event.size());
  EXPECT_EQ(ex.phase(), Exchange::Phase::kCommitted);
  EXPECT_EQ(sink().status, 200);
  leave();
  EXPECT_TRUE(attempts_.live.empty());
  EXPECT_EQ(attempts("200"), 1);  // at the commit point, and not again
  EXPECT_EQ(requests("499"), 1);
  EXPECT_EQ(inflight(), 0);
}

TEST_F(ExchangeTest, TheClientLeavingAfterTheEndChangesNothing) {
  request();
  attempts_.current()->answer(200);
  leave();
  EXPECT_EQ(requests("200"), 1);
  EXPECT_EQ(requests("499"), 0);
  EXPECT_EQ(attempts("200"), 1);
}

TEST_F(ExchangeTest, TheClientLeavingBeforeItsHeldBodyArrivesStartsNothing) {
  server::HttpRequest req;
  req.method = "POST";
  req.target = req.path = "/v1/chat/completions";
  req.expect_continue = true;
  req.body_stream = std::make_shared<server::RequestBody>(1024, 20, true);
  sinks_.push_back(std::make_unique<FakeSink>());
  auto ex = std::make_unique<Exchange>(context_, std::move(req), *sinks_.back());
  ex->start();
  EXPECT_EQ(ex->phase(), Exchange::Phase::kAdmitted);
  EXPECT_EQ(sink().continues, 1);  // admitted: the client may send its body
  EXPECT_EQ(inflight(), 0);        // no slot is held while it does
  ex.reset();
  EXPECT_TRUE(attempts_.urls.empty());
  EXPECT_EQ(requests("499"), 1);
  // The breaker's admission was given back, whatever the state.
  EXPECT_TRUE(breaker().admit().admitted);
  breaker().release(false);
}

TEST_F(ExchangeTest, ACancelledProbeFreesItsSlot) {
  halfOpen();
  request();  // takes the one probe slot
  ASSERT_EQ(attempts_.live.size(), 1u);
  ASSERT_NE(attempts_.current(), nullptr);
  request();  // no slot left: fails fast
  EXPECT_EQ(sink().status, 503);
  exchanges_.pop_back();
  leave();    // the probe's client leaves
  request();  // the slot is free again
  ASSERT_EQ(attempts_.urls.size(), 2u);
  attempts_.current()->answer(200);
  EXPECT_EQ(breaker().snapshot().state, resilience::BreakerState::kClosed);
}

TEST_F(ExchangeTest, AProbeClosesTheBreakerAtTheCommitPointOfAStream) {
  halfOpen();
  request(R"({"model":"gpt-4o","stream":true})");
  upstream::ResponseHead head;
  head.status = 200;
  head.headers = {{"content-type", "text/event-stream"}};
  attempts_.current()->observer.onHead(std::move(head));
  std::string event = "data: {\"choices\":[]}\n\n";
  attempts_.current()->observer.onData(event.data(), event.size());
  EXPECT_EQ(breaker().snapshot().state, resilience::BreakerState::kClosed);
  leave();  // and the client leaving later does not count against it
  EXPECT_EQ(breaker().snapshot().state, resilience::BreakerState::kClosed);
  EXPECT_EQ(attempts("200"), 1);
}

TEST_F(ExchangeTest, AFailedProbeReopensAndIsNotRetriedThroughTheOpenBreaker) {
  halfOpen();
  Exchange& ex = request();
  attempts_.current()->answer(503);
  EXPECT_EQ(breaker().snapshot().state, resilience::BreakerState::kOpen);
  turnLoop();  // the retry finds the breaker open: the 503 goes to the client
  EXPECT_EQ(ex.phase(), Exchange::Phase::kFinished);
  EXPECT_EQ(sink().status, 503);
  EXPECT_EQ(attempts_.urls.size(), 1u);
  EXPECT_EQ(attempts("503"), 1);
  EXPECT_EQ(inflight(), 0);
}

TEST_F(ExchangeTest, AHedgeThatWinsCancelsTheFirstAttemptWithoutAnOutcome) {
  Exchange& ex = request(R"({"model":"text-embedding-3-small","input":"x"})", "/v1/embeddings");
  ASSERT_EQ(ex.running(), 1u);
  event_base_loop(base_, EVLOOP_ONCE);  // the 1 ms hedge timer
  ASSERT_EQ(ex.running(), 2u);
  EXPECT_EQ(inflight(), 2);
  attempts_.live[1]->answer(200);  // the hedge answers first
  EXPECT_EQ(ex.phase(), Exchange::Phase::kFinished);
  EXPECT_EQ(sink().status, 200);
  // The first attempt is cancelled from the loop (not inside the winner's transfer callback).
  turnLoop();
  EXPECT_EQ(ex.running(), 0u);
  EXPECT_TRUE(attempts_.live.empty());
  EXPECT_EQ(inflight(), 0);
  EXPECT_EQ(attempts("200"), 1);
  EXPECT_EQ(metric("bulwark_upstream_attempts_total", {{"upstream", "main"}}), 1);
  EXPECT_EQ(metric("bulwark_hedges_total", {{"upstream", "main"}, {"result", "won"}}), 1);
  EXPECT_EQ(requests("200"), 1);
}

TEST_F(ExchangeTest, ALoserSpeakingAfterTheEndIsNotCommitted) {
  Exchange& ex = request(R"({"model":"text-embedding-3-small","input":"x"})", "/v1/embeddings");
  event_base_loop(base_, EVLOOP_ONCE);  // the hedge
  ASSERT_EQ(ex.running(), 2u);
  attempts_.live[1]->answer(200, R"({"data":[]})");  // the hedge wins and the response ends
  EXPECT_EQ(ex.phase(), Exchange::Phase::kFinished);
  EXPECT_EQ(ex.running(), 0u);  // the loser went with the end of the response
  EXPECT_TRUE(attempts_.live.empty());
  leave();
  EXPECT_EQ(requests("200"), 1);
  EXPECT_EQ(requests("499"), 0);
  EXPECT_EQ(attempts("200"), 1);
  EXPECT_EQ(metric("bulwark_hedges_total", {{"upstream", "main"}, {"result", "won"}}), 1);
}

TEST_F(ExchangeTest, AHedgeThatWinsAloneAfterTheFirstFailedIsCountedWon) {
  Exchange& ex = request(R"({"model":"text-embedding-3-small","input":"x"})", "/v1/embeddings");
  event_base_loop(base_, EVLOOP_ONCE);
  ASSERT_EQ(ex.running(), 2u);
  attempts_.live[0]->answer(429);  // the first fails during the race: only it ends
  ASSERT_EQ(ex.running(), 1u);
  EXPECT_EQ(ex.phase(), Exchange::Phase::kAttempting);
  attempts_.live[0]->answer(200, R"({"data":[]})");  // the hedge, alone now
  EXPECT_EQ(sink().status, 200);
  EXPECT_EQ(attempts("429"), 1);
  EXPECT_EQ(attempts("200"), 1);
  EXPECT_EQ(metric("bulwark_hedges_total", {{"upstream", "main"}, {"result", "won"}}), 1);
  EXPECT_EQ(metric("bulwark_hedges_total", {{"upstream", "main"}, {"result", "cancelled"}}), 0);
}

// ---- quota-aware admission ----

constexpr char kCosts100[] = R"({"model":"gpt-4o","max_tokens":100})";  // 100 tokens

TEST_F(ExchangeTest, AReservationIsHeldInFlightAndSettledByTheHead) {
  resilience::Quota& quota = quotaReports(1000);
  Exchange& ex = request(kCosts100);
  ASSERT_EQ(ex.phase(), Exchange::Phase::kAttempting);
  EXPECT_EQ(quota.view(clock_.now()).tokens.reserved, 100);
  attempts_.current()->answer(
      200, "{}", "application/json",
      {{"x-ratelimit-limit-tokens", "1000"}, {"x-ratelimit-remaining-tokens", "900"}});
  resilience::Quota::View v = quota.view(clock_.now());
  EXPECT_EQ(v.tokens.reserved, 0);
  EXPECT_EQ(v.tokens.remaining, 900);  // the headers counted it: not twice
  EXPECT_EQ(metric("bulwark_ratelimit_remaining",
                   {{"upstream", "main"}, {"model", "gpt-4o"}, {"kind", "tokens"}}),
            900);
}

// (Here one counted failure opens the breaker: each case is a test of its own.)
TEST_F(ExchangeTest, ARequestThatNeverReachedTheUpstreamGivesItsReservationBack) {
  resilience::Quota& quota = quotaReports(1000);
  request(kCosts100);
  ASSERT_EQ(quota.view(clock_.now()).tokens.reserved, 100);
  attempts_.current()->observer.onDone(TransferError::kConnect, "refused");
  resilience::Quota::View v = quota.view(clock_.now());
  EXPECT_EQ(v.tokens.reserved, 0);
  EXPECT_EQ(v.tokens.remaining, 1000);
}

TEST_F(ExchangeTest, ARequestThatWentOutWithoutAnAnswerIsCharged) {
  resilience::Quota& quota = quotaReports(1000);
  request(kCosts100);
  attempts_.current()->observer.onRequestStart();
  attempts_.current()->observer.onDone(TransferError::kFirstByteTimeout, "slow");
  resilience::Quota::View v = quota.view(clock_.now());
  EXPECT_EQ(v.tokens.reserved, 0);
  EXPECT_EQ(v.tokens.remaining, 900);  // the upstream counted it
}

TEST_F(ExchangeTest, ARequestThatDoesNotFitWaitsAndIsAdmittedOnceTheRefillMakesRoom) {
  resilience::Quota& quota = quotaReports(0);
  Exchange& ex = request(kCosts100);
  ASSERT_EQ(ex.phase(), Exchange::Phase::kQueued);
  EXPECT_TRUE(attempts_.urls.empty());
  EXPECT_EQ(quota.queued(), 1u);
  EXPECT_EQ(metric("bulwark_admission_queue_depth", {{"upstream", "main"}}), 1);
  EXPECT_EQ(inflight(), 0);  // no in-flight slot (or probe) is held while queued
  // 100 tokens and the 2 % headroom (20) take 7.2 s of refill.
  clock_.advance(std::chrono::milliseconds(7300));
  event_base_loop(base_, EVLOOP_ONCE);  // the queue timer (at most 100 ms of real time)
  ASSERT_EQ(ex.phase(), Exchange::Phase::kAttempting);
  EXPECT_EQ(attempts_.urls.size(), 1u);
  EXPECT_EQ(quota.queued(), 0u);
  EXPECT_EQ(metric("bulwark_admission_queue_depth", {{"upstream", "main"}}), 0);
  EXPECT_GE(metric("bulwark_admission_wait_seconds_sum", {{"upstream", "main"}}), 7.3);
}

TEST_F(ExchangeTest, LeavingOrShutdownWhileQueuedFreesThePlaceAndSendsNothing) {
  resilience::Quota& quota = quotaReports(0);
  request(kCosts100);
  Exchange& second = request(kCosts100);
  ASSERT_EQ(quota.queued(), 2u);
  second.terminate();
  EXPECT_EQ(sink().status, 503);
  EXPECT_EQ(quota.queued(), 1u);
  exchanges_.front().reset();  // the first one's client leaves
  EXPECT_EQ(quota.queued(), 0u);
  EXPECT_EQ(requests("499"), 1);
  EXPECT_EQ(metric("bulwark_admission_queue_depth", {{"upstream", "main"}}), 0);
  EXPECT_TRUE(attempts_.urls.empty());
  EXPECT_EQ(quota.view(clock_.now()).tokens.reserved, 0);
}

TEST_F(ExchangeTest, InAFleetTheLocalAdmissionWaitsForTheFleetsConfirmation) {
  FakeArbiter fleet;
  context_.arbiter = &fleet;
  resilience::Quota& quota = quotaReports(1000);
  Exchange& ex = request(kCosts100);
  ASSERT_EQ(fleet.calls.size(), 1u);
  EXPECT_EQ(ex.phase(), Exchange::Phase::kQueued);
  EXPECT_TRUE(attempts_.urls.empty());  // nothing goes out before the fleet answers
  EXPECT_EQ(fleet.calls[0].cost.tokens, 100);
  EXPECT_EQ(fleet.calls[0].room.tokens, 1000 - 20);  // what is left, less the headroom
  fleet.answer(true);
  ASSERT_EQ(ex.phase(), Exchange::Phase::kAttempting);
  attempts_.current()->answer(
      200, "{}", "application/json",
      {{"x-ratelimit-limit-tokens", "1000"}, {"x-ratelimit-remaining-tokens", "900"}});
  EXPECT_EQ(fleet.ended_tokens, 100);  // the fleet's reservation ends with the local one
  EXPECT_EQ(fleet.views, 1);           // and the view goes to the fleet
  EXPECT_EQ(quota.view(clock_.now()).tokens.reserved, 0);
}

TEST_F(ExchangeTest, WhenTheFleetHasNoRoomTheRequestWaitsAndItsReservationGoesBack) {
  FakeArbiter fleet;
  context_.arbiter = &fleet;
  resilience::Quota& quota = quotaReports(1000);
  Exchange& ex = request(kCosts100);
  fleet.answer(false);  // other sidecars hold the room
  EXPECT_EQ(ex.phase(), Exchange::Phase::kQueued);
  EXPECT_EQ(quota.view(clock_.now()).tokens.reserved, 0);
  EXPECT_EQ(quota.queued(), 1u);
  EXPECT_EQ(inflight(), 0);
  event_base_loop(base_, EVLOOP_ONCE);  // the recheck: asks the fleet again
  ASSERT_EQ(fleet.calls.size(), 1u);
  // The client leaves while the fleet answers: its late yes is ended at once.
  leave();
  EXPECT_EQ(quota.view(clock_.now()).tokens.reserved, 0);
  fleet.answer(true);
  EXPECT_EQ(fleet.ended_tokens, 100);
  EXPECT_TRUE(attempts_.urls.empty());
}

TEST_F(ExchangeTest, TheFleetIsToldWhichViewTheRoomCameFrom) {
  FakeArbiter fleet;
  context_.arbiter = &fleet;
  fleet.newest = 5000;
  quotaReports(1000);
  request(kCosts100);
  ASSERT_EQ(fleet.calls.size(), 1u);
  // The mark of the newest view taken, and the headroom: a newer view in the fleet bounds
  // the room by its own numbers, less the same share.
  EXPECT_EQ(fleet.calls[0].seen, 5000);
  EXPECT_DOUBLE_EQ(fleet.calls[0].headroom, 0.02);
  EXPECT_EQ(fleet.calls[0].room.tokens, 1000 - 20);
  fleet.answer(false);
  fleet.newest = 6000;                  // meanwhile, a newer view was taken
  event_base_loop(base_, EVLOOP_ONCE);  // the recheck
  ASSERT_EQ(fleet.calls.size(), 1u);
  EXPECT_EQ(fleet.calls[0].seen, 6000);
  fleet.answer(true);
  attempts_.current()->answer(200);
  EXPECT_EQ(fleet.ended_tokens, 100);
}

TEST_F(ExchangeTest, ShutdownEndsEachPhaseOnce) {
  Exchange& attempting = request();
  attempting.terminate();
  EXPECT_EQ(attempting.phase(), Exchange::Phase::kFinished);
  EXPECT_EQ(sink().status, 503);
  attempting.terminate();  // a second call does nothing
  EXPECT_EQ(requests("503"), 1);
  EXPECT_TRUE(attempts_.live.empty());
  EXPECT_EQ(inflight(), 0);
  EXPECT_EQ(breaker().snapshot().state, resilience::BreakerState::kClosed);
}

// One HTTP/2 connection breaking under several requests is one failure for the breaker: the
// first request it failed counts, the others record nothing (the breaker's last failure is
// the first one's). Before the commit point, and after it.
class BrokenConnectionTest : public ExchangeTest {
 protected:
  static constexpr char kConnection[] = "127.0.0.1:40000->127.0.0.1:443";
  // Two requests whose attempts run on one connection; `answering`: each has its answer's
  // head and first bytes (committed).
  std::pair<FakeTransfer*, FakeTransfer*> twoOnOneConnection(bool answering) {
    FakeTransfer* t[2] = {};
    for (FakeTransfer*& one : t) {
      request();
      one = attempts_.current();
      one->broken = kConnection;
      if (answering) one->beginAnswer(R"({"id":)");
    }
    return {t[0], t[1]};
  }
  // Both fail with the connection, 100 ms apart; returns when the first failed.
  resilience::WallTime breakBoth(std::pair<FakeTransfer*, FakeTransfer*> both) {
    const resilience::WallTime first_at = clock_.wallNow();
    both.first->fail(TransferError::kReset, "Recv failure: Connection reset by peer");
    clock_.advance(std::chrono::milliseconds(100));
    both.second->fail(TransferError::kReset, "the stream was not closed cleanly");
    return first_at;
  }
};

TEST_F(BrokenConnectionTest, RequestsItCarriedCountOnceForTheBreaker) {
  context_.connection_losses = &losses_;
  const resilience::WallTime counted_at = breakBoth(twoOnOneConnection(false));
  EXPECT_EQ(breaker().snapshot().last_failure, counted_at);
  EXPECT_EQ(attempts("reset"), 2);
  EXPECT_EQ(inflight(), 0);  // the second's lease gave its admission back
}

TEST_F(BrokenConnectionTest, AnswersItCutCountOnceForTheBreaker) {
  context_.connection_losses = &losses_;
  auto both = twoOnOneConnection(true);
  ASSERT_EQ(exchanges_[0]->phase(), Exchange::Phase::kCommitted);
  ASSERT_EQ(exchanges_[1]->phase(), Exchange::Phase::kCommitted);
  const resilience::WallTime counted_at = breakBoth(both);
  EXPECT_EQ(breaker().snapshot().last_failure, counted_at);
  EXPECT_TRUE(sinks_[0]->aborted);
  EXPECT_TRUE(sinks_[1]->aborted);
}

// Without the worker's record (a unit that does not give one), each failure counts.
TEST_F(BrokenConnectionTest, WithoutARecordEveryFailureCounts) {
  const resilience::WallTime first_at = breakBoth(twoOnOneConnection(false));
  EXPECT_GT(breaker().snapshot().last_failure, first_at);
}

}  // namespace
}  // namespace bulwark::exchange
