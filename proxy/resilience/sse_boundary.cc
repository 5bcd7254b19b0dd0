#include "proxy/resilience/sse_boundary.h"

namespace bulwark::resilience {

std::size_t lastEventEnd(std::string_view bytes) {
  for (std::size_t i = bytes.size(); i >= 2; --i) {
    char last = bytes[i - 1];
    char before = bytes[i - 2];
    if (last == '\n' && before == '\n') return i;
    if (last == '\r' && before == '\r') return i;
    if (last == '\n' && before == '\r' && i >= 4 && bytes[i - 3] == '\n' && bytes[i - 4] == '\r') {
      return i;
    }
  }
  return 0;
}

}  // namespace bulwark::resilience
