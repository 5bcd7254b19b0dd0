// Decides the commit point of a 200 event stream from the bytes held before it: the first
// complete event for most streams; for the Responses API, the first event past the preamble
// (`response.created`, `response.in_progress`, `response.queued`), which say nothing yet. An
// error before that point (`event: error`, a `data:` JSON object with a top-level "error" key,
// and for Responses `response.failed` or `"type":"error"`) lets the attempt be retried.
// Comment-only blocks (": keep-alive") are not events. Pure.
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

// Which events a stream opens with that carry nothing for the client yet.
enum class StreamKind {
  kFirstEvent,  // any first event decides (chat completions, completions, ...)
  kResponses,   // the Responses API: its preamble events are held too
};

// Walks the events held before the commit point as they arrive. Each call to scan() is given
// every byte held so far (the previous call's bytes are its prefix) and resumes where the last
// one stopped, so a stream trickling in byte by byte is still scanned once. Not thread-safe.
class CommitPointScanner {
 public:
  enum class Decision {
    kNeedMore,  // keep holding: no deciding event yet
    kCommit,    // send the held bytes and the rest to the client
    kError,     // an error before any output: the attempt is a retryable stream_error
  };

  CommitPointScanner() = default;
  // Past `max_held` bytes without a deciding event the stream is committed as it is.
  CommitPointScanner(StreamKind kind, std::size_t max_held) : kind_(kind), max_held_(max_held) {}

  [[nodiscard]] Decision scan(std::string_view held);

  // Complete preamble events seen so far (always 0 for kFirstEvent).
  int preambleEvents() const { return preamble_events_; }

 private:
  StreamKind kind_ = StreamKind::kFirstEvent;
  std::size_t max_held_ = 0;
  std::size_t resume_ = 0;  // where the next event (or a block still arriving) starts
  int preamble_events_ = 0;
};

}  // namespace bulwark::resilience
