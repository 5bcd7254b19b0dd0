// Typed Bulwark configuration: every proxy.yaml key with its documented default.
// Plain values, copied freely; a loaded Config is immutable and shared read-only by threads.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace bulwark::config {

using Duration = std::chrono::milliseconds;
using namespace std::chrono_literals;

inline constexpr std::uint64_t kKiB = 1024;
inline constexpr std::uint64_t kMiB = 1024 * kKiB;
inline constexpr std::uint64_t kGiB = 1024 * kMiB;

// "host:port" or "[v6]:port"; port 0 asks the kernel for a free port.
struct ListenAddress {
  std::string host = "127.0.0.1";
  std::uint16_t port = 8080;
  std::string toString() const;
  bool operator==(const ListenAddress&) const = default;
};

struct ServerConfig {
  ListenAddress listen{"127.0.0.1", 8080};
  ListenAddress admin_listen{"0.0.0.0", 9090};
  int workers = 0;  // 0 = one per core
  std::uint64_t max_request_body = 512 * kMiB;
  // Bodies up to this are held whole, so a failed attempt can be sent again; larger ones
  // (and chunked ones that grow past it) stream to the upstream as they arrive.
  std::uint64_t retry_body_limit = 8 * kMiB;
  int max_connections = 10000;
  Duration shutdown_grace = 30s;
  // Extensions beyond the product contract's list (documented in the README): a client must finish
  // sending a request head within header_timeout; an idle keep-alive connection is
  // closed after idle_timeout.
  Duration header_timeout = 10s;
  Duration idle_timeout = 75s;
  bool operator==(const ServerConfig&) const = default;
};

// How an upstream wants the API key: OpenAI's "Authorization: Bearer <key>", or Azure
// OpenAI's "api-key: <key>".
enum class AuthHeader { kAuthorization, kApiKey };

struct UpstreamConfig {
  std::string name;
  std::string base_url;  // scheme://host[:port][/prefix], no trailing slash after loading
  std::string api_key;   // non-empty: replaces the client's Authorization
  std::vector<std::pair<std::string, std::string>> headers;  // extra request headers
  std::string ca_file;                                       // empty = system store
  int max_inflight = 0;                                      // 0 = unlimited
  // Egress proxy for this upstream (http://[user:pass@]host:port, https://, socks5://...);
  // empty = the environment's proxy variables (HTTPS_PROXY, NO_PROXY, ...) apply.
  std::string proxy;
  // Provider adaptation. The client's model name -> this upstream's ("*": any other; a value
  // of "" keeps the client's name): an Azure deployment, a vLLM model id.
  std::map<std::string, std::string> models;
  AuthHeader auth_header = AuthHeader::kAuthorization;
  // Set: Azure's deployment-style API, /deployments/{model}/...?api-version=<this>.
  std::string api_version;
  bool operator==(const UpstreamConfig&) const = default;
};

struct TimeoutsConfig {
  Duration connect = 5s;
  Duration first_byte = 120s;
  Duration idle = 120s;
  Duration total = 600s;
  bool operator==(const TimeoutsConfig&) const = default;
};

enum class Jitter { kFull, kEqual, kDecorrelated, kNone };

struct OutcomePolicy {
  bool retry = false;
  bool breaker = false;
  bool operator==(const OutcomePolicy&) const = default;
};

struct RetryBudgetConfig {
  double ratio = 0.2;
  double min_per_second = 10;
  Duration window = 10s;
  bool operator==(const RetryBudgetConfig&) const = default;
};

struct RetryConfig {
  int max_attempts = 3;
  Duration base_delay = 1s;
  Duration max_delay = 30s;
  double exponential_base = 2;
  Jitter jitter = Jitter::kFull;
  bool honor_retry_after = true;
  Duration max_retry_after = 60s;
  bool failover = true;
  RetryBudgetConfig budget;
  std::vector<std::string> non_retryable_429_codes{"insufficient_quota",
                                                   "billing_hard_limit_reached"};
  // Keys: a status code ("429"), a class ("5xx"), or connect_error / timeout / reset /
  // stream_error. Anything not listed: {retry: false, breaker: false}.
  std::map<std::string, OutcomePolicy> policies{
      {"408", {true, false}},          {"409", {true, false}},    {"429", {true, false}},
      {"5xx", {true, true}},           {"401", {false, false}},   {"403", {false, false}},
      {"connect_error", {true, true}}, {"timeout", {true, true}}, {"reset", {true, true}},
      {"stream_error", {true, true}},
  };
  bool operator==(const RetryConfig&) const = default;
};

enum class BreakerScope { kUpstream, kUpstreamModel };

struct CircuitBreakerConfig {
  BreakerScope scope = BreakerScope::kUpstream;
  int failure_threshold = 5;
  double failure_rate_threshold = 0.5;
  Duration window = 30s;
  int min_requests = 20;
  Duration recovery_timeout = 60s;
  Duration max_recovery_timeout = 5min;
  int half_open_max_probes = 1;
  bool operator==(const CircuitBreakerConfig&) const = default;
};

enum class LogLevel { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };
enum class LogFormat { kJson, kText };

struct LogConfig {
  LogLevel level = LogLevel::kInfo;
  LogFormat format = LogFormat::kJson;
  bool operator==(const LogConfig&) const = default;
};

struct MetricsConfig {
  int max_model_labels = 50;
  bool operator==(const MetricsConfig&) const = default;
};

// Which requests a route takes. An empty field matches anything.
struct RouteMatch {
  std::string path;   // a prefix ("/v1/embeddings", whole segments) or a glob ("/v1/*/jobs")
  std::string model;  // a glob over the body's "model" ("o*", "gpt-4o*")
  bool operator==(const RouteMatch&) const = default;
};

// Hedging: an attempt with no answer after `after` (a fixed wait, or the recent p95 time to
// first byte of its upstream and model) gets a twin on the next upstream of the chain; the
// first to reach the commit point wins and the others are cancelled.
struct HedgeConfig {
  bool p95 = false;   // after: p95
  Duration after{0};  // after: <duration>
  int max = 1;        // hedges per request, at most
  bool operator==(const HedgeConfig&) const = default;
};

// Quota-aware admission: a request whose estimated cost (1 request, and its prompt estimate
// plus its output cap in tokens) does not fit the rate limit its upstream last reported waits
// in a bounded FIFO per (upstream, model) until it does, instead of drawing a 429.
struct AdmissionConfig {
  bool enabled = true;
  int max_queue = 1000;              // waiting requests per (upstream, model)
  Duration max_wait = 30s;           // the longest a request waits for room
  double headroom = 0.02;            // the share of each limit kept free
  double bytes_per_token = 4;        // prompt text bytes per estimated token
  int default_output_tokens = 1000;  // the output cap of a request that sets none
  int image_tokens = 800;            // an image part's flat estimate
  double burst = 0;                  // the enforced burst, a share of the limit; 0 = learned
  bool operator==(const AdmissionConfig&) const = default;
};

// Fleet mode: the sidecars of a fleet share breaker and rate-limit state through one Redis.
// Absent: a single process, local state only.
struct ClusterConfig {
  std::string redis;  // as written: redis://[[user]:password@]host[:port][/db]
  std::string host;   // parsed from `redis`
  std::uint16_t port = 6379;
  std::string user;      // empty: the default user (AUTH <password>)
  std::string password;  // empty: no AUTH
  int db = 0;
  std::string key_prefix = "bulwark:default:";
  Duration timeout = 50ms;      // the longest a request waits on Redis
  Duration sync_interval = 1s;  // how often shared state is refreshed from Redis
  bool operator==(const ClusterConfig&) const = default;
};

// One entry of `routes:`, with its settings resolved: the top level's, overridden by the
// route's own. The default route (no entry matched) is the top level itself.
struct RouteConfig {
  std::string name;
  RouteMatch match;
  TimeoutsConfig timeouts;
  RetryConfig retry;
  std::vector<std::size_t> upstreams;  // indexes into Config::upstreams: the failover chain
  std::optional<HedgeConfig> hedge;    // opt-in per route
  AdmissionConfig admission;
  bool operator==(const RouteConfig&) const = default;
};

struct Config {
  ServerConfig server;
  std::vector<UpstreamConfig> upstreams;  // priority order; never empty after loading
  TimeoutsConfig timeouts;
  RetryConfig retry;
  CircuitBreakerConfig circuit_breaker;
  LogConfig log;
  MetricsConfig metrics;
  AdmissionConfig admission;
  std::optional<ClusterConfig> cluster;
  std::vector<RouteConfig> routes;  // in order: the first that matches applies
  RouteConfig default_route;        // name "default": the top-level settings, every upstream
  // Lets a SIGHUP reload tell what changed, and tests compare whole configs.
  bool operator==(const Config&) const = default;
};

}  // namespace bulwark::config
