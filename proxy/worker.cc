#include "proxy/worker.h"

#include <algorithm>
#include <random>

#include "proxy/observe/logger.h"

namespace bulwark {

namespace {
server::ConnectionLimits limitsFrom(const config::Config& cfg) {
  server::ConnectionLimits limits;
  limits.parser.max_body = cfg.server.max_request_body;
  // A limit above max_request_body would never be reached: every body would be held.
  limits.parser.retry_body = std::min(cfg.server.retry_body_limit, cfg.server.max_request_body);
  limits.header_timeout_ms = cfg.server.header_timeout.count();
  limits.idle_timeout_ms = cfg.server.idle_timeout.count();
  return limits;
}
}  // namespace

Worker::Worker(int index, evutil_socket_t listen_fd, ConfigStore& config_store,
               resilience::UpstreamRegistry& upstreams, observe::Metrics& metrics,
               std::atomic<int>& open_connections, fleet::Fleet* fleet)
    : index_(index),
      config_store_(config_store),
      fleet_(fleet),
      base_(event_base_new()),
      random_(std::random_device{}() ^ (static_cast<std::uint64_t>(index) << 32)) {
  drain_event_.reset(event_new(base_.get(), -1, 0, &Worker::onDrain, this));
  stop_event_.reset(event_new(base_.get(), -1, 0, &Worker::onStop, this));
  cut_event_.reset(event_new(base_.get(), -1, 0, &Worker::onCut, this));
  drain_poll_.reset(event_new(base_.get(), -1, EV_PERSIST, &Worker::onDrainPoll, this));
  upstream_client_ = std::make_unique<upstream::UpstreamClient>(base_.get());
  context_.reset(new exchange::ExchangeContext{*upstream_client_, base_.get(), clock_, random_,
                                               upstreams, metrics, &Worker::currentConfig, this,
                                               fleet});
  handler_ = std::make_unique<exchange::ExchangeHandler>(*context_);
  std::shared_ptr<const config::Config> cfg = config_store_.current();
  server_ =
      std::make_unique<server::ClientServer>(base_.get(), listen_fd, limitsFrom(*cfg), *handler_,
                                             open_connections, cfg->server.max_connections);
}

Worker::~Worker() {
  join();
  // Teardown order: connections (and their exchanges and attempts), then curl, then events.
  server_.reset();
  handler_.reset();
  context_.reset();
  upstream_client_.reset();
  drain_poll_.reset();
  stop_event_.reset();
  cut_event_.reset();
  drain_event_.reset();
  base_.reset();
}

std::shared_ptr<const config::Config> Worker::currentConfig(void* arg) {
  return static_cast<Worker*>(arg)->config_store_.current();
}

void Worker::start() {
  thread_ = std::thread([this] { run(); });
}

void Worker::run() {
  if (fleet_ != nullptr) fleet_->attachWorker(base_.get(), index_);
  event_base_dispatch(base_.get());
  if (fleet_ != nullptr) fleet_->detachWorker();
  connections_left_ = server_->connectionCount();
  finished_.store(true);
}

void Worker::drain() {
  event_active(drain_event_.get(), 0, 0);
}
void Worker::stop() {
  event_active(stop_event_.get(), 0, 0);
}
void Worker::cut() {
  event_active(cut_event_.get(), 0, 0);
}

void Worker::onCut(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<Worker*>(arg);
  std::size_t cut = self->server_->terminateAll();
  if (cut > 0) {
    observe::logWarn("shutdown_grace reached; connections cut",
                     {{"worker", self->index_}, {"connections", cut}});
  }
}

void Worker::join() {
  if (thread_.joinable()) thread_.join();
}

void Worker::onDrain(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<Worker*>(arg);
  self->server_->drain();
  timeval tv = support::toTimeval(20);
  evtimer_add(self->drain_poll_.get(), &tv);
  onDrainPoll(-1, 0, arg);
}

void Worker::onDrainPoll(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<Worker*>(arg);
  if (self->server_->connectionCount() == 0) event_base_loopbreak(self->base_.get());
}

void Worker::onStop(evutil_socket_t, short, void* arg) {
  event_base_loopbreak(static_cast<Worker*>(arg)->base_.get());
}

}  // namespace bulwark
