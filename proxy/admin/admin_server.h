// The admin listener (server.admin_listen): /healthz, /readyz, and later /metrics and
// /health/detailed. Runs on the main thread's event loop, separate from client traffic.
#pragma once

#include <atomic>
#include <string>

#include "config/config.h"
#include "proxy/support/libevent.h"

namespace bulwark::admin {

class AdminServer {
 public:
  // `ready` is true while Bulwark is listening and not draining.
  AdminServer(event_base* base, const std::atomic<bool>& ready);
  AdminServer(const AdminServer&) = delete;
  AdminServer& operator=(const AdminServer&) = delete;

  // Binds the address; returns an error message, empty on success.
  std::string listen(const config::ListenAddress& address);
  const config::ListenAddress& bound() const { return bound_; }

 private:
  static void onRequest(evhttp_request* req, void* arg);

  const std::atomic<bool>& ready_;
  support::EvhttpPtr http_;
  config::ListenAddress bound_;
};

}  // namespace bulwark::admin
