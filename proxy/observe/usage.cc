#include "proxy/observe/usage.h"

#include <rapidjson/allocators.h>
#include <rapidjson/reader.h>

#include <array>
#include <charconv>
#include <cstdint>
#include <cstring>
#include <utility>
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

  TokenUsage result() && {
    TokenUsage out;
    out.prompt = counts[0] ? *counts[0] : counts[1].value_or(0);
    out.completion = counts[2] ? *counts[2] : counts[3].value_or(0);
    if (model) out.model = std::move(*model);
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

  // Only the first levels matter; deeper ones are all kOther and only counted.
  static constexpr int kTracked = 4;
  Scope scope() const {
    return depth_ == 0 || depth_ > kTracked ? Scope::kOther : scopes_[depth_ - 1];
  }

  bool open(bool object) {
    Scope parent = scope();
    Scope next = Scope::kOther;
    if (depth_ == 0) {
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
    if (depth_ < kTracked) scopes_[depth_] = next;
    ++depth_;
    key_ = {};
    return true;
  }

  bool close() {
    --depth_;
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

  std::array<Scope, kTracked> scopes_{};
  int depth_ = 0;
  std::string_view key_;
  std::array<bool, 2> usage_seen_{};  // root, response
  std::array<bool, 2> model_seen_{};
  bool response_seen_ = false;
};

// Parses the document in place (strings are unescaped inside it): no copy of any string
// but the model's.
std::optional<TokenUsage> usageInPlace(std::string& json) {
  UsageHandler handler;
  // The parser's own stack starts in a buffer here: no allocation for ordinary answers.
  alignas(16) char stack_buffer[1024];
  rapidjson::MemoryPoolAllocator<> pool(stack_buffer, sizeof stack_buffer);
  rapidjson::GenericReader<rapidjson::UTF8<>, rapidjson::UTF8<>, rapidjson::MemoryPoolAllocator<>>
      reader(&pool, 256);
  rapidjson::InsituStringStream stream(json.data());
  constexpr unsigned kFlags = rapidjson::kParseIterativeFlag | rapidjson::kParseInsituFlag;
  if (reader.Parse<kFlags>(stream, handler).IsError()) return std::nullopt;
  // A NUL inside the text ends the parse early: a document that is not whole is no answer.
  if (stream.Tell() < json.size() && json.find('\0', stream.Tell()) != std::string::npos) {
    return std::nullopt;
  }
  if (!handler.root_is_object) return std::nullopt;
  if (handler.root.is_object) return std::move(handler.root).result();
  if (handler.response_is_object && handler.response.is_object) {
    return std::move(handler.response).result();
  }
  return std::nullopt;
}

}  // namespace

// Where the top-level "model" and "usage" values are, found by a skim that follows only
// strings and nesting (no values decoded, nothing allocated). A chat completion is ~0.5 KiB
// of which only those two values matter: the full parse then runs over a small document
// made of them. Falls back to the full parse when the answer may be nested (a Responses
// API event keeps its usage under "response"). It gives up when a string or the nesting is
// broken; the rest of the document is not validated (the two values are, by the parse).
struct TopLevel {
  std::string_view model;  // the raw value, quotes included; empty when absent
  std::string_view usage;  // the raw object; empty when absent
  bool response = false;   // a top-level "response" key
};

constexpr int kMaxSkimDepth = 512;

// The first position at or after `i` that is not JSON whitespace, or npos. (A loop, where
// find_first_not_of with a set would call memchr once per character.)
std::size_t skipSpace(std::string_view s, std::size_t i) {
  while (i < s.size() && (s[i] == ' ' || s[i] == '\t' || s[i] == '\r' || s[i] == '\n')) ++i;
  return i < s.size() ? i : std::string_view::npos;
}

// The closing quote of the string whose opening quote is at `open`, or npos: memchr to the
// next quote, which ends the string unless an odd run of backslashes escapes it.
std::size_t stringEnd(std::string_view s, std::size_t open) {
  std::size_t from = open + 1;
  while (from < s.size()) {
    const void* hit = std::memchr(s.data() + from, '"', s.size() - from);
    if (hit == nullptr) return std::string_view::npos;
    std::size_t quote = static_cast<const char*>(hit) - s.data();
    std::size_t backslashes = 0;
    while (quote - backslashes > open + 1 && s[quote - backslashes - 1] == '\\') ++backslashes;
    if (backslashes % 2 == 0) return quote;
    from = quote + 1;
  }
  return std::string_view::npos;
}

std::optional<TopLevel> skimTopLevel(std::string_view json) {
  TopLevel found;
  const std::size_t n = json.size();
  std::size_t i = skipSpace(json, 0);
  if (i == std::string_view::npos || json[i] != '{') return std::nullopt;
  int depth = 0;
  std::size_t usage_start = std::string_view::npos;  // the usage value being skimmed
  bool usage_seen = false;
  bool model_seen = false;
  for (; i < n; ++i) {
    const char c = json[i];
    if (c == '"') {
      std::size_t end = stringEnd(json, i);
      if (end == std::string_view::npos) return std::nullopt;  // an unterminated string
      if (depth == 1) {
        std::size_t colon = skipSpace(json, end + 1);
        if (colon != std::string_view::npos && json[colon] == ':') {  // a top-level key
          std::string_view key = json.substr(i + 1, end - i - 1);
          std::size_t value = skipSpace(json, colon + 1);
          if (value == std::string_view::npos) return std::nullopt;
          if (key == "usage" && !usage_seen) {
            usage_seen = true;
            if (json[value] == '{') usage_start = value;
          } else if (key == "model" && !model_seen) {
            model_seen = true;
            if (json[value] == '"') {
              std::size_t close = stringEnd(json, value);
              if (close == std::string_view::npos) return std::nullopt;
              found.model = json.substr(value, close - value + 1);
            }
          } else if (key == "response") {
            found.response = true;
          }
          end = colon;  // the value follows
        }
      }
      i = end;
      continue;
    }
    if (c == '{' || c == '[') {
      if (++depth > kMaxSkimDepth) return std::nullopt;
    } else if (c == '}' || c == ']') {
      if (--depth < 0) return std::nullopt;
      if (depth == 1 && usage_start != std::string_view::npos && found.usage.empty()) {
        found.usage = json.substr(usage_start, i - usage_start + 1);
      }
      if (depth == 0) {
        if (skipSpace(json, i + 1) != std::string_view::npos) return std::nullopt;
        return found;
      }
    }
  }
  return std::nullopt;  // never closed
}

// Reading the two values directly, without a parser: the usage object's own members are
// checked against JSON's grammar and its counts read; a nested value (the *_details objects)
// is only matched for its brackets and strings, as the skim does. Anything unusual (an escape
// in a key or the model, a control character, a malformed number or literal) returns
// nullopt, and the caller parses the two values with the full parser instead, so the answer
// for those is the parser's.
constexpr std::array<std::string_view, 4> kCountNames = {"prompt_tokens", "input_tokens",
                                                         "completion_tokens", "output_tokens"};

// The end of the plain string whose opening quote is at `open` (the position after its
// closing quote), or npos when it is unterminated or holds an escape or a control character.
std::size_t plainStringEnd(std::string_view s, std::size_t open) {
  // One table lookup per character: the ones a plain string may hold.
  static constexpr auto kPlain = [] {
    std::array<bool, 256> plain{};
    for (int c = 0x20; c < 256; ++c) plain[c] = c != '"' && c != '\\';
    return plain;
  }();
  std::size_t i = open + 1;
  while (i < s.size() && kPlain[static_cast<unsigned char>(s[i])]) ++i;
  return i < s.size() && s[i] == '"' ? i + 1 : std::string_view::npos;
}

// The end of the bracketed value starting at `i`, strings followed with escapes allowed.
std::size_t nestedEnd(std::string_view s, std::size_t i) {
  int depth = 0;
  for (; i < s.size(); ++i) {
    const char c = s[i];
    if (c == '"') {
      i = stringEnd(s, i);
      if (i == std::string_view::npos) return i;
    } else if (c == '{' || c == '[') {
      ++depth;
    } else if (c == '}' || c == ']') {
      if (--depth == 0) return i + 1;
    }
  }
  return std::string_view::npos;
}

// A JSON number at `i`: its end, and whether it is an integer; npos when malformed.
std::size_t numberEnd(std::string_view s, std::size_t i, bool& integer) {
  auto digit = [&](std::size_t k) { return k < s.size() && s[k] >= '0' && s[k] <= '9'; };
  if (i < s.size() && s[i] == '-') ++i;
  if (!digit(i)) return std::string_view::npos;
  if (s[i] == '0') {
    ++i;
  } else {
    while (digit(i)) ++i;
  }
  integer = true;
  if (i < s.size() && s[i] == '.') {
    integer = false;
    if (!digit(++i)) return std::string_view::npos;
    while (digit(i)) ++i;
  }
  if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
    integer = false;
    ++i;
    if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
    if (!digit(i)) return std::string_view::npos;
    while (digit(i)) ++i;
  }
  return i;
}

std::optional<TokenUsage> usageDirect(const TopLevel& top) {
  constexpr std::size_t npos = std::string_view::npos;
  std::string_view u = top.usage;  // "{...}", balanced, as the skim found it
  UsageFields fields;
  fields.is_object = true;
  std::size_t i = skipSpace(u, 1);
  if (i == npos) return std::nullopt;
  if (u[i] != '}') {
    while (true) {
      if (i == npos || u[i] != '"') return std::nullopt;
      std::size_t key_end = plainStringEnd(u, i);
      if (key_end == npos) return std::nullopt;
      std::string_view key = u.substr(i + 1, key_end - i - 2);
      std::size_t colon = skipSpace(u, key_end);
      if (colon == npos || u[colon] != ':') return std::nullopt;
      i = skipSpace(u, colon + 1);
      if (i == npos) return std::nullopt;
      const char c = u[i];
      std::size_t end = npos;
      if (c == '"') {
        end = plainStringEnd(u, i);
      } else if (c == '{' || c == '[') {
        end = nestedEnd(u, i);
      } else if (c == '-' || (c >= '0' && c <= '9')) {
        bool integer = false;
        end = numberEnd(u, i, integer);
        long long n = 0;
        if (end != npos && integer) {
          auto [ptr, ec] = std::from_chars(u.data() + i, u.data() + end, n);
          if (ec == std::errc() && ptr == u.data() + end) {  // out of range: not a count
            for (std::size_t k = 0; k < kCountNames.size(); ++k) {
              if (key == kCountNames[k] && !fields.counts[k]) fields.counts[k] = n;
            }
          }
        }
      } else {
        for (std::string_view literal : {"true", "false", "null"}) {
          if (u.substr(i, literal.size()) == literal) end = i + literal.size();
        }
      }
      if (end == npos) return std::nullopt;
      i = skipSpace(u, end);
      if (i == npos) return std::nullopt;
      if (u[i] == '}') break;
      if (u[i] != ',') return std::nullopt;
      i = skipSpace(u, i + 1);
    }
  }
  if (skipSpace(u, i + 1) != npos) return std::nullopt;
  if (!top.model.empty()) {
    if (plainStringEnd(top.model, 0) != top.model.size()) return std::nullopt;
    fields.model.emplace(top.model.substr(1, top.model.size() - 2));
  }
  return std::move(fields).result();
}

std::optional<TokenUsage> usageFast(std::string& json) {
  std::optional<TopLevel> top = skimTopLevel(json);
  if (!top) return std::nullopt;
  if (top->usage.empty()) {
    if (top->response) return usageInPlace(json);  // nested: the full parse decides
    return std::nullopt;
  }
  if (std::optional<TokenUsage> usage = usageDirect(*top)) return usage;
  // A small document of the two values, read with the same rules as the whole one.
  std::string small;
  small.reserve(top->model.size() + top->usage.size() + 24);
  small.append("{\"usage\":").append(top->usage);
  if (!top->model.empty()) small.append(",\"model\":").append(top->model);
  small.push_back('}');
  return usageInPlace(small);
}

std::optional<TokenUsage> usageFromJson(std::string_view json) {
  std::string copy(json);
  return usageFast(copy);
}

std::optional<TokenUsage> usageFromJsonByParser(std::string_view json) {
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
  if (auto usage = usageFast(data)) last_ = std::move(usage);
}

std::optional<TokenUsage> UsageTap::finish() {
  if (overflow_) return std::nullopt;
  if (!event_stream_) return usageFast(buffer_);  // the body is not needed after this
  if (!buffer_.empty()) scanEvent(buffer_);
  return last_;
}

}  // namespace bulwark::observe
