// The admission cost of a request: prompt bytes over bytes_per_token, images at a flat rate,
// plus the output cap, read from the shapes of the chat, completions, embeddings and
// Responses APIs.
#include "proxy/resilience/request_cost.h"

#include <gtest/gtest.h>

#include <string>

namespace bulwark::resilience {
namespace {

const CostRules kRules{4, 1000, 800};

TEST(RequestCostTest, ChatMessagesWithStringAndPartContent) {
  std::string body = R"({"model":"gpt-4o","messages":[
      {"role":"system","content":"12345678"},
      {"role":"user","content":[{"type":"text","text":"abcd"},
                                {"type":"image_url","image_url":{"url":"https://x/y.png"}}]}],
      "max_tokens":100})";
  QuotaCost cost = estimateCost(body, kRules, true);
  EXPECT_EQ(cost.requests, 1);
  EXPECT_EQ(cost.tokens, 3 + 800 + 100);  // 12 bytes of text -> 3, one image, the cap
}

TEST(RequestCostTest, TheOutputCapAndItsDefault) {
  EXPECT_EQ(estimateCost(R"({"messages":[],"max_completion_tokens":50})", kRules, true).tokens, 50);
  EXPECT_EQ(estimateCost(R"({"input":"x","max_output_tokens":7})", kRules, true).tokens, 1 + 7);
  EXPECT_EQ(estimateCost(R"({"messages":[]})", kRules, true).tokens, 1000);
  // A max_tokens that is not at the top level is not the request's cap.
  EXPECT_EQ(estimateCost(R"({"tools":[{"max_tokens":3}]})", kRules, true).tokens, 1000);
}

TEST(RequestCostTest, EmbeddingsInputsWithoutOutput) {
  EXPECT_EQ(estimateCost(R"({"model":"e","input":["abcdefgh","abcd"]})", kRules, false).tokens, 3);
  EXPECT_EQ(estimateCost(R"({"model":"e","input":"abcdefgh"})", kRules, false).tokens, 2);
}

TEST(RequestCostTest, CompletionsPromptAndResponsesItems) {
  EXPECT_EQ(estimateCost(R"({"prompt":"abcdefgh","max_tokens":1})", kRules, true).tokens, 3);
  std::string responses = R"({"model":"gpt-4o","input":[
      {"role":"user","content":[{"type":"input_text","text":"abcdefgh"},
                                {"type":"input_image","image_url":"data:..."}]},
      {"role":"user","content":"abcd"}],"max_output_tokens":10})";
  EXPECT_EQ(estimateCost(responses, kRules, true).tokens, 3 + 800 + 10);
}

TEST(RequestCostTest, OtherStringsAndBadBodiesCostOnlyTheCap) {
  // The model name, roles, tool schemas: not prompt text.
  EXPECT_EQ(estimateCost(R"({"model":"a-very-long-model-name","user":"abcdefghijkl"})", kRules,
                         true).tokens,
            1000);
  EXPECT_EQ(estimateCost("not json", kRules, true).tokens, 1000);
  EXPECT_EQ(estimateCost(R"({"messages":[{"content":"abcd")", kRules, true).tokens, 1 + 1000);
  EXPECT_EQ(estimateCost("", kRules, false).tokens, 0);
}

TEST(RequestCostTest, OnlyTheNamedPlacesCountAtAnyDepth) {
  // Text under a message's other keys, in nested tool results, or under a key spelled like an
  // array marker is not prompt text; a part's text is, after any amount of nesting beside it.
  std::string body = R"({"messages":[
      "abcdefgh",
      {"role":"tool","content":[{"type":"text","text":"abcd",
                                 "extra":{"deep":[[[{"text":"zzzzzzzzzzzz"}]]]}}],
       "name":"abcdefghijkl"}],
      "prompt":{"[]":"abcdefghijkl"},
      "metadata":{"messages":[{"content":"abcdefghijkl"}]},
      "max_tokens":{"max_tokens":5}})";
  EXPECT_EQ(estimateCost(body, kRules, true).tokens, 1 + 1000);
  // After a deep value closes, the next sibling is read at its own place again.
  std::string after = R"({"messages":[{"content":[{"type":"text","x":[[[[[[1]]]]]],
                                                   "text":"abcdefgh"}]}],"max_tokens":2})";
  EXPECT_EQ(estimateCost(after, kRules, true).tokens, 2 + 2);
}

TEST(RequestCostTest, BytesPerTokenScalesThePrompt) {
  CostRules two{2, 0, 0};
  EXPECT_EQ(estimateCost(R"({"prompt":"abcdefgh"})", two, true).tokens, 4);
}

}  // namespace
}  // namespace bulwark::resilience
