#include "proxy/observe/usage.h"

#include <rapidjson/reader.h>

#include <array>
#include <cstdint>
#include <vector>

namespace bulwark::observe {

namespace {

constexpr std::size_t kMaxJsonBody = 1024 * 1024;
constexpr std::size_t kMaxEvent = 64 * 1024;

// The usage fields of one object: each count is the first of its two names that holds an
// integer (Chat Completions names first, then the Responses API's), else 0.
struct UsageFields {
  bool is_object = false;
  std::array<std::optional<long long>, 4> counts;  // prompt, input, completion, output
  std::optional<std::string> model;                // the enclosing object's model

  TokenUsage result() const {
    TokenUsage out;
    out.prompt = counts[0] ? *counts[0] : counts[1].value_or(0);
    out.completion = counts[2] ? *counts[2] : counts[3].value_or(0);
    if (model) out.model = *model;
    return out;
  }
};

// A SAX handler that keeps only what usage needs, without building a document:
// root.usage, root.model, root.response.usage and root.response.model (Responses API
// events). The first occurrence of a key counts, as a lookup in a document would.
class UsageHandler : public rapidjson::BaseReaderHandler<rapidjson::UTF8<>, UsageHandler> {
 public:
  UsageFields root;
  UsageFields response;
  bool root_is_object = false;
  bool response_is_object = false;

  bool StartObject() { return open(true); }
  bool EndObject(rapidjson::SizeType) { return close(); }
  bool StartArray() { return open(false); }
  bool EndArray(rapidjson::SizeType) { return close(); }
  bool Key(const char* str, rapidjson::SizeType len, bool) {
    key_ = std::string_view(str, len);  // parsed in place: points into the document
    return true;
  }
  bool String(const char* str, rapidjson::SizeType len, bool) {
    if (key_ == "model") {
      if (UsageFields* owner = modelOwner()) {
        if (!owner->model && !model_seen_[owner == &response]) owner->model.emplace(str, len);
      }
    }
    markSeen();
    return true;
  }
  bool Int(int i) { return number(i); }
  bool Uint(unsigned u) { return number(u); }
  bool Int64(std::int64_t i) { return number(i); }
  bool Uint64(std::uint64_t u) {
    if (u > static_cast<std::uint64_t>(INT64_MAX)) return Default();
    return number(static_cast<long long>(u));
  }
  bool Default() {
    markSeen();
    return true;
  }

 private:
  enum class Scope { kOther, kRoot, kRootUsage, kResponse, kResponseUsage };

  Scope scope() const { return scopes_.empty() ? Scope::kOther : scopes_.back(); }

  bool open(bool object) {
    Scope parent = scopes_.empty() ? Scope::kOther : scope();
    Scope next = Scope::kOther;
    if (scopes_.empty()) {
      next = object ? Scope::kRoot : Scope::kOther;
      root_is_object = object;
    } else if (object && parent == Scope::kRoot && key_ == "usage" && !usage_seen_[0]) {
      next = Scope::kRootUsage;
      root.is_object = true;
    } else if (object && parent == Scope::kRoot && key_ == "response" && !response_seen_) {
      next = Scope::kResponse;
      response_is_object = true;
    } else if (object && parent == Scope::kResponse && key_ == "usage" && !usage_seen_[1]) {
      next = Scope::kResponseUsage;
      response.is_object = true;
    }
    markSeen();
    scopes_.push_back(next);
    key_ = {};
    return true;
  }

  bool close() {
    scopes_.pop_back();
    key_ = {};
    return true;
  }

  // A key's first value decides: later duplicates are ignored.
  void markSeen() {
    Scope s = scope();
    if (s == Scope::kRoot) {
      if (key_ == "usage") usage_seen_[0] = true;
      if (key_ == "response") response_seen_ = true;
      if (key_ == "model") model_seen_[0] = true;
    } else if (s == Scope::kResponse) {
      if (key_ == "usage") usage_seen_[1] = true;
      if (key_ == "model") model_seen_[1] = true;
    }
  }

  UsageFields* modelOwner() {
    Scope s = scope();
    if (s == Scope::kRoot) return &root;
    if (s == Scope::kResponse) return &response;
    return nullptr;
  }

  bool number(long long n) {
    Scope s = scope();
    UsageFields* fields = s == Scope::kRootUsage       ? &root
                          : s == Scope::kResponseUsage ? &response
                                                       : nullptr;
    if (fields != nullptr) {
      static constexpr std::array<std::string_view, 4> kNames = {
          "prompt_tokens", "input_tokens", "completion_tokens", "output_tokens"};
      for (std::size_t i = 0; i < kNames.size(); ++i) {
        if (key_ == kNames[i] && !fields->counts[i]) fields->counts[i] = n;
      }
    }
    markSeen();
    return true;
  }

  std::vector<Scope> scopes_;
  std::string_view key_;
  std::array<bool, 2> usage_seen_{};  // root, response
  std::array<bool, 2> model_seen_{};
  bool response_seen_ = false;
};

// Parses the document in place (strings are unescaped inside it): no copy of any string
// but the model's.
std::optional<TokenUsage> usageInPlace(std::string& json) {
  UsageHandler handler;
  rapidjson::Reader reader;
  rapidjson::InsituStringStream stream(json.data());
  constexpr unsigned kFlags = rapidjson::kParseIterativeFlag | rapidjson::kParseInsituFlag;
  if (reader.Parse<kFlags>(stream, handler).IsError()) return std::nullopt;
  // A NUL inside the text ends the parse early: a document that is not whole is no answer.
  if (stream.Tell() < json.size() && json.find('\0', stream.Tell()) != std::string::npos) {
    return std::nullopt;
  }
  if (!handler.root_is_object) return std::nullopt;
  if (handler.root.is_object) return handler.root.result();
  if (handler.response_is_object && handler.response.is_object) return handler.response.result();
  return std::nullopt;
}

}  // namespace

std::optional<TokenUsage> usageFromJson(std::string_view json) {
  std::string copy(json);
  return usageInPlace(copy);
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
  if (auto usage = usageInPlace(data)) last_ = std::move(usage);
}

std::optional<TokenUsage> UsageTap::finish() {
  if (overflow_) return std::nullopt;
  if (!event_stream_) return usageInPlace(buffer_);  // the body is not needed after this
  if (!buffer_.empty()) scanEvent(buffer_);
  return last_;
}

}  // namespace bulwark::observe
