// The client side of one worker: accepts on the worker's SO_REUSEPORT socket, owns its
// client connections, and enforces server.max_connections across all workers.
// Single-threaded (the worker's loop) except for the shared connection counter.
#pragma once

#include <atomic>
#include <memory>
#include <unordered_map>

#include "proxy/server/client_connection.h"
#include "proxy/server/request_handler.h"
#include "proxy/support/libevent.h"

namespace bulwark::server {

class ClientServer {
 public:
  // `listen_fd` is a bound, listening, non-blocking socket; ownership passes to this object.
  ClientServer(event_base* base, evutil_socket_t listen_fd, const ConnectionLimits& limits,
               RequestHandler& handler, std::atomic<int>& open_connections, int max_connections);
  ~ClientServer();
  ClientServer(const ClientServer&) = delete;
  ClientServer& operator=(const ClientServer&) = delete;

  // Stops accepting and closes idle connections; busy ones close after their response.
  void drain();
  std::size_t connectionCount() const { return connections_.size(); }
  std::size_t busyCount() const;
  // Ends every active request now (shutdown grace is over); returns how many there were.
  std::size_t terminateAll();

  // Called by a connection that is done; destroys it.
  void release(ClientConnection* connection);

 private:
  static void acceptCallback(evconnlistener* listener, evutil_socket_t fd, sockaddr* addr,
                             int socklen, void* arg);
  static void acceptErrorCallback(evconnlistener* listener, void* arg);
  static void onAcceptResume(evutil_socket_t, short, void* arg);

  event_base* base_;
  ConnectionLimits limits_;
  RequestHandler& handler_;
  std::atomic<int>& open_connections_;
  int max_connections_;
  support::ListenerPtr listener_;
  support::EventPtr accept_resume_;  // re-enables accepting after fd exhaustion
  std::unordered_map<ClientConnection*, std::unique_ptr<ClientConnection>> connections_;
};

}  // namespace bulwark::server
