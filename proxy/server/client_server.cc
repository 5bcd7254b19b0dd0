#include "proxy/server/client_server.h"

#include <cerrno>
#include <cstring>
#include <vector>

#include "proxy/observe/logger.h"

namespace bulwark::server {

ClientServer::ClientServer(event_base* base, evutil_socket_t listen_fd,
                           const ConnectionLimits& limits, RequestHandler& handler,
                           std::atomic<int>& open_connections, int max_connections)
    : base_(base),
      limits_(limits),
      handler_(handler),
      open_connections_(open_connections),
      max_connections_(max_connections) {
  listener_.reset(evconnlistener_new(base, &ClientServer::acceptCallback, this,
                                     LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, -1, listen_fd));
  evconnlistener_set_error_cb(listener_.get(), &ClientServer::acceptErrorCallback);
  accept_resume_.reset(evtimer_new(base, &ClientServer::onAcceptResume, this));
}

ClientServer::~ClientServer() {
  accept_resume_.reset();
  listener_.reset();
  open_connections_.fetch_sub(static_cast<int>(connections_.size()));
  connections_.clear();
}

void ClientServer::acceptCallback(evconnlistener*, evutil_socket_t fd, sockaddr*, int, void* arg) {
  auto* self = static_cast<ClientServer*>(arg);
  evutil_make_socket_nonblocking(fd);
  auto connection =
      std::make_unique<ClientConnection>(*self, self->base_, fd, self->limits_, self->handler_);
  ClientConnection* raw = connection.get();
  self->connections_.emplace(raw, std::move(connection));
  int open = self->open_connections_.fetch_add(1) + 1;
  if (open > self->max_connections_) {
    raw->rejectAndClose(503, "overloaded",
                        "Bulwark is at server.max_connections; retry on another connection later");
  }
}

void ClientServer::acceptErrorCallback(evconnlistener* listener, void* arg) {
  // Out of file descriptors (EMFILE/ENFILE, ENOBUFS): the pending connection stays in the
  // backlog and the listener would fire again at once. Pause accepting for a moment instead
  // of spinning (and flooding the log); connections being served free fds meanwhile.
  auto* self = static_cast<ClientServer*>(arg);
  int err = EVUTIL_SOCKET_ERROR();
  observe::logError("accept failed; pausing new connections for 100ms",
                    {{"error", evutil_socket_error_to_string(err)}});
  evconnlistener_disable(listener);
  timeval pause = support::toTimeval(100);
  evtimer_add(self->accept_resume_.get(), &pause);
}

void ClientServer::onAcceptResume(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<ClientServer*>(arg);
  if (self->listener_) evconnlistener_enable(self->listener_.get());
}

void ClientServer::release(ClientConnection* connection) {
  auto it = connections_.find(connection);
  if (it == connections_.end()) return;
  std::unique_ptr<ClientConnection> owned = std::move(it->second);
  connections_.erase(it);
  open_connections_.fetch_sub(1);
  owned.reset();
}

void ClientServer::drain() {
  listener_.reset();
  std::vector<ClientConnection*> idle;
  for (auto& [raw, owned] : connections_) {
    if (raw->drain()) idle.push_back(raw);
  }
  for (ClientConnection* c : idle) release(c);
}

std::size_t ClientServer::busyCount() const {
  std::size_t n = 0;
  for (const auto& [raw, owned] : connections_) n += raw->busy() ? 1 : 0;
  return n;
}

}  // namespace bulwark::server

namespace bulwark::server {

std::size_t ClientServer::terminateAll() {
  std::vector<ClientConnection*> busy;
  for (auto& [raw, owned] : connections_) {
    if (raw->busy()) busy.push_back(raw);
  }
  for (ClientConnection* c : busy) c->terminate();
  return busy.size();
}

}  // namespace bulwark::server
