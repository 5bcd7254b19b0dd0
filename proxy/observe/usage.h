// Reads token usage out of upstream responses as they pass: the `usage` object of a JSON
// response, or of the event that carries it in a stream (chat completions with
// stream_options.include_usage; the Responses API's response.completed). Pure; bounded
// memory (a JSON body is kept up to 1 MiB, a stream only its current event, up to 64 KiB).
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace bulwark::observe {

struct TokenUsage {
  std::string model;         // the response's "model", when present
  long long prompt = 0;      // prompt_tokens or input_tokens
  long long completion = 0;  // completion_tokens or output_tokens
};

// The usage of one JSON document ({"usage":{...}} or {"response":{"usage":{...}}}).
std::optional<TokenUsage> usageFromJson(std::string_view json);

// The same, read by the full JSON parser over the whole document: slower, and the reference
// the fast read above must agree with on every well-formed document.
std::optional<TokenUsage> usageFromJsonByParser(std::string_view json);

class UsageTap {
 public:
  // `event_stream`: the body is text/event-stream; otherwise JSON (any other body: disable).
  explicit UsageTap(bool event_stream) : event_stream_(event_stream) {}
  void feed(const char* data, std::size_t len);
  // The last usage seen (streams) or the body's (JSON), once the body is complete.
  std::optional<TokenUsage> finish();

 private:
  void scanEvent(std::string_view event);

  bool event_stream_;
  bool overflow_ = false;
  std::string buffer_;
  std::optional<TokenUsage> last_;
};

}  // namespace bulwark::observe
