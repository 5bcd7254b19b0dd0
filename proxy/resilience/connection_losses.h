// An HTTP/2 connection carries many requests at once, and when it breaks (a TCP reset, a
// GOAWAY with an error) every one of them fails with the same loss. For the circuit breaker
// that is one event: counted as one failure per stream, a single broken connection with five
// requests on it would open a cold breaker and turn each of their retries into a fail-fast
// error. So only the first failure reported for a connection within `window` counts, once
// for each thing it is counted against (a breaker: one connection may carry requests for
// several models, each with a breaker of its own).
// Connections are named by their addresses (local and remote): a new connection would share
// a broken one's name only if the kernel handed it the same local port to the same upstream
// within the window (ports are handed out in turn: that takes thousands of connections in a
// second). Pure and single-threaded (one per worker, as each worker has its own
// connections); remembers the last kRemembered losses.
#pragma once

#include <array>
#include <cstddef>
#include <string>
#include <string_view>

#include "proxy/resilience/clock.h"

namespace bulwark::resilience {

class ConnectionLosses {
 public:
  static constexpr std::size_t kRemembered = 16;
  explicit ConnectionLosses(Millis window = Millis(1000)) : window_(window) {}

  // Whether a failure of `connection` is the first reported for it and for `counter` (what
  // it counts against, compared by address only) within the window; true for a failure
  // whose connection is unknown (an empty name).
  bool firstFailure(std::string_view connection, const void* counter, SteadyTime now);

 private:
  struct Loss {
    std::string connection;
    const void* counter = nullptr;
    SteadyTime at{};
  };
  Millis window_;
  std::array<Loss, kRemembered> losses_{};
  std::size_t next_ = 0;  // the slot the next new loss takes (the oldest)
};

}  // namespace bulwark::resilience
