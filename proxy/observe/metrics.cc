#include "proxy/observe/metrics.h"

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <atomic>
#include <charconv>
#include <cstdint>
#include <mutex>
#include <set>
#include <unordered_map>

#include "proxy/version.h"

namespace bulwark::observe {

namespace {

using prometheus::BuildCounter;
using prometheus::BuildGauge;
using prometheus::BuildHistogram;
using prometheus::Histogram;

// LLM latencies: from a fast embedding (10 ms) to a long generation (5 min).
// Built once: a histogram's buckets are copied only when its series is first made.
const Histogram::BucketBoundaries& latencyBuckets() {
  static const Histogram::BucketBoundaries buckets = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                                      2.5,  5,     10,   20,  30,   60,  120, 300};
  return buckets;
}

}  // namespace

struct Metrics::Impl {
  explicit Impl(const config::MetricsConfig& config)
      : id(next_id.fetch_add(1)),
        max_model_labels(config.max_model_labels),
        registry(std::make_shared<prometheus::Registry>()),
        requests(BuildCounter()
                     .Name("bulwark_requests_total")
                     .Help("Client requests, by upstream and the final status sent to the client")
                     .Register(*registry)),
        request_duration(BuildHistogram()
                             .Name("bulwark_request_duration_seconds")
                             .Help("Client request duration, all attempts and waits included")
                             .Register(*registry)),
        attempts(BuildCounter()
                     .Name("bulwark_upstream_attempts_total")
                     .Help("Upstream attempts, by outcome (status code, connect_error, timeout, "
                           "reset, stream_error)")
                     .Register(*registry)),
        ttfb(BuildHistogram()
                 .Name("bulwark_upstream_time_to_first_byte_seconds")
                 .Help("Per attempt: request start to the first response body byte")
                 .Register(*registry)),
        retries(BuildCounter()
                    .Name("bulwark_retries_total")
                    .Help("Retries scheduled, by the outcome retried")
                    .Register(*registry)),
        budget_exhausted(BuildCounter()
                             .Name("bulwark_retry_budget_exhausted_total")
                             .Help("Retries not made because the upstream's retry budget was spent")
                             .Register(*registry)),
        retry_delay(BuildHistogram()
                        .Name("bulwark_retry_delay_seconds")
                        .Help("Wait before a retry, by source (backoff, server)")
                        .Register(*registry)),
        breaker_state(BuildGauge()
                          .Name("bulwark_circuit_breaker_state")
                          .Help("Circuit breaker state: 0 closed, 1 open, 2 half-open")
                          .Register(*registry)),
        breaker_transitions(BuildCounter()
                                .Name("bulwark_circuit_breaker_transitions_total")
                                .Help("Circuit breaker state changes, by the state entered")
                                .Register(*registry)),
        breaker_rejections(BuildCounter()
                               .Name("bulwark_circuit_breaker_rejections_total")
                               .Help("Attempts refused by an open circuit breaker")
                               .Register(*registry)),
        stream_interruptions(BuildCounter()
                                 .Name("bulwark_stream_interruptions_total")
                                 .Help("Responses that failed after bytes reached the client")
                                 .Register(*registry)),
        hedges(BuildCounter()
                   .Name("bulwark_hedges_total")
                   .Help("Hedge attempts by result: won (its answer went to the client), lost "
                         "(another answered, or it failed), cancelled (the request ended first)")
                   .Register(*registry)),
        request_body_bytes(BuildCounter()
                               .Name("bulwark_request_body_bytes_total")
                               .Help("Request body bytes sent to each upstream (every attempt)")
                               .Register(*registry)),
        inflight_requests(BuildGauge()
                              .Name("bulwark_inflight_requests")
                              .Help("Attempts in flight on each upstream")
                              .Register(*registry)),
        tokens_total(BuildCounter()
                         .Name("bulwark_tokens_total")
                         .Help("Tokens reported by the upstream's usage, by model and kind")
                         .Register(*registry)),
        ratelimit_remaining(BuildGauge()
                                .Name("bulwark_ratelimit_remaining")
                                .Help("What the upstream's latest x-ratelimit-remaining-* header "
                                      "said is left, by model and kind (requests, tokens)")
                                .Register(*registry)),
        ratelimit_limit(BuildGauge()
                            .Name("bulwark_ratelimit_limit")
                            .Help("The upstream's latest x-ratelimit-limit-* header, by model and "
                                  "kind (requests, tokens)")
                            .Register(*registry)),
        admission_queue_depth(BuildGauge()
                                  .Name("bulwark_admission_queue_depth")
                                  .Help("Requests waiting for room in an upstream's rate limit")
                                  .Register(*registry)),
        admission_wait(BuildHistogram()
                           .Name("bulwark_admission_wait_seconds")
                           .Help("How long admitted requests waited for room in the rate limit")
                           .Register(*registry)),
        admission_rejections(BuildCounter()
                                 .Name("bulwark_admission_rejections_total")
                                 .Help("Requests refused admission, by reason (queue_full, "
                                       "wait_exceeded)")
                                 .Register(*registry)),
        cluster_up(
            BuildGauge()
                .Name("bulwark_cluster_up")
                .Help("Fleet mode: 1 while the link to the fleet's Redis is up, 0 while each "
                      "sidecar decides alone")
                .Register(*registry)),
        cluster_errors(BuildCounter()
                           .Name("bulwark_cluster_errors_total")
                           .Help("Fleet mode: Redis commands that got no answer in time (or an "
                                 "error), by command")
                           .Register(*registry)),
        build_info(BuildGauge()
                       .Name("bulwark_build_info")
                       .Help("Always 1; the version label says which build runs")
                       .Register(*registry)) {
    build_info.Add({{"version", version()}}).Set(1);
  }

  // The metric of `family` with these label values. Family::Add builds a label map, hashes
  // it and takes the family's lock on every call; a per-thread cache of the metric's address
  // (stable for the registry's lifetime) makes the hot path a string lookup instead.
  template <typename M, typename MakeLabels, typename... Extra>
  M& metric(prometheus::Family<M>& family, char family_key,
            std::initializer_list<std::string_view> values, MakeLabels make_labels,
            Extra&&... extra) {
    thread_local std::unordered_map<std::string, void*> cache;
    thread_local std::string key;  // reused: building the key allocates nothing once warm
    key.clear();
    char digits[24];
    auto [end, ec] = std::to_chars(digits, digits + sizeof digits, id);
    key.append(digits, end);
    key.push_back(family_key);
    for (std::string_view v : values) {
      key.append(v);
      key.push_back('\x1f');
    }
    auto it = cache.find(key);
    if (it != cache.end()) return *static_cast<M*>(it->second);
    M& m = family.Add(make_labels(), std::forward<Extra>(extra)...);
    cache.emplace(key, &m);
    return m;
  }

  // The label for a model name: the name itself while fewer than max_model_labels names have
  // been seen, then "other". The view stays valid for this instance's lifetime (set nodes never
  // move, and the set only grows).
  std::string_view modelLabel(std::string_view model) {
    if (model.empty()) return "unknown";
    // Traffic names few models (a request's and its answer's, which differ): a small per-thread
    // list of recent answers saves the shared lock and any allocation.
    struct Recent {
      std::uint64_t id = 0;
      std::vector<std::pair<std::string, std::string_view>> entries;
    };
    thread_local Recent recent;
    if (recent.id != id) {
      recent.id = id;
      recent.entries.clear();
    }
    for (const auto& [name, label] : recent.entries) {
      if (name == model) return label;
    }
    std::string_view label = modelLabelLocked(model);
    if (recent.entries.size() >= 8) recent.entries.clear();
    recent.entries.emplace_back(std::string(model), label);
    return label;
  }

  std::string_view modelLabelLocked(std::string_view model) {
    std::lock_guard<std::mutex> lock(models_mutex);
    auto it = models.find(model);
    if (it != models.end()) return *it;
    if (static_cast<int>(models.size()) < max_model_labels) {
      return *models.emplace(model).first;
    }
    return "other";
  }

  static inline std::atomic<std::uint64_t> next_id{1};
  std::uint64_t id;  // distinguishes instances in the per-thread caches
  int max_model_labels;
  std::shared_ptr<prometheus::Registry> registry;
  prometheus::Family<prometheus::Counter>& requests;
  prometheus::Family<prometheus::Histogram>& request_duration;
  prometheus::Family<prometheus::Counter>& attempts;
  prometheus::Family<prometheus::Histogram>& ttfb;
  prometheus::Family<prometheus::Counter>& retries;
  prometheus::Family<prometheus::Counter>& budget_exhausted;
  prometheus::Family<prometheus::Histogram>& retry_delay;
  prometheus::Family<prometheus::Gauge>& breaker_state;
  prometheus::Family<prometheus::Counter>& breaker_transitions;
  prometheus::Family<prometheus::Counter>& breaker_rejections;
  prometheus::Family<prometheus::Counter>& stream_interruptions;
  prometheus::Family<prometheus::Counter>& hedges;
  prometheus::Family<prometheus::Counter>& request_body_bytes;
  prometheus::Family<prometheus::Gauge>& inflight_requests;
  prometheus::Family<prometheus::Counter>& tokens_total;
  prometheus::Family<prometheus::Gauge>& ratelimit_remaining;
  prometheus::Family<prometheus::Gauge>& ratelimit_limit;
  prometheus::Family<prometheus::Gauge>& admission_queue_depth;
  prometheus::Family<prometheus::Histogram>& admission_wait;
  prometheus::Family<prometheus::Counter>& admission_rejections;
  prometheus::Family<prometheus::Gauge>& cluster_up;
  prometheus::Family<prometheus::Counter>& cluster_errors;
  prometheus::Family<prometheus::Gauge>& build_info;
  std::mutex models_mutex;
  std::set<std::string, std::less<>> models;
};

Metrics::Metrics(const config::MetricsConfig& config) : impl_(std::make_unique<Impl>(config)) {}
Metrics::~Metrics() = default;

void Metrics::requestFinished(std::string_view upstream, int code, double seconds) {
  std::string c = std::to_string(code);
  impl_
      ->metric(impl_->requests, 'r', {upstream, c},
               [&] {
                 return prometheus::Labels{{"upstream", std::string(upstream)}, {"code", c}};
               })
      .Increment();
  impl_
      ->metric(
          impl_->request_duration, 'd', {upstream},
          [&] {
            return prometheus::Labels{{"upstream", std::string(upstream)}};
          },
          latencyBuckets())
      .Observe(seconds);
}

void Metrics::attempt(std::string_view upstream, std::string_view outcome) {
  impl_
      ->metric(impl_->attempts, 'a', {upstream, outcome},
               [&] {
                 return prometheus::Labels{{"upstream", std::string(upstream)},
                                           {"outcome", std::string(outcome)}};
               })
      .Increment();
}

void Metrics::timeToFirstByte(std::string_view upstream, double seconds) {
  impl_
      ->metric(
          impl_->ttfb, 't', {upstream},
          [&] {
            return prometheus::Labels{{"upstream", std::string(upstream)}};
          },
          latencyBuckets())
      .Observe(seconds);
}

void Metrics::retry(std::string_view upstream, std::string_view reason, std::string_view source,
                    double delay_seconds) {
  impl_
      ->metric(impl_->retries, 'R', {upstream, reason},
               [&] {
                 return prometheus::Labels{{"upstream", std::string(upstream)},
                                           {"reason", std::string(reason)}};
               })
      .Increment();
  impl_
      ->metric(
          impl_->retry_delay, 'D', {upstream, source},
          [&] {
            return prometheus::Labels{{"upstream", std::string(upstream)},
                                      {"source", std::string(source)}};
          },
          latencyBuckets())
      .Observe(delay_seconds);
}

void Metrics::retryBudgetExhausted(std::string_view upstream) {
  impl_->budget_exhausted.Add({{"upstream", std::string(upstream)}}).Increment();
}

void Metrics::breakerTransition(std::string_view upstream, std::string_view to) {
  impl_->breaker_transitions.Add({{"upstream", std::string(upstream)}, {"to", std::string(to)}})
      .Increment();
}

void Metrics::breakerState(std::string_view upstream, int state) {
  impl_->breaker_state.Add({{"upstream", std::string(upstream)}}).Set(state);
}

void Metrics::breakerRejection(std::string_view upstream) {
  impl_->breaker_rejections.Add({{"upstream", std::string(upstream)}}).Increment();
}

void Metrics::streamInterruption(std::string_view upstream) {
  impl_->stream_interruptions.Add({{"upstream", std::string(upstream)}}).Increment();
}

void Metrics::hedge(std::string_view upstream, std::string_view result) {
  impl_->hedges.Add({{"upstream", std::string(upstream)}, {"result", std::string(result)}})
      .Increment();
}

void Metrics::requestBodyBytes(std::string_view upstream, std::uint64_t bytes) {
  impl_
      ->metric(impl_->request_body_bytes, 'b', {upstream},
               [&] {
                 return prometheus::Labels{{"upstream", std::string(upstream)}};
               })
      .Increment(static_cast<double>(bytes));
}

void Metrics::inflight(std::string_view upstream, int count) {
  impl_->inflight_requests.Add({{"upstream", std::string(upstream)}}).Set(count);
}

void Metrics::tokens(std::string_view upstream, std::string_view model, long long prompt,
                     long long completion) {
  std::string_view m = impl_->modelLabel(model);
  for (const auto& [kind_name, count] :
       {std::pair{"prompt", prompt}, std::pair{"completion", completion}}) {
    if (count <= 0) continue;
    const char* kind = kind_name;  // a plain variable: lambdas cannot capture bindings (C++17)
    impl_
        ->metric(impl_->tokens_total, 'k', {upstream, m, kind},
                 [&] {
                   return prometheus::Labels{{"upstream", std::string(upstream)},
                                             {"model", std::string(m)},
                                             {"kind", kind}};
                 })
        .Increment(static_cast<double>(count));
  }
}

void Metrics::rateLimit(std::string_view upstream, std::string_view model, std::string_view kind,
                        std::optional<double> limit, std::optional<double> remaining) {
  std::string_view m = impl_->modelLabel(model);
  auto labels = [&] {
    return prometheus::Labels{
        {"upstream", std::string(upstream)}, {"model", std::string(m)},
        {"kind", std::string(kind)}};
  };
  if (limit) impl_->metric(impl_->ratelimit_limit, 'L', {upstream, m, kind}, labels).Set(*limit);
  if (remaining) {
    impl_->metric(impl_->ratelimit_remaining, 'm', {upstream, m, kind}, labels).Set(*remaining);
  }
}

void Metrics::admissionQueue(std::string_view upstream, int delta) {
  impl_
      ->metric(impl_->admission_queue_depth, 'q', {upstream},
               [&] {
                 return prometheus::Labels{{"upstream", std::string(upstream)}};
               })
      .Increment(delta);
}

void Metrics::admissionWait(std::string_view upstream, double seconds) {
  impl_
      ->metric(
          impl_->admission_wait, 'w', {upstream},
          [&] {
            return prometheus::Labels{{"upstream", std::string(upstream)}};
          },
          latencyBuckets())
      .Observe(seconds);
}

void Metrics::admissionRejection(std::string_view upstream, std::string_view reason) {
  impl_
      ->metric(impl_->admission_rejections, 'j', {upstream, reason},
               [&] {
                 return prometheus::Labels{{"upstream", std::string(upstream)},
                                           {"reason", std::string(reason)}};
               })
      .Increment();
}

void Metrics::clusterUp(bool up) {
  impl_->cluster_up.Add({}).Set(up ? 1 : 0);
}

void Metrics::clusterError(std::string_view op) {
  impl_
      ->metric(impl_->cluster_errors, 'c', {op},
               [&] {
                 return prometheus::Labels{{"op", std::string(op)}};
               })
      .Increment();
}

void Metrics::declareUpstream(std::string_view upstream) {
  std::string u(upstream);
  impl_->admission_queue_depth.Add({{"upstream", u}});
  for (const char* reason : {"queue_full", "wait_exceeded"}) {
    impl_->admission_rejections.Add({{"upstream", u}, {"reason", reason}});
  }
  impl_->breaker_state.Add({{"upstream", u}});
  impl_->inflight_requests.Add({{"upstream", u}});
  impl_->budget_exhausted.Add({{"upstream", u}});
  impl_->breaker_rejections.Add({{"upstream", u}});
  impl_->stream_interruptions.Add({{"upstream", u}});
  impl_->request_body_bytes.Add({{"upstream", u}});
  for (const char* result : {"won", "lost", "cancelled"}) {
    impl_->hedges.Add({{"upstream", u}, {"result", result}});
  }
  // Every transition series exists from the start, so increase() sees the first trip.
  for (const char* to : {"OPEN", "HALF_OPEN", "CLOSED"}) {
    impl_->breaker_transitions.Add({{"upstream", u}, {"to", to}});
  }
}

std::string Metrics::serialize() const {
  return prometheus::TextSerializer().Serialize(impl_->registry->Collect());
}

}  // namespace bulwark::observe
