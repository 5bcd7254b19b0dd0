#include "proxy/resilience/sse_scanner.h"

#include <string>

#include <rapidjson/document.h>

namespace bulwark::resilience {
namespace {

constexpr std::string_view kUtf8Bom = "\xEF\xBB\xBF";

// One block of an event stream, up to its terminating blank line.
struct RawEvent {
  bool complete = false;  // an event (a block with a field) ended by a blank line
  std::string name;       // the last `event:` field's value, "" when there is none
  bool has_data = false;
  std::string data;  // the `data:` lines joined by "\n"
  // Complete: just past the blank line. Otherwise: where the block still arriving starts
  // (past any comment-only blocks), so a later scan can resume there.
  std::size_t end = 0;
};

RawEvent nextEvent(std::string_view buffered, std::size_t pos) {
  RawEvent event;
  event.end = pos;
  bool has_field = false;  // the block has a non-comment line: it is an event
  while (pos < buffered.size()) {
    const std::size_t eol = buffered.find_first_of("\r\n", pos);
    if (eol == std::string_view::npos) break;  // the line is still arriving
    const std::string_view line = buffered.substr(pos, eol - pos);
    // A CR that ends the buffer is taken as a whole line ending: a following LF, if it comes,
    // is then an empty line that dispatches nothing, which is what an SSE parser does too.
    pos = eol + 1;
    if (buffered[eol] == '\r' && pos < buffered.size() && buffered[pos] == '\n') ++pos;

    if (line.empty()) {
      if (has_field) {
        event.complete = true;
        event.end = pos;
        return event;
      }
      event.end = pos;  // a comment-only or empty block is not an event: keep looking
      continue;
    }
    if (line.front() == ':') continue;  // comment, e.g. ": keep-alive"

    has_field = true;
    const std::size_t colon = line.find(':');
    const std::string_view field = line.substr(0, colon);
    std::string_view value = colon == std::string_view::npos ? "" : line.substr(colon + 1);
    if (!value.empty() && value.front() == ' ') value.remove_prefix(1);
    if (field == "event") {
      event.name.assign(value);
    } else if (field == "data") {
      if (event.has_data) event.data.push_back('\n');
      event.data.append(value);
      event.has_data = true;
    }
  }
  event.name.clear();
  event.has_data = false;
  event.data.clear();
  return event;
}

// What an event's `data:` JSON says about it.
struct DataFacts {
  bool has_error = false;  // a JSON object whose top-level "error" member is set
  std::string type;        // its top-level "type" string, "" when none
};

DataFacts readData(const RawEvent& event) {
  DataFacts facts;
  if (!event.has_data) return facts;
  rapidjson::Document document;
  document.Parse<rapidjson::kParseIterativeFlag>(event.data.data(), event.data.size());
  if (document.HasParseError() || !document.IsObject()) return facts;
  // Searched as const: rapidjson 1.1's mutable iterators make != ambiguous under C++20.
  const rapidjson::Value& root = document;
  auto error = root.FindMember("error");
  facts.has_error = error != root.MemberEnd() && !error->value.IsNull();
  auto type = root.FindMember("type");
  if (type != root.MemberEnd() && type->value.IsString()) {
    facts.type.assign(type->value.GetString(), type->value.GetStringLength());
  }
  return facts;
}

bool isResponsesPreamble(std::string_view type) {
  return type == "response.created" || type == "response.in_progress" || type == "response.queued";
}

std::size_t afterBom(std::string_view buffered) {
  return buffered.substr(0, kUtf8Bom.size()) == kUtf8Bom ? kUtf8Bom.size() : 0;
}

}  // namespace

FirstEvent scanFirstEvent(std::string_view buffered) {
  RawEvent event = nextEvent(buffered, afterBom(buffered));
  if (!event.complete) return {};
  return {true, event.name == "error" || readData(event).has_error, event.end};
}

CommitPointScanner::Decision CommitPointScanner::scan(std::string_view held) {
  if (resume_ == 0) resume_ = afterBom(held);
  for (;;) {
    RawEvent event = nextEvent(held, resume_);
    resume_ = event.end;
    if (!event.complete) break;
    DataFacts data = readData(event);
    if (event.name == "error" || data.has_error) return Decision::kError;
    if (kind_ == StreamKind::kFirstEvent) return Decision::kCommit;
    // The event's type is its `event:` field, or its JSON "type" when it has none.
    const std::string_view type = event.name.empty() ? std::string_view(data.type) : event.name;
    if (type == "response.failed" || data.type == "error" || data.type == "response.failed") {
      return Decision::kError;
    }
    // Anything else carries output, or finishes the response (completed, incomplete).
    if (!isResponsesPreamble(type)) return Decision::kCommit;
    ++preamble_events_;
  }
  return held.size() > max_held_ ? Decision::kCommit : Decision::kNeedMore;
}

}  // namespace bulwark::resilience
