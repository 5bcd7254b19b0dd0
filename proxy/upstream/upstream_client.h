// One worker's upstream side: libcurl multi handles driven by the worker's event_base
// (CURLMOPT_SOCKETFUNCTION / CURLMOPT_TIMERFUNCTION + curl_multi_socket_action), their
// connection caches, and a pool of reusable easy handles. Single-threaded.
//
// Two lanes, each a multi handle of its own:
//  - the multiplexed lane offers h2 and carries requests whose answers are bounded JSON.
//    A burst waits for the first connection's ALPN (CURLOPT_PIPEWAIT) and a host gets at
//    most kMaxMultiplexedConnections connections, so a burst shares a few connections
//    instead of opening one TLS connection per request;
//  - the HTTP/1.1 lane carries event streams and everything else, one transfer per
//    connection, where TCP flow control holds the upstream back for a slow client.
#pragma once

#include <curl/curl.h>

#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "proxy/support/curl.h"
#include "proxy/upstream/attempt.h"
#include "proxy/support/libevent.h"

namespace bulwark::upstream {

class UpstreamClient final : public AttemptFactory {
 public:
  // h2 connections per upstream host and worker: with the usual server limit of 100 or more
  // concurrent streams, 4 carry 400 concurrent requests before libcurl queues the rest.
  static constexpr long kMaxMultiplexedConnections = 4;

  explicit UpstreamClient(event_base* base);
  // Every Attempt must be destroyed before its client.
  ~UpstreamClient() override;
  UpstreamClient(const UpstreamClient&) = delete;
  UpstreamClient& operator=(const UpstreamClient&) = delete;

  event_base* base() const { return base_; }
  // An Attempt on this client's lanes.
  std::unique_ptr<Transfer> createAttempt(AttemptObserver& observer,
                                          AttemptRequest request) override;
  // One TLS session cache for all of this worker's transfers (single-threaded: no locks).
  // Without it each pooled easy handle keeps sessions of its own, and a new connection
  // resumes a session only if its handle happened to hold one.
  CURLSH* share() const { return share_.get(); }
  // Whether the environment names an HTTP(S) proxy (read once, at start). Without one,
  // transfers tell curl so, which saves it reading the environment on every request.
  bool environmentProxy() const { return environment_proxy_; }

 private:
  friend class Attempt;

  // One multi handle with its timer and socket events.
  struct Lane {
    UpstreamClient* client = nullptr;
    support::CurlMultiPtr multi;
    support::EventPtr timer;
    std::unordered_map<curl_socket_t, support::EventPtr> socket_events;
    std::vector<CURL*> running;  // handles in the multi
    bool in_timer = false;       // onTimer is running: a 0 ms timeout waits for the next pass
  };

  // Easy handles are pooled. A handle whose last transfer was a plain held-body POST keeps
  // its options, filed under its "profile" (lane, proxy, CA file: what the static options
  // depend on), and a transfer of the same profile gets it back with only the per-request
  // options left to set. Any other handle is reset on release. *warm says which it got.
  CURL* acquireHandle(const std::string* profile, bool* warm);
  void releaseHandle(CURL* handle, const std::string* warm_profile);
  // Whether a transfer that asks to multiplex gets the multiplexed lane: only https origins
  // (h2 is negotiated by ALPN), and not those that answered without h2 before. Otherwise
  // the lane's PIPEWAIT and connection cap would queue requests behind one HTTP/1.1
  // connection, until its first response, or behind four.
  bool multiplexes(std::string_view url) const;
  // A response on the multiplexed lane came over HTTP/1.x: this worker sends that origin's
  // requests over the HTTP/1.1 lane from now on.
  void noteHttp1Only(std::string_view url);
  bool add(CURL* handle, bool multiplex);
  void remove(CURL* handle, bool multiplex);
  // Makes libcurl send what it holds back for the h2 connections of running transfers (an
  // RST_STREAM of a cancelled stream, above all): libcurl 7.88 flushes a connection's output
  // when one of its transfers is unpaused, so each running, unpaused multiplexed transfer
  // is paused and resumed at once. Called outside every curl callback.
  void flushMultiplexedConnections();

  void initLane(Lane& lane, bool multiplex);
  Lane& lane(bool multiplex) { return multiplex ? multiplexed_ : http1_; }
  static int socketCallback(CURL* easy, curl_socket_t fd, int what, void* clientp, void* socketp);
  static int timerCallback(CURLM* multi, long timeout_ms, void* clientp);
  static void onSocketEvent(evutil_socket_t fd, short events, void* arg);
  static void onTimer(evutil_socket_t fd, short events, void* arg);
  static void checkDone(Lane& lane);

  event_base* base_;
  bool environment_proxy_ = false;
  support::CurlSharePtr share_;
  Lane multiplexed_;
  Lane http1_;
  std::vector<support::CurlEasyPtr> idle_handles_;
  std::unordered_map<std::string, std::vector<support::CurlEasyPtr>> warm_handles_;
  std::size_t warm_count_ = 0;
  std::unordered_set<std::string> http1_only_origins_;  // "https://host:port"
};

}  // namespace bulwark::upstream
