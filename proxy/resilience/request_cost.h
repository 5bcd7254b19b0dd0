// What a request will cost against a rate limit, estimated from its JSON body before it is
// sent, the way OpenAI charges it at admission: 1 request, and tokens = the prompt estimate
// plus the output cap. The prompt estimate is the bytes of the prompt text over
// bytes_per_token; prompt text is messages[].content (a string, or its text parts), input
// and prompt (strings, lists of strings, or Responses-style items with content); an image
// part counts a flat image_tokens. The output cap is max_tokens, max_completion_tokens or
// max_output_tokens, else default_output_tokens (none for an endpoint that generates no
// output, such as embeddings). One bounded SAX pass; pure.
#pragma once

#include <string_view>

#include "proxy/resilience/quota.h"

namespace bulwark::resilience {

struct CostRules {
  double bytes_per_token = 4;
  double default_output_tokens = 1000;
  double image_tokens = 800;
};

QuotaCost estimateCost(std::string_view body, const CostRules& rules, bool generates_output);

}  // namespace bulwark::resilience
