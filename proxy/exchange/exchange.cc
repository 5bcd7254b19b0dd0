#include "proxy/exchange/exchange.h"

#include <utility>

#include "proxy/exchange/forwarding.h"
#include "proxy/http/openai_error.h"
#include "proxy/observe/logger.h"

namespace bulwark::exchange {

namespace {
// Bytes queued for a slow client before the upstream transfer is paused.
constexpr std::size_t kPauseThreshold = 64 * 1024;
}  // namespace

Exchange::Exchange(const ExchangeContext& context, server::HttpRequest request,
                   server::ResponseSink& sink)
    : context_(context),
      config_(context.config()),
      request_(std::move(request)),
      sink_(sink) {}

Exchange::~Exchange() {
  sink_.onDrained(nullptr);
  attempt_.reset();  // cancels a running transfer
}

void Exchange::start() {
  upstream_ = &config_->upstreams.front();
  startAttempt();
}

void Exchange::startAttempt() {
  ++attempts_;
  has_head_ = false;
  head_ = upstream::ResponseHead{};
  upstream::AttemptRequest req;
  req.url = upstreamUrl(*upstream_, request_.path);
  req.method = request_.method;
  req.headers = upstreamRequestHeaders(request_.headers, *upstream_);
  req.body = &request_.body;
  req.ca_file = upstream_->ca_file;
  req.connect_timeout = config_->timeouts.connect;
  req.first_byte_timeout = config_->timeouts.first_byte;
  req.idle_timeout = config_->timeouts.idle;
  attempt_ = std::make_unique<upstream::Attempt>(context_.upstream_client, *this, std::move(req));
  attempt_->start();
}

http::Headers Exchange::bulwarkHeaders() const {
  return {{"x-bulwark-attempts", std::to_string(attempts_)},
          {"x-bulwark-upstream", upstream_->name}};
}

void Exchange::onHead(const upstream::ResponseHead& head) {
  head_ = head;
  has_head_ = true;
}

void Exchange::commit(std::optional<std::uint64_t> content_length) {
  committed_ = true;
  http::Headers headers = clientResponseHeaders(head_.headers);
  for (http::Header& h : bulwarkHeaders()) headers.push_back(std::move(h));
  sink_.sendHead(head_.status, headers, content_length);
}

upstream::AttemptObserver::Flow Exchange::onData(const char* data, std::size_t len) {
  if (!committed_) commit(head_.content_length);
  if (sink_.pendingOutput() >= kPauseThreshold) {
    // The client reads slower than the upstream sends: hold the upstream until it drains.
    sink_.onDrained([this] {
      sink_.onDrained(nullptr);
      if (attempt_) attempt_->resume();
    });
    return Flow::kPause;
  }
  sink_.sendBody(data, len);
  return Flow::kContinue;
}

void Exchange::onDone(upstream::TransferError error, const std::string& detail) {
  if (error == upstream::TransferError::kNone) {
    if (!committed_) commit(head_.content_length.value_or(0));
    sink_.finish();
    return;
  }
  observe::logWarn("upstream attempt failed",
                   {{"upstream", upstream_->name},
                    {"attempt", attempts_},
                    {"outcome", upstream::transferErrorName(error)},
                    {"detail", detail}});
  if (committed_) {
    sink_.abort();  // the client sees a truncated response, never a silently short one
    return;
  }
  respondWithError(502, "upstream_unavailable",
                   "the upstream could not be reached: " + std::string(detail));
}

void Exchange::respondWithError(int status, std::string_view code, std::string_view message) {
  committed_ = true;
  std::string body = http::openAiErrorBody(code, message);
  http::Headers headers{{"Content-Type", "application/json"}, {"x-should-retry", "false"}};
  for (http::Header& h : bulwarkHeaders()) headers.push_back(std::move(h));
  sink_.sendHead(status, headers, body.size());
  sink_.sendBody(body.data(), body.size());
  sink_.finish();
}

std::unique_ptr<server::ActiveRequest> ExchangeHandler::handle(server::HttpRequest request,
                                                               server::ResponseSink& sink) {
  auto exchange = std::make_unique<Exchange>(context_, std::move(request), sink);
  exchange->start();
  return exchange;
}

}  // namespace bulwark::exchange
