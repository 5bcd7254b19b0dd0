// One connection to the fleet's Redis, driven by an event loop (hiredis' async API through
// its libevent adapter): it connects, authenticates and selects its database, reconnects with
// backoff when the connection drops, and answers every command within `timeout`, with the
// reply or with nothing (Redis down, slow, or refusing): the caller's local state decides
// then. Never blocks its loop: the address is resolved once, before the loop runs.
// Single-threaded: use it only from its loop's thread.
#pragma once

#include <event2/event.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "proxy/resilience/clock.h"
#include "proxy/support/libevent.h"

struct redisAsyncContext;
struct redisReply;

namespace bulwark::fleet {

class RedisLink {
 public:
  struct Options {
    std::string ip;  // resolved already
    std::uint16_t port = 6379;
    std::string user;
    std::string password;
    int db = 0;
    resilience::Millis timeout{50};
    std::string name;  // for the logs: "worker 0", "subscriber"
  };
  struct Hooks {
    std::function<void(bool up)> on_state;              // after each change of up()
    std::function<void(std::string_view op)> on_error;  // a command without an answer
  };
  // The reply, or nullptr when none came in time (or an error reply).
  using Callback = std::function<void(const redisReply* reply)>;

  RedisLink(event_base* base, Options options, Hooks hooks);
  ~RedisLink();
  RedisLink(const RedisLink&) = delete;
  RedisLink& operator=(const RedisLink&) = delete;

  void start();
  bool up() const { return up_; }
  // Sends one command; `done` (may be empty) is called exactly once, on this loop. `op` names
  // it in bulwark_cluster_errors_total. Down: `done(nullptr)` at once, nothing is queued.
  void command(const std::vector<std::string>& argv, std::string_view op, Callback done = {});
  // SUBSCRIBE: every message on `channel` goes to `on_message` (also after a reconnect).
  void subscribe(std::string channel, std::function<void(std::string_view)> on_message);

 private:
  struct Pending {
    std::uint64_t id;
    std::string op;
    resilience::SteadyTime deadline;
    Callback done;
  };

  void connect();
  void setUp(bool up);
  void dropConnection(std::string_view why);
  void scheduleReconnect();
  void armTimeoutCheck();
  void send(const std::vector<std::string>& argv, std::uint64_t id);
  void finishPending(std::uint64_t id, const redisReply* reply);

  static void onConnect(const redisAsyncContext* ac, int status);
  static void onDisconnect(const redisAsyncContext* ac, int status);
  static void onReply(redisAsyncContext* ac, void* reply, void* privdata);
  static void onMessage(redisAsyncContext* ac, void* reply, void* privdata);
  static void onTimer(evutil_socket_t, short, void* arg);
  static void onReconnectTimer(evutil_socket_t, short, void* arg);

  event_base* base_;
  Options options_;
  Hooks hooks_;
  resilience::SystemClock clock_;
  redisAsyncContext* context_ = nullptr;
  bool up_ = false;
  bool stopping_ = false;
  std::uint64_t next_id_ = 1;
  std::deque<Pending> pending_;  // in the order sent: Redis answers in order
  support::EventPtr timeout_timer_;
  support::EventPtr reconnect_timer_;
  resilience::Millis backoff_{100};
  std::string channel_;
  std::function<void(std::string_view)> on_message_;
};

}  // namespace bulwark::fleet
