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
    // Accept-Encoding: Bulwark negotiates compression with the upstream on its own.
    if (equalsIgnoreCase(h.name, "host") || equalsIgnoreCase(h.name, "content-length") ||
        equalsIgnoreCase(h.name, "expect") || equalsIgnoreCase(h.name, "accept-encoding")) {
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

// SAX handler that reads the top-level "model" string and "stream" flag, and stops as soon
// as it has both.
struct FactsFinder : rapidjson::BaseReaderHandler<rapidjson::UTF8<>, FactsFinder> {
  enum class Next { kOther, kModel, kStream };
  int depth = 0;
  Next next = Next::kOther;
  bool seen_model = false;
  bool seen_stream = false;
  RequestFacts facts;

  bool done() const { return seen_model && seen_stream; }
  bool Default() {
    next = Next::kOther;
    return true;
  }
  bool String(const char* s, rapidjson::SizeType len, bool) {
    if (next == Next::kModel) {
      facts.model.assign(s, len);
      seen_model = true;
    }
    next = Next::kOther;
    return !done();
  }
  bool Bool(bool b) {
    if (next == Next::kStream) {
      facts.stream = b;
      seen_stream = true;
    }
    next = Next::kOther;
    return !done();
  }
  bool Key(const char* s, rapidjson::SizeType len, bool) {
    std::string_view key(s, len);
    next = depth != 1           ? Next::kOther
           : key == "model"     ? (seen_model ? Next::kOther : Next::kModel)
           : key == "stream"    ? (seen_stream ? Next::kOther : Next::kStream)
                                : Next::kOther;
    return true;
  }
  bool StartObject() {
    next = Next::kOther;
    ++depth;
    return true;
  }
  bool EndObject(rapidjson::SizeType) {
    --depth;
    return true;
  }
  bool StartArray() {
    next = Next::kOther;
    ++depth;
    return true;
  }
  bool EndArray(rapidjson::SizeType) {
    --depth;
    return true;
  }
};

}  // namespace

RequestFacts readRequestFacts(std::string_view body) {
  if (body.empty() || body.front() != '{') return {};
  FactsFinder finder;
  // Most bodies have no "stream" key at all: then the parse stops at the model.
  finder.seen_stream = body.find("\"stream\"") == std::string_view::npos;
  rapidjson::MemoryStream stream(body.data(), body.size());
  rapidjson::Reader reader;
  reader.Parse<rapidjson::kParseIterativeFlag | rapidjson::kParseStopWhenDoneFlag>(stream, finder);
  return finder.facts;
}

std::string requestModel(std::string_view body) {
  return readRequestFacts(body).model;
}

std::string upstreamUrl(const config::UpstreamConfig& upstream, std::string_view path) {
  std::string url = upstream.base_url;
  if (!url.empty() && url.back() == '/') url.pop_back();
  if (path.empty() || path.front() != '/') url += '/';
  url += path;
  return url;
}

}  // namespace bulwark::exchange
