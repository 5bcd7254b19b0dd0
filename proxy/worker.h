// One event-loop thread: its own event_base, its SO_REUSEPORT listener and client
// connections, its curl multi handle, and the exchanges between them. The public methods
// are the only ones safe to call from other threads: they set a flag and write to the
// worker's eventfd, which its loop watches. The loops share no libevent object, so libevent
// runs without its thread locks.
#pragma once

#include <atomic>
#include <memory>
#include <thread>

#include "proxy/config_store.h"
#include "proxy/exchange/exchange.h"
#include "proxy/exchange/exchange_context.h"
#include "proxy/fleet/fleet.h"
#include "proxy/observe/metrics.h"
#include "proxy/resilience/clock.h"
#include "proxy/resilience/connection_losses.h"
#include "proxy/resilience/upstream_health.h"
#include "proxy/server/client_server.h"
#include "proxy/support/libevent.h"
#include "proxy/upstream/upstream_client.h"

namespace bulwark {

class Worker {
 public:
  Worker(int index, evutil_socket_t listen_fd, ConfigStore& config_store,
         resilience::UpstreamRegistry& upstreams, observe::Metrics& metrics,
         std::atomic<int>& open_connections, fleet::Fleet* fleet = nullptr);
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  void start();
  // Stop accepting; exit the loop once every connection is closed.
  void drain();
  // The grace period is over: every active request ends now (streams get their
  // interruption event, waiting requests an error), then the loop exits once flushed.
  void cut();
  // Exit the loop now; whatever is in flight is dropped.
  void stop();
  void join();
  bool finished() const { return finished_.load(); }
  // Connections still open when the loop ended (valid after join()).
  std::size_t connectionsLeft() const { return connections_left_; }

 private:
  static std::shared_ptr<const config::Config> currentConfig(void* arg);
  enum Request : unsigned { kDrain = 1, kCut = 2, kStop = 4 };
  void post(Request request);
  static void onWake(evutil_socket_t fd, short, void* arg);
  void onDrain();
  void onCut();
  static void onDrainPoll(evutil_socket_t, short, void* arg);
  void run();

  int index_;
  ConfigStore& config_store_;
  fleet::Fleet* fleet_;
  support::EventBasePtr base_;
  std::atomic<unsigned> requests_{0};  // Request bits posted by other threads
  int wake_fd_ = -1;                   // eventfd: written by post(), read by onWake()
  support::EventPtr wake_event_;
  support::EventPtr drain_poll_;
  resilience::SystemClock clock_;
  resilience::SeededRandom random_;
  resilience::ConnectionLosses connection_losses_;
  std::unique_ptr<upstream::UpstreamClient> upstream_client_;
  std::unique_ptr<exchange::ExchangeContext> context_;
  std::unique_ptr<exchange::ExchangeHandler> handler_;
  std::unique_ptr<server::ClientServer> server_;
  std::thread thread_;
  std::atomic<bool> finished_{false};
  std::size_t connections_left_ = 0;
};

}  // namespace bulwark
