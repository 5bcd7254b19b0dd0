// What a request will cost against a rate limit, estimated from its JSON body before it is
// sent, the way OpenAI charges it at admission: 1 request, and tokens = the prompt estimate
// plus the output cap. The prompt estimate is the bytes of the prompt text over
// bytes_per_token; prompt text is messages[].content (a string, or its text parts), input
// and prompt (strings, lists of strings, or Responses-style items with content); an image
// part counts a flat image_tokens. The output cap is max_tokens, max_completion_tokens or
// max_output_tokens, else default_output_tokens (none for an endpoint that generates no
// output, such as embeddings). One bounded SAX pass; pure.
#pragma once

#include <rapidjson/reader.h>

#include <array>
#include <optional>
#include <string_view>

#include "proxy/resilience/quota.h"

namespace bulwark::resilience {

struct CostRules {
  double bytes_per_token = 4;
  double default_output_tokens = 1000;
  double image_tokens = 800;
};

QuotaCost estimateCost(std::string_view body, const CostRules& rules, bool generates_output);

// The SAX handler behind estimateCost(), for a caller that reads other facts of the body in
// the same pass. Each open object or array knows what it is (the root, "messages", a message,
// its "content", a content part, ...) from its parent and its key, so every event is decided
// in constant time, without keeping the path's keys. Nothing is allocated.
class CostCounter : public rapidjson::BaseReaderHandler<rapidjson::UTF8<>, CostCounter> {
 public:
  QuotaCost cost(const CostRules& rules, bool generates_output) const;

  bool Key(const char* s, rapidjson::SizeType len, bool copy);
  bool String(const char* s, rapidjson::SizeType len, bool copy);
  bool Int(int v) { return number(v); }
  bool Uint(unsigned v) { return number(v); }
  bool Int64(int64_t v) { return number(static_cast<double>(v)); }
  bool Uint64(uint64_t v) { return number(static_cast<double>(v)); }
  bool Double(double v) { return number(v); }
  bool Default() { return true; }
  bool StartObject() { return open(true); }
  bool EndObject(rapidjson::SizeType) { return close(); }
  bool StartArray() { return open(false); }
  bool EndArray(rapidjson::SizeType) { return close(); }

  // What a value is, by where it sits. Text: prompt, prompt[], input, input[],
  // input[].content, input[].content[].text, messages[].content,
  // messages[].content[].text. A part's type: (messages|input)[].content[].type.
  enum class Place : unsigned char {
    kOther,
    kRoot,
    kPrompt,
    kPromptItem,
    kInput,
    kInputItem,
    kMessages,
    kMessage,
    kContent,
    kPart,
    kPartText,
    kPartType,
  };

 private:
  struct Level {
    Place container = Place::kOther;
    bool object = false;
    Place value = Place::kOther;  // the value being read: by its key, or the array's element
    bool output_cap = false;      // a root key naming the output cap
  };
  // The deepest place that matters is a content part's field: five containers down.
  static constexpr int kTracked = 5;

  Place valuePlace() const;
  bool open(bool object);
  bool close();
  bool number(double value);

  std::array<Level, kTracked> levels_{};
  int depth_ = 0;
  double text_bytes_ = 0;
  int images_ = 0;
  std::optional<double> output_cap_;
};

}  // namespace bulwark::resilience
