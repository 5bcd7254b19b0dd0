// Classifying an attempt: the policy table, x-should-retry, non-retryable 429 codes, and the
// safe-retry rule for POSTs that are not inference calls.
#include "proxy/resilience/classify.h"

#include <string>

#include <gtest/gtest.h>

namespace bulwark::resilience {
namespace {

constexpr std::string_view kQuotaBody =
    R"({"error":{"message":"You exceeded your current quota","type":"insufficient_quota",)"
    R"("param":null,"code":"insufficient_quota"}})";
constexpr std::string_view kRateLimitBody =
    R"({"error":{"message":"Rate limit reached","type":"requests",)"
    R"("param":null,"code":"rate_limit_exceeded"}})";

Verdict classify(Outcome outcome, std::optional<bool> x_should_retry = std::nullopt,
                 std::string_view body = "", bool policies_apply = true) {
  const config::RetryConfig retry;
  return classifyAttempt(retry, {outcome, x_should_retry, body, policies_apply});
}

TEST(ClassifyAttemptTest, SuccessIsHandedOverUncounted) {
  for (int status : {200, 201, 204, 304}) {
    Verdict v = classify(Outcome::fromStatus(status), true);
    EXPECT_TRUE(v.success) << status;
    EXPECT_FALSE(v.retryable) << status;
    EXPECT_FALSE(v.breaker_counted) << status;
    EXPECT_EQ(v.reason, "") << status;
  }
}

TEST(ClassifyAttemptTest, FollowsThePolicyTable) {
  Verdict server_error = classify(Outcome::fromStatus(500));
  EXPECT_FALSE(server_error.success);
  EXPECT_TRUE(server_error.retryable);
  EXPECT_TRUE(server_error.breaker_counted);
  EXPECT_EQ(server_error.reason, "");

  Verdict rate_limited = classify(Outcome::fromStatus(429), std::nullopt, kRateLimitBody);
  EXPECT_TRUE(rate_limited.retryable);
  EXPECT_FALSE(rate_limited.breaker_counted);

  for (int status : {400, 401, 403, 404}) {
    Verdict v = classify(Outcome::fromStatus(status));
    EXPECT_FALSE(v.success) << status;
    EXPECT_FALSE(v.retryable) << status;
    EXPECT_FALSE(v.breaker_counted) << status;
    EXPECT_EQ(v.reason, "policy") << status;
  }

  for (Outcome o :
       {Outcome::connectError(), Outcome::timeout(), Outcome::reset(), Outcome::streamError()}) {
    Verdict v = classify(o);
    EXPECT_TRUE(v.retryable) << o.name();
    EXPECT_TRUE(v.breaker_counted) << o.name();
  }
}

TEST(ClassifyAttemptTest, XShouldRetryFalseOverridesARetryablePolicy) {
  Verdict v = classify(Outcome::fromStatus(503), false);
  EXPECT_FALSE(v.retryable);
  EXPECT_TRUE(v.breaker_counted);  // the breaker still sees the upstream failing
  EXPECT_EQ(v.reason, "x-should-retry");
}

TEST(ClassifyAttemptTest, XShouldRetryTrueOverridesANonRetryablePolicy) {
  Verdict v = classify(Outcome::fromStatus(400), true);
  EXPECT_TRUE(v.retryable);
  EXPECT_FALSE(v.breaker_counted);
  EXPECT_EQ(v.reason, "");
}

TEST(ClassifyAttemptTest, QuotaExhaustionIsNeverRetried) {
  Verdict v = classify(Outcome::fromStatus(429), std::nullopt, kQuotaBody);
  EXPECT_FALSE(v.retryable);
  EXPECT_FALSE(v.breaker_counted);
  EXPECT_EQ(v.reason, "insufficient_quota");

  Verdict forced = classify(Outcome::fromStatus(429), true, kQuotaBody);
  EXPECT_FALSE(forced.retryable);
  EXPECT_EQ(forced.reason, "insufficient_quota");
}

TEST(ClassifyAttemptTest, NonRetryable429MatchesTypeOrCode) {
  Verdict by_type = classify(Outcome::fromStatus(429), std::nullopt,
                             R"({"error":{"type":"insufficient_quota","code":null}})");
  EXPECT_FALSE(by_type.retryable);
  EXPECT_EQ(by_type.reason, "insufficient_quota");

  Verdict by_code = classify(Outcome::fromStatus(429), std::nullopt,
                             R"({"error":{"type":"billing","code":"billing_hard_limit_reached"}})");
  EXPECT_FALSE(by_code.retryable);
  EXPECT_EQ(by_code.reason, "billing_hard_limit_reached");
}

TEST(ClassifyAttemptTest, NonRetryableCodesOnlyApplyTo429) {
  Verdict v = classify(Outcome::fromStatus(503), std::nullopt, kQuotaBody);
  EXPECT_TRUE(v.retryable);
}

TEST(ClassifyAttemptTest, NonRetryableCodesComeFromConfig) {
  config::RetryConfig retry;
  retry.non_retryable_429_codes = {"rate_limit_exceeded"};
  Verdict v = classifyAttempt(retry, {Outcome::fromStatus(429), std::nullopt, kRateLimitBody});
  EXPECT_FALSE(v.retryable);
  EXPECT_EQ(v.reason, "rate_limit_exceeded");
  Verdict quota = classifyAttempt(retry, {Outcome::fromStatus(429), std::nullopt, kQuotaBody});
  EXPECT_TRUE(quota.retryable);
}

TEST(ClassifyAttemptTest, UnparseableOrEmpty429BodyIsAPlainRateLimit) {
  for (std::string_view body : {"", "<html>Too Many Requests</html>", "{\"error\":"}) {
    EXPECT_TRUE(classify(Outcome::fromStatus(429), std::nullopt, body).retryable) << body;
  }
}

TEST(ClassifyAttemptTest, UnsafePostIsRetriedOnlyWhenProvablyUnprocessed) {
  constexpr bool kUnsafe = false;
  Verdict server_error = classify(Outcome::fromStatus(500), std::nullopt, "", kUnsafe);
  EXPECT_FALSE(server_error.retryable);
  EXPECT_TRUE(server_error.breaker_counted);
  EXPECT_EQ(server_error.reason, "not_idempotent");

  for (Outcome o : {Outcome::timeout(), Outcome::reset(), Outcome::streamError(),
                    Outcome::fromStatus(502), Outcome::fromStatus(504)}) {
    Verdict v = classify(o, std::nullopt, "", kUnsafe);
    EXPECT_FALSE(v.retryable) << o.name();
    EXPECT_EQ(v.reason, "not_idempotent") << o.name();
  }
  for (Outcome o : {Outcome::connectError(), Outcome::fromStatus(429), Outcome::fromStatus(503)}) {
    EXPECT_TRUE(classify(o, std::nullopt, "", kUnsafe).retryable) << o.name();
  }
}

TEST(ClassifyAttemptTest, UnsafePostStillObeysTheOtherRules) {
  constexpr bool kUnsafe = false;
  // x-should-retry: true is no proof that the upstream did nothing.
  EXPECT_FALSE(classify(Outcome::fromStatus(500), true, "", kUnsafe).retryable);
  EXPECT_FALSE(classify(Outcome::timeout(), true, "", kUnsafe).retryable);
  Verdict refused = classify(Outcome::fromStatus(503), false, "", kUnsafe);
  EXPECT_FALSE(refused.retryable);
  EXPECT_EQ(refused.reason, "x-should-retry");
  Verdict quota = classify(Outcome::fromStatus(429), std::nullopt, kQuotaBody, kUnsafe);
  EXPECT_FALSE(quota.retryable);
  EXPECT_EQ(quota.reason, "insufficient_quota");
  Verdict client_error = classify(Outcome::fromStatus(400), std::nullopt, "", kUnsafe);
  EXPECT_FALSE(client_error.retryable);
  EXPECT_EQ(client_error.reason, "policy");
}

TEST(ParseErrorIdentityTest, ReadsOpenAiErrors) {
  ErrorIdentity quota = parseErrorIdentity(kQuotaBody);
  EXPECT_EQ(quota.type, "insufficient_quota");
  EXPECT_EQ(quota.code, "insufficient_quota");
  ErrorIdentity partial = parseErrorIdentity(R"({"error":{"type":"server_error"}})");
  EXPECT_EQ(partial.type, "server_error");
  EXPECT_EQ(partial.code, "");
}

TEST(ParseErrorIdentityTest, StringifiesNumericCodesAndIgnoresNull) {
  ErrorIdentity numeric = parseErrorIdentity(R"({"error":{"type":"x","code":429}})");
  EXPECT_EQ(numeric.code, "429");
  ErrorIdentity null_code = parseErrorIdentity(R"({"error":{"type":"x","code":null}})");
  EXPECT_EQ(null_code.code, "");
  EXPECT_EQ(null_code.type, "x");
}

TEST(ParseErrorIdentityTest, SurvivesHostileInput) {
  const std::string deep_nesting = std::string(100000, '[') + std::string(100000, ']');
  const std::string deep_error =
      R"({"error":)" + std::string(100000, '[') + std::string(100000, ']') + "}";
  const std::string raw_nul = std::string(R"({"error":{"type":"a)") + '\0' + R"(b"}})";
  const std::string_view cases[] = {
      "",
      "   ",
      "null",
      "42",
      "\"error\"",
      "[]",
      R"([{"error":{"type":"insufficient_quota"}}])",
      R"({"error":"insufficient_quota"})",
      R"({"error":null})",
      R"({"error":["insufficient_quota"]})",
      R"({"error":{"type":{"nested":1},"code":["a"]}})",
      R"({"error":{"type":true,"code":false}})",
      R"({"error":{"type":"insufficient_quota")",
      R"({"error":{"type":"insufficient_quota"}} trailing)",
      "\xff\xfe\x00\x01garbage",
      "{\"error\":{\"type\":\"\xc3\x28\"}}",
      deep_nesting,
      deep_error,
      raw_nul,  // control characters must be escaped in JSON strings
  };
  for (std::string_view body : cases) {
    ErrorIdentity identity = parseErrorIdentity(body);
    EXPECT_NE(identity.type, "insufficient_quota") << body;
    EXPECT_EQ(identity.code, "") << body;
  }
  EXPECT_EQ(parseErrorIdentity(R"({"error":{"type":"a\u0000b"}})").type, std::string("a\0b", 3));
}

}  // namespace
}  // namespace bulwark::resilience
