#include "proxy/exchange/forwarding.h"

#include <cctype>

#include <rapidjson/allocators.h>
#include <rapidjson/memorystream.h>
#include <rapidjson/reader.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

namespace bulwark::exchange {

using http::equalsIgnoreCase;

bool isHopByHopHeader(std::string_view name) {
  // By length first: most header names match none of the lengths, and cost one switch.
  if (name.size() >= 6 && (name[0] == 'p' || name[0] == 'P') &&
      equalsIgnoreCase(name.substr(0, 6), "proxy-")) {
    return true;
  }
  switch (name.size()) {
    case 2:
      return equalsIgnoreCase(name, "te");
    case 7:
      return equalsIgnoreCase(name, "trailer") || equalsIgnoreCase(name, "upgrade");
    case 10:
      return equalsIgnoreCase(name, "connection") || equalsIgnoreCase(name, "keep-alive");
    case 17:
      return equalsIgnoreCase(name, "transfer-encoding");
    default:
      return false;
  }
}

namespace {

// The header names that Connection headers list as hop-by-hop ("keep-alive", "close", ...),
// read once per message rather than once per header. The tokens are views into a copy of the
// Connection values (a short value stays inside the string, unallocated), so they stay valid
// while the headers themselves are moved; a token the fixed hop-by-hop list already covers
// ("keep-alive", the usual one) is not kept.
class ConnectionTokens {
 public:
  explicit ConnectionTokens(const http::Headers& headers) {
    for (const http::Header& h : headers) {
      if (!equalsIgnoreCase(h.name, "connection")) continue;
      if (!values_.empty()) values_ += ',';
      values_ += h.value;
    }
    http::forEachHeaderToken(values_, [this](std::string_view token) {
      if (!isHopByHopHeader(token)) tokens_.push_back(token);
    });
  }
  bool names(std::string_view header) const {
    for (std::string_view token : tokens_) {
      if (equalsIgnoreCase(token, header)) return true;
    }
    return false;
  }

 private:
  std::string values_;
  std::vector<std::string_view> tokens_;
};

// A path segment: unreserved characters as they are, everything else %XX.
std::string percentEncodeSegment(std::string_view text) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : text) {
    if (std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

}  // namespace

http::Headers upstreamRequestHeaders(const http::Headers& client,
                                     const config::UpstreamConfig& upstream) {
  http::Headers out;
  out.reserve(client.size() + upstream.headers.size() + 1);
  const bool api_key_header = upstream.auth_header == config::AuthHeader::kApiKey;
  bool replace_auth = !upstream.api_key.empty() || api_key_header;
  std::string client_key;  // the client's bearer token, for an api-key upstream without a key
  const ConnectionTokens connection(client);
  for (const http::Header& h : client) {
    if (isHopByHopHeader(h.name) || connection.names(h.name)) continue;
    // Accept-Encoding: Bulwark negotiates compression with the upstream on its own.
    if (equalsIgnoreCase(h.name, "host") || equalsIgnoreCase(h.name, "content-length") ||
        equalsIgnoreCase(h.name, "expect") || equalsIgnoreCase(h.name, "accept-encoding")) {
      continue;
    }
    if (replace_auth && equalsIgnoreCase(h.name, "authorization")) {
      std::string_view value = h.value;
      if (value.size() > 7 && equalsIgnoreCase(value.substr(0, 7), "bearer ")) {
        client_key = std::string(value.substr(7));
      }
      continue;
    }
    if (api_key_header && equalsIgnoreCase(h.name, "api-key")) {
      if (client_key.empty()) client_key = h.value;
      continue;
    }
    bool overridden = false;
    for (const auto& [name, value] : upstream.headers) overridden |= equalsIgnoreCase(name, h.name);
    if (overridden) continue;
    out.push_back(h);
  }
  if (api_key_header) {
    std::string key = upstream.api_key.empty() ? client_key : upstream.api_key;
    if (!key.empty()) out.push_back({"api-key", std::move(key)});
  } else if (replace_auth) {
    out.push_back({"Authorization", "Bearer " + upstream.api_key});
  }
  for (const auto& [name, value] : upstream.headers) out.push_back({name, value});
  return out;
}

void stripForClient(http::Headers& headers) {
  const ConnectionTokens connection(headers);
  std::size_t kept = 0;
  for (std::size_t i = 0; i < headers.size(); ++i) {
    const std::string& name = headers[i].name;
    if (isHopByHopHeader(name) || connection.names(name) ||
        equalsIgnoreCase(name, "content-length")) {  // the client side frames it
      continue;
    }
    if (kept != i) headers[kept] = std::move(headers[i]);
    ++kept;
  }
  headers.resize(kept);
}

http::Headers clientResponseHeaders(const http::Headers& upstream) {
  http::Headers out = upstream;
  stripForClient(out);
  return out;
}

namespace {

// SAX handler that reads the top-level "model" string and "stream" flag, and stops as soon
// as it has both.
template <typename Stream>
struct FactsFinder : rapidjson::BaseReaderHandler<rapidjson::UTF8<>, FactsFinder<Stream>> {
  explicit FactsFinder(Stream& s) : stream(s) {}
  enum class Next { kOther, kModel, kStream };
  Stream& stream;  // for its position (InsituStringStream::Tell is not const)
  std::size_t key_end = 0;  // just after the "model" key
  int depth = 0;
  Next next = Next::kOther;
  bool seen_model = false;
  bool seen_stream = false;
  RequestFacts facts;

  bool last_model_wins = false;
  bool done() const { return seen_model && seen_stream && !last_model_wins; }
  bool Default() {
    next = Next::kOther;
    return true;
  }
  bool String(const char* s, rapidjson::SizeType len, bool) {
    if (next == Next::kModel) {
      facts.model.assign(s, len);
      seen_model = true;
      facts.model_begin = key_end;  // narrowed to the opening quote by readRequestFacts
      facts.model_end = stream.Tell();
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
    key_end = stream.Tell();
    next = depth != 1        ? Next::kOther
           : key == "model"  ? (seen_model && !last_model_wins ? Next::kOther : Next::kModel)
           : key == "stream" ? (seen_stream ? Next::kOther : Next::kStream)
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

// Feeds every SAX event to the facts finder and the cost counter: one pass for both. The
// finder's wish to stop early is ignored, since the cost needs the whole body.
template <typename Stream>
struct FactsAndCost : rapidjson::BaseReaderHandler<rapidjson::UTF8<>, FactsAndCost<Stream>> {
  FactsFinder<Stream>& facts;
  resilience::CostCounter& cost;
  FactsAndCost(FactsFinder<Stream>& f, resilience::CostCounter& c) : facts(f), cost(c) {}
  bool Null() { return facts.Null(), cost.Null(), true; }
  bool Bool(bool b) { return facts.Bool(b), cost.Bool(b), true; }
  bool Int(int i) { return facts.Int(i), cost.Int(i), true; }
  bool Uint(unsigned u) { return facts.Uint(u), cost.Uint(u), true; }
  bool Int64(int64_t i) { return facts.Int64(i), cost.Int64(i), true; }
  bool Uint64(uint64_t u) { return facts.Uint64(u), cost.Uint64(u), true; }
  bool Double(double d) { return facts.Double(d), cost.Double(d), true; }
  bool String(const char* s, rapidjson::SizeType len, bool copy) {
    return facts.String(s, len, copy), cost.String(s, len, copy), true;
  }
  bool Key(const char* s, rapidjson::SizeType len, bool copy) {
    return facts.Key(s, len, copy), cost.Key(s, len, copy), true;
  }
  bool StartObject() { return facts.StartObject(), cost.StartObject(), true; }
  bool EndObject(rapidjson::SizeType n) { return facts.EndObject(n), cost.EndObject(n), true; }
  bool StartArray() { return facts.StartArray(), cost.StartArray(), true; }
  bool EndArray(rapidjson::SizeType n) { return facts.EndArray(n), cost.EndArray(n), true; }
};

}  // namespace

namespace {

// One SAX pass over `stream` (the body, or its copy for an in-place parse).
template <unsigned kFlags, typename Stream>
RequestFacts readFacts(Stream& stream, std::string_view body, resilience::CostCounter* cost) {
  FactsFinder<Stream> finder(stream);
  // A body that may name "model" twice is read to its end: the upstream's JSON parser keeps
  // the last one, so routing, breakers and renaming must too.
  finder.last_model_wins = true;
  if (cost == nullptr) {
    // Only facts are wanted: the parse may stop once it has them. Most bodies have no
    // "stream" key at all (then it stops at the model), and most name the model once. (With
    // a cost to count the whole body is read anyway, and these scans would be wasted.)
    finder.seen_stream = body.find("\"stream\"") == std::string_view::npos;
    std::size_t first = body.find("\"model\"");
    finder.last_model_wins = first != std::string_view::npos &&
                             body.find("\"model\"", first + 1) != std::string_view::npos;
  }
  // The parser's own stack starts in a buffer here: no allocation for ordinary bodies.
  alignas(16) char stack_buffer[1024];
  rapidjson::MemoryPoolAllocator<> pool(stack_buffer, sizeof stack_buffer);
  rapidjson::GenericReader<rapidjson::UTF8<>, rapidjson::UTF8<>, rapidjson::MemoryPoolAllocator<>>
      reader(&pool, 256);
  constexpr unsigned kAlways = rapidjson::kParseIterativeFlag | rapidjson::kParseStopWhenDoneFlag;
  if (cost != nullptr) {
    FactsAndCost<Stream> both(finder, *cost);
    reader.Parse<kAlways | kFlags>(stream, both);
  } else {
    reader.Parse<kAlways | kFlags>(stream, finder);
  }
  return finder.facts;
}

// rapidjson's in-place stream under a type of its own: the reader works on a local copy of a
// stream whose traits allow it (InsituStringStream's do) and writes the position back only
// after each string, while the finder reads the position inside the string callbacks.
struct InPlaceStream : rapidjson::InsituStringStream {
  using rapidjson::InsituStringStream::InsituStringStream;
};

// Bodies up to this size are parsed in place in a copy: the parser then decodes strings where
// they lie, instead of pushing every character of every string onto its stack (a 20 KiB chat
// body: 459k instructions instead of 965k). The copy is the thread's, kept between requests.
constexpr std::size_t kInPlaceMax = 256 * 1024;

}  // namespace

RequestFacts readRequestFacts(std::string_view body, resilience::CostCounter* cost) {
  if (body.empty() || body.front() != '{') return {};
  RequestFacts facts;
  if (body.size() <= kInPlaceMax && body.find('\0') == std::string_view::npos) {
    thread_local std::string copy;
    copy.assign(body);  // NUL-terminated, as the in-place stream needs
    InPlaceStream stream(copy.data());
    facts = readFacts<rapidjson::kParseInsituFlag>(stream, body, cost);
  } else {
    rapidjson::MemoryStream stream(body.data(), body.size());
    facts = readFacts<0>(stream, body, cost);
  }
  if (facts.model_end > 0) {
    // Between the key and the end of its value: whitespace, ':', whitespace, the string.
    std::size_t quote = body.find('"', facts.model_begin);
    if (quote == std::string_view::npos || quote >= facts.model_end ||
        body[facts.model_end - 1] != '"') {
      facts.model_begin = facts.model_end = 0;
    } else {
      facts.model_begin = quote;
    }
  }
  return facts;
}

std::string mappedModel(const config::UpstreamConfig& upstream, std::string_view model) {
  auto found = upstream.models.find(std::string(model));
  if (found == upstream.models.end()) found = upstream.models.find("*");
  if (found == upstream.models.end() || found->second.empty()) return std::string(model);
  return found->second;
}

std::string withModel(std::string_view body, const RequestFacts& facts, std::string_view model) {
  if (facts.model_end <= facts.model_begin || facts.model_end > body.size()) {
    return std::string(body);
  }
  rapidjson::StringBuffer quoted;
  rapidjson::Writer<rapidjson::StringBuffer> writer(quoted);
  writer.String(model.data(), static_cast<rapidjson::SizeType>(model.size()));
  std::string out;
  out.reserve(body.size() + quoted.GetSize());
  out.append(body.substr(0, facts.model_begin));
  out.append(quoted.GetString(), quoted.GetSize());
  out.append(body.substr(facts.model_end));
  return out;
}

std::string requestModel(std::string_view body) {
  return readRequestFacts(body).model;
}

std::string upstreamUrl(const config::UpstreamConfig& upstream, std::string_view path,
                        std::string_view model) {
  std::string url;
  // Enough for the plain case in one allocation (an Azure-style URL may grow once more).
  url.reserve(upstream.base_url.size() + path.size() + 1);
  url = upstream.base_url;
  if (!url.empty() && url.back() == '/') url.pop_back();
  if (upstream.api_version.empty()) {
    if (path.empty() || path.front() != '/') url += '/';
    url += path;
    return url;
  }
  std::string_view query;
  if (std::size_t q = path.find('?'); q != std::string_view::npos) {
    query = path.substr(q + 1);
    path = path.substr(0, q);
  }
  if (path.starts_with("/v1/")) path.remove_prefix(3);
  if (!model.empty()) {
    url += "/deployments/";
    url += percentEncodeSegment(model);
  }
  if (path.empty() || path.front() != '/') url += '/';
  url += path;
  url += '?';
  if (!query.empty()) {
    url += query;
    url += '&';
  }
  url += "api-version=";
  url += upstream.api_version;
  return url;
}

}  // namespace bulwark::exchange
