#include "proxy/resilience/sse_scanner.h"

#include <string>

#include <rapidjson/document.h>

namespace bulwark::resilience {
namespace {

constexpr std::string_view kUtf8Bom = "\xEF\xBB\xBF";

// `data: {"error": {...}}`: a JSON object whose top-level "error" member is set.
bool isErrorData(const std::string& data) {
  rapidjson::Document document;
  document.Parse<rapidjson::kParseIterativeFlag>(data.data(), data.size());
  if (document.HasParseError() || !document.IsObject()) return false;
  // Searched as const: rapidjson 1.1's mutable iterators make != ambiguous under C++20.
  const rapidjson::Value& root = document;
  auto error = root.FindMember("error");
  return error != root.MemberEnd() && !error->value.IsNull();
}

}  // namespace

FirstEvent scanFirstEvent(std::string_view buffered) {
  std::size_t pos = buffered.substr(0, kUtf8Bom.size()) == kUtf8Bom ? kUtf8Bom.size() : 0;
  bool has_field = false;  // the block has a non-comment line: it is an event
  bool error_type = false;
  bool has_data = false;
  std::string data;
  while (pos < buffered.size()) {
    const std::size_t eol = buffered.find_first_of("\r\n", pos);
    if (eol == std::string_view::npos) break;  // the line is still arriving
    const std::string_view line = buffered.substr(pos, eol - pos);
    // A CR that ends the buffer is taken as a whole line ending: a following LF, if it comes,
    // is then an empty line that dispatches nothing, which is what an SSE parser does too.
    pos = eol + 1;
    if (buffered[eol] == '\r' && pos < buffered.size() && buffered[pos] == '\n') ++pos;

    if (line.empty()) {
      if (has_field) return {true, error_type || (has_data && isErrorData(data)), pos};
      continue;  // a comment-only or empty block is not an event: keep looking
    }
    if (line.front() == ':') continue;  // comment, e.g. ": keep-alive"

    has_field = true;
    const std::size_t colon = line.find(':');
    const std::string_view field = line.substr(0, colon);
    std::string_view value = colon == std::string_view::npos ? "" : line.substr(colon + 1);
    if (!value.empty() && value.front() == ' ') value.remove_prefix(1);
    if (field == "event") {
      error_type = value == "error";
    } else if (field == "data") {
      if (has_data) data.push_back('\n');
      data.append(value);
      has_data = true;
    }
  }
  return {};
}

}  // namespace bulwark::resilience
