// Fleet mode: the sidecars of a fleet share their circuit breakers through one Redis.
//
//  - A counted failure increments the fleet-wide streak of its breaker (a key with the
//    breaker's window as TTL, and the streak's start); the reply trips the local breaker by
//    the same rules as a local streak, so the fleet opens after failure_threshold failures in
//    total. A success resets the streak, when some sidecar may have counted one.
//  - A breaker that opens publishes its reopen time (a key, and a message on the fleet's
//    channel): every sidecar opens until then, and they move to HALF_OPEN together. The
//    sidecar that opened it sends the one probe (of two that open at once, the one with the
//    smaller id); the others wait for its verdict, published as a close or a new open, and
//    probe for themselves only if it never comes within one more recovery period.
//  - A sidecar that starts, or reconnects, reads the open breakers every sync_interval.
//  - Rate limits: every response's x-ratelimit-* view and every 429 pause is published, and
//    each sidecar's quota takes them as its own (the freshest view wins). What a sidecar's
//    local quota admits is confirmed against every sidecar's
//    in-flight reservations (a hash per (upstream, model), a field per sidecar), atomically,
//    so that sidecars waking for the same refill do not all take it. The request waits for
//    that answer at most cluster.timeout; without one, the local view decides. Each sidecar
//    rewrites its own fields every sync_interval, and a sidecar that stopped refreshing its
//    liveness key no longer counts, so a lost command or a crash leaks nothing for long.
//
// Redis is never on a request's path: every command is sent after the fact, from the worker
// loop that saw the outcome (each worker has its own connection), and its answer, if it
// comes within cluster.timeout, only adds to what the local breaker knows. Redis down, slow
// or flapping: each sidecar decides alone, as without a fleet. Retry budgets stay local.
//
// Thread-safety: onOutcome() and onTransition() run on worker threads (each on its own
// link); the subscriber and the sync run on the main loop. Breakers are thread-safe.
#pragma once

#include <event2/event.h>

#include <atomic>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_set>

#include "config/config.h"
#include "proxy/fleet/redis_link.h"
#include "proxy/observe/metrics.h"
#include "proxy/resilience/quota_arbiter.h"
#include "proxy/resilience/upstream_health.h"

namespace bulwark::fleet {

class Fleet final : public resilience::QuotaArbiter {
 public:
  // `ip`: the Redis host, resolved before any loop runs.
  Fleet(const config::ClusterConfig& config, std::string ip,
        resilience::UpstreamRegistry& upstreams, const resilience::Clock& clock,
        observe::Metrics& metrics);
  ~Fleet() override;
  Fleet(const Fleet&) = delete;
  Fleet& operator=(const Fleet&) = delete;

  // The subscriber and the periodic sync, on the main loop.
  void start(event_base* main_base);
  // A worker's own connection, on its loop; call from the worker's thread before it serves.
  void attachWorker(event_base* worker_base, int index);
  void detachWorker();

  // From the registry's listeners (worker threads).
  void onOutcome(const std::string& upstream, const std::string& model, bool counted_failure,
                 bool busy);
  void onTransition(const std::string& upstream, const std::string& model,
                    resilience::BreakerState from, resilience::BreakerState to);

  // The subscriber and the sync link both work (the sync's periodic read finds a Redis that
  // stopped answering, which a silent subscription cannot).
  // resilience::QuotaArbiter, on worker threads (each with its own link).
  bool active() const override;
  void confirm(const std::string& upstream, const std::string& model,
               const resilience::QuotaCost& cost, const resilience::QuotaCost& room,
               double headroom, long long seen,
               std::function<void(bool fits, Ticket ticket)> done) override;
  long long newestView(const std::string& upstream, const std::string& model) const override;
  void end(const std::string& upstream, const std::string& model, const resilience::QuotaCost& cost,
           Ticket ticket) override;
  void observed(const std::string& upstream, const std::string& model,
                const resilience::RateLimitHeaders& headers, resilience::WallTime as_of,
                const resilience::QuotaCost& cost) override;
  void cooledDown(const std::string& upstream, const std::string& model,
                  resilience::WallTime until) override;

  bool up() const {
    return subscriber_up_.load(std::memory_order_relaxed) &&
           syncer_up_.load(std::memory_order_relaxed);
  }
  const std::string& address() const { return address_; }  // host:port/db, no password

 private:
  // <prefix><family>:<upstream>[:<model>]:<what>, family "breaker" or "quota".
  std::string key(std::string_view family, std::string_view what, const std::string& upstream,
                  const std::string& model) const;
  // Where a message came from: published just now, read back by the sync, or handed back by
  // a reservation. Another sidecar's rate-limit view that is stale counts its request at its
  // first arrival by publication or reservation; one the sync read first never does (the
  // sync reads what was kept, which this sidecar's subscription may have missed).
  enum class Source { kPublished, kSynced, kReserved };
  void onMessage(std::string_view message, Source source);
  // Publishes `message` on this worker's link, and keeps it as `field` of the hash
  // quota:<hash> for `ttl_ms`, for sidecars that start later, unless the hash holds a later
  // one by the number in tab-separated field `order_field` (1-based) of the message.
  void publishKept(const std::string& field, const std::string& message, std::string_view hash,
                   long long ttl_ms, int order_field);
  // Another sidecar (`sender`) opened (upstream, model) until `reopen_ms` (wall clock).
  void applyOpen(const std::string& upstream, const std::string& model, long long reopen_ms,
                 std::string_view sender);
  void sync();
  static void onSyncTimer(evutil_socket_t, short, void* arg);
  RedisLink::Options linkOptions(std::string name) const;
  // What this sidecar knows of the fleet-wide streak of (upstream, model): whether it may be
  // above zero somewhere (the next success resets it), and this sidecar's latest success.
  struct Streak {
    std::atomic<bool> dirty{false};
    std::atomic<long long> last_success_ms{0};  // wall clock
  };
  Streak& streak(const std::string& upstream, const std::string& model);

  config::ClusterConfig config_;
  std::string ip_;
  std::string address_;
  std::string channel_;
  resilience::UpstreamRegistry& upstreams_;
  const resilience::Clock& clock_;
  observe::Metrics& metrics_;
  std::unique_ptr<RedisLink> subscriber_;
  std::unique_ptr<RedisLink> syncer_;
  support::EventPtr sync_timer_;
  std::atomic<bool> subscriber_up_{false};
  std::atomic<bool> syncer_up_{false};
  std::string id_;  // this sidecar's, in what it publishes
  std::mutex own_mutex_;
  std::map<std::string, bool> own_open_;  // "upstream\tmodel": this sidecar published the open
  // This sidecar's fleet reservations in flight, by "upstream\tmodel": rewritten to Redis
  // every sync_interval, so a lost end() does not hold room forever.
  std::mutex reserved_mutex_;
  std::map<std::string, resilience::QuotaCost> reserved_;
  std::mutex streaks_mutex_;
  std::map<std::string, std::unique_ptr<Streak>> streaks_;
  // The send time (wall ms) of the newest rate-limit view taken, by "upstream\tmodel": the
  // reservation script compares it with the fleet's latest.
  void tookView(const std::string& slot, long long as_of_ms);
  mutable std::mutex views_mutex_;
  std::map<std::string, long long> newest_view_ms_;
  // The other sidecars' views seen lately, by "sender;number" (the newest kSeenViewsKept): a
  // view arrives by its publication and may also come back with a reservation or the sync,
  // and only its first arrival may count its request.
  std::unordered_set<std::string> seen_views_;
  std::deque<std::string> seen_order_;
  static constexpr std::size_t kSeenViewsKept = 1024;
  // Whether this is the first arrival of `sender`'s view number `seq` (noted now).
  bool firstSight(std::string_view sender, std::string_view seq);
  std::atomic<std::uint64_t> view_seq_{0};  // numbers this sidecar's views
};

}  // namespace bulwark::fleet
