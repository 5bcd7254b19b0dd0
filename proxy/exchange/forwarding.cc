#include "proxy/exchange/forwarding.h"

#include <rapidjson/memorystream.h>
#include <rapidjson/reader.h>

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

namespace {

// SAX handler that stops as soon as the top-level "model" string is seen.
struct ModelFinder : rapidjson::BaseReaderHandler<rapidjson::UTF8<>, ModelFinder> {
  int depth = 0;
  bool next_is_model = false;
  std::string model;

  bool Default() {
    next_is_model = false;
    return true;
  }
  bool String(const char* s, rapidjson::SizeType len, bool) {
    if (next_is_model) {
      model.assign(s, len);
      return false;  // found: stop parsing
    }
    return true;
  }
  bool Key(const char* s, rapidjson::SizeType len, bool) {
    next_is_model = depth == 1 && std::string_view(s, len) == "model";
    return true;
  }
  bool StartObject() {
    next_is_model = false;
    ++depth;
    return true;
  }
  bool EndObject(rapidjson::SizeType) {
    --depth;
    return true;
  }
  bool StartArray() {
    next_is_model = false;
    ++depth;
    return true;
  }
  bool EndArray(rapidjson::SizeType) {
    --depth;
    return true;
  }
};

}  // namespace

std::string requestModel(std::string_view body) {
  if (body.empty() || body.front() != '{') return {};
  ModelFinder finder;
  rapidjson::MemoryStream stream(body.data(), body.size());
  rapidjson::Reader reader;
  reader.Parse<rapidjson::kParseIterativeFlag | rapidjson::kParseStopWhenDoneFlag>(stream, finder);
  return finder.model;
}

std::string upstreamUrl(const config::UpstreamConfig& upstream, std::string_view path) {
  std::string url = upstream.base_url;
  if (!url.empty() && url.back() == '/') url.pop_back();
  if (path.empty() || path.front() != '/') url += '/';
  url += path;
  return url;
}

}  // namespace bulwark::exchange
