// Pass-through rules (SPEC §3.1): which request headers go upstream, which response headers
// come back, and the upstream URL. Pure functions over header lists; no I/O.
#pragma once

#include <string>
#include <string_view>

#include "config/config.h"
#include "proxy/http/header.h"

namespace bulwark::exchange {

// Connection, Keep-Alive, TE, Trailer, Transfer-Encoding, Upgrade, Proxy-*.
bool isHopByHopHeader(std::string_view name);

// The client's headers minus hop-by-hop ones (and those the Connection header names), Host,
// Content-Length and Expect (re-derived for the upstream request), with Authorization
// replaced when the upstream has an api_key, and the upstream's extra headers applied.
http::Headers upstreamRequestHeaders(const http::Headers& client,
                                     const config::UpstreamConfig& upstream);

// The upstream's response headers minus hop-by-hop and framing ones.
http::Headers clientResponseHeaders(const http::Headers& upstream);

// What Bulwark reads from a JSON request body: its top-level "model" ("gpt-4o-mini", or ""
// when there is none) and whether it asks for an event stream ("stream": true). Stops
// reading once it has both, so a large body is not parsed whole.
struct RequestFacts {
  std::string model;
  bool stream = false;
};
RequestFacts readRequestFacts(std::string_view body);
std::string requestModel(std::string_view body);

// base_url + path ("/v1/chat/completions?x=1"); the path always starts with '/'.
std::string upstreamUrl(const config::UpstreamConfig& upstream, std::string_view path);

}  // namespace bulwark::exchange
