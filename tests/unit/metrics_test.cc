// The metrics' series, as the scrape shows them: every increment lands in the series its
// labels name, across threads and across two registries alive at once (a reload).
#include "proxy/observe/metrics.h"

#include <gtest/gtest.h>

#include <string>
#include <thread>
#include <vector>

namespace bulwark::observe {
namespace {

bool has(const std::string& text, const std::string& line) {
  return text.find(line + "\n") != std::string::npos;
}

TEST(MetricsTest, RequestsAttemptsAndBodyBytesLandInTheirSeries) {
  Metrics metrics(config::MetricsConfig{});
  metrics.requestFinished("primary", 200, 0.02);
  metrics.requestFinished("primary", 200, 0.02);
  metrics.requestFinished("primary", 503, 1.5);
  metrics.requestFinished("fallback", 200, 0.02);
  metrics.requestFinished("primary", 999, 0.01);  // beyond the status codes: still counted
  metrics.attempt("primary", "429");
  metrics.attempt("primary", "timeout");
  metrics.attempt("primary", "timeout");
  metrics.attempt("primary", "weird");  // an outcome without a slot
  metrics.requestBodyBytes("primary", 100);
  metrics.requestBodyBytes("primary", 50);
  metrics.timeToFirstByte("fallback", 0.3);
  std::string text = metrics.serialize();
  EXPECT_TRUE(has(text, R"(bulwark_requests_total{code="200",upstream="primary"} 2)")) << text;
  EXPECT_TRUE(has(text, R"(bulwark_requests_total{code="503",upstream="primary"} 1)"));
  EXPECT_TRUE(has(text, R"(bulwark_requests_total{code="200",upstream="fallback"} 1)"));
  EXPECT_TRUE(has(text, R"(bulwark_requests_total{code="999",upstream="primary"} 1)"));
  EXPECT_TRUE(has(text, R"(bulwark_request_duration_seconds_count{upstream="primary"} 4)"));
  EXPECT_TRUE(has(text, R"(bulwark_upstream_attempts_total{outcome="429",upstream="primary"} 1)"));
  EXPECT_TRUE(
      has(text, R"(bulwark_upstream_attempts_total{outcome="timeout",upstream="primary"} 2)"));
  EXPECT_TRUE(
      has(text, R"(bulwark_upstream_attempts_total{outcome="weird",upstream="primary"} 1)"));
  EXPECT_TRUE(has(text, R"(bulwark_request_body_bytes_total{upstream="primary"} 150)"));
  EXPECT_TRUE(
      has(text, R"(bulwark_upstream_time_to_first_byte_seconds_count{upstream="fallback"} 1)"));
}

TEST(MetricsTest, TokensAndRateLimitsByModelLabelWithTheOverflowLabel) {
  Metrics metrics(config::MetricsConfig{2});
  metrics.tokens("u", "gpt-4o", 10, 5);
  metrics.tokens("u", "gpt-4o", 1, 0);
  metrics.tokens("u", "", 3, 3);        // no model: "unknown"
  metrics.tokens("u", "o3", 2, 2);       // the second name: the last with a label of its own
  metrics.tokens("u", "o4-mini", 7, 7);  // past max_model_labels: "other"
  metrics.tokens("u", "o5", 1, 1);       // shares "other"
  metrics.tokens("u", "o3", 2, 0);
  metrics.rateLimit("u", "gpt-4o", "requests", 500, 499);
  metrics.rateLimit("u", "gpt-4o", "tokens", 30000, std::nullopt);
  metrics.rateLimit("u", "gpt-4o", "requests", 500, 498);
  std::string text = metrics.serialize();
  EXPECT_TRUE(has(text, R"(bulwark_tokens_total{kind="prompt",model="gpt-4o",upstream="u"} 11)"))
      << text;
  EXPECT_TRUE(
      has(text, R"(bulwark_tokens_total{kind="completion",model="gpt-4o",upstream="u"} 5)"));
  EXPECT_TRUE(has(text, R"(bulwark_tokens_total{kind="prompt",model="unknown",upstream="u"} 3)"));
  EXPECT_TRUE(has(text, R"(bulwark_tokens_total{kind="prompt",model="other",upstream="u"} 8)"));
  EXPECT_TRUE(has(text, R"(bulwark_tokens_total{kind="prompt",model="o3",upstream="u"} 4)"));
  EXPECT_EQ(text.find(R"(model="o4-mini")"), std::string::npos);
  EXPECT_TRUE(
      has(text, R"(bulwark_ratelimit_remaining{kind="requests",model="gpt-4o",upstream="u"} 498)"));
  EXPECT_TRUE(
      has(text, R"(bulwark_ratelimit_limit{kind="tokens",model="gpt-4o",upstream="u"} 30000)"));
  EXPECT_EQ(text.find(R"(bulwark_ratelimit_remaining{kind="tokens")"), std::string::npos);
}

TEST(MetricsTest, TwoRegistriesOnOneThreadKeepTheirOwnSeries) {
  // A thread's remembered series belong to one registry: the next one (after a reload) starts
  // from zero with the same names.
  auto first = std::make_unique<Metrics>(config::MetricsConfig{});
  first->requestFinished("u", 200, 0.01);
  first->tokens("u", "m", 4, 0);
  Metrics second(config::MetricsConfig{});
  second.requestFinished("u", 200, 0.01);
  second.requestFinished("u", 200, 0.01);
  second.tokens("u", "m", 1, 0);
  first.reset();
  Metrics third(config::MetricsConfig{});  // may reuse the first one's addresses
  third.requestFinished("u", 200, 0.01);
  third.tokens("u", "m", 9, 0);
  std::string text = second.serialize();
  EXPECT_TRUE(has(text, R"(bulwark_requests_total{code="200",upstream="u"} 2)")) << text;
  EXPECT_TRUE(has(text, R"(bulwark_tokens_total{kind="prompt",model="m",upstream="u"} 1)"));
  text = third.serialize();
  EXPECT_TRUE(has(text, R"(bulwark_requests_total{code="200",upstream="u"} 1)")) << text;
  EXPECT_TRUE(has(text, R"(bulwark_tokens_total{kind="prompt",model="m",upstream="u"} 9)"));
}

TEST(MetricsTest, TheRarerSeriesCountPastWhatAThreadRemembers) {
  // Retries, admission and the fleet's link errors: more label sets than a thread keeps in
  // its memo (so it forgets and finds them again), and a second registry alive at once.
  Metrics metrics(config::MetricsConfig{});
  Metrics other(config::MetricsConfig{});
  for (int round = 0; round < 3; ++round) {
    for (int i = 0; i < 100; ++i) {
      metrics.retry("u" + std::to_string(i), "status_503", "backoff", 0.1);
    }
    metrics.admissionRejection("u", "queue_full");
    metrics.admissionQueue("u", 2);
    metrics.admissionQueue("u", -1);
    metrics.clusterError("connect");
    other.clusterError("connect");
  }
  std::string text = metrics.serialize();
  EXPECT_TRUE(has(text, R"(bulwark_retries_total{reason="status_503",upstream="u0"} 3)")) << text;
  EXPECT_TRUE(has(text, R"(bulwark_retries_total{reason="status_503",upstream="u99"} 3)"));
  EXPECT_TRUE(
      has(text, R"(bulwark_admission_rejections_total{reason="queue_full",upstream="u"} 3)"));
  EXPECT_TRUE(has(text, R"(bulwark_admission_queue_depth{upstream="u"} 3)"));
  EXPECT_TRUE(has(text, R"(bulwark_cluster_errors_total{op="connect"} 3)"));
  EXPECT_TRUE(has(other.serialize(), R"(bulwark_cluster_errors_total{op="connect"} 3)"));
}

TEST(MetricsTest, ThreadsCountIntoTheSameSeries) {
  Metrics metrics(config::MetricsConfig{});
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 1000; ++i) {
        metrics.requestFinished(i % 2 ? "a" : "b", 200, 0.01);
        metrics.attempt("a", "reset");
        metrics.tokens("a", i % 3 ? "m1" : "m2", 1, 0);
      }
    });
  }
  for (std::thread& t : threads) t.join();
  std::string text = metrics.serialize();
  EXPECT_TRUE(has(text, R"(bulwark_requests_total{code="200",upstream="a"} 2000)")) << text;
  EXPECT_TRUE(has(text, R"(bulwark_requests_total{code="200",upstream="b"} 2000)"));
  EXPECT_TRUE(has(text, R"(bulwark_upstream_attempts_total{outcome="reset",upstream="a"} 4000)"));
  EXPECT_TRUE(has(text, R"(bulwark_tokens_total{kind="prompt",model="m1",upstream="a"} 2664)"));
  EXPECT_TRUE(has(text, R"(bulwark_tokens_total{kind="prompt",model="m2",upstream="a"} 1336)"));
}

}  // namespace
}  // namespace bulwark::observe
