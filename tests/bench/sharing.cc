// What metric series shared between workers cost, against per-worker series: the control
// experiment for "per-worker counters merged at scrape".
//
//   bash tests/bench/sharing.sh        (builds this against Debian's prometheus-cpp and runs it)
//
// Two threads (two workers) each run "requests": private work of a set length (a stand-in for
// a request's own CPU, touching a private buffer), then the metric updates one proxied request
// makes in Bulwark: 5 counter increments, 3 histogram observations and 2 gauge sets, through
// prometheus-cpp as Bulwark calls it. Three ways, alternated over several rounds:
//   none     - the private work only;
//   shared   - both threads update the same series (today: one registry, shared atomics);
//   separate - each thread its own series (what per-worker counters would be).
// Reported per request, as thread CPU time: shared - none (what the metrics cost today), and
// shared - separate (what per-worker counters would save: the cost of cache lines moving
// between the two cores). Medians of the rounds; the machine is shared, so read ratios.
#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <time.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace {

struct Series {
  std::array<prometheus::Counter*, 5> counters{};
  std::array<prometheus::Histogram*, 3> histograms{};
  std::array<prometheus::Gauge*, 2> gauges{};
};

prometheus::Histogram::BucketBoundaries latencyBuckets() {
  return {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120};
}

// One registry's worth of the series a request touches, under one upstream label.
Series makeSeries(prometheus::Registry& registry, const std::string& upstream) {
  Series s;
  auto& counters = prometheus::BuildCounter().Name("c_total").Help("c").Register(registry);
  const char* kinds[] = {"requests", "attempts", "body", "prompt", "completion"};
  for (int i = 0; i < 5; ++i) {
    s.counters[i] = &counters.Add({{"upstream", upstream}, {"kind", kinds[i]}});
  }
  auto& histograms = prometheus::BuildHistogram().Name("h").Help("h").Register(registry);
  const char* names[] = {"duration", "ttfb", "wait"};
  for (int i = 0; i < 3; ++i) {
    s.histograms[i] = &histograms.Add({{"upstream", upstream}, {"kind", names[i]}},
                                      latencyBuckets());
  }
  auto& gauges = prometheus::BuildGauge().Name("g").Help("g").Register(registry);
  s.gauges[0] = &gauges.Add({{"upstream", upstream}, {"kind", "limit"}});
  s.gauges[1] = &gauges.Add({{"upstream", upstream}, {"kind", "remaining"}});
  return s;
}

double threadSeconds() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

// Private work: `rounds` passes over a private 64 KiB buffer (a request's own memory).
unsigned work(std::vector<unsigned>& buffer, int rounds) {
  unsigned acc = 0;
  for (int r = 0; r < rounds; ++r) {
    for (std::size_t i = 0; i < buffer.size(); i += 16) {
      buffer[i] = buffer[i] * 2654435761u + static_cast<unsigned>(r);
      acc += buffer[i];
    }
  }
  return acc;
}

std::atomic<unsigned> sink{0};

// Runs `requests` requests on this thread; returns its CPU seconds.
double run(Series* series, int requests, int work_rounds) {
  std::vector<unsigned> buffer(16 * 1024, 1u);
  unsigned acc = 0;
  const double start = threadSeconds();
  for (int n = 0; n < requests; ++n) {
    acc += work(buffer, work_rounds);
    if (series != nullptr) {
      for (prometheus::Counter* c : series->counters) c->Increment();
      for (prometheus::Histogram* h : series->histograms) h->Observe(0.02 + (n & 7) * 0.001);
      series->gauges[0]->Set(10000);
      series->gauges[1]->Set(static_cast<double>(n));
    }
  }
  const double seconds = threadSeconds() - start;
  sink += acc;
  return seconds;
}

enum class Mode { kNone, kShared, kSeparate };

// Two threads, both started at once; the mean of their CPU per request, in microseconds.
double measure(Mode mode, int requests, int work_rounds) {
  prometheus::Registry shared_registry;
  Series shared = makeSeries(shared_registry, "u");
  std::array<std::unique_ptr<prometheus::Registry>, 2> own;
  std::array<Series, 2> separate;
  for (int t = 0; t < 2; ++t) {
    own[t] = std::make_unique<prometheus::Registry>();
    separate[t] = makeSeries(*own[t], "u");
  }
  std::array<double, 2> seconds{};
  std::atomic<int> ready{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] {
      Series* s = mode == Mode::kNone     ? nullptr
                  : mode == Mode::kShared ? &shared
                                          : &separate[t];
      ready.fetch_add(1);
      while (ready.load() < 2) {
      }
      seconds[t] = run(s, requests, work_rounds);
    });
  }
  for (std::thread& th : threads) th.join();
  return (seconds[0] + seconds[1]) / 2 / requests * 1e6;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? std::atoi(argv[1]) : 7;
  const int requests = argc > 2 ? std::atoi(argv[2]) : 20000;
  if (std::thread::hardware_concurrency() < 2) {
    std::fprintf(stderr, "sharing: needs 2 cores\n");
    return 2;
  }
  std::printf("# Metric series shared between two workers, against per-worker series\n\n");
  std::printf("Two threads, %d requests each, %d rounds per cell (median), CPU time per "
              "request in microseconds. A request's updates: 5 counter increments, 3 histogram "
              "observations, 2 gauge sets (prometheus-cpp, as Bulwark makes them).\n\n",
              requests, rounds);
  std::printf("| private work per request | none | shared series | per-worker series | "
              "metrics today (shared - none) | per-worker would save (shared - per-worker) |\n");
  std::printf("| --- | ---: | ---: | ---: | ---: | ---: |\n");
  std::string json = "[";
  for (int work_rounds : {0, 20, 80}) {
    std::vector<double> none, shared, separate;
    for (int r = 0; r < rounds; ++r) {
      none.push_back(measure(Mode::kNone, requests, work_rounds));
      shared.push_back(measure(Mode::kShared, requests, work_rounds));
      separate.push_back(measure(Mode::kSeparate, requests, work_rounds));
    }
    const double n = median(none), s = median(shared), p = median(separate);
    std::printf("| %.2f us | %.3f | %.3f | %.3f | %.3f | %.3f |\n", n, n, s, p, s - n, s - p);
    char row[256];
    std::snprintf(row, sizeof row,
                  "%s{\"work_us\":%.3f,\"none_us\":%.3f,\"shared_us\":%.3f,\"separate_us\":%.3f}",
                  json.size() > 1 ? "," : "", n, n, s, p);
    json += row;
  }
  json += "]";
  std::printf("\nBENCH_JSON %s\n", json.c_str());
  return sink.load() == 42 ? 1 : 0;  // keeps the work from being optimised away
}
