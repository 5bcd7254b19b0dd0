// Fuzz target: the first-event scanner used at the commit point, and the token-usage tap
// that reads streams and JSON bodies as they pass.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "proxy/observe/usage.h"
#include "proxy/resilience/sse_scanner.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  bulwark::resilience::FirstEvent event = bulwark::resilience::scanFirstEvent(text);
  if (event.complete && event.end > text.size()) std::abort();
  for (bool stream : {true, false}) {
    bulwark::observe::UsageTap tap(stream);
    std::size_t half = size / 2;
    tap.feed(text.data(), half);
    tap.feed(text.data() + half, size - half);
    (void)tap.finish();
  }
  return 0;
}
