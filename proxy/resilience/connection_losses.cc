#include "proxy/resilience/connection_losses.h"

namespace bulwark::resilience {

bool ConnectionLosses::firstFailure(std::string_view connection, const void* counter,
                                    SteadyTime now) {
  if (connection.empty()) return true;
  for (const Loss& loss : losses_) {
    if (!loss.connection.empty() && loss.connection == connection && loss.counter == counter &&
        now - loss.at <= window_) {
      return false;
    }
  }
  Loss& slot = losses_[next_];
  next_ = (next_ + 1) % losses_.size();
  slot.connection.assign(connection);
  slot.counter = counter;
  slot.at = now;
  return true;
}

}  // namespace bulwark::resilience
