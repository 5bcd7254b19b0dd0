#include "config/config_reader.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "config/units.h"

namespace bulwark::config {
namespace {

constexpr std::string_view kDurationExpected = "a duration such as 250ms, 2s, 1m or 1h";
constexpr std::string_view kSizeExpected = "a size such as 1048576, 512KiB, 32MiB or 1GiB";
constexpr std::string_view kListenExpected = "an address such as 127.0.0.1:8080 or [::1]:8080";

template <typename E>
struct NamedValue {
  std::string_view name;
  E value;
};

constexpr std::array<NamedValue<Jitter>, 4> kJitterNames{{
    {"full", Jitter::kFull},
    {"equal", Jitter::kEqual},
    {"decorrelated", Jitter::kDecorrelated},
    {"none", Jitter::kNone},
}};

constexpr std::array<NamedValue<BreakerScope>, 2> kScopeNames{{
    {"upstream", BreakerScope::kUpstream},
    {"upstream_model", BreakerScope::kUpstreamModel},
}};

constexpr std::array<NamedValue<AuthHeader>, 2> kAuthHeaderNames{{
    {"authorization", AuthHeader::kAuthorization},
    {"api-key", AuthHeader::kApiKey},
}};

constexpr std::array<NamedValue<LogLevel>, 4> kLogLevelNames{{
    {"debug", LogLevel::kDebug},
    {"info", LogLevel::kInfo},
    {"warn", LogLevel::kWarn},
    {"error", LogLevel::kError},
}};

constexpr std::array<NamedValue<LogFormat>, 2> kLogFormatNames{{
    {"json", LogFormat::kJson},
    {"text", LogFormat::kText},
}};

constexpr std::array<std::string_view, 4> kNamedOutcomes{"connect_error", "timeout", "reset",
                                                         "stream_error"};

// Framing and routing headers: a configured value would corrupt the request or its target.
constexpr std::array<std::string_view, 4> kManagedHeaders{"host", "content-length",
                                                          "transfer-encoding", "connection"};

// " (got 1.5)": the offending number, for range errors.
std::string got(double value) {
  std::array<char, 32> buffer{};
  auto [end, error] = std::to_chars(buffer.data(), buffer.data() + buffer.size(), value);
  return " (got " + std::string(buffer.data(), end) + ")";
}

// ---- Field readers: one per value kind, with the range the key allows. ----

void readInt(MappingReader& reader, std::string_view key, int& out, int min) {
  reader.read(key, out, parseInteger, "an integer");
  reader.check(key, out >= min, "must be at least " + std::to_string(min) + got(out));
}

void readNumber(MappingReader& reader, std::string_view key, double& out) {
  reader.read(key, out, parseNumber, "a number");
}

void readBool(MappingReader& reader, std::string_view key, bool& out) {
  reader.read(key, out, parseBool, "true or false");
}

void readDuration(MappingReader& reader, std::string_view key, Duration& out) {
  reader.read(key, out, parseDuration, kDurationExpected);
}

void readPositiveDuration(MappingReader& reader, std::string_view key, Duration& out) {
  readDuration(reader, key, out);
  reader.check(key, out > Duration::zero(), "must be greater than 0s");
}

void readListen(MappingReader& reader, std::string_view key, ListenAddress& out) {
  reader.read(key, out, parseListenAddress, kListenExpected);
}

template <typename E, std::size_t N>
void readEnum(MappingReader& reader, std::string_view key, E& out,
              const std::array<NamedValue<E>, N>& names) {
  std::string expected = "one of";
  for (const NamedValue<E>& named : names) {
    expected += (&named == &names.front() ? " " : ", ") + std::string(named.name);
  }
  auto parse = [&names](std::string_view text) -> std::optional<E> {
    for (const NamedValue<E>& named : names) {
      if (named.name == text) return named.value;
    }
    return std::nullopt;
  };
  reader.read(key, out, parse, expected);
}

// ---- server ----

bool isWildcardHost(std::string_view host) {
  return host == "0.0.0.0" || host == "::";
}

// Two listeners that could not both bind.
bool overlaps(const ListenAddress& a, const ListenAddress& b) {
  if (a.port == 0 || a.port != b.port) return false;
  return a.host == b.host || isWildcardHost(a.host) || isWildcardHost(b.host);
}

void readServer(MappingReader server, ServerConfig& out) {
  readListen(server, "listen", out.listen);
  readListen(server, "admin_listen", out.admin_listen);
  readInt(server, "workers", out.workers, 0);
  server.read("max_request_body", out.max_request_body, parseSize, kSizeExpected);
  server.read("retry_body_limit", out.retry_body_limit, parseSize, kSizeExpected);
  readInt(server, "max_connections", out.max_connections, 1);
  readDuration(server, "shutdown_grace", out.shutdown_grace);
  readPositiveDuration(server, "header_timeout", out.header_timeout);
  readPositiveDuration(server, "idle_timeout", out.idle_timeout);
  server.checkPair("admin_listen", "listen", !overlaps(out.admin_listen, out.listen),
                   "admin_listen (" + out.admin_listen.toString() +
                       ") must not use the same port as listen (" + out.listen.toString() + ")");
  server.finish();
}

// ---- upstreams ----

bool isUpstreamName(std::string_view name) {
  if (name.empty()) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-';
  });
}

// "host", "host:port", "[v6]" or "[v6]:port".
bool isAuthority(std::string_view authority) {
  const std::size_t colon = authority.rfind(':');
  const std::size_t bracket = authority.rfind(']');
  const bool has_port =
      colon != std::string_view::npos && (bracket == std::string_view::npos || colon > bracket);
  std::optional<ListenAddress> address =
      parseListenAddress(has_port ? std::string(authority) : std::string(authority) + ":1");
  return address && address->port != 0;
}

// What is wrong with a base_url, if anything. Never quotes the URL: it may carry a secret.
std::optional<std::string> proxyUrlProblem(std::string_view url) {
  static constexpr std::string_view kSchemes[] = {"http://",    "https://",  "socks4://",
                                                  "socks4a://", "socks5://", "socks5h://"};
  std::string_view rest;
  for (std::string_view scheme : kSchemes) {
    if (url.starts_with(scheme)) rest = url.substr(scheme.size());
  }
  if (rest.empty()) return "must be http://, https:// or socks5:// followed by host:port";
  const bool has_control = std::any_of(url.begin(), url.end(), [](char c) {
    return static_cast<unsigned char>(c) <= 0x20 || c == 0x7f;
  });
  if (has_control) return "must not contain spaces or control characters";
  std::string_view authority = rest.substr(0, rest.find('/'));
  if (rest.size() > authority.size() && rest.substr(authority.size()) != "/") {
    return "must be a proxy address without a path";
  }
  authority = authority.substr(authority.rfind('@') == std::string_view::npos
                                   ? 0
                                   : authority.rfind('@') + 1);  // credentials are allowed
  if (!isAuthority(authority)) return "must have a valid host and optional port";
  return std::nullopt;
}

std::optional<std::string> baseUrlProblem(std::string_view url) {
  std::string_view rest;
  if (url.starts_with("http://")) {
    rest = url.substr(7);
  } else if (url.starts_with("https://")) {
    rest = url.substr(8);
  } else {
    return "must start with http:// or https://";
  }
  const bool has_control = std::any_of(url.begin(), url.end(), [](char c) {
    return static_cast<unsigned char>(c) <= 0x20 || c == 0x7f;
  });
  if (has_control) return "must not contain spaces or control characters";
  if (url.find_first_of("?#") != std::string_view::npos) {
    return "must not have a query (?) or a fragment (#)";
  }
  const std::string_view authority = rest.substr(0, rest.find('/'));
  if (authority.find('@') != std::string_view::npos) {
    return "must not carry credentials; use api_key or headers";
  }
  if (!isAuthority(authority)) return "must have a valid host and optional port";
  return std::nullopt;
}

bool hasLineBreak(std::string_view text) {
  return text.find_first_of(std::string_view("\r\n\0", 3)) != std::string_view::npos;
}

// An RFC 9110 token.
bool isHeaderName(std::string_view name) {
  constexpr std::string_view kTokenPunctuation = "!#$%&'*+-.^_`|~";
  if (name.empty()) return false;
  return std::all_of(name.begin(), name.end(), [&](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) ||
           kTokenPunctuation.find(c) != std::string_view::npos;
  });
}

std::string lowercase(std::string_view text) {
  std::string out(text);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

void readHeaders(MappingReader headers, std::vector<std::pair<std::string, std::string>>& out) {
  std::set<std::string> seen;  // lowercased
  for (const std::string& name : headers.keys()) {
    std::string value;
    headers.readString(name, value);
    const std::string folded = lowercase(name);
    const bool managed =
        std::find(kManagedHeaders.begin(), kManagedHeaders.end(), folded) != kManagedHeaders.end();
    const bool repeated = !seen.insert(folded).second;
    headers.check(name, isHeaderName(name), "is not a valid HTTP header name");
    headers.check(name, !managed, "is set by Bulwark and cannot be configured");
    headers.check(name, !repeated, "duplicate header (names are case-insensitive)");
    headers.check(name, !hasLineBreak(value), "header value must not contain line breaks");
    out.emplace_back(name, std::move(value));
  }
  headers.finish();
}

// The client's model name -> this upstream's: {gpt-4o: my-deployment, "*": ""}.
void readModelMap(MappingReader models, std::map<std::string, std::string>& out) {
  for (const std::string& name : models.keys()) {
    std::string value;
    models.readString(name, value);
    models.check(name, !hasLineBreak(name) && !hasLineBreak(value),
                 "a model name maps to a name without line breaks (\"\" keeps the client's)");
    out[name] = std::move(value);
  }
  models.finish();
}

// `names` maps each earlier upstream's name to its index.
UpstreamConfig readUpstream(MappingReader upstream,
                            const std::map<std::string, std::size_t>& names) {
  UpstreamConfig out;
  if (upstream.require("name")) {
    upstream.readString("name", out.name);
    upstream.check("name", isUpstreamName(out.name),
                   "must be non-empty and use only letters, digits, '.', '_' and '-'");
    if (auto same = names.find(out.name); same != names.end()) {
      upstream.check("name", false,
                     "duplicate upstream name, already used by upstreams[" +
                         std::to_string(same->second) + "]");
    }
  }
  if (upstream.require("base_url")) {
    upstream.readString("base_url", out.base_url);
    if (std::optional<std::string> problem = baseUrlProblem(out.base_url)) {
      upstream.check("base_url", false, *problem);
    }
    while (out.base_url.ends_with('/')) out.base_url.pop_back();
  }
  upstream.readString("api_key", out.api_key);
  upstream.check("api_key", !hasLineBreak(out.api_key), "must not contain line breaks");
  readHeaders(upstream.section("headers"), out.headers);
  upstream.readString("ca_file", out.ca_file);
  upstream.readString("proxy", out.proxy);
  if (!out.proxy.empty()) {
    if (std::optional<std::string> problem = proxyUrlProblem(out.proxy)) {
      upstream.check("proxy", false, *problem);
    }
  }
  readInt(upstream, "max_inflight", out.max_inflight, 0);
  readModelMap(upstream.section("models"), out.models);
  readEnum(upstream, "auth_header", out.auth_header, kAuthHeaderNames);
  upstream.readString("api_version", out.api_version);
  upstream.check("api_version",
                 std::all_of(out.api_version.begin(), out.api_version.end(),
                             [](char c) {
                               return std::isalnum(static_cast<unsigned char>(c)) || c == '-' ||
                                      c == '.' || c == '_';
                             }),
                 "must use only letters, digits, '-', '.' and '_' (such as 2024-10-21)");
  upstream.finish();
  return out;
}

UpstreamConfig defaultUpstream(const EnvLookup& env) {
  UpstreamConfig openai;
  openai.name = "openai";
  openai.base_url = "https://api.openai.com";
  openai.api_key = expandEnv("${OPENAI_API_KEY:-}", env, nullptr).value_or("");
  return openai;
}

void readUpstreams(MappingReader& root, std::vector<UpstreamConfig>& out) {
  const YAML::Node* list = root.find("upstreams");
  if (list == nullptr) {
    out.push_back(defaultUpstream(root.context().env()));
    return;
  }
  if (!list->IsSequence() || list->size() == 0) {
    const std::string found = list->IsSequence() ? "an empty list" : describeNode(*list);
    root.fail("upstreams", "expected a non-empty list of upstreams, got " + found);
    return;
  }
  std::map<std::string, std::size_t> names;
  std::size_t index = 0;
  for (const YAML::Node& item : *list) {
    const std::string path = "upstreams[" + std::to_string(index) + "]";
    const YAML::Mark mark = item.IsNull() ? list->Mark() : item.Mark();
    UpstreamConfig upstream = readUpstream(MappingReader(root.context(), &item, mark, path), names);
    names.emplace(upstream.name, index++);
    out.push_back(std::move(upstream));
  }
}

// ---- timeouts ----

void readTimeouts(MappingReader timeouts, TimeoutsConfig& out) {
  readPositiveDuration(timeouts, "connect", out.connect);
  readPositiveDuration(timeouts, "first_byte", out.first_byte);
  readPositiveDuration(timeouts, "idle", out.idle);
  readPositiveDuration(timeouts, "total", out.total);
  timeouts.finish();
}

// ---- retry ----

void readBudget(MappingReader budget, RetryBudgetConfig& out) {
  readNumber(budget, "ratio", out.ratio);
  budget.check("ratio", out.ratio >= 0 && out.ratio <= 1,
               "must be between 0 and 1" + got(out.ratio));
  readNumber(budget, "min_per_second", out.min_per_second);
  budget.check("min_per_second", out.min_per_second >= 0,
               "must be at least 0" + got(out.min_per_second));
  readPositiveDuration(budget, "window", out.window);
  budget.finish();
}

// A list that replaces the default one when given.
void readCodeList(MappingReader& retry, std::string_view key, std::vector<std::string>& out) {
  const YAML::Node* list = retry.find(key);
  if (list == nullptr) return;
  if (!list->IsSequence()) {
    retry.fail(key, "expected a list of error codes such as [insufficient_quota], got " +
                        describeNode(*list));
    return;
  }
  std::vector<std::string> codes;
  std::size_t index = 0;
  for (const YAML::Node& item : *list) {
    const std::string path = retry.pathOf(key) + "[" + std::to_string(index++) + "]";
    const YAML::Mark mark = item.IsNull() ? list->Mark() : item.Mark();
    std::optional<std::string> code =
        retry.context().expandedScalar(item, mark, path, "an error code");
    if (code && code->empty()) retry.context().addError(path, mark, "must not be empty");
    if (code && !code->empty()) codes.push_back(*std::move(code));
  }
  out = std::move(codes);
}

// "429", "5xx", connect_error, ...: the outcomes the exchange classifies attempts into.
bool isOutcomeKey(std::string_view key) {
  if (std::find(kNamedOutcomes.begin(), kNamedOutcomes.end(), key) != kNamedOutcomes.end()) {
    return true;
  }
  if (key.size() != 3 || key[0] < '1' || key[0] > '5') return false;
  if (key.substr(1) == "xx") return true;
  return std::isdigit(static_cast<unsigned char>(key[1])) &&
         std::isdigit(static_cast<unsigned char>(key[2]));
}

// Entries in the file override the defaults key by key; unlisted default keys stay.
void readPolicies(MappingReader policies, std::map<std::string, OutcomePolicy>& out) {
  for (const std::string& key : policies.keys()) {
    if (!isOutcomeKey(key)) {
      policies.find(key);
      policies.fail(key,
                    "unknown outcome; expected a status code (\"429\"), a status class "
                    "(\"5xx\"), connect_error, timeout, reset or stream_error");
      continue;
    }
    MappingReader entry = policies.section(key);
    OutcomePolicy policy;
    if (entry.require("retry")) readBool(entry, "retry", policy.retry);
    if (entry.require("breaker")) readBool(entry, "breaker", policy.breaker);
    entry.finish();
    out[key] = policy;
  }
  policies.finish();
}

// `per_route`: a route's override, which cannot set the budget (it is the upstream's).
void readRetry(MappingReader retry, RetryConfig& out, bool per_route = false) {
  readInt(retry, "max_attempts", out.max_attempts, 1);
  readDuration(retry, "base_delay", out.base_delay);
  readDuration(retry, "max_delay", out.max_delay);
  retry.checkPair("max_delay", "base_delay", out.max_delay >= out.base_delay,
                  "max_delay (" + formatDuration(out.max_delay) +
                      ") must not be less than base_delay (" + formatDuration(out.base_delay) +
                      ")");
  readNumber(retry, "exponential_base", out.exponential_base);
  retry.check("exponential_base", out.exponential_base >= 1,
              "must be at least 1" + got(out.exponential_base));
  readEnum(retry, "jitter", out.jitter, kJitterNames);
  readBool(retry, "honor_retry_after", out.honor_retry_after);
  readDuration(retry, "max_retry_after", out.max_retry_after);
  readBool(retry, "failover", out.failover);
  if (per_route && retry.find("budget") != nullptr) {
    retry.fail("budget", "cannot be set per route: the retry budget belongs to the upstream");
  } else {
    readBudget(retry.section("budget"), out.budget);
  }
  readCodeList(retry, "non_retryable_429_codes", out.non_retryable_429_codes);
  readPolicies(retry.section("policies"), out.policies);
  retry.finish();
}

// ---- circuit_breaker, log, metrics ----

void readCircuitBreaker(MappingReader breaker, CircuitBreakerConfig& out) {
  readEnum(breaker, "scope", out.scope, kScopeNames);
  readInt(breaker, "failure_threshold", out.failure_threshold, 1);
  readNumber(breaker, "failure_rate_threshold", out.failure_rate_threshold);
  breaker.check("failure_rate_threshold",
                out.failure_rate_threshold > 0 && out.failure_rate_threshold <= 1,
                "must be greater than 0 and at most 1" + got(out.failure_rate_threshold));
  readPositiveDuration(breaker, "window", out.window);
  readInt(breaker, "min_requests", out.min_requests, 1);
  readPositiveDuration(breaker, "recovery_timeout", out.recovery_timeout);
  readDuration(breaker, "max_recovery_timeout", out.max_recovery_timeout);
  breaker.checkPair("max_recovery_timeout", "recovery_timeout",
                    out.max_recovery_timeout >= out.recovery_timeout,
                    "max_recovery_timeout (" + formatDuration(out.max_recovery_timeout) +
                        ") must not be less than recovery_timeout (" +
                        formatDuration(out.recovery_timeout) + ")");
  readInt(breaker, "half_open_max_probes", out.half_open_max_probes, 1);
  breaker.finish();
}

void readLog(MappingReader log, LogConfig& out) {
  readEnum(log, "level", out.level, kLogLevelNames);
  readEnum(log, "format", out.format, kLogFormatNames);
  log.finish();
}

void readMetrics(MappingReader metrics, MetricsConfig& out) {
  readInt(metrics, "max_model_labels", out.max_model_labels, 0);
  metrics.finish();
}

// ---- admission ----

void readAdmission(MappingReader admission, AdmissionConfig& out) {
  readBool(admission, "enabled", out.enabled);
  readInt(admission, "max_queue", out.max_queue, 0);
  readDuration(admission, "max_wait", out.max_wait);
  readNumber(admission, "headroom", out.headroom);
  admission.check("headroom", out.headroom >= 0 && out.headroom < 1,
                  "must be at least 0 and less than 1" + got(out.headroom));
  readNumber(admission, "bytes_per_token", out.bytes_per_token);
  admission.check("bytes_per_token", out.bytes_per_token > 0,
                  "must be greater than 0" + got(out.bytes_per_token));
  readInt(admission, "default_output_tokens", out.default_output_tokens, 0);
  readInt(admission, "image_tokens", out.image_tokens, 0);
  // `auto` learns the burst the upstream's limiter enforces; a number fixes it as a share of
  // the per-minute limit (0.1: the limiter holds a tenth of its minute at once).
  admission.read(
      "burst", out.burst,
      [](const std::string& text) -> std::optional<double> {
        if (text == "auto") return 0.0;
        std::optional<double> share = parseNumber(text);
        if (!share || !(*share > 0 && *share <= 1)) return std::nullopt;
        return share;
      },
      "auto or a share of the minute greater than 0 and at most 1");
  admission.finish();
}

// ---- cluster ----

// Splits redis://[[user]:password@]host[:port][/db] into `out`; what is wrong with it, if
// anything. Never quotes the URL: it may carry a password.
std::optional<std::string> readRedisUrl(std::string_view url, ClusterConfig& out) {
  if (url.starts_with("rediss://")) {
    return "rediss:// (TLS) needs hiredis 1.0 or later, and Debian 12 ships 0.14: use redis:// "
           "to a TLS tunnel on loopback (stunnel, or your Redis provider's proxy)";
  }
  if (!url.starts_with("redis://")) return "must start with redis://";
  std::string_view rest = url.substr(8);
  const bool has_control = std::any_of(url.begin(), url.end(), [](char c) {
    return static_cast<unsigned char>(c) <= 0x20 || c == 0x7f;
  });
  if (has_control) return "must not contain spaces or control characters";
  std::string_view authority = rest.substr(0, rest.find('/'));
  std::string_view path = rest.substr(authority.size());
  if (std::size_t at = authority.rfind('@'); at != std::string_view::npos) {
    std::string_view credentials = authority.substr(0, at);
    authority = authority.substr(at + 1);
    std::size_t colon = credentials.find(':');
    if (colon == std::string_view::npos) return "credentials must be user:password@ or :password@";
    out.user = std::string(credentials.substr(0, colon));
    out.password = std::string(credentials.substr(colon + 1));
  }
  if (!isAuthority(authority)) return "must have a valid host and optional port";
  const std::size_t colon = authority.rfind(':');
  const std::size_t bracket = authority.rfind(']');
  const bool has_port =
      colon != std::string_view::npos && (bracket == std::string_view::npos || colon > bracket);
  std::string_view host = has_port ? authority.substr(0, colon) : authority;
  if (host.starts_with('[') && host.ends_with(']')) host = host.substr(1, host.size() - 2);
  out.host = std::string(host);
  if (has_port) out.port = parseListenAddress(authority).value_or(ListenAddress{}).port;
  if (!path.empty() && path != "/") {
    std::optional<int> db = parseInteger(path.substr(1));
    if (!db || *db < 0 || *db > 15) return "the database after / must be a number from 0 to 15";
    out.db = static_cast<int>(*db);
  }
  return std::nullopt;
}

void readCluster(MappingReader cluster, std::optional<ClusterConfig>& out) {
  ClusterConfig config;
  if (cluster.require("redis")) {
    cluster.readString("redis", config.redis);
    std::optional<std::string> problem = readRedisUrl(config.redis, config);
    if (problem) cluster.check("redis", false, *problem);
  }
  cluster.readString("key_prefix", config.key_prefix);
  cluster.check("key_prefix", !config.key_prefix.empty() && !hasLineBreak(config.key_prefix),
                "must be non-empty, on one line");
  readPositiveDuration(cluster, "timeout", config.timeout);
  readPositiveDuration(cluster, "sync_interval", config.sync_interval);
  cluster.finish();
  out = std::move(config);
}

// ---- routes ----

// Top-level sections a route cannot override: they belong to the process or the upstream.
constexpr std::array<std::string_view, 6> kNotPerRoute{"server",  "circuit_breaker", "log",
                                                       "metrics", "routes",          "cluster"};

void readRouteMatch(MappingReader match, RouteMatch& out) {
  match.readString("path", out.path);
  match.check("path", out.path.empty() || out.path.front() == '/',
              "must start with '/' (a prefix such as /v1/embeddings, or a glob such as /v1/*)");
  match.readString("model", out.model);
  match.finish();
}

// The route's failover chain: upstream names, in order, each a configured upstream.
void readRouteUpstreams(MappingReader& route, const std::vector<UpstreamConfig>& upstreams,
                        std::vector<std::size_t>& out) {
  const YAML::Node* list = route.find("upstreams");
  if (list == nullptr) return;
  if (!list->IsSequence() || list->size() == 0) {
    route.fail("upstreams",
               "expected a non-empty list of upstream names, got " +
                   (list->IsSequence() ? std::string("an empty list") : describeNode(*list)));
    return;
  }
  std::string known;
  for (const UpstreamConfig& u : upstreams) known += (known.empty() ? "" : ", ") + u.name;
  std::vector<std::size_t> chain;
  std::size_t index = 0;
  for (const YAML::Node& item : *list) {
    const std::string path = route.pathOf("upstreams") + "[" + std::to_string(index++) + "]";
    const YAML::Mark mark = item.IsNull() ? list->Mark() : item.Mark();
    std::optional<std::string> name =
        route.context().expandedScalar(item, mark, path, "an upstream name");
    if (!name) continue;
    auto found = std::find_if(upstreams.begin(), upstreams.end(),
                              [&](const UpstreamConfig& u) { return u.name == *name; });
    if (found == upstreams.end()) {
      route.context().addError(path, mark,
                               "unknown upstream \"" + *name + "\"; the upstreams are: " + known);
      continue;
    }
    std::size_t at = static_cast<std::size_t>(found - upstreams.begin());
    if (std::find(chain.begin(), chain.end(), at) != chain.end()) {
      route.context().addError(path, mark, "upstream \"" + *name + "\" is listed twice");
      continue;
    }
    chain.push_back(at);
  }
  if (!chain.empty()) out = std::move(chain);
}

HedgeConfig readHedge(MappingReader hedge) {
  HedgeConfig out;
  if (hedge.require("after")) {
    std::string after;
    hedge.readString("after", after);
    if (after == "p95") {
      out.p95 = true;
    } else if (std::optional<Duration> d = parseDuration(after); d && d->count() > 0) {
      out.after = *d;
    } else {
      hedge.check("after", false, "expected p95 or a duration greater than 0 such as 2s");
    }
  }
  readInt(hedge, "max", out.max, 1);
  hedge.check("max", out.max <= 3, "must be at most 3" + got(out.max));
  hedge.finish();
  return out;
}

RouteConfig readRoute(MappingReader route, const Config& config,
                      const std::map<std::string, std::size_t>& names) {
  RouteConfig out = config.default_route;
  out.name.clear();
  if (route.require("name")) {
    route.readString("name", out.name);
    route.check("name", isUpstreamName(out.name) && out.name != "default",
                "must be non-empty, not \"default\", and use only letters, digits, '.', '_' "
                "and '-'");
    if (auto same = names.find(out.name); same != names.end()) {
      route.check(
          "name", false,
          "duplicate route name, already used by routes[" + std::to_string(same->second) + "]");
    }
  }
  readRouteMatch(route.section("match"), out.match);
  readTimeouts(route.section("timeouts"), out.timeouts);
  readRetry(route.section("retry"), out.retry, /*per_route=*/true);
  readRouteUpstreams(route, config.upstreams, out.upstreams);
  readAdmission(route.section("admission"), out.admission);
  for (std::string_view key : kNotPerRoute) {
    if (route.find(key) != nullptr) {
      route.fail(key,
                 "cannot be set per route; a route overrides timeouts, retry, upstreams, hedge and "
                 "admission");
    }
  }
  if (route.find("hedge") != nullptr) out.hedge = readHedge(route.section("hedge"));
  route.finish();
  return out;
}

void readRoutes(MappingReader& root, Config& config) {
  config.default_route.name = "default";
  config.default_route.timeouts = config.timeouts;
  config.default_route.retry = config.retry;
  config.default_route.admission = config.admission;
  config.default_route.upstreams.clear();
  for (std::size_t i = 0; i < config.upstreams.size(); ++i)
    config.default_route.upstreams.push_back(i);
  const YAML::Node* list = root.find("routes");
  if (list == nullptr || list->IsNull()) return;
  if (!list->IsSequence()) {
    root.fail("routes", "expected a list of routes, got " + describeNode(*list));
    return;
  }
  std::map<std::string, std::size_t> names;
  std::size_t index = 0;
  for (const YAML::Node& item : *list) {
    const std::string path = "routes[" + std::to_string(index) + "]";
    const YAML::Mark mark = item.IsNull() ? list->Mark() : item.Mark();
    RouteConfig route = readRoute(MappingReader(root.context(), &item, mark, path), config, names);
    names.emplace(route.name, index++);
    config.routes.push_back(std::move(route));
  }
}

}  // namespace

Config readConfig(LoadContext& context, const YAML::Node& document) {
  Config config;
  MappingReader root(context, &document, document.Mark(), "");
  readServer(root.section("server"), config.server);
  readUpstreams(root, config.upstreams);
  readTimeouts(root.section("timeouts"), config.timeouts);
  readRetry(root.section("retry"), config.retry);
  readCircuitBreaker(root.section("circuit_breaker"), config.circuit_breaker);
  readLog(root.section("log"), config.log);
  readMetrics(root.section("metrics"), config.metrics);
  readAdmission(root.section("admission"), config.admission);
  if (const YAML::Node* cluster = root.find("cluster"); cluster != nullptr && !cluster->IsNull()) {
    readCluster(root.section("cluster"), config.cluster);
  }
  readRoutes(root, config);  // after timeouts and retry: a route starts from them
  root.finish();
  return config;
}

}  // namespace bulwark::config
