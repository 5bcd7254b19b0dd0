#include "proxy/server/listen_socket.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace bulwark::server {

config::ListenAddress boundAddress(evutil_socket_t fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  config::ListenAddress out;
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return out;
  char host[INET6_ADDRSTRLEN] = {};
  if (ss.ss_family == AF_INET6) {
    auto* sin6 = reinterpret_cast<sockaddr_in6*>(&ss);
    inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof host);
    out.port = ntohs(sin6->sin6_port);
  } else {
    auto* sin = reinterpret_cast<sockaddr_in*>(&ss);
    inet_ntop(AF_INET, &sin->sin_addr, host, sizeof host);
    out.port = ntohs(sin->sin_port);
  }
  out.host = host;
  return out;
}

namespace {

evutil_socket_t openOne(const addrinfo* ai, std::string* error) {
  evutil_socket_t fd =
      socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
  if (fd < 0) {
    *error = std::string("socket: ") + std::strerror(errno);
    return -1;
  }
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
  if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 4096) != 0) {
    *error = std::string("bind/listen: ") + std::strerror(errno);
    close(fd);
    return -1;
  }
  return fd;
}

}  // namespace

ListenSockets openListenSockets(const config::ListenAddress& address, int count) {
  ListenSockets result;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  std::string port = std::to_string(address.port);
  for (int i = 0; i < count; ++i) {
    addrinfo* ai = nullptr;
    int rc = getaddrinfo(address.host.c_str(), port.c_str(), &hints, &ai);
    if (rc != 0 || ai == nullptr) {
      result.error = "cannot resolve " + address.toString() + ": " + gai_strerror(rc);
    } else {
      evutil_socket_t fd = openOne(ai, &result.error);
      freeaddrinfo(ai);
      if (fd >= 0) {
        result.fds.push_back(fd);
        if (i == 0) {
          result.bound = boundAddress(fd);
          port = std::to_string(result.bound.port);  // port 0: the others share this one
        }
        continue;
      }
    }
    for (evutil_socket_t fd : result.fds) close(fd);
    result.fds.clear();
    result.error = "cannot listen on " + address.toString() + ": " + result.error;
    return result;
  }
  return result;
}

}  // namespace bulwark::server
