#include "proxy/resilience/endpoint.h"

#include <algorithm>
#include <array>

namespace bulwark::resilience {
namespace {

constexpr std::array<std::string_view, 4> kIdempotentMethods = {"GET", "HEAD", "OPTIONS", "DELETE"};

enum class Inference { kNone, kGenerates, kNoOutput, kResponses };

// Creating a completion, embedding, moderation or response has no side effect that a second
// attempt would duplicate; everything else POSTed (files, batches, runs, ...) might.
Inference inferenceKind(std::string_view path) {
  // "/completions" also ends "/chat/completions": both generate.
  if (path.ends_with("/completions")) return Inference::kGenerates;
  if (path.ends_with("/responses")) return Inference::kResponses;
  if (path.ends_with("/embeddings") || path.ends_with("/moderations")) return Inference::kNoOutput;
  return Inference::kNone;
}

}  // namespace

EndpointTraits classifyEndpoint(std::string_view method, std::string_view path) {
  // The path without its query or fragment (one pass: find_first_of runs a memchr per byte).
  for (std::size_t i = 0; i < path.size(); ++i) {
    if (path[i] == '?' || path[i] == '#') {
      path = path.substr(0, i);
      break;
    }
  }
  const Inference kind = inferenceKind(path);
  EndpointTraits traits;
  const bool idempotent = std::find(kIdempotentMethods.begin(), kIdempotentMethods.end(),
                                    method) != kIdempotentMethods.end();
  traits.retry_safe = idempotent || (method == "POST" && kind != Inference::kNone);
  traits.generates_output = kind == Inference::kGenerates || kind == Inference::kResponses;
  if (kind == Inference::kResponses) traits.stream_kind = StreamKind::kResponses;
  return traits;
}

}  // namespace bulwark::resilience
