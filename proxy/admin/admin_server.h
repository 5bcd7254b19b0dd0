// The admin listener (server.admin_listen): /metrics, /healthz, /readyz, /health/detailed,
// /config/routes.
// Runs on the main thread's event loop, separate from client traffic.
#pragma once

#include <atomic>
#include <functional>
#include <string>
#include <string_view>

#include "config/config.h"
#include "proxy/support/libevent.h"

namespace bulwark::admin {

class AdminServer {
 public:
  struct Sources {
    std::function<std::string()> metrics_text;     // Prometheus text format
    std::function<std::string()> health_detailed;  // the /health/detailed JSON
    // The /config/routes JSON for a request's path and model.
    std::function<std::string(std::string_view path, std::string_view model)> route_explanation;
  };
  // `ready` is true while Bulwark is listening and not draining.
  AdminServer(event_base* base, const std::atomic<bool>& ready, Sources sources);
  AdminServer(const AdminServer&) = delete;
  AdminServer& operator=(const AdminServer&) = delete;

  // Binds the address; returns an error message, empty on success.
  std::string listen(const config::ListenAddress& address);
  const config::ListenAddress& bound() const { return bound_; }

 private:
  static void onRequest(evhttp_request* req, void* arg);

  const std::atomic<bool>& ready_;
  Sources sources_;
  support::EvhttpPtr http_;
  config::ListenAddress bound_;
};

}  // namespace bulwark::admin
