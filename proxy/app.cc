#include "proxy/app.h"

#include <netdb.h>
#include <sched.h>
#include <sys/socket.h>

#include <algorithm>
#include <csignal>
#include <fstream>
#include <string>
#include <thread>

#include "config/loader.h"
#include "proxy/admin/route_explain.h"
#include "proxy/observe/health.h"
#include "proxy/observe/logger.h"
#include "proxy/server/listen_socket.h"
#include "proxy/version.h"

namespace bulwark {

namespace {

// Cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota, so that
// `workers: 0` in a container with a CPU limit does not start one thread per node core.
int usableCpus() {
  int cpus = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) cpus = std::max(1, CPU_COUNT(&set));
  std::ifstream cpu_max("/sys/fs/cgroup/cpu.max");
  std::string quota;
  long long period = 0;
  if (cpu_max >> quota >> period && quota != "max" && period > 0) {
    long long q = std::atoll(quota.c_str());
    if (q > 0) cpus = std::min<long long>(cpus, std::max(1LL, (q + period - 1) / period));
  }
  return cpus;
}

}  // namespace

App::App(std::string config_path, config::Config config)
    : config_path_(std::move(config_path)),
      config_store_(std::move(config)),
      upstreams_(*config_store_.current(), clock_),
      metrics_(config_store_.current()->metrics) {
  for (const config::UpstreamConfig& u : config_store_.current()->upstreams) {
    metrics_.declareUpstream(u.name);
  }
  upstreams_.setTransitionListener([this](const std::string& upstream, const std::string& model,
                                          resilience::BreakerState from,
                                          resilience::BreakerState to) {
    metrics_.breakerTransition(upstream, resilience::breakerStateName(to));
    if (fleet_) fleet_->onTransition(upstream, model, from, to);
    observe::LogLevel level = to == resilience::BreakerState::kOpen ? observe::LogLevel::kError
                                                                    : observe::LogLevel::kInfo;
    if (!observe::Logger::get().enabled(level)) return;
    observe::Logger::get().log(level, "circuit breaker transition",
                               {{"upstream", upstream},
                                {"model", model},
                                {"from", resilience::breakerStateName(from)},
                                {"to", resilience::breakerStateName(to)}});
  });
}

App::~App() {
  for (auto& w : workers_) w->stop();
  workers_.clear();
  fleet_.reset();
  admin_.reset();
  signal_events_.clear();
  shutdown_poll_.reset();
  shutdown_deadline_.reset();
  shutdown_hard_stop_.reset();
  base_.reset();
}

int App::run() {
  std::shared_ptr<const config::Config> cfg = config_store_.current();
  observe::Logger::get().configure(cfg->log.level, cfg->log.format);
  base_.reset(event_base_new());

  running_listen_ = cfg->server.listen;
  running_admin_listen_ = cfg->server.admin_listen;
  running_workers_setting_ = cfg->server.workers;
  int workers = cfg->server.workers;
  if (workers == 0) workers = usableCpus();
  server::ListenSockets sockets = server::openListenSockets(cfg->server.listen, workers);
  if (!sockets.error.empty()) {
    observe::logError("cannot start", {{"error", sockets.error}});
    return 1;
  }
  admin_ = std::make_unique<admin::AdminServer>(
      base_.get(), ready_,
      admin::AdminServer::Sources{
          [this] { return metricsText(); },
          [this] {
            std::optional<observe::ClusterHealth> cluster;
            if (fleet_) cluster = observe::ClusterHealth{fleet_->address(), fleet_->up()};
            return observe::healthDetailedJson(upstreams_, clock_.wallNow(), clock_.now(),
                                               cluster ? &*cluster : nullptr);
          },
          [this](std::string_view path, std::string_view model) {
            return admin::routeExplanationJson(*config_store_.current(), path, model);
          }});
  std::string admin_error = admin_->listen(cfg->server.admin_listen);
  if (!admin_error.empty()) {
    observe::logError("cannot start", {{"error", admin_error}});
    return 1;
  }

  startFleet(*cfg);
  for (int i = 0; i < workers; ++i) {
    workers_.push_back(std::make_unique<Worker>(i, sockets.fds[i], config_store_, upstreams_,
                                                metrics_, open_connections_, fleet_.get()));
  }
  for (auto& w : workers_) w->start();

  for (int sig : {SIGTERM, SIGINT, SIGHUP}) {
    signal_events_.emplace_back(evsignal_new(base_.get(), sig, &App::onSignal, this));
    evsignal_add(signal_events_.back().get(), nullptr);
  }
  ready_.store(true);
  std::string listen = sockets.bound.toString();
  std::string admin_listen = admin_->bound().toString();
  observe::logInfo("listening", {{"listen", listen},
                                 {"admin_listen", admin_listen},
                                 {"workers", workers},
                                 {"version", version()},
                                 {"upstreams", static_cast<int>(cfg->upstreams.size())}});

  event_base_dispatch(base_.get());

  std::size_t cut = 0;
  for (auto& w : workers_) {
    w->stop();
    w->join();
    cut += w->connectionsLeft();
  }
  if (cut > 0) {
    observe::logWarn("connections dropped at exit", {{"connections", cut}});
  }
  observe::logInfo("stopped");
  return 0;
}

std::string App::metricsText() {
  // Gauges that mirror shared state are refreshed at scrape time.
  for (resilience::UpstreamHealth* u : upstreams_.current()) {
    metrics_.inflight(u->name(), u->inflight());
    metrics_.breakerState(u->name(), static_cast<int>(u->summary().state));
  }
  return metrics_.serialize();
}

void App::onSignal(evutil_socket_t signal, short, void* arg) {
  auto* self = static_cast<App*>(arg);
  if (signal == SIGHUP) {
    self->reload();
  } else {
    self->beginShutdown(signal == SIGTERM ? "SIGTERM" : "SIGINT");
  }
}

void App::beginShutdown(const char* signal_name) {
  if (shutting_down_) return;
  shutting_down_ = true;
  ready_.store(false);
  std::shared_ptr<const config::Config> cfg = config_store_.current();
  observe::logInfo(
      "shutting down: draining in-flight requests",
      {{"signal", signal_name},
       {"shutdown_grace_ms", static_cast<long long>(cfg->server.shutdown_grace.count())}});
  for (auto& w : workers_) w->drain();
  shutdown_poll_.reset(event_new(base_.get(), -1, EV_PERSIST, &App::onShutdownPoll, this));
  timeval poll = support::toTimeval(20);
  evtimer_add(shutdown_poll_.get(), &poll);
  shutdown_deadline_.reset(evtimer_new(base_.get(), &App::onShutdownDeadline, this));
  timeval grace = support::toTimeval(cfg->server.shutdown_grace.count());
  evtimer_add(shutdown_deadline_.get(), &grace);
}

void App::onShutdownPoll(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<App*>(arg);
  for (auto& w : self->workers_) {
    if (!w->finished()) return;
  }
  event_base_loopbreak(self->base_.get());
}

void App::onShutdownDeadline(evutil_socket_t, short, void* arg) {
  // Grace is over: end what still runs properly (an interruption event for streams, an
  // error for requests still waiting), give the bytes a moment to leave, then stop.
  auto* self = static_cast<App*>(arg);
  for (auto& w : self->workers_) w->cut();
  self->shutdown_hard_stop_.reset(evtimer_new(self->base_.get(), &App::onShutdownHardStop, self));
  timeval flush = support::toTimeval(1000);
  evtimer_add(self->shutdown_hard_stop_.get(), &flush);
}

void App::onShutdownHardStop(evutil_socket_t, short, void* arg) {
  event_base_loopbreak(static_cast<App*>(arg)->base_.get());
}

void App::reload() {
  config::LoadResult result = config::loadConfigFile(config_path_, config::processEnv());
  if (!result.ok()) {
    for (const config::ConfigError& e : result.errors) {
      observe::logError("reload rejected: invalid configuration; keeping the old one",
                        {{"error", e.toString()}});
    }
    return;
  }
  const config::ServerConfig& next = result.config->server;
  if (!(next.listen == running_listen_) || !(next.admin_listen == running_admin_listen_) ||
      next.workers != running_workers_setting_) {
    observe::logWarn(
        "reload: server.listen, server.admin_listen and server.workers change only "
        "on restart; still running with the old ones");
  }
  if (!(result.config->cluster == config_store_.current()->cluster)) {
    observe::logWarn("reload: cluster changes only on restart; still running with the old one");
  }
  observe::Logger::get().configure(result.config->log.level, result.config->log.format);
  upstreams_.reload(*result.config);  // before the swap: new requests find every upstream
  for (const config::UpstreamConfig& u : result.config->upstreams) metrics_.declareUpstream(u.name);
  config_store_.replace(std::move(*result.config));
  observe::logInfo("configuration reloaded", {{"path", config_path_}});
}

void App::startFleet(const config::Config& config) {
  if (!config.cluster) return;
  const config::ClusterConfig& cluster = *config.cluster;
  // Resolved once, here, before any loop runs: hiredis would resolve on the loop, blocking it.
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (getaddrinfo(cluster.host.c_str(), nullptr, &hints, &found) != 0 || found == nullptr) {
    observe::logError("fleet: cluster.redis's host does not resolve; running alone",
                      {{"host", cluster.host}});
    return;
  }
  char ip[NI_MAXHOST];
  int named =
      getnameinfo(found->ai_addr, found->ai_addrlen, ip, sizeof ip, nullptr, 0, NI_NUMERICHOST);
  freeaddrinfo(found);
  if (named != 0) return;
  fleet_ = std::make_unique<fleet::Fleet>(cluster, ip, upstreams_, clock_, metrics_);
  upstreams_.setOutcomeListener(
      [this](const std::string& upstream, const std::string& model, bool counted_failure,
             bool busy) { fleet_->onOutcome(upstream, model, counted_failure, busy); });
  fleet_->start(base_.get());
  observe::logInfo("fleet mode", {{"redis", fleet_->address()},
                                  {"key_prefix", cluster.key_prefix},
                                  {"timeout_ms", static_cast<long long>(cluster.timeout.count())}});
}

}  // namespace bulwark
