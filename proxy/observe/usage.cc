#include "proxy/observe/usage.h"

#include <rapidjson/document.h>

namespace bulwark::observe {

namespace {

constexpr std::size_t kMaxJsonBody = 1024 * 1024;
constexpr std::size_t kMaxEvent = 64 * 1024;

long long tokenCount(const rapidjson::Value& usage, const char* a, const char* b) {
  for (const char* key : {a, b}) {
    auto it = usage.FindMember(key);
    if (it != usage.MemberEnd() && it->value.IsInt64()) return it->value.GetInt64();
  }
  return 0;
}

std::optional<TokenUsage> usageOf(const rapidjson::Value& object) {
  if (!object.IsObject()) return std::nullopt;
  auto usage = object.FindMember("usage");
  if (usage == object.MemberEnd() || !usage->value.IsObject()) return std::nullopt;
  TokenUsage out;
  out.prompt = tokenCount(usage->value, "prompt_tokens", "input_tokens");
  out.completion = tokenCount(usage->value, "completion_tokens", "output_tokens");
  auto model = object.FindMember("model");
  if (model != object.MemberEnd() && model->value.IsString()) {
    out.model.assign(model->value.GetString(), model->value.GetStringLength());
  }
  return out;
}

}  // namespace

std::optional<TokenUsage> usageFromJson(std::string_view json) {
  rapidjson::Document doc;
  doc.Parse<rapidjson::kParseIterativeFlag>(json.data(), json.size());
  if (doc.HasParseError() || !doc.IsObject()) return std::nullopt;
  // Searched as const: rapidjson 1.1's mutable iterators make != ambiguous under C++20.
  const rapidjson::Value& root = doc;
  if (auto direct = usageOf(root)) return direct;
  auto response = root.FindMember("response");  // Responses API events
  if (response != root.MemberEnd()) return usageOf(response->value);
  return std::nullopt;
}

void UsageTap::feed(const char* data, std::size_t len) {
  if (overflow_) return;
  if (!event_stream_) {
    if (buffer_.size() + len > kMaxJsonBody) {
      overflow_ = true;  // too large to be worth holding: no token count for this one
      buffer_.clear();
      buffer_.shrink_to_fit();
      return;
    }
    buffer_.append(data, len);
    return;
  }
  // Events are separated by a blank line; only the current, incomplete one is kept. Line
  // endings may be CRLF or LF: dropping every CR makes both "\n\n".
  for (std::size_t i = 0; i < len; ++i) {
    if (data[i] != '\r') buffer_.push_back(data[i]);
  }
  std::size_t start = 0;
  while (true) {
    std::size_t end = buffer_.find("\n\n", start);
    if (end == std::string::npos) break;
    scanEvent(std::string_view(buffer_).substr(start, end - start));
    start = end + 2;
  }
  buffer_.erase(0, start);
  if (buffer_.size() > kMaxEvent) buffer_.clear();  // an oversized event carries no usage
}

void UsageTap::scanEvent(std::string_view event) {
  if (event.find("usage") == std::string_view::npos) return;  // most events: no parsing
  std::string data;
  std::size_t pos = 0;
  while (pos < event.size()) {
    std::size_t eol = event.find('\n', pos);
    std::string_view line = event.substr(pos, eol == std::string_view::npos ? eol : eol - pos);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.starts_with("data:")) {
      line.remove_prefix(5);
      if (!line.empty() && line.front() == ' ') line.remove_prefix(1);
      if (!data.empty()) data += '\n';
      data += line;
    }
    if (eol == std::string_view::npos) break;
    pos = eol + 1;
  }
  if (auto usage = usageFromJson(data)) last_ = std::move(usage);
}

std::optional<TokenUsage> UsageTap::finish() {
  if (overflow_) return std::nullopt;
  if (!event_stream_) return usageFromJson(buffer_);
  if (!buffer_.empty()) scanEvent(buffer_);
  return last_;
}

}  // namespace bulwark::observe
