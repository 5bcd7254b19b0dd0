#include "proxy/resilience/request_cost.h"

#include <rapidjson/memorystream.h>
#include <rapidjson/reader.h>

#include <cmath>

namespace bulwark::resilience {

namespace {

using Place = CostCounter::Place;

bool isText(Place p) {
  switch (p) {
    case Place::kPrompt:
    case Place::kPromptItem:
    case Place::kInput:
    case Place::kInputItem:
    case Place::kContent:
    case Place::kPartText:
      return true;
    default:
      return false;
  }
}

// The place of an array's elements.
Place element(Place array) {
  switch (array) {
    case Place::kPrompt:
      return Place::kPromptItem;
    case Place::kInput:
      return Place::kInputItem;
    case Place::kMessages:
      return Place::kMessage;
    case Place::kContent:
      return Place::kPart;
    default:
      return Place::kOther;
  }
}

// The place of the value under `key` in an object at `object`.
Place member(Place object, std::string_view key) {
  switch (object) {
    case Place::kRoot:
      return key == "prompt"     ? Place::kPrompt
             : key == "input"    ? Place::kInput
             : key == "messages" ? Place::kMessages
                                 : Place::kOther;
    case Place::kInputItem:
    case Place::kMessage:
      return key == "content" ? Place::kContent : Place::kOther;
    case Place::kPart:
      return key == "text" ? Place::kPartText : key == "type" ? Place::kPartType : Place::kOther;
    default:
      return Place::kOther;
  }
}

}  // namespace

// The place of the value being read, kept by the innermost open container; deeper than any
// place that matters, everything is kOther.
Place CostCounter::valuePlace() const {
  if (depth_ == 0 || depth_ > kTracked) return Place::kOther;
  return levels_[depth_ - 1].value;
}

bool CostCounter::open(bool object) {
  Place place = depth_ == 0 ? (object ? Place::kRoot : Place::kOther) : valuePlace();
  if (depth_ < kTracked) {
    Level& level = levels_[depth_];
    level = Level{place, object, object ? Place::kOther : element(place), false};
  }
  ++depth_;
  return true;
}

bool CostCounter::close() {
  if (depth_ > 0) --depth_;
  return true;
}

bool CostCounter::Key(const char* s, rapidjson::SizeType len, bool) {
  if (depth_ == 0 || depth_ > kTracked) return true;
  Level& level = levels_[depth_ - 1];
  std::string_view key(s, len);
  level.value = member(level.container, key);
  level.output_cap = level.container == Place::kRoot &&
                     (key == "max_tokens" || key == "max_completion_tokens" ||
                      key == "max_output_tokens");
  return true;
}

bool CostCounter::String(const char* s, rapidjson::SizeType len, bool) {
  Place place = valuePlace();
  if (place == Place::kPartType) {
    std::string_view type(s, len);
    if (type == "image_url" || type == "input_image") ++images_;
  } else if (isText(place)) {
    text_bytes_ += len;
  }
  return true;
}

bool CostCounter::number(double value) {
  if (depth_ == 1 && levels_[0].output_cap) output_cap_ = value;
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
