// The rate-limit quota of one (upstream, model), learned from the x-ratelimit-* headers that
// OpenAI (and Azure OpenAI) send on every response, success or error. Two buckets, requests
// and tokens. Each has two separate facts:
//   - the rate: what the limit says, `limit` per minute, whatever the limiter's bucket size;
//   - the capacity: the burst the limiter enforces at once. A limiter may hold its whole minute,
//     or enforce it in short buckets ("quantized": 60,000 a minute as 1,000 a second), and then
//     reports `remaining` and `reset` for the short bucket. The capacity is learned: the
//     `reset` cross-check (remaining + reset * rate is what the bucket holds when full), never
//     below the largest `remaining` seen lately, halved by a 429 the model said would fit, and
//     raised slowly after that. Or it is fixed as a share of the minute (QuotaRules::burst).
// Between responses the model accounts for what is in flight: a request reserves its
// estimated cost when it is sent, and the reservation is settled when its response's headers
// arrive (they already count it) or released when it never reached the upstream. Once it is
// sent the upstream has counted it: its cost leaves `remaining` then (so the refill toward the
// burst starts from below it, as the limiter's does), and a view of what the upstream has left
// counts it if its request was sent well after (kReorder); a view that does not is taken less
// the requests in flight that it misses.
//
// Requests that do not fit wait in a FIFO: each takes a ticket, and a request is admitted only
// when everything queued before it has been (a large request is not starved by small ones).
//
// 429s the model did not foresee ("surprises") are counted; when they keep coming, the quota
// falls back: admission stops holding requests back for a while (they go out as with admission
// off), and tries again after it.
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
#include "proxy/resilience/sliding_counts.h"

namespace bulwark::resilience {

// What one response said about the quota. Absent headers stay unset.
struct RateLimitHeaders {
  std::optional<double> limit_requests, limit_tokens;
  std::optional<double> remaining_requests, remaining_tokens;
  std::optional<Millis> reset_requests, reset_tokens;  // until the bucket is full again
  bool any() const;
};
RateLimitHeaders parseRateLimitHeaders(const http::Headers& headers);

// The wait an OpenAI rate-limit error's message names ("... Please try again in 1.2s."), if
// the body is such an error; nullopt otherwise. Never throws, any input.
std::optional<Millis> tryAgainIn(std::string_view error_body);

struct QuotaCost {
  double requests = 1;
  double tokens = 0;
};

// A route's admission settings that the quota applies.
struct QuotaRules {
  // Implicit from a headroom alone: the burst is then learned.
  QuotaRules(double headroom_share = 0, double burst_share = 0)  // NOLINT(google-explicit-constructor)
      : headroom(headroom_share), burst(burst_share) {}
  double headroom;  // the share of each limit kept free (at most a quarter of the burst)
  double burst;     // the enforced burst as a share of the limit; 0: learned
};

class Quota {
 public:
  // One bucket as the model sees it now.
  struct BucketView {
    double limit = 0;      // 0: not known yet
    double capacity = 0;   // the burst the limiter enforces (the limit until learned)
    double remaining = 0;  // refilled to now, before reservations
    double reserved = 0;   // admitted, not sent yet
    Millis until_full{0};
  };
  struct View {
    BucketView requests, tokens;
    std::optional<SteadyTime> cooldown_until;
    std::size_t queued = 0;
    std::int64_t surprises = 0;                 // in the last kSurpriseWindow
    std::optional<SteadyTime> fallback_until;  // admission is off for now
  };
  using Ticket = std::uint64_t;  // a place in the queue; 0 is none
  using Hold = std::uint64_t;    // a reservation of an admitted request; 0 is none
  // A view counts the requests sent at least this long before its own; closer ones may reach
  // the upstream after it.
  static constexpr Millis kReorder{50};
  // The wait a queued request is told when only those ahead of it hold it back.
  static constexpr Millis kQueueRecheck{10};
  // A rate limit is per minute: the rate every bucket refills at is its limit over this.
  static constexpr Millis kMinute{60000};
  // The largest `remaining` seen within this long bounds the learned capacity from below.
  static constexpr Millis kPeakWindow{120000};
  // After a surprise the capacity grows back by at most this share of the limit a minute.
  static constexpr double kRaisePerMinute = 0.1;
  // Surprises in this window, at least kFallbackSurprises of them and kFallbackShare of the
  // admitted requests, put the quota in fallback for kFallbackFor (doubled, up to
  // kFallbackMax, when it falls back again within kFallbackMax of the last one ending).
  static constexpr Millis kSurpriseWindow{60000};
  static constexpr int kFallbackSurprises = 5;
  static constexpr double kFallbackShare = 0.02;
  static constexpr Millis kFallbackFor{60000};
  static constexpr Millis kFallbackMax{600000};

  Quota() : window_(kSurpriseWindow) {}
  Quota(const Quota&) = delete;
  Quota& operator=(const Quota&) = delete;

  // A response's headers: the buckets take what the server says it has left. `as_of` is when
  // the server counted it: when its request was sent, which can be long before the answer
  // (a generation takes seconds), so answers arrive out of order. An older view than the one
  // held is stale (requests it does not count may have been settled by newer ones) and only
  // its limit is taken; a newer one replaces the view as of `now`. Returns whether the
  // view was taken (every `remaining` it has): only then does it count its own request, so
  // settle() that one; otherwise charge() it (requests sent close together can reach the
  // upstream in another order, and the view held may not count this one).
  // `own` is the hold of the view's own request, if any: the view counts it.
  bool observe(const RateLimitHeaders& headers, SteadyTime now);
  bool observe(const RateLimitHeaders& headers, SteadyTime now, SteadyTime as_of, Hold own = 0);
  // Another sidecar's view, from the answer to its request of `cost`: taken as observe()
  // takes it. A bucket that finds it stale counts that request instead (it may be in no view
  // held), as the sender counts its own request when its view is stale.
  bool observeOthers(const RateLimitHeaders& headers, SteadyTime now, SteadyTime as_of,
                     const QuotaCost& cost);
  // Reserves `cost` if it fits, keeping the headroom (a share of each limit) free, and nothing
  // queued is ahead of it: a newcomer (ticket 0) is behind every queued request, a queued one
  // behind those with smaller tickets (an admitted ticket leaves the queue). Without a wait
  // the reservation is held as `hold`: sent(), then settle(), charge() or release() it.
  // Otherwise `wait` is how
  // long until it (and everything ahead of it) would fit, by refill or the cooldown, and
  // nothing is held. A bucket whose limit is not known yet never blocks; a cost larger than
  // the capacity waits for a full bucket (the upstream judges it then). `rules.burst` fixes
  // the capacity from then on (the last route's setting applies to the quota).
  struct Admission {
    bool admitted = false;
    Millis wait{0};
    Hold hold = 0;
  };
  Admission tryReserve(const QuotaCost& cost, const QuotaRules& rules, SteadyTime now,
                       Ticket ticket = 0);
  // Whether admission holds requests back now: false while in fallback. `resumed` is set
  // to true by the one call that finds a fallback over.
  bool admitting(SteadyTime now, bool* resumed = nullptr);
  // A rate-limit 429 (its headers, observed already) on a request that admission let through
  // as fitting: the buckets it did not fit in (by the 429's own `remaining`) lower their
  // learned capacity at once, for every worker. Returns true when this surprise put the quota
  // in fallback.
  bool surprised(const RateLimitHeaders& headers, const QuotaCost& cost, SteadyTime now);
  // A place in the queue for a request that did not fit; nullopt when `max_queue` are
  // already waiting. Every ticket leaves, admitted by tryReserve() or by leave().
  std::optional<Ticket> enqueue(const QuotaCost& cost, std::size_t max_queue);
  void leave(Ticket ticket);
  std::size_t queued() const;
  // The reserved request went out at `at`: the upstream counts it now, and so does the model.
  void sent(Hold hold, SteadyTime at);
  // The reserved request's response headers arrived (observe() them first): they count it.
  void settle(Hold hold);
  // The reserved request reached the upstream, but no headers said what is left (or only a
  // view older than the one held): the upstream counted it, so the buckets do too, unless a
  // newer view counted it already.
  void charge(Hold hold);
  // The reserved request never reached the upstream: its cost goes back.
  void release(Hold hold);
  // A rate-limit 429: admission pauses until `until`.
  void cooldown(SteadyTime until);

  View view(SteadyTime now) const;
  // Whether a response has reported a limit yet (before it, nothing is held back).
  bool knowsLimit() const;

 private:
  struct Bucket {
    double limit = 0;
    double remaining = 0;
    double reserved = 0;
    double learned = 0;  // the learned capacity; 0 until a `remaining` was seen
    double fixed = 0;    // a fixed capacity as a share of the limit; 0: the learned one
    // The largest `remaining` in the current and the previous kPeakWindow / 2.
    double peak = 0, previous_peak = 0;
    SteadyTime peak_since{};
    std::optional<SteadyTime> lowered_at;  // the last surprise; raised slowly after it
    SteadyTime raised_at{};
    SteadyTime updated{};
    double ratePerMs() const { return limit / static_cast<double>(kMinute.count()); }
    double capacity() const;
    void refill(SteadyTime now);
    double peakSeen(SteadyTime now);
    void learn(double seen, std::optional<Millis> reset, SteadyTime now);
    void lower(SteadyTime now);
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
  struct Reservation {
    QuotaCost cost;
    std::optional<SteadyTime> sent_at;
    bool in_requests_view = false, in_tokens_view = false;  // counted by that bucket's view
  };
  // A fresh view of `bucket`, as of `as_of`, was taken: requests sent kReorder before it (and
  // its own) are in it; the others in flight still take their cost from it.
  void countedBy(Bucket& bucket, bool Reservation::*in_view, double QuotaCost::*amount,
                 SteadyTime as_of, Hold own);
  bool observeLocked(const RateLimitHeaders& headers, SteadyTime now, SteadyTime as_of,
                     const QuotaCost& cost, Hold own);
  // Ends a hold: `counted` says whether the upstream counted it (its cost then leaves the
  // bucket unless its view holds it already).
  void end(Hold hold, bool counted);

  mutable std::mutex mutex_;
  SlidingCounts window_;  // admitted requests, surprises
  std::optional<SteadyTime> fallback_until_;
  std::optional<SteadyTime> last_fallback_end_;
  Millis fallback_for_ = kFallbackFor;
  bool resume_untold_ = false;
  std::map<Ticket, QuotaCost> queue_;
  std::map<Hold, Reservation> holds_;
  Hold next_hold_ = 1;
  Ticket next_ticket_ = 1;
  Bucket requests_;
  Bucket tokens_;
  std::optional<SteadyTime> cooldown_until_;
};

}  // namespace bulwark::resilience
