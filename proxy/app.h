// The running process: listeners, worker threads, the admin listener, and the signal
// handling (SIGTERM/SIGINT drain, SIGHUP reload). Lives on the main thread.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "config/config.h"
#include "proxy/admin/admin_server.h"
#include "proxy/config_store.h"
#include "proxy/fleet/fleet.h"
#include "proxy/observe/metrics.h"
#include "proxy/resilience/clock.h"
#include "proxy/resilience/upstream_health.h"
#include "proxy/support/libevent.h"
#include "proxy/worker.h"

namespace bulwark {

class App {
 public:
  App(std::string config_path, config::Config config);
  ~App();
  App(const App&) = delete;
  App& operator=(const App&) = delete;

  // Runs until shut down; returns the process exit code.
  int run();

 private:
  static void onSignal(evutil_socket_t signal, short, void* arg);
  static void onShutdownPoll(evutil_socket_t, short, void* arg);
  static void onShutdownDeadline(evutil_socket_t, short, void* arg);
  static void onShutdownHardStop(evutil_socket_t, short, void* arg);
  void beginShutdown(const char* signal_name);
  void reload();
  std::string metricsText();
  // Fleet mode, when the config has a cluster: section whose Redis host resolves.
  void startFleet(const config::Config& config);

  std::string config_path_;
  ConfigStore config_store_;
  resilience::SystemClock clock_;
  resilience::UpstreamRegistry upstreams_;
  observe::Metrics metrics_;
  std::atomic<bool> ready_{false};
  std::atomic<int> open_connections_{0};
  support::EventBasePtr base_;
  std::vector<support::EventPtr> signal_events_;
  support::EventPtr shutdown_poll_;
  support::EventPtr shutdown_deadline_;
  support::EventPtr shutdown_hard_stop_;
  // What the process actually runs with; a reload cannot change these.
  config::ListenAddress running_listen_;
  config::ListenAddress running_admin_listen_;
  int running_workers_setting_ = 0;
  std::unique_ptr<fleet::Fleet> fleet_;  // fleet mode (cluster:), else none
  std::unique_ptr<admin::AdminServer> admin_;
  std::vector<std::unique_ptr<Worker>> workers_;
  bool shutting_down_ = false;
};

}  // namespace bulwark
