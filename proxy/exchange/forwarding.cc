#include "proxy/exchange/forwarding.h"

namespace bulwark::exchange {

using http::equalsIgnoreCase;

bool isHopByHopHeader(std::string_view name) {
  static constexpr std::string_view kHopByHop[] = {"connection", "keep-alive",        "te",
                                                   "trailer",    "transfer-encoding", "upgrade"};
  for (std::string_view h : kHopByHop) {
    if (equalsIgnoreCase(name, h)) return true;
  }
  return name.size() >= 6 && equalsIgnoreCase(name.substr(0, 6), "proxy-");
}

namespace {

bool namedByConnection(const http::Headers& headers, std::string_view name) {
  for (const http::Header& h : headers) {
    if (equalsIgnoreCase(h.name, "connection") && http::headerHasToken(h.value, name)) return true;
  }
  return false;
}

}  // namespace

http::Headers upstreamRequestHeaders(const http::Headers& client,
                                     const config::UpstreamConfig& upstream) {
  http::Headers out;
  out.reserve(client.size() + upstream.headers.size() + 1);
  bool replace_auth = !upstream.api_key.empty();
  for (const http::Header& h : client) {
    if (isHopByHopHeader(h.name) || namedByConnection(client, h.name)) continue;
    if (equalsIgnoreCase(h.name, "host") || equalsIgnoreCase(h.name, "content-length") ||
        equalsIgnoreCase(h.name, "expect")) {
      continue;
    }
    if (replace_auth && equalsIgnoreCase(h.name, "authorization")) continue;
    bool overridden = false;
    for (const auto& [name, value] : upstream.headers) overridden |= equalsIgnoreCase(name, h.name);
    if (overridden) continue;
    out.push_back(h);
  }
  if (replace_auth) out.push_back({"Authorization", "Bearer " + upstream.api_key});
  for (const auto& [name, value] : upstream.headers) out.push_back({name, value});
  return out;
}

http::Headers clientResponseHeaders(const http::Headers& upstream) {
  http::Headers out;
  out.reserve(upstream.size() + 2);
  for (const http::Header& h : upstream) {
    if (isHopByHopHeader(h.name) || namedByConnection(upstream, h.name)) continue;
    if (equalsIgnoreCase(h.name, "content-length")) continue;  // the client side frames it
    out.push_back(h);
  }
  return out;
}

std::string upstreamUrl(const config::UpstreamConfig& upstream, std::string_view path) {
  std::string url = upstream.base_url;
  if (!url.empty() && url.back() == '/') url.pop_back();
  if (path.empty() || path.front() != '/') url += '/';
  url += path;
  return url;
}

}  // namespace bulwark::exchange
