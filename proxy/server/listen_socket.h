// Bound, listening, non-blocking TCP sockets with SO_REUSEPORT, one per worker, all on the
// same address (port 0 resolves once, so every worker shares the kernel's choice).
#pragma once

#include <event2/util.h>

#include <string>
#include <vector>

#include "config/config.h"

namespace bulwark::server {

struct ListenSockets {
  std::vector<evutil_socket_t> fds;
  config::ListenAddress bound;  // with the real port
  std::string error;            // non-empty on failure (no sockets left open then)
};

[[nodiscard]] ListenSockets openListenSockets(const config::ListenAddress& address, int count);

// The local address of a bound socket as "host:port".
config::ListenAddress boundAddress(evutil_socket_t fd);

}  // namespace bulwark::server
