#include "proxy/exchange/forwarding.h"

#include <gtest/gtest.h>

namespace bulwark::exchange {
namespace {

config::UpstreamConfig upstream(std::string api_key = "") {
  config::UpstreamConfig u;
  u.name = "openai";
  u.base_url = "https://api.openai.com";
  u.api_key = std::move(api_key);
  return u;
}

bool has(const http::Headers& h, std::string_view name) {
  return http::findHeader(h, name).has_value();
}

TEST(ForwardingTest, StripsHopByHopAndHostKeepsTheRest) {
  http::Headers client{{"Host", "evil.example"},
                       {"Connection", "keep-alive, X-Secret"},
                       {"Keep-Alive", "timeout=5"},
                       {"TE", "trailers"},
                       {"Trailer", "x"},
                       {"Transfer-Encoding", "chunked"},
                       {"Upgrade", "websocket"},
                       {"Proxy-Authorization", "Basic x"},
                       {"X-Secret", "named by Connection"},
                       {"Content-Length", "12"},
                       {"Expect", "100-continue"},
                       {"Authorization", "Bearer sk-client"},
                       {"OpenAI-Organization", "org"},
                       {"Content-Type", "application/json"}};
  http::Headers out = upstreamRequestHeaders(client, upstream());
  for (const char* gone :
       {"Host", "Connection", "Keep-Alive", "TE", "Trailer", "Transfer-Encoding", "Upgrade",
        "Proxy-Authorization", "X-Secret", "Content-Length", "Expect"}) {
    EXPECT_FALSE(has(out, gone)) << gone;
  }
  EXPECT_EQ(*http::findHeader(out, "authorization"), "Bearer sk-client");
  EXPECT_EQ(*http::findHeader(out, "openai-organization"), "org");
  EXPECT_EQ(*http::findHeader(out, "content-type"), "application/json");
}

TEST(ForwardingTest, UpstreamApiKeyReplacesAuthorization) {
  http::Headers out =
      upstreamRequestHeaders({{"authorization", "Bearer sk-client"}}, upstream("sk-up"));
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].value, "Bearer sk-up");
}

TEST(ForwardingTest, UpstreamExtraHeadersOverrideTheClients) {
  config::UpstreamConfig u = upstream();
  u.headers = {{"OpenAI-Organization", "org-configured"}};
  http::Headers out = upstreamRequestHeaders({{"openai-organization", "org-client"}}, u);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].value, "org-configured");
}

TEST(ForwardingTest, ResponseKeepsOpenAiHeadersDropsFraming) {
  http::Headers out = clientResponseHeaders({{"x-request-id", "req_1"},
                                             {"x-ratelimit-remaining-requests", "9"},
                                             {"openai-processing-ms", "12"},
                                             {"Content-Length", "10"},
                                             {"Transfer-Encoding", "chunked"},
                                             {"Keep-Alive", "timeout=5"},
                                             {"Proxy-Foo", "x"}});
  ASSERT_EQ(out.size(), 3u);
  EXPECT_EQ(out[0].name, "x-request-id");
}

TEST(ForwardingTest, StrippedInPlaceHonoursConnectionTokensAfterTheConnectionHeader) {
  // The Connection header comes first and is removed; the headers it names come after it,
  // so they are judged against its tokens after compaction has started moving headers.
  http::Headers headers = {{"Connection", "x-hop-one, x-hop-two"},
                           {"x-request-id", "req_1"},
                           {"x-hop-one", "a"},
                           {"openai-processing-ms", "12"},
                           {"X-Hop-Two", "b"},
                           {"content-length", "3"},
                           {"openai-version", "2020-10-01"}};
  stripForClient(headers);
  ASSERT_EQ(headers.size(), 3u);
  EXPECT_EQ(headers[0].name, "x-request-id");
  EXPECT_EQ(headers[1].name, "openai-processing-ms");
  EXPECT_EQ(headers[2].name, "openai-version");
  EXPECT_EQ(headers[2].value, "2020-10-01");
}

TEST(ForwardingTest, StrippedInPlaceWithMoreHeadersThanTheStackHolds) {
  http::Headers headers = {{"Connection", "x-named"}};
  for (int i = 0; i < 100; ++i) {
    headers.push_back({"x-keep-" + std::to_string(i), std::to_string(i)});
    headers.push_back({i % 2 == 0 ? "x-named" : "Keep-Alive", "gone"});
  }
  stripForClient(headers);
  ASSERT_EQ(headers.size(), 100u);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(headers[i].value, std::to_string(i));
}

TEST(ForwardingTest, UrlJoinsBaseAndPath) {
  config::UpstreamConfig u = upstream();
  EXPECT_EQ(upstreamUrl(u, "/v1/models?x=1"), "https://api.openai.com/v1/models?x=1");
  u.base_url = "http://127.0.0.1:9/prefix/";
  EXPECT_EQ(upstreamUrl(u, "/v1/models"), "http://127.0.0.1:9/prefix/v1/models");
}

}  // namespace
}  // namespace bulwark::exchange

namespace bulwark::exchange {
namespace {

TEST(RequestModelTest, FindsTheTopLevelModelOnly) {
  EXPECT_EQ(requestModel(R"({"messages":[{"model":"inner"}],"model":"gpt-4o-mini"})"),
            "gpt-4o-mini");
  EXPECT_EQ(requestModel(R"({"input":{"model":"x"}})"), "");
  EXPECT_EQ(requestModel(R"({"model": 5})"), "");
  EXPECT_EQ(requestModel("not json"), "");
  EXPECT_EQ(requestModel(R"({"model":"a")"), "a");  // found before the truncation
  EXPECT_EQ(requestModel(""), "");
  EXPECT_EQ(requestModel(std::string(100000, '[')), "");
}

TEST(RequestModelTest, OnePassReadsTheFactsAndTheCostAlike) {
  const std::vector<std::string> bodies{
      R"({"model":"gpt-4o-mini","stream":true,"max_tokens":50,)"
      R"("messages":[{"role":"user","content":"12345678"}]})",
      // The model first: the facts alone stop there; the cost reads on to the end.
      R"({"model":"gpt-4o","messages":[{"role":"user","content":[{"type":"text","text":"abcd"},)"
      R"({"type":"image_url","image_url":{"url":"x"}}]}],"max_completion_tokens":7})",
      R"({"model":"a","model":"b","input":"12345678"})",
      // Read to the end either way: the first "stream", the last top-level "model".
      R"({"stream":false,"metadata":{"model":"x","stream":true},"model":"y","stream":true})",
      R"({"model":"a")",
      "not json",
  };
  resilience::CostRules rules;
  for (const std::string& body : bodies) {
    resilience::CostCounter counter;
    RequestFacts both = readRequestFacts(body, &counter);
    RequestFacts alone = readRequestFacts(body);
    EXPECT_EQ(both.model, alone.model) << body;
    EXPECT_EQ(both.stream, alone.stream) << body;
    EXPECT_EQ(both.model_begin, alone.model_begin) << body;
    EXPECT_EQ(both.model_end, alone.model_end) << body;
    resilience::QuotaCost cost = counter.cost(rules, true);
    EXPECT_EQ(cost.tokens, resilience::estimateCost(body, rules, true).tokens) << body;
  }
  RequestFacts repeated = readRequestFacts(bodies[3]);
  EXPECT_EQ(repeated.model, "y");
  EXPECT_FALSE(repeated.stream);
  resilience::CostCounter counter;
  readRequestFacts(bodies[1], &counter);
  EXPECT_EQ(counter.cost(rules, true).tokens, 1 + 800 + 7);  // 4 bytes, an image, the cap
}

TEST(RequestModelTest, LargeBodiesAndBodiesWithANulReadAsSmallOnes) {
  // Small bodies are parsed in place in a copy, large ones (and any with a NUL) where they lie:
  // the same facts, positions and cost either way.
  std::string content(300 * 1024, 'a');
  std::string large = R"({"messages":[{"role":"user","content":")" + content +
                      R"("}],"model" : "gpt\u002d4o","stream":true})";
  resilience::CostRules rules;
  resilience::CostCounter counter;
  RequestFacts facts = readRequestFacts(large, &counter);
  EXPECT_EQ(facts.model, "gpt-4o");
  EXPECT_TRUE(facts.stream);
  EXPECT_EQ(large.substr(facts.model_begin, facts.model_end - facts.model_begin),
            R"("gpt\u002d4o")");
  EXPECT_EQ(counter.cost(rules, true).tokens, 300 * 1024 / 4 + 1000);
  std::string with_nul = std::string(R"({"model":"m","stream":true})") + '\0';
  RequestFacts nul = readRequestFacts(with_nul);
  EXPECT_EQ(nul.model, "m");
  EXPECT_EQ(with_nul.substr(nul.model_begin, nul.model_end - nul.model_begin), R"("m")");
}

// ---- provider adaptation ----

config::UpstreamConfig azure(std::string api_key = "") {
  config::UpstreamConfig u;
  u.name = "azure";
  u.base_url = "https://example.openai.azure.com/openai";
  u.api_key = std::move(api_key);
  u.auth_header = config::AuthHeader::kApiKey;
  u.api_version = "2024-10-21";
  u.models = {{"gpt-4o", "my-gpt4o"}, {"*", ""}};
  return u;
}

TEST(ProviderAdaptationTest, ModelsMapByNameThenStarElseKeep) {
  config::UpstreamConfig u = azure();
  EXPECT_EQ(mappedModel(u, "gpt-4o"), "my-gpt4o");
  EXPECT_EQ(mappedModel(u, "gpt-4o-mini"), "gpt-4o-mini");  // "*": "" keeps it
  u.models["*"] = "fallback";
  EXPECT_EQ(mappedModel(u, "gpt-4o-mini"), "fallback");
  EXPECT_EQ(mappedModel(upstream(), "gpt-4o"), "gpt-4o");  // no map at all
}

TEST(ProviderAdaptationTest, TheModelIsReplacedInPlaceAndEscaped) {
  std::string body = R"({"messages":[{"model":"inner"}], "model" :  "gpt-4o","n":1})";
  RequestFacts facts = readRequestFacts(body);
  ASSERT_EQ(facts.model, "gpt-4o");
  EXPECT_EQ(body.substr(facts.model_begin, facts.model_end - facts.model_begin), "\"gpt-4o\"");
  EXPECT_EQ(withModel(body, facts, "my-gpt4o"),
            R"({"messages":[{"model":"inner"}], "model" :  "my-gpt4o","n":1})");
  EXPECT_EQ(withModel(body, facts, "a\"b/c"),
            R"({"messages":[{"model":"inner"}], "model" :  "a\"b/c","n":1})");
  std::string escaped = R"({"model":"gpt\u002d4o"})";
  RequestFacts e = readRequestFacts(escaped);
  EXPECT_EQ(e.model, "gpt-4o");
  EXPECT_EQ(withModel(escaped, e, "x"), R"({"model":"x"})");
  RequestFacts none = readRequestFacts(R"({"input":"x"})");
  EXPECT_EQ(withModel(R"({"input":"x"})", none, "x"), R"({"input":"x"})");
}

TEST(ProviderAdaptationTest, ADuplicatedModelKeyIsReadAsTheUpstreamReadsIt) {
  // JSON parsers keep the last of duplicate keys: routing and renaming must use that one.
  std::string body = R"({"model":"cheap","messages":[],"model":"expensive","stream":true})";
  RequestFacts facts = readRequestFacts(body);
  EXPECT_EQ(facts.model, "expensive");
  EXPECT_TRUE(facts.stream);
  EXPECT_EQ(withModel(body, facts, "mapped"),
            R"({"model":"cheap","messages":[],"model":"mapped","stream":true})");
}

TEST(ProviderAdaptationTest, AzureDeploymentStylePaths) {
  config::UpstreamConfig u = azure();
  EXPECT_EQ(upstreamUrl(u, "/v1/chat/completions", "my-gpt4o"),
            "https://example.openai.azure.com/openai/deployments/my-gpt4o/chat/completions"
            "?api-version=2024-10-21");
  EXPECT_EQ(upstreamUrl(u, "/v1/files?purpose=batch", ""),
            "https://example.openai.azure.com/openai/files?purpose=batch&api-version=2024-10-21");
  EXPECT_EQ(upstreamUrl(u, "/v1/embeddings", "a b/c"),
            "https://example.openai.azure.com/openai/deployments/a%20b%2Fc/embeddings"
            "?api-version=2024-10-21");
  u.api_version.clear();  // Azure's /openai/v1 API: the path as it is
  EXPECT_EQ(upstreamUrl(u, "/v1/chat/completions", "my-gpt4o"),
            "https://example.openai.azure.com/openai/v1/chat/completions");
}

TEST(ProviderAdaptationTest, AnApiKeyUpstreamNeverSeesTheClientsAuthorization) {
  http::Headers client{{"Authorization", "Bearer sk-openai"}, {"Content-Type", "application/json"}};
  http::Headers with_key = upstreamRequestHeaders(client, azure("azure-secret"));
  EXPECT_EQ(http::findHeader(with_key, "api-key"), "azure-secret");
  EXPECT_FALSE(has(with_key, "authorization"));
  // Without a configured key the client's own token is passed on, as api-key.
  http::Headers passed = upstreamRequestHeaders(client, azure());
  EXPECT_EQ(http::findHeader(passed, "api-key"), "sk-openai");
  EXPECT_FALSE(has(passed, "authorization"));
}

}  // namespace
}  // namespace bulwark::exchange
