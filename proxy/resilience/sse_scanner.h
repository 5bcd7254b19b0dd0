// Finds the first complete Server-Sent Event in the bytes held before the commit point and
// says whether it is an error event (`event: error`, or a `data:` JSON object with a
// top-level "error" key). Comment-only blocks (": keep-alive") are not events. Pure.
#pragma once

#include <cstddef>
#include <string_view>

namespace bulwark::resilience {

struct FirstEvent {
  bool complete = false;  // a whole event (ended by a blank line) is in the buffer
  bool is_error = false;
  std::size_t end = 0;  // offset just past the event's terminating blank line
};

// Events end at "\n\n", "\r\n\r\n" or "\r\r" (any mix of line endings).
FirstEvent scanFirstEvent(std::string_view buffered);

}  // namespace bulwark::resilience
