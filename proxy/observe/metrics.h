// Bulwark's Prometheus metrics, with exactly the documented names, types and labels.
// A narrow interface over prometheus-cpp (kept out of this header). Thread-safe: every
// worker records into the same instance; label values are bounded (configured upstream
// names, status codes, outcome names, at most metrics.max_model_labels model names).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "config/config.h"

namespace bulwark::observe {

class Metrics {
 public:
  explicit Metrics(const config::MetricsConfig& config);
  ~Metrics();
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // A client request is over: `code` is the status sent to the client.
  void requestFinished(std::string_view upstream, int code, double seconds);
  // One upstream attempt's outcome ("200", "503", "connect_error", "timeout", "reset",
  // "stream_error").
  void attempt(std::string_view upstream, std::string_view outcome);
  void timeToFirstByte(std::string_view upstream, double seconds);
  // A retry was scheduled after `reason` (the outcome retried), waiting `delay_seconds`
  // chosen by `source` ("backoff" or "server").
  void retry(std::string_view upstream, std::string_view reason, std::string_view source,
             double delay_seconds);
  void retryBudgetExhausted(std::string_view upstream);
  // `to`: "CLOSED", "OPEN", "HALF_OPEN".
  void breakerTransition(std::string_view upstream, std::string_view to);
  // 0 closed, 1 open, 2 half-open (with per-model breakers: the worst of them).
  void breakerState(std::string_view upstream, int state);
  void breakerRejection(std::string_view upstream);
  void streamInterruption(std::string_view upstream);
  void inflight(std::string_view upstream, int count);
  // A hedge attempt ended: "won", "lost" or "cancelled".
  void hedge(std::string_view upstream, std::string_view result);
  // Request body bytes an attempt sent to the upstream.
  void requestBodyBytes(std::string_view upstream, std::uint64_t bytes);
  void tokens(std::string_view upstream, std::string_view model, long long prompt,
              long long completion);
  // The latest x-ratelimit-* headers of (upstream, model): `kind` "requests" or "tokens".
  void rateLimit(std::string_view upstream, std::string_view model, std::string_view kind,
                 std::optional<double> limit, std::optional<double> remaining);
  // A request joined (+1) or left (-1) an admission queue of the upstream.
  void admissionQueue(std::string_view upstream, int delta);
  // A request was admitted after waiting `seconds` for room (0: at once).
  void admissionWait(std::string_view upstream, double seconds);
  // A request was refused admission: "queue_full" or "wait_exceeded".
  void admissionRejection(std::string_view upstream, std::string_view reason);
  // Fleet mode: whether the link to the fleet's Redis is up (the series exists only in fleet
  // mode), and a command that got no answer (`op`: eval, del, set, publish, get, connect, ...).
  void clusterUp(bool up);
  void clusterError(std::string_view op);
  // Makes the families of an upstream visible (at zero) before its first request.
  void declareUpstream(std::string_view upstream);

  // The Prometheus text exposition format.
  std::string serialize() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace bulwark::observe
