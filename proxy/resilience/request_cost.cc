#include "proxy/resilience/request_cost.h"

#include <rapidjson/memorystream.h>
#include <rapidjson/reader.h>

#include <cmath>

#include <optional>
#include <string>
#include <vector>

namespace bulwark::resilience {

namespace {

// Walks the JSON keeping the path of the current value (object keys, and "[]" for array
// elements), and adds up the strings found at the prompt-text paths.
struct CostCounter : rapidjson::BaseReaderHandler<rapidjson::UTF8<>, CostCounter> {
  struct Level {
    bool object;
    std::string key;  // in an object: the key of the value being read
  };
  std::vector<Level> levels;
  double text_bytes = 0;
  int images = 0;
  std::optional<double> output_cap;

  // The path's element at depth i: a key, or "[]".
  std::string_view at(std::size_t i) const {
    return levels[i].object ? std::string_view(levels[i].key) : std::string_view("[]");
  }
  bool pathIs(std::initializer_list<std::string_view> want) const {
    if (levels.size() != want.size()) return false;
    std::size_t i = 0;
    for (std::string_view w : want) {
      if (at(i++) != w) return false;
    }
    return true;
  }
  // prompt, prompt[]; input, input[], input[].content, input[].content[].text;
  // messages[].content, messages[].content[].text
  bool promptText() const {
    return pathIs({"prompt"}) || pathIs({"prompt", "[]"}) || pathIs({"input"}) ||
           pathIs({"input", "[]"}) || pathIs({"input", "[]", "content"}) ||
           pathIs({"input", "[]", "content", "[]", "text"}) ||
           pathIs({"messages", "[]", "content"}) ||
           pathIs({"messages", "[]", "content", "[]", "text"});
  }
  bool partType() const {
    return pathIs({"messages", "[]", "content", "[]", "type"}) ||
           pathIs({"input", "[]", "content", "[]", "type"});
  }

  bool Key(const char* s, rapidjson::SizeType len, bool) {
    levels.back().key.assign(s, len);
    return true;
  }
  bool String(const char* s, rapidjson::SizeType len, bool) {
    if (partType()) {
      std::string_view type(s, len);
      if (type == "image_url" || type == "input_image") ++images;
    } else if (promptText()) {
      text_bytes += len;
    }
    return true;
  }
  bool number(double value) {
    if (levels.size() == 1 && levels[0].object) {
      const std::string& key = levels[0].key;
      if (key == "max_tokens" || key == "max_completion_tokens" || key == "max_output_tokens") {
        output_cap = value;
      }
    }
    return true;
  }
  bool Int(int v) { return number(v); }
  bool Uint(unsigned v) { return number(v); }
  bool Int64(int64_t v) { return number(static_cast<double>(v)); }
  bool Uint64(uint64_t v) { return number(static_cast<double>(v)); }
  bool Double(double v) { return number(v); }
  bool Default() { return true; }
  bool StartObject() {
    levels.push_back({true, ""});
    return true;
  }
  bool EndObject(rapidjson::SizeType) {
    levels.pop_back();
    return true;
  }
  bool StartArray() {
    levels.push_back({false, ""});
    return true;
  }
  bool EndArray(rapidjson::SizeType) {
    levels.pop_back();
    return true;
  }
};

}  // namespace

QuotaCost estimateCost(std::string_view body, const CostRules& rules, bool generates_output) {
  QuotaCost cost;
  CostCounter counter;
  if (!body.empty() && body.front() == '{') {
    rapidjson::MemoryStream stream(body.data(), body.size());
    rapidjson::Reader reader;
    reader.Parse<rapidjson::kParseIterativeFlag>(stream, counter);
  }
  double per_token = rules.bytes_per_token > 0 ? rules.bytes_per_token : 4;
  cost.tokens = std::ceil(counter.text_bytes / per_token) + counter.images * rules.image_tokens;
  if (generates_output) cost.tokens += counter.output_cap.value_or(rules.default_output_tokens);
  return cost;
}

}  // namespace bulwark::resilience
