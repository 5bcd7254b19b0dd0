// What an OpenAI endpoint is, from its method and path: the one place that tells inference
// endpoints from the rest, for OpenAI's paths (/v1/chat/completions) and Azure's
// (/openai/deployments/{name}/chat/completions, /openai/v1/...). Pure.
#pragma once

#include <string_view>

#include "proxy/resilience/sse_scanner.h"

namespace bulwark::resilience {

struct EndpointTraits {
  // POSTs to inference endpoints (chat/completions, completions, embeddings, moderations,
  // responses) and GET/HEAD/OPTIONS/DELETE follow the retry policies; anything else is
  // retried only when the upstream provably did not process it.
  bool retry_safe = false;
  // It generates output tokens (its admission cost has an output cap): not embeddings or
  // moderations, nor anything that is not inference.
  bool generates_output = false;
  // Which events its event stream opens with that carry nothing yet.
  StreamKind stream_kind = StreamKind::kFirstEvent;
};

// The query and fragment are ignored; the endpoint is the path's last segments.
EndpointTraits classifyEndpoint(std::string_view method, std::string_view path);

}  // namespace bulwark::resilience
