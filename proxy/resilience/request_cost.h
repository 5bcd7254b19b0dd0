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

#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "proxy/resilience/quota.h"

namespace bulwark::resilience {

struct CostRules {
  double bytes_per_token = 4;
  double default_output_tokens = 1000;
  double image_tokens = 800;
};

QuotaCost estimateCost(std::string_view body, const CostRules& rules, bool generates_output);

// The SAX handler behind estimateCost(), for a caller that reads other facts of the body in
// the same pass. It walks the JSON keeping the path of the current value (object keys, and
// "[]" for array elements) and adds up the strings found at the prompt-text paths.
class CostCounter : public rapidjson::BaseReaderHandler<rapidjson::UTF8<>, CostCounter> {
 public:
  CostCounter() { levels_.reserve(8); }  // a chat body nests 5 deep: one allocation
  QuotaCost cost(const CostRules& rules, bool generates_output) const;

  bool Key(const char* s, rapidjson::SizeType len, bool copy);
  bool String(const char* s, rapidjson::SizeType len, bool copy);
  bool Int(int v) { return number(v); }
  bool Uint(unsigned v) { return number(v); }
  bool Int64(int64_t v) { return number(static_cast<double>(v)); }
  bool Uint64(uint64_t v) { return number(static_cast<double>(v)); }
  bool Double(double v) { return number(v); }
  bool Default() { return true; }
  bool StartObject();
  bool EndObject(rapidjson::SizeType);
  bool StartArray();
  bool EndArray(rapidjson::SizeType);

 private:
  struct Level {
    bool object;
    std::string key;  // in an object: the key of the value being read
  };
  std::string_view at(std::size_t i) const;
  bool pathIs(std::initializer_list<std::string_view> want) const;
  bool promptText() const;
  bool partType() const;
  bool number(double value);

  std::vector<Level> levels_;
  double text_bytes_ = 0;
  int images_ = 0;
  std::optional<double> output_cap_;
};

}  // namespace bulwark::resilience
