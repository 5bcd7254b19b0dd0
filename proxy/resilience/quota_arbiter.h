// What a fleet of sidecars offers the quota: one place that sees every sidecar's in-flight
// reservations against an (upstream, model) rate limit, so the fleet together stays under it.
// Defined here, implemented by the fleet layer (Redis); the exchange asks it to confirm what
// its local view admitted. Without a fleet there is none, and the local view decides.
#pragma once

#include <functional>
#include <string>

#include "proxy/resilience/quota.h"

namespace bulwark::resilience {

class QuotaArbiter {
 public:
  virtual ~QuotaArbiter() = default;
  // Whether it can answer now (on the calling thread's loop).
  virtual bool active() const = 0;
  // Reserves `cost` fleet-wide if every sidecar's reservations together stay within `room`
  // (what the local view says is left, less the headroom). `done(true)`: reserved, end() it
  // later; `done(false)`: no room, nothing held. No answer in time: done(true) without a
  // fleet reservation (the local view decides), and end() does nothing for it. Called back
  // exactly once, on the calling thread, possibly before confirm() returns.
  //
  // `seen` is newestView() as read before the local view that `room` comes from. If the fleet
  // holds a newer rate-limit view than that (one whose request may already have left the
  // reservations), that view bounds the room as well, less `headroom` (a share of its
  // limits), and the local quota takes it.
  struct Ticket {
    bool fleet_reserved = false;
  };
  virtual void confirm(const std::string& upstream, const std::string& model, const QuotaCost& cost,
                       const QuotaCost& room, double headroom, long long seen,
                       std::function<void(bool fits, Ticket ticket)> done) = 0;
  // A mark of the newest rate-limit view of (upstream, model) this sidecar has taken, its own
  // or another's: read it before the local quota's view.
  virtual long long newestView(const std::string& upstream, const std::string& model) const = 0;
  // A confirmed reservation ended: settled, charged or released.
  virtual void end(const std::string& upstream, const std::string& model, const QuotaCost& cost,
                   Ticket ticket) = 0;
  // A response's rate-limit headers, counted by the upstream at `as_of`, for a request of
  // `cost`: every sidecar's view takes them (the freshest view wins), as the sidecar's own
  // quota did; one whose view is newer counts the request instead.
  virtual void observed(const std::string& upstream, const std::string& model,
                        const RateLimitHeaders& headers, WallTime as_of, const QuotaCost& cost) = 0;
  // A rate-limit 429 paused (upstream, model) until `until`: every sidecar pauses.
  virtual void cooledDown(const std::string& upstream, const std::string& model,
                          WallTime until) = 0;
};

}  // namespace bulwark::resilience
