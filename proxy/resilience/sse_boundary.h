// Where the complete events end in a chunk of an event stream: after the commit point an
// event stream is forwarded in whole events, so a cut never leaves half an event at the
// client. Pure.
#pragma once

#include <cstddef>
#include <string_view>

namespace bulwark::resilience {

// The offset just past the last event-terminating blank line in `bytes` ("\n\n", "\r\r" or
// "\r\n\r\n"), or 0 when `bytes` holds no complete event end.
std::size_t lastEventEnd(std::string_view bytes);

}  // namespace bulwark::resilience
