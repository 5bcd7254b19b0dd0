// One client request's life: attempt the upstream, hold the response head until the first
// body byte (the commit point), then stream the body through with backpressure.
// Owned by the client connection; single-threaded; destroying it cancels the attempt.
#pragma once

#include <memory>
#include <string>

#include "config/config.h"
#include "proxy/exchange/exchange_context.h"
#include "proxy/server/http_request.h"
#include "proxy/server/request_handler.h"
#include "proxy/server/response_sink.h"
#include "proxy/upstream/attempt.h"

namespace bulwark::exchange {

class Exchange final : public server::ActiveRequest, public upstream::AttemptObserver {
 public:
  Exchange(const ExchangeContext& context, server::HttpRequest request,
           server::ResponseSink& sink);
  ~Exchange() override;
  Exchange(const Exchange&) = delete;
  Exchange& operator=(const Exchange&) = delete;

  void start();

  // upstream::AttemptObserver
  void onHead(const upstream::ResponseHead& head) override;
  Flow onData(const char* data, std::size_t len) override;
  void onDone(upstream::TransferError error, const std::string& detail) override;

 private:
  void startAttempt();
  void commit(std::optional<std::uint64_t> content_length);
  void respondWithError(int status, std::string_view code, std::string_view message);
  http::Headers bulwarkHeaders() const;

  const ExchangeContext& context_;
  std::shared_ptr<const config::Config> config_;
  server::HttpRequest request_;
  server::ResponseSink& sink_;
  const config::UpstreamConfig* upstream_ = nullptr;
  std::unique_ptr<upstream::Attempt> attempt_;
  int attempts_ = 0;
  upstream::ResponseHead head_;
  bool has_head_ = false;
  bool committed_ = false;
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
