// Fuzz target: the event scanners used at the commit point, and the token-usage tap that
// reads streams and JSON bodies as they pass.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "proxy/observe/usage.h"
#include "proxy/resilience/sse_scanner.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  bulwark::resilience::FirstEvent event = bulwark::resilience::scanFirstEvent(text);
  if (event.complete && event.end > text.size()) std::abort();
  // The commit point must not depend on how the bytes were split into reads (while what
  // the first read held is within the bound: past it, the stream is committed as it is).
  using bulwark::resilience::CommitPointScanner;
  for (auto kind : {bulwark::resilience::StreamKind::kFirstEvent,
                    bulwark::resilience::StreamKind::kResponses}) {
    CommitPointScanner whole(kind, 256);
    CommitPointScanner::Decision at_once = whole.scan(text);
    CommitPointScanner split(kind, 256);
    CommitPointScanner::Decision first =
        split.scan(text.substr(0, std::min<std::size_t>(size / 2, 256)));
    CommitPointScanner::Decision in_two =
        first == CommitPointScanner::Decision::kNeedMore ? split.scan(text) : first;
    if (at_once != in_two) std::abort();
  }
  for (bool stream : {true, false}) {
    bulwark::observe::UsageTap tap(stream);
    std::size_t half = size / 2;
    tap.feed(text.data(), half);
    tap.feed(text.data() + half, size - half);
    (void)tap.finish();
  }
  return 0;
}
