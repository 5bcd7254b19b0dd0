#include "proxy/worker.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <stdexcept>

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
  wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wake_fd_ < 0) throw std::runtime_error("eventfd failed");
  wake_event_.reset(event_new(base_.get(), wake_fd_, EV_READ | EV_PERSIST, &Worker::onWake, this));
  event_add(wake_event_.get(), nullptr);
  drain_poll_.reset(event_new(base_.get(), -1, EV_PERSIST, &Worker::onDrainPoll, this));
  upstream_client_ = std::make_unique<upstream::UpstreamClient>(base_.get());
  context_.reset(new exchange::ExchangeContext{*upstream_client_, base_.get(), clock_, random_,
                                               upstreams, metrics, &Worker::currentConfig, this,
                                               fleet, &connection_losses_});
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
  wake_event_.reset();
  base_.reset();
  close(wake_fd_);
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
  post(kDrain);
}
void Worker::stop() {
  post(kStop);
}
void Worker::cut() {
  post(kCut);
}

void Worker::post(Request request) {
  requests_.fetch_or(request, std::memory_order_release);
  std::uint64_t one = 1;
  // A full counter (never, in practice) still leaves the fd readable: the request is seen.
  [[maybe_unused]] ssize_t n = write(wake_fd_, &one, sizeof one);
}

void Worker::onWake(evutil_socket_t fd, short, void* arg) {
  auto* self = static_cast<Worker*>(arg);
  std::uint64_t count = 0;
  [[maybe_unused]] ssize_t n = read(fd, &count, sizeof count);
  unsigned requests = self->requests_.exchange(0, std::memory_order_acquire);
  if (requests & kStop) {
    event_base_loopbreak(self->base_.get());
    return;
  }
  if (requests & kDrain) self->onDrain();
  if (requests & kCut) self->onCut();
}

void Worker::onCut() {
  std::size_t cut = server_->terminateAll();
  if (cut > 0) {
    observe::logWarn("shutdown_grace reached; connections cut",
                     {{"worker", index_}, {"connections", cut}});
  }
}

void Worker::join() {
  if (thread_.joinable()) thread_.join();
}

void Worker::onDrain() {
  server_->drain();
  timeval tv = support::toTimeval(20);
  evtimer_add(drain_poll_.get(), &tv);
  onDrainPoll(-1, 0, this);
}

void Worker::onDrainPoll(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<Worker*>(arg);
  if (self->server_->connectionCount() == 0) event_base_loopbreak(self->base_.get());
}


}  // namespace bulwark
