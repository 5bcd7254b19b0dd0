#include "proxy/resilience/request_cost.h"

#include <rapidjson/memorystream.h>
#include <rapidjson/reader.h>

#include <cmath>

namespace bulwark::resilience {

std::string_view CostCounter::at(std::size_t i) const {
  return levels_[i].object ? std::string_view(levels_[i].key) : std::string_view("[]");
}

bool CostCounter::pathIs(std::initializer_list<std::string_view> want) const {
  if (levels_.size() != want.size()) return false;
  std::size_t i = 0;
  for (std::string_view w : want) {
    if (at(i++) != w) return false;
  }
  return true;
}

// prompt, prompt[]; input, input[], input[].content, input[].content[].text;
// messages[].content, messages[].content[].text
bool CostCounter::promptText() const {
  return pathIs({"prompt"}) || pathIs({"prompt", "[]"}) || pathIs({"input"}) ||
         pathIs({"input", "[]"}) || pathIs({"input", "[]", "content"}) ||
         pathIs({"input", "[]", "content", "[]", "text"}) ||
         pathIs({"messages", "[]", "content"}) ||
         pathIs({"messages", "[]", "content", "[]", "text"});
}

bool CostCounter::partType() const {
  return pathIs({"messages", "[]", "content", "[]", "type"}) ||
         pathIs({"input", "[]", "content", "[]", "type"});
}

bool CostCounter::Key(const char* s, rapidjson::SizeType len, bool) {
  if (!levels_.empty()) levels_.back().key.assign(s, len);
  return true;
}

bool CostCounter::String(const char* s, rapidjson::SizeType len, bool) {
  if (partType()) {
    std::string_view type(s, len);
    if (type == "image_url" || type == "input_image") ++images_;
  } else if (promptText()) {
    text_bytes_ += len;
  }
  return true;
}

bool CostCounter::number(double value) {
  if (levels_.size() == 1 && levels_[0].object) {
    const std::string& key = levels_[0].key;
    if (key == "max_tokens" || key == "max_completion_tokens" || key == "max_output_tokens") {
      output_cap_ = value;
    }
  }
  return true;
}

bool CostCounter::StartObject() {
  levels_.push_back({true, ""});
  return true;
}

bool CostCounter::EndObject(rapidjson::SizeType) {
  if (!levels_.empty()) levels_.pop_back();
  return true;
}

bool CostCounter::StartArray() {
  levels_.push_back({false, ""});
  return true;
}

bool CostCounter::EndArray(rapidjson::SizeType) {
  if (!levels_.empty()) levels_.pop_back();
  return true;
}

QuotaCost CostCounter::cost(const CostRules& rules, bool generates_output) const {
  QuotaCost cost;
  double per_token = rules.bytes_per_token > 0 ? rules.bytes_per_token : 4;
  cost.tokens = std::ceil(text_bytes_ / per_token) + images_ * rules.image_tokens;
  if (generates_output) cost.tokens += output_cap_.value_or(rules.default_output_tokens);
  return cost;
}

QuotaCost estimateCost(std::string_view body, const CostRules& rules, bool generates_output) {
  CostCounter counter;
  if (!body.empty() && body.front() == '{') {
    rapidjson::MemoryStream stream(body.data(), body.size());
    rapidjson::Reader reader;
    reader.Parse<rapidjson::kParseIterativeFlag>(stream, counter);
  }
  return counter.cost(rules, generates_output);
}

}  // namespace bulwark::resilience
