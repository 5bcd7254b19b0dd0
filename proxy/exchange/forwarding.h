// Pass-through rules: which request headers go upstream, which response headers
// come back, and the upstream URL. Pure functions over header lists; no I/O.
#pragma once

#include <string>
#include <string_view>

#include "config/config.h"
#include "proxy/http/header.h"
#include "proxy/resilience/request_cost.h"

namespace bulwark::exchange {

// Connection, Keep-Alive, TE, Trailer, Transfer-Encoding, Upgrade, Proxy-*.
bool isHopByHopHeader(std::string_view name);

// The client's headers minus hop-by-hop ones (and those the Connection header names), Host,
// Content-Length and Expect (re-derived for the upstream request), with Authorization
// replaced when the upstream has an api_key, and the upstream's extra headers applied. With
// auth_header api-key (Azure), the key goes as "api-key: <key>": the upstream's api_key, or
// the client's bearer token; the client's Authorization is never sent there.
http::Headers upstreamRequestHeaders(const http::Headers& client,
                                     const config::UpstreamConfig& upstream);

// The upstream's response headers minus hop-by-hop and framing ones: in place, or as a copy.
void stripForClient(http::Headers& headers);
http::Headers clientResponseHeaders(const http::Headers& upstream);

// What Bulwark reads from a JSON request body: its top-level "model" ("gpt-4o-mini", or ""
// when there is none) and whether it asks for an event stream ("stream": true). Stops
// reading once it has both, so a large body is not parsed whole.
struct RequestFacts {
  std::string model;
  bool stream = false;
  // Where the model's JSON string (quotes included) is in the body; empty when none.
  std::size_t model_begin = 0;
  std::size_t model_end = 0;
};
// With `cost`, the same pass also feeds the rate-limit cost estimate (and reads the whole body
// for it): a body is parsed once.
RequestFacts readRequestFacts(std::string_view body, resilience::CostCounter* cost = nullptr);
std::string requestModel(std::string_view body);

// The model name to send to `upstream` for the client's `model`: upstream.models[model],
// else upstream.models["*"], else `model` itself (a mapping to "" keeps it too).
std::string mappedModel(const config::UpstreamConfig& upstream, std::string_view model);
// `body` with its top-level model (found by readRequestFacts) replaced by `model`.
std::string withModel(std::string_view body, const RequestFacts& facts, std::string_view model);

// base_url + path ("/v1/chat/completions?x=1"); the path always starts with '/'. With
// api_version set (Azure's deployment-style API) the /v1 prefix goes, the model's deployment
// comes first and api-version is added to the query:
// base_url/deployments/{model}/chat/completions?api-version=2024-10-21. Without a model
// (a streamed body, or none) there is no deployment segment (/files?api-version=...).
std::string upstreamUrl(const config::UpstreamConfig& upstream, std::string_view path,
                        std::string_view model = "");

}  // namespace bulwark::exchange
