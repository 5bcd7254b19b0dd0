// One worker's upstream side: a libcurl multi handle driven by the worker's event_base
// (CURLMOPT_SOCKETFUNCTION / CURLMOPT_TIMERFUNCTION + curl_multi_socket_action), its
// connection cache, and a pool of reusable easy handles. Single-threaded.
#pragma once

#include <curl/curl.h>

#include <memory>
#include <unordered_map>
#include <vector>

#include "proxy/support/curl.h"
#include "proxy/support/libevent.h"

namespace bulwark::upstream {

class Attempt;

class UpstreamClient {
 public:
  explicit UpstreamClient(event_base* base);
  // Every Attempt must be destroyed before its client.
  ~UpstreamClient();
  UpstreamClient(const UpstreamClient&) = delete;
  UpstreamClient& operator=(const UpstreamClient&) = delete;

  event_base* base() const { return base_; }
  // Whether the environment names an HTTP(S) proxy (read once, at start). Without one,
  // transfers tell curl so, which saves it reading the environment on every request.
  bool environmentProxy() const { return environment_proxy_; }

 private:
  friend class Attempt;

  CURL* acquireHandle();
  void releaseHandle(CURL* handle);
  bool add(CURL* handle);
  void remove(CURL* handle);

  static int socketCallback(CURL* easy, curl_socket_t fd, int what, void* clientp, void* socketp);
  static int timerCallback(CURLM* multi, long timeout_ms, void* clientp);
  static void onSocketEvent(evutil_socket_t fd, short events, void* arg);
  static void onTimer(evutil_socket_t fd, short events, void* arg);
  void checkDone();

  event_base* base_;
  bool environment_proxy_ = false;
  support::CurlMultiPtr multi_;
  support::EventPtr timer_;
  std::unordered_map<curl_socket_t, support::EventPtr> socket_events_;
  std::vector<support::CurlEasyPtr> idle_handles_;
};

}  // namespace bulwark::upstream
