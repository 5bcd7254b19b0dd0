#include "proxy/observe/metrics.h"

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <array>
#include <atomic>
#include <charconv>
#include <cstdint>
#include <map>
#include <mutex>
#include <set>

#include "proxy/support/thread_memo.h"
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

// A series made on first use and then read without a lock. Family::Add is thread-safe and
// returns the same series for the same labels, so threads that race store the same address.
template <typename M>
class Lazy {
 public:
  template <typename Make>
  M& get(Make make) {
    M* m = series_.load(std::memory_order_acquire);
    if (m == nullptr) {
      m = &make();
      series_.store(m, std::memory_order_release);
    }
    return *m;
  }

 private:
  std::atomic<M*> series_{nullptr};
};

// The outcomes that are not status codes (see resilience::outcomeName).
constexpr std::array<std::string_view, 4> kNamedOutcomes = {"connect_error", "timeout", "reset",
                                                            "stream_error"};
constexpr int kFirstCode = 100;
constexpr int kCodes = 500;  // 100..599

// The slot of an attempt outcome: a status code's, or after them a named outcome's; -1 for
// anything else.
int outcomeSlot(std::string_view outcome) {
  int code = 0;
  auto [end, ec] = std::from_chars(outcome.data(), outcome.data() + outcome.size(), code);
  if (ec == std::errc() && end == outcome.data() + outcome.size() && code >= kFirstCode &&
      code < kFirstCode + kCodes && outcome.size() == 3) {
    return code - kFirstCode;
  }
  for (std::size_t i = 0; i < kNamedOutcomes.size(); ++i) {
    if (outcome == kNamedOutcomes[i]) return kCodes + static_cast<int>(i);
  }
  return -1;
}

// The series of one (upstream, model): tokens by kind, and the rate limits by kind
// (0 requests, 1 tokens).
struct ModelSeries {
  std::string_view label;  // the model's label (a view into the labels set)
  Lazy<prometheus::Counter> prompt_tokens, completion_tokens;
  std::array<Lazy<prometheus::Gauge>, 2> limit, remaining;
};

// The series of one upstream, made once for this registry's life and reached through a
// per-thread memo: a request's metrics build and hash no label strings.
struct UpstreamSeries {
  explicit UpstreamSeries(std::string_view n) : name(n) {}
  const std::string name;
  const std::uint64_t id = support::newMemoOwner();
  Lazy<Histogram> duration, ttfb, admission_wait;
  Lazy<prometheus::Counter> body_bytes;
  std::array<Lazy<prometheus::Counter>, kCodes> requests;  // by the code sent to the client
  std::array<Lazy<prometheus::Counter>, kCodes + kNamedOutcomes.size()> attempts;
  std::mutex models_mutex;
  std::map<std::string_view, std::unique_ptr<ModelSeries>> models;  // by label
};

struct UpstreamMemoTag {};
struct ModelMemoTag {};
struct LabelMemoTag {};
using UpstreamMemo = support::ThreadMemo<UpstreamMemoTag, UpstreamSeries*>;
using ModelMemo = support::ThreadMemo<ModelMemoTag, ModelSeries*>;
// Traffic names few models (a request's and its answer's, which differ): a short list.
using LabelMemo = support::ThreadMemo<LabelMemoTag, std::string_view, 8>;
struct ColdMemoTag {};
using ColdMemo = support::ThreadMemo<ColdMemoTag, void*>;

}  // namespace

struct Metrics::Impl {
  explicit Impl(const config::MetricsConfig& config)
      : id(support::newMemoOwner()),
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

  // The metric of `family` with these label values, for the rarer series (retries,
  // admission, the fleet's link). Family::Add builds a label map, hashes it and takes the
  // family's lock on every call; the thread's memo of the metric's address (stable for the
  // registry's lifetime) makes a repeat a short scan instead.
  template <typename M, typename MakeLabels, typename... Extra>
  M& metric(prometheus::Family<M>& family, char family_key,
            std::initializer_list<std::string_view> values, MakeLabels make_labels,
            Extra&&... extra) {
    thread_local std::string key;  // reused: building the key allocates nothing once warm
    key.clear();
    key.push_back(family_key);
    for (std::string_view v : values) {
      key.append(v);
      key.push_back('\x1f');
    }
    if (void* const* memo = ColdMemo::find(id, key)) return *static_cast<M*>(*memo);
    M& m = family.Add(make_labels(), std::forward<Extra>(extra)...);
    ColdMemo::remember(id, key, &m);
    return m;
  }

  // The label for a model name: the name itself while fewer than max_model_labels names have
  // been seen, then "other". The view stays valid for this instance's lifetime (set nodes never
  // move, and the set only grows), and a name keeps its label.
  std::string_view modelLabel(std::string_view model) {
    if (model.empty()) return "unknown";
    if (const std::string_view* label = LabelMemo::find(id, model)) return *label;
    std::string_view label = modelLabelLocked(model);
    LabelMemo::remember(id, model, label);
    return label;
  }

  UpstreamSeries& upstreamSeries(std::string_view name) {
    if (UpstreamSeries* const* memo = UpstreamMemo::find(id, name)) return **memo;
    UpstreamSeries* found = nullptr;
    {
      std::lock_guard<std::mutex> lock(upstreams_mutex);
      auto it = upstreams.find(name);
      if (it == upstreams.end()) {
        auto series = std::make_unique<UpstreamSeries>(name);
        it = upstreams.emplace(series->name, std::move(series)).first;
      }
      found = it->second.get();
    }
    UpstreamMemo::remember(id, name, found);
    return *found;
  }

  // `model` as the request or answer named it; series are kept by its label.
  ModelSeries& modelSeries(UpstreamSeries& upstream, std::string_view model) {
    if (ModelSeries* const* memo = ModelMemo::find(upstream.id, model)) return **memo;
    std::string_view label = modelLabel(model);
    ModelSeries* found = nullptr;
    {
      std::lock_guard<std::mutex> lock(upstream.models_mutex);
      std::unique_ptr<ModelSeries>& slot = upstream.models[label];
      if (!slot) {
        slot = std::make_unique<ModelSeries>();
        slot->label = label;
      }
      found = slot.get();
    }
    ModelMemo::remember(upstream.id, model, found);
    return *found;
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
  std::mutex upstreams_mutex;
  std::map<std::string_view, std::unique_ptr<UpstreamSeries>> upstreams;  // keys view names
};

Metrics::Metrics(const config::MetricsConfig& config) : impl_(std::make_unique<Impl>(config)) {}
Metrics::~Metrics() = default;

void Metrics::requestFinished(std::string_view upstream, int code, double seconds) {
  UpstreamSeries& series = impl_->upstreamSeries(upstream);
  auto make = [&]() -> prometheus::Counter& {
    return impl_->requests.Add(
        {{"upstream", series.name}, {"code", std::to_string(code)}});
  };
  if (code >= kFirstCode && code < kFirstCode + kCodes) {
    series.requests[code - kFirstCode].get(make).Increment();
  } else {
    make().Increment();
  }
  series.duration
      .get([&]() -> Histogram& {
        return impl_->request_duration.Add({{"upstream", series.name}}, latencyBuckets());
      })
      .Observe(seconds);
}

void Metrics::attempt(std::string_view upstream, std::string_view outcome) {
  UpstreamSeries& series = impl_->upstreamSeries(upstream);
  auto make = [&]() -> prometheus::Counter& {
    return impl_->attempts.Add({{"upstream", series.name}, {"outcome", std::string(outcome)}});
  };
  int slot = outcomeSlot(outcome);
  if (slot >= 0) {
    series.attempts[slot].get(make).Increment();
  } else {
    make().Increment();
  }
}

void Metrics::timeToFirstByte(std::string_view upstream, double seconds) {
  UpstreamSeries& series = impl_->upstreamSeries(upstream);
  series.ttfb
      .get([&]() -> Histogram& {
        return impl_->ttfb.Add({{"upstream", series.name}}, latencyBuckets());
      })
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
  UpstreamSeries& series = impl_->upstreamSeries(upstream);
  series.body_bytes
      .get([&]() -> prometheus::Counter& {
        return impl_->request_body_bytes.Add({{"upstream", series.name}});
      })
      .Increment(static_cast<double>(bytes));
}

void Metrics::inflight(std::string_view upstream, int count) {
  impl_->inflight_requests.Add({{"upstream", std::string(upstream)}}).Set(count);
}

void Metrics::tokens(std::string_view upstream, std::string_view model, long long prompt,
                     long long completion) {
  UpstreamSeries& series = impl_->upstreamSeries(upstream);
  ModelSeries& m = impl_->modelSeries(series, model);
  auto count = [&](Lazy<prometheus::Counter>& lazy, const char* kind, long long n) {
    if (n <= 0) return;
    lazy.get([&]() -> prometheus::Counter& {
          return impl_->tokens_total.Add(
              {{"upstream", series.name}, {"model", std::string(m.label)}, {"kind", kind}});
        })
        .Increment(static_cast<double>(n));
  };
  count(m.prompt_tokens, "prompt", prompt);
  count(m.completion_tokens, "completion", completion);
}

void Metrics::rateLimit(std::string_view upstream, std::string_view model, std::string_view kind,
                        std::optional<double> limit, std::optional<double> remaining) {
  UpstreamSeries& series = impl_->upstreamSeries(upstream);
  ModelSeries& m = impl_->modelSeries(series, model);
  auto set = [&](prometheus::Family<prometheus::Gauge>& family,
                 std::array<Lazy<prometheus::Gauge>, 2>& by_kind, double value) {
    auto make = [&]() -> prometheus::Gauge& {
      return family.Add({{"upstream", series.name},
                         {"model", std::string(m.label)},
                         {"kind", std::string(kind)}});
    };
    if (kind == "requests" || kind == "tokens") {
      by_kind[kind == "tokens" ? 1 : 0].get(make).Set(value);
    } else {
      make().Set(value);
    }
  };
  if (limit) set(impl_->ratelimit_limit, m.limit, *limit);
  if (remaining) set(impl_->ratelimit_remaining, m.remaining, *remaining);
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
  UpstreamSeries& series = impl_->upstreamSeries(upstream);
  series.admission_wait
      .get([&]() -> Histogram& {
        return impl_->admission_wait.Add({{"upstream", series.name}}, latencyBuckets());
      })
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
