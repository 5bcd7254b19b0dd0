// The rate-limit quota of one (upstream, model), learned from the x-ratelimit-* headers that
// OpenAI (and Azure OpenAI) send on every response, success or error. Two buckets, requests
// and tokens, each with a limit, what remains, and when it is full again. Between responses
// the model accounts for what is in flight: a request reserves its estimated cost when it is
// sent, and the reservation is settled when its response's headers arrive (they already
// count it) or released when it never reached the upstream. A bucket refills continuously
// toward its limit, at the rate the last headers imply, as OpenAI's limiter does.
//
// Requests that do not fit wait in a FIFO: each takes a ticket, and a request is admitted only
// when everything queued before it has been (a large request is not starved by small ones).
//
// Pure (no I/O, no clock of its own: every call takes `now`) and thread-safe: every worker
// reserves from the same quota.
#pragma once

#include <algorithm>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>

#include "proxy/http/header.h"
#include "proxy/resilience/clock.h"

namespace bulwark::resilience {

// What one response said about the quota. Absent headers stay unset.
struct RateLimitHeaders {
  std::optional<double> limit_requests, limit_tokens;
  std::optional<double> remaining_requests, remaining_tokens;
  std::optional<Millis> reset_requests, reset_tokens;  // until the bucket is full again
  bool any() const;
};
RateLimitHeaders parseRateLimitHeaders(const http::Headers& headers);

struct QuotaCost {
  double requests = 1;
  double tokens = 0;
};

class Quota {
 public:
  // One bucket as the model sees it now.
  struct BucketView {
    double limit = 0;      // 0: not known yet
    double remaining = 0;  // refilled to now, before reservations
    double reserved = 0;   // in flight, not yet settled
    Millis until_full{0};
  };
  struct View {
    BucketView requests, tokens;
    std::optional<SteadyTime> cooldown_until;
    std::size_t queued = 0;
  };
  using Ticket = std::uint64_t;  // a place in the queue; 0 is none
  // The wait a queued request is told when only those ahead of it hold it back.
  static constexpr Millis kQueueRecheck{10};

  // A response's headers: the buckets take what the server says it has left. `as_of` is when
  // the server counted it: when its request was sent, which can be long before the answer
  // (a generation takes seconds), so answers arrive out of order. An older view than the one
  // held is stale (requests it does not count may have been settled by newer ones) and only
  // its limit is taken; a newer one replaces the view as of `now`. Returns whether the
  // view was taken (every `remaining` it has): only then does it count its own request, so
  // settle() that one; otherwise charge() it (requests sent close together can reach the
  // upstream in another order, and the view held may not count this one).
  bool observe(const RateLimitHeaders& headers, SteadyTime now);
  bool observe(const RateLimitHeaders& headers, SteadyTime now, SteadyTime as_of);
  // Another sidecar's view, from the answer to its request of `cost`: taken as observe()
  // takes it. A bucket that finds it stale counts that request instead (it may be in no view
  // held), as the sender counts its own request when its view is stale.
  bool observeOthers(const RateLimitHeaders& headers, SteadyTime now, SteadyTime as_of,
                     const QuotaCost& cost);
  // Reserves `cost` if it fits, keeping `headroom` (a share of each limit) free, and nothing
  // queued is ahead of it: a newcomer (ticket 0) is behind every queued request, a queued one
  // behind those with smaller tickets (an admitted ticket leaves the queue). Without a wait
  // the reservation is held: settle(), charge() or release() it. Otherwise `wait` is how
  // long until it (and everything ahead of it) would fit, by refill or the cooldown, and
  // nothing is held. A bucket whose limit is not known yet never blocks; a cost larger than
  // the limit waits for a full bucket (the upstream judges it then).
  struct Admission {
    bool admitted = false;
    Millis wait{0};
  };
  Admission tryReserve(const QuotaCost& cost, double headroom, SteadyTime now, Ticket ticket = 0);
  // A place in the queue for a request that did not fit; nullopt when `max_queue` are
  // already waiting. Every ticket leaves, admitted by tryReserve() or by leave().
  std::optional<Ticket> enqueue(const QuotaCost& cost, std::size_t max_queue);
  void leave(Ticket ticket);
  std::size_t queued() const;
  // The reserved request's response headers arrived (observe() them first): they count it.
  void settle(const QuotaCost& cost);
  // The reserved request reached the upstream, but no headers said what is left: the
  // upstream counted it, so the buckets do too.
  void charge(const QuotaCost& cost);
  // The reserved request never reached the upstream: its cost goes back.
  void release(const QuotaCost& cost);
  // A rate-limit 429: admission pauses until `until`.
  void cooldown(SteadyTime until);

  View view(SteadyTime now) const;

 private:
  struct Bucket {
    double limit = 0;
    double remaining = 0;
    double reserved = 0;
    double rate_per_ms = 0;  // refill speed implied by the last headers
    SteadyTime updated{};
    void refill(SteadyTime now);
    // Whether `remaining` (if any) was taken.
    bool observe(std::optional<double> limit, std::optional<double> remaining,
                 std::optional<Millis> reset, SteadyTime now, SteadyTime as_of);
    SteadyTime as_of{};  // when the server counted the view `remaining` came from
    // A request the view held may not count: what is left drops by its `amount`.
    void count(double amount) {
      if (limit > 0) remaining = std::max(0.0, remaining - amount);
    }
    // How long until `amount` fits under the limit less `keep`; 0 when it fits now.
    std::optional<Millis> waitFor(double amount, double keep) const;
    BucketView view(SteadyTime now) const;
  };

  // The total cost of the queued tickets before `ticket` (all of them for 0).
  QuotaCost aheadOf(Ticket ticket) const;

  mutable std::mutex mutex_;
  std::map<Ticket, QuotaCost> queue_;
  Ticket next_ticket_ = 1;
  Bucket requests_;
  Bucket tokens_;
  std::optional<SteadyTime> cooldown_until_;
};

}  // namespace bulwark::resilience
