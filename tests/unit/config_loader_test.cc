// Loading proxy.yaml: defaults, every key, ${ENV} expansion, strict validation with key paths
// and lines, all errors at once, no secrets in messages, and no crash on broken input.
#include "config/loader.h"

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "config/routes.h"
#include "config/yaml_document.h"

namespace bulwark::config {
namespace {

using std::chrono::milliseconds;
using std::chrono::minutes;
using std::chrono::seconds;
using testing::ElementsAre;
using testing::HasSubstr;
using testing::Not;
using testing::Pair;

EnvLookup fakeEnv(std::map<std::string, std::string> vars = {}) {
  return [vars = std::move(vars)](const std::string& name) -> std::optional<std::string> {
    auto it = vars.find(name);
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
}

LoadResult load(std::string_view yaml, std::map<std::string, std::string> vars = {}) {
  return loadConfigString(yaml, fakeEnv(std::move(vars)));
}

std::string describe(const LoadResult& result) {
  std::string out;
  for (const ConfigError& error : result.errors) out += "\n  " + error.toString();
  return out;
}

// Loads `yaml` and insists that it is valid.
Config loadValid(std::string_view yaml, std::map<std::string, std::string> vars = {}) {
  LoadResult result = load(yaml, std::move(vars));
  EXPECT_TRUE(result.ok()) << describe(result);
  EXPECT_TRUE(result.config.has_value());
  return result.config.value_or(Config{});
}

std::filesystem::path shippedConfigPath() {
#ifdef BULWARK_SOURCE_DIR
  return std::filesystem::path(BULWARK_SOURCE_DIR) / "proxy.yaml";
#else
  // tests/unit/<this file> -> the repository root.
  return std::filesystem::path(__FILE__).parent_path().parent_path().parent_path() / "proxy.yaml";
#endif
}

std::string readShippedConfig() {
  std::ifstream in(shippedConfigPath());
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

Config expectedDefaults(const std::string& api_key = "") {
  Config config;
  config.upstreams.push_back(
      UpstreamConfig{"openai", "https://api.openai.com", api_key, {}, "", 0});
  // No routes: every request takes the default route, the top-level settings.
  config.default_route = RouteConfig{"default", {}, config.timeouts, config.retry, {0}};
  return config;
}

// ---- Defaults ----

TEST(ConfigDefaultsTest, EmptyDocumentsGiveTheSpecDefaults) {
  for (const char* yaml : {"", "{}", "# nothing but a comment\n", "---\n", "\n\n"}) {
    EXPECT_EQ(loadValid(yaml), expectedDefaults()) << "yaml: " << yaml;
  }
}

TEST(ConfigDefaultsTest, EmptySectionsKeepTheirDefaults) {
  EXPECT_EQ(loadValid("server:\ntimeouts: {}\nretry:\n  budget:\n  policies: {}\nlog: ~\n"),
            expectedDefaults());
}

TEST(ConfigDefaultsTest, DefaultValuesMatchTheSpec) {
  const Config config = loadValid("");
  EXPECT_EQ(config.server.listen.toString(), "127.0.0.1:8080");
  EXPECT_EQ(config.server.admin_listen.toString(), "0.0.0.0:9090");
  EXPECT_EQ(config.server.workers, 0);
  EXPECT_EQ(config.server.max_request_body, 512u * 1024 * 1024);
  EXPECT_EQ(config.server.retry_body_limit, 8u * 1024 * 1024);
  EXPECT_EQ(config.server.max_connections, 10000);
  EXPECT_EQ(config.server.shutdown_grace, seconds(30));
  EXPECT_EQ(config.server.header_timeout, seconds(10));
  EXPECT_EQ(config.server.idle_timeout, seconds(75));
  EXPECT_EQ(config.timeouts.connect, seconds(5));
  EXPECT_EQ(config.timeouts.first_byte, seconds(120));
  EXPECT_EQ(config.timeouts.idle, seconds(120));
  EXPECT_EQ(config.timeouts.total, seconds(600));
  EXPECT_EQ(config.retry.max_attempts, 3);
  EXPECT_EQ(config.retry.base_delay, seconds(1));
  EXPECT_EQ(config.retry.max_delay, seconds(30));
  EXPECT_EQ(config.retry.exponential_base, 2.0);
  EXPECT_EQ(config.retry.jitter, Jitter::kFull);
  EXPECT_TRUE(config.retry.honor_retry_after);
  EXPECT_EQ(config.retry.max_retry_after, seconds(60));
  EXPECT_TRUE(config.retry.failover);
  EXPECT_EQ(config.retry.budget.ratio, 0.2);
  EXPECT_EQ(config.retry.budget.min_per_second, 10.0);
  EXPECT_EQ(config.retry.budget.window, seconds(10));
  EXPECT_THAT(config.retry.non_retryable_429_codes,
              ElementsAre("insufficient_quota", "billing_hard_limit_reached"));
  EXPECT_EQ(config.retry.policies.size(), 10u);
  EXPECT_EQ(config.retry.policies.at("5xx"), (OutcomePolicy{true, true}));
  EXPECT_EQ(config.retry.policies.at("429"), (OutcomePolicy{true, false}));
  EXPECT_EQ(config.circuit_breaker.scope, BreakerScope::kUpstream);
  EXPECT_EQ(config.circuit_breaker.failure_threshold, 5);
  EXPECT_EQ(config.circuit_breaker.failure_rate_threshold, 0.5);
  EXPECT_EQ(config.circuit_breaker.window, seconds(30));
  EXPECT_EQ(config.circuit_breaker.min_requests, 20);
  EXPECT_EQ(config.circuit_breaker.recovery_timeout, seconds(60));
  EXPECT_EQ(config.circuit_breaker.max_recovery_timeout, minutes(5));
  EXPECT_EQ(config.circuit_breaker.half_open_max_probes, 1);
  EXPECT_EQ(config.log.level, LogLevel::kInfo);
  EXPECT_EQ(config.log.format, LogFormat::kJson);
  EXPECT_EQ(config.metrics.max_model_labels, 50);
}

TEST(ConfigDefaultsTest, DefaultUpstreamTakesItsKeyFromTheEnvironment) {
  const Config config = loadValid("", {{"OPENAI_API_KEY", "sk-env"}});
  EXPECT_EQ(config, expectedDefaults("sk-env"));
}

// ---- The shipped proxy.yaml ----

TEST(ShippedConfigTest, ItsRoutesExampleLoadsAndRoutesAsTheReadmeSays) {
  const std::string text = readShippedConfig();
  const std::string start = "# routes-example:start\n";
  const std::size_t from = text.find(start);
  const std::size_t to = text.find("# routes-example:end");
  ASSERT_NE(from, std::string::npos);
  ASSERT_NE(to, std::string::npos);
  std::istringstream commented(text.substr(from + start.size(), to - from - start.size()));
  std::string example;
  for (std::string line; std::getline(commented, line);) {
    example += (line.rfind("# ", 0) == 0 ? line.substr(2) : line.substr(1)) + "\n";
  }
  const Config config = loadValid(example);
  ASSERT_EQ(config.routes.size(), 3u);
  EXPECT_EQ(routeFor(config, "/v1/chat/completions", "o3-mini").timeouts.first_byte, seconds(600));
  EXPECT_EQ(routeFor(config, "/v1/embeddings", "text-embedding-3-small").retry.max_attempts, 5);
  const RouteConfig& chat = routeFor(config, "/v1/chat/completions", "gpt-4o");
  EXPECT_EQ(chat.name, "chat");
  EXPECT_EQ(chat.upstreams, (std::vector<std::size_t>{0, 1}));
  ASSERT_TRUE(chat.hedge.has_value());
  EXPECT_TRUE(chat.hedge->p95);
  EXPECT_EQ(chat.hedge->max, 1);
  EXPECT_EQ(config.upstreams[1].auth_header, AuthHeader::kApiKey);
  EXPECT_EQ(config.upstreams[1].models.at("gpt-4o"), "my-gpt4o");
}

TEST(ShippedConfigTest, ItsCommentedClusterSectionLoadsWhenUncommented) {
  std::istringstream text(readShippedConfig());
  std::string uncommented;
  bool optional = false;
  for (std::string line; std::getline(text, line);) {
    if (line == "# optional:start" || line == "# optional:end") {
      optional = line == "# optional:start";
      continue;
    }
    uncommented += (optional && line.rfind("# ", 0) == 0 ? line.substr(2) : line) + "\n";
  }
  const Config config =
      loadValid(uncommented, {{"BULWARK_REDIS_URL", "redis://:pw@redis.bulwark.svc:6379/1"}});
  ASSERT_TRUE(config.cluster.has_value());
  EXPECT_EQ(config.cluster->host, "redis.bulwark.svc");
  EXPECT_EQ(config.cluster->db, 1);
  EXPECT_EQ(config.cluster->key_prefix, "bulwark:default:");
  EXPECT_EQ(config.cluster->timeout, milliseconds(50));
}

TEST(ShippedConfigTest, LoadsCleanlyAndEqualsTheDefaults) {
  const std::string text = readShippedConfig();
  ASSERT_FALSE(text.empty()) << "cannot read " << shippedConfigPath();
  EXPECT_EQ(loadValid(text), expectedDefaults());
  EXPECT_EQ(loadValid(text, {{"OPENAI_API_KEY", "sk-env"}}), expectedDefaults("sk-env"));
}

TEST(ShippedConfigTest, LoadsFromItsPath) {
  LoadResult result = loadConfigFile(shippedConfigPath().string(), fakeEnv());
  EXPECT_TRUE(result.ok()) << describe(result);
}

// ---- Every key, set ----

TEST(ConfigLoaderTest, ReadsEveryKey) {
  const Config config = loadValid(R"yaml(
server:
  listen: "[::1]:0"
  admin_listen: 127.0.0.1:9191
  workers: 4
  max_request_body: 1MiB
  retry_body_limit: 256KiB
  max_connections: 50
  shutdown_grace: 5s
  header_timeout: 2s
  idle_timeout: 1m
upstreams:
  - name: primary
    base_url: https://primary.example.com/openai/
    api_key: sk-primary
    headers:
      OpenAI-Organization: org-1
      X-Trace: "on"
    ca_file: /etc/ca.pem
    max_inflight: 100
    proxy: http://user:secret@egress.internal:3128
  - name: fallback
    base_url: http://127.0.0.1:18080
timeouts: {connect: 1s, first_byte: 30s, idle: 15s, total: 2m}
retry:
  max_attempts: 5
  base_delay: 250ms
  max_delay: 4s
  exponential_base: 1.5
  jitter: decorrelated
  honor_retry_after: false
  max_retry_after: 10s
  failover: false
  budget: {ratio: 0.5, min_per_second: 0, window: 1m}
  non_retryable_429_codes: [insufficient_quota]
  policies:
    "500": {retry: false, breaker: true}
    429: {retry: false, breaker: false}
circuit_breaker:
  scope: upstream_model
  failure_threshold: 3
  failure_rate_threshold: 1
  window: 10s
  min_requests: 5
  recovery_timeout: 5s
  max_recovery_timeout: 5s
  half_open_max_probes: 2
log: {level: debug, format: text}
metrics: {max_model_labels: 0}
)yaml");
  EXPECT_EQ(config.server.listen, (ListenAddress{"::1", 0}));
  EXPECT_EQ(config.server.admin_listen, (ListenAddress{"127.0.0.1", 9191}));
  EXPECT_EQ(config.server.workers, 4);
  EXPECT_EQ(config.server.max_request_body, 1024u * 1024);
  EXPECT_EQ(config.server.retry_body_limit, 256u * 1024);
  EXPECT_EQ(config.server.max_connections, 50);
  EXPECT_EQ(config.server.shutdown_grace, seconds(5));
  EXPECT_EQ(config.server.header_timeout, seconds(2));
  EXPECT_EQ(config.server.idle_timeout, minutes(1));

  ASSERT_EQ(config.upstreams.size(), 2u);
  const UpstreamConfig& primary = config.upstreams[0];
  EXPECT_EQ(primary.name, "primary");
  EXPECT_EQ(primary.base_url, "https://primary.example.com/openai");
  EXPECT_EQ(primary.api_key, "sk-primary");
  EXPECT_THAT(primary.headers,
              ElementsAre(Pair("OpenAI-Organization", "org-1"), Pair("X-Trace", "on")));
  EXPECT_EQ(primary.ca_file, "/etc/ca.pem");
  EXPECT_EQ(primary.max_inflight, 100);
  EXPECT_EQ(primary.proxy, "http://user:secret@egress.internal:3128");
  EXPECT_EQ(config.upstreams[1],
            (UpstreamConfig{"fallback", "http://127.0.0.1:18080", "", {}, "", 0}));

  EXPECT_EQ(config.timeouts.connect, seconds(1));
  EXPECT_EQ(config.timeouts.first_byte, seconds(30));
  EXPECT_EQ(config.timeouts.idle, seconds(15));
  EXPECT_EQ(config.timeouts.total, minutes(2));

  EXPECT_EQ(config.retry.max_attempts, 5);
  EXPECT_EQ(config.retry.base_delay, milliseconds(250));
  EXPECT_EQ(config.retry.max_delay, seconds(4));
  EXPECT_EQ(config.retry.exponential_base, 1.5);
  EXPECT_EQ(config.retry.jitter, Jitter::kDecorrelated);
  EXPECT_FALSE(config.retry.honor_retry_after);
  EXPECT_EQ(config.retry.max_retry_after, seconds(10));
  EXPECT_FALSE(config.retry.failover);
  EXPECT_EQ(config.retry.budget.ratio, 0.5);
  EXPECT_EQ(config.retry.budget.min_per_second, 0.0);
  EXPECT_EQ(config.retry.budget.window, minutes(1));
  EXPECT_THAT(config.retry.non_retryable_429_codes, ElementsAre("insufficient_quota"));

  EXPECT_EQ(config.circuit_breaker.scope, BreakerScope::kUpstreamModel);
  EXPECT_EQ(config.circuit_breaker.failure_threshold, 3);
  EXPECT_EQ(config.circuit_breaker.failure_rate_threshold, 1.0);
  EXPECT_EQ(config.circuit_breaker.window, seconds(10));
  EXPECT_EQ(config.circuit_breaker.min_requests, 5);
  EXPECT_EQ(config.circuit_breaker.recovery_timeout, seconds(5));
  EXPECT_EQ(config.circuit_breaker.max_recovery_timeout, seconds(5));
  EXPECT_EQ(config.circuit_breaker.half_open_max_probes, 2);
  EXPECT_EQ(config.log.level, LogLevel::kDebug);
  EXPECT_EQ(config.log.format, LogFormat::kText);
  EXPECT_EQ(config.metrics.max_model_labels, 0);
}

TEST(ConfigLoaderTest, PoliciesOverrideTheDefaultsKeyByKey) {
  const Config config = loadValid(R"yaml(
retry:
  policies:
    "429": {retry: false, breaker: true}
    "404": {retry: true, breaker: false}
    4xx: {retry: false, breaker: true}
)yaml");
  const auto& policies = config.retry.policies;
  EXPECT_EQ(policies.at("429"), (OutcomePolicy{false, true}));  // replaced
  EXPECT_EQ(policies.at("404"), (OutcomePolicy{true, false}));  // added
  EXPECT_EQ(policies.at("4xx"), (OutcomePolicy{false, true}));  // added
  EXPECT_EQ(policies.at("5xx"), (OutcomePolicy{true, true}));   // default kept
  EXPECT_EQ(policies.at("408"), (OutcomePolicy{true, false}));  // default kept
  EXPECT_EQ(policies.size(), 12u);
}

TEST(ConfigLoaderTest, AcceptsEveryKindOfOutcomeKey) {
  const Config config = loadValid(R"yaml(
retry:
  policies:
    "100": {retry: false, breaker: false}
    "599": {retry: true, breaker: true}
    1xx: {retry: false, breaker: false}
    2xx: {retry: false, breaker: false}
    3xx: {retry: false, breaker: false}
    connect_error: {retry: false, breaker: false}
    timeout: {retry: false, breaker: false}
    reset: {retry: false, breaker: false}
    stream_error: {retry: false, breaker: false}
)yaml");
  EXPECT_EQ(config.retry.policies.at("599"), (OutcomePolicy{true, true}));
  EXPECT_EQ(config.retry.policies.at("timeout"), (OutcomePolicy{false, false}));
}

TEST(ConfigLoaderTest, NonRetryableCodesReplaceTheDefaultList) {
  EXPECT_THAT(
      loadValid("retry:\n  non_retryable_429_codes: [a, b, c]\n").retry.non_retryable_429_codes,
      ElementsAre("a", "b", "c"));
  EXPECT_TRUE(
      loadValid("retry:\n  non_retryable_429_codes: []\n").retry.non_retryable_429_codes.empty());
}

TEST(ConfigLoaderTest, StripsTrailingSlashesFromBaseUrl) {
  const Config config = loadValid(
      "upstreams:\n  - {name: a, base_url: 'https://a.example//'}\n"
      "  - {name: b, base_url: 'http://[::1]:8000/v1/'}\n");
  EXPECT_EQ(config.upstreams[0].base_url, "https://a.example");
  EXPECT_EQ(config.upstreams[1].base_url, "http://[::1]:8000/v1");
}

// ---- ${ENV} expansion ----

TEST(ConfigEnvTest, ExpandsEveryScalarValue) {
  const Config config = loadValid(R"yaml(
server:
  listen: ${HOST:-127.0.0.1}:${PORT}
  workers: ${WORKERS:-2}
  shutdown_grace: ${GRACE:-5s}
upstreams:
  - name: ${NAME}
    base_url: ${URL:-https://api.openai.com}
    api_key: ${KEY}
    headers: {X-Price: "$$5 ${UNSET:-each}"}
retry:
  failover: ${FAILOVER}
  jitter: ${JITTER:-none}
  non_retryable_429_codes: ["${CODE}"]
)yaml",
                                  {{"PORT", "9999"},
                                   {"NAME", "azure"},
                                   {"KEY", "sk-from-env"},
                                   {"FAILOVER", "false"},
                                   {"CODE", "quota"}});
  EXPECT_EQ(config.server.listen, (ListenAddress{"127.0.0.1", 9999}));
  EXPECT_EQ(config.server.workers, 2);
  EXPECT_EQ(config.server.shutdown_grace, seconds(5));
  EXPECT_EQ(config.upstreams[0].name, "azure");
  EXPECT_EQ(config.upstreams[0].base_url, "https://api.openai.com");
  EXPECT_EQ(config.upstreams[0].api_key, "sk-from-env");
  EXPECT_THAT(config.upstreams[0].headers, ElementsAre(Pair("X-Price", "$5 each")));
  EXPECT_FALSE(config.retry.failover);
  EXPECT_EQ(config.retry.jitter, Jitter::kNone);
  EXPECT_THAT(config.retry.non_retryable_429_codes, ElementsAre("quota"));
}

TEST(ConfigEnvTest, EnvironmentValuesCannotInjectYaml) {
  const std::string injected = "x\"}, log: {level: debug}, a: [{";
  const Config config =
      loadValid("upstreams:\n  - {name: a, base_url: 'http://h', headers: {X-A: \"${V}\"}}\n",
                {{"V", injected}});
  EXPECT_THAT(config.upstreams[0].headers, ElementsAre(Pair("X-A", injected)));
  EXPECT_EQ(config.log.level, LogLevel::kInfo);
}

TEST(ConfigEnvTest, KeysAreNotExpanded) {
  LoadResult result = load("${SECTION}:\n  workers: 1\n", {{"SECTION", "server"}});
  ASSERT_EQ(result.errors.size(), 1u) << describe(result);
  EXPECT_EQ(result.errors[0].path, "${SECTION}");
}

TEST(ConfigEnvTest, MissingVariableIsAnErrorNamingItAndTheKey) {
  LoadResult result =
      load("upstreams:\n  - name: a\n    base_url: http://h\n    api_key: ${NOPE}\n");
  ASSERT_EQ(result.errors.size(), 1u) << describe(result);
  EXPECT_EQ(result.errors[0].path, "upstreams[0].api_key");
  EXPECT_EQ(result.errors[0].line, 4);
  EXPECT_THAT(result.errors[0].message, HasSubstr("environment variable NOPE is not set"));
  EXPECT_FALSE(result.config.has_value());
}

TEST(ConfigEnvTest, MalformedReferenceIsAnError) {
  LoadResult result = load("log:\n  level: ${LEVEL\n");
  ASSERT_EQ(result.errors.size(), 1u) << describe(result);
  EXPECT_EQ(result.errors[0].path, "log.level");
  EXPECT_THAT(result.errors[0].message, HasSubstr("malformed"));
}

// ---- One error each: the path, the line and what is wrong ----

struct ErrorCase {
  const char* name;
  const char* yaml;
  const char* path;
  int line;
  const char* message;  // a substring of the expected message
};

void PrintTo(const ErrorCase& error_case, std::ostream* out) {
  *out << error_case.name;
}

class ConfigErrorTest : public testing::TestWithParam<ErrorCase> {};

TEST_P(ConfigErrorTest, ReportsOneErrorWithPathAndLine) {
  const ErrorCase& expected = GetParam();
  LoadResult result = load(expected.yaml);
  EXPECT_FALSE(result.config.has_value());
  ASSERT_EQ(result.errors.size(), 1u) << describe(result);
  const ConfigError& error = result.errors[0];
  EXPECT_EQ(error.path, expected.path) << error.toString();
  EXPECT_EQ(error.line, expected.line) << error.toString();
  EXPECT_GT(error.column, 0) << error.toString();
  EXPECT_THAT(error.message, HasSubstr(expected.message)) << error.toString();
}

// Upstream entries below need both required keys to isolate one error.
#define UPSTREAM "upstreams:\n  - name: a\n    base_url: https://a.example\n"

const ErrorCase kErrorCases[] = {
    // Unknown keys, at every depth.
    {"UnknownTopLevelKey", "servre:\n  workers: 1\n", "servre", 1, "unknown key"},
    {"UnknownServerKey", "server:\n  listn: 1.2.3.4:80\n", "server.listn", 2, "unknown key"},
    {"UnknownUpstreamKey", UPSTREAM "    apikey: x\n", "upstreams[0].apikey", 4, "unknown key"},
    {"UnknownTimeoutsKey", "timeouts:\n  read: 5s\n", "timeouts.read", 2, "unknown key"},
    {"UnknownRetryKey", "retry:\n  max_atempts: 3\n", "retry.max_atempts", 2, "unknown key"},
    {"UnknownBudgetKey", "retry:\n  budget:\n    ratoi: 0.1\n", "retry.budget.ratoi", 3,
     "unknown key"},
    {"UnknownPolicySubKey",
     "retry:\n  policies:\n    \"429\": {retry: true, breaker: false, x: 1}\n",
     "retry.policies.429.x", 3, "unknown key"},
    {"UnknownBreakerKey", "circuit_breaker:\n  threshold: 1\n", "circuit_breaker.threshold", 2,
     "unknown key"},
    {"UnknownLogKey", "log:\n  levle: info\n", "log.levle", 2, "unknown key"},
    {"UnknownMetricsKey", "metrics:\n  max_labels: 1\n", "metrics.max_labels", 2, "unknown key"},
    {"DuplicateKey", "log:\n  level: info\n  level: debug\n", "log.level", 3, "duplicate key"},

    // Wrong types.
    {"SectionIsAScalar", "server: 5\n", "server", 1, "expected a mapping, got a scalar"},
    {"SectionIsAList", "retry:\n  - 1\n", "retry", 2, "expected a mapping, got a list"},
    {"IntegerIsText", "retry:\n  max_attempts: three\n", "retry.max_attempts", 2,
     "expected an integer, got \"three\""},
    {"IntegerIsFractional", "server:\n  workers: 1.5\n", "server.workers", 2,
     "expected an integer"},
    {"IntegerIsAList", "retry:\n  max_attempts: [1]\n", "retry.max_attempts", 2,
     "expected an integer, got a list"},
    {"ValueIsEmpty", "server:\n  listen:\n", "server.listen", 2, "got an empty value"},
    {"BoolIsText", "retry:\n  failover: maybe\n", "retry.failover", 2, "expected true or false"},
    {"NumberIsText", "retry:\n  exponential_base: two\n", "retry.exponential_base", 2,
     "expected a number"},
    {"StringIsAMapping", UPSTREAM "    ca_file: {a: 1}\n", "upstreams[0].ca_file", 4,
     "expected a string, got a mapping"},
    {"ProxyWithoutScheme", UPSTREAM "    proxy: egress:3128\n", "upstreams[0].proxy", 4,
     "must be http://, https:// or socks5://"},
    {"ProxyWithPath", UPSTREAM "    proxy: http://egress:3128/x\n", "upstreams[0].proxy", 4,
     "without a path"},
    {"ProxyWithBadPort", UPSTREAM "    proxy: http://egress:port\n", "upstreams[0].proxy", 4,
     "valid host"},
    {"CodesIsAScalar", "retry:\n  non_retryable_429_codes: insufficient_quota\n",
     "retry.non_retryable_429_codes", 2, "expected a list"},
    {"CodeIsAMapping", "retry:\n  non_retryable_429_codes:\n    - {a: 1}\n",
     "retry.non_retryable_429_codes[0]", 3, "got a mapping"},
    {"CodeIsEmpty", "retry:\n  non_retryable_429_codes: [a, \"\"]\n",
     "retry.non_retryable_429_codes[1]", 2, "must not be empty"},
    {"HeadersIsAList", UPSTREAM "    headers: [a]\n", "upstreams[0].headers", 4,
     "expected a mapping"},

    // Durations and sizes.
    {"DurationInWords", "server:\n  shutdown_grace: 5 seconds\n", "server.shutdown_grace", 2,
     "expected a duration such as 250ms, 2s, 1m or 1h, got \"5 seconds\""},
    {"NegativeDelay", "retry:\n  base_delay: -1s\n", "retry.base_delay", 2, "expected a duration"},
    {"DurationWithoutUnit", "timeouts:\n  connect: 10\n", "timeouts.connect", 2,
     "expected a duration"},
    {"ZeroTimeout", "timeouts:\n  total: 0s\n", "timeouts.total", 2, "must be greater than 0s"},
    {"ZeroHeaderTimeout", "server:\n  header_timeout: 0ms\n", "server.header_timeout", 2,
     "must be greater than 0s"},
    {"BadSize", "server:\n  max_request_body: 32 MB\n", "server.max_request_body", 2,
     "expected a size"},
    {"NegativeSize", "server:\n  max_request_body: -1\n", "server.max_request_body", 2,
     "expected a size"},

    // Listen addresses.
    {"ListenWithoutPort", "server:\n  listen: localhost\n", "server.listen", 2,
     "expected an address"},
    {"ListenPortTooLarge", "server:\n  admin_listen: 0.0.0.0:70000\n", "server.admin_listen", 2,
     "expected an address"},
    {"AdminOnTheListenPort", "server:\n  listen: 127.0.0.1:8080\n  admin_listen: 0.0.0.0:8080\n",
     "server.admin_listen", 3, "must not use the same port as listen"},

    // Ranges.
    {"MaxAttemptsZero", "retry:\n  max_attempts: 0\n", "retry.max_attempts", 2,
     "must be at least 1 (got 0)"},
    {"WorkersNegative", "server:\n  workers: -1\n", "server.workers", 2,
     "must be at least 0 (got -1)"},
    {"MaxConnectionsZero", "server:\n  max_connections: 0\n", "server.max_connections", 2,
     "must be at least 1"},
    {"MaxInflightNegative", UPSTREAM "    max_inflight: -5\n", "upstreams[0].max_inflight", 4,
     "must be at least 0"},
    {"RatioAboveOne", "retry:\n  budget:\n    ratio: 1.5\n", "retry.budget.ratio", 3,
     "must be between 0 and 1 (got 1.5)"},
    {"RatioNegative", "retry:\n  budget: {ratio: -0.1}\n", "retry.budget.ratio", 2,
     "must be between 0 and 1"},
    {"MinPerSecondNegative", "retry:\n  budget: {min_per_second: -1}\n",
     "retry.budget.min_per_second", 2, "must be at least 0"},
    {"FailureRateZero", "circuit_breaker:\n  failure_rate_threshold: 0\n",
     "circuit_breaker.failure_rate_threshold", 2, "must be greater than 0 and at most 1"},
    {"FailureRateAboveOne", "circuit_breaker:\n  failure_rate_threshold: 1.01\n",
     "circuit_breaker.failure_rate_threshold", 2, "must be greater than 0 and at most 1"},
    {"FailureThresholdZero", "circuit_breaker:\n  failure_threshold: 0\n",
     "circuit_breaker.failure_threshold", 2, "must be at least 1"},
    {"HalfOpenProbesZero", "circuit_breaker:\n  half_open_max_probes: 0\n",
     "circuit_breaker.half_open_max_probes", 2, "must be at least 1"},
    {"ExponentialBaseBelowOne", "retry:\n  exponential_base: 0.5\n", "retry.exponential_base", 2,
     "must be at least 1 (got 0.5)"},
    {"ModelLabelsNegative", "metrics:\n  max_model_labels: -1\n", "metrics.max_model_labels", 2,
     "must be at least 0"},

    // Rules between keys: blamed on the key the file sets.
    {"MaxDelayBelowBaseDelay", "retry:\n  base_delay: 5s\n  max_delay: 2s\n", "retry.max_delay", 3,
     "max_delay (2s) must not be less than base_delay (5s)"},
    {"BaseDelayAboveDefaultMaxDelay", "retry:\n  base_delay: 1m\n", "retry.base_delay", 2,
     "max_delay (30s) must not be less than base_delay (1m)"},
    {"MaxRecoveryBelowRecovery",
     "circuit_breaker:\n  recovery_timeout: 10m\n  max_recovery_timeout: 1m\n",
     "circuit_breaker.max_recovery_timeout", 3,
     "max_recovery_timeout (1m) must not be less than recovery_timeout (10m)"},

    // Enumerations.
    {"UnknownJitter", "retry:\n  jitter: random\n", "retry.jitter", 2,
     "expected one of full, equal, decorrelated, none, got \"random\""},
    {"UnknownLogLevel", "log:\n  level: verbose\n", "log.level", 2,
     "expected one of debug, info, warn, error"},
    {"UnknownLogFormat", "log:\n  format: xml\n", "log.format", 2, "expected one of json, text"},
    {"UnknownScope", "circuit_breaker:\n  scope: global\n", "circuit_breaker.scope", 2,
     "expected one of upstream, upstream_model"},

    // Policies.
    {"PolicyStatusOutOfRange", "retry:\n  policies:\n    \"600\": {retry: true, breaker: true}\n",
     "retry.policies.600", 3, "unknown outcome"},
    {"PolicyTwoDigits", "retry:\n  policies:\n    \"42\": {retry: true, breaker: true}\n",
     "retry.policies.42", 3, "unknown outcome"},
    {"PolicyBadClass", "retry:\n  policies:\n    6xx: {retry: true, breaker: true}\n",
     "retry.policies.6xx", 3, "unknown outcome"},
    {"PolicyUnknownName", "retry:\n  policies:\n    dns_error: {retry: true, breaker: true}\n",
     "retry.policies.dns_error", 3, "unknown outcome"},
    {"PolicyMissingBreaker", "retry:\n  policies:\n    \"500\": {retry: true}\n",
     "retry.policies.500.breaker", 3, "missing required key"},
    {"PolicyRetryNotBool",
     "retry:\n  policies:\n    \"429\": {retry: yes please, breaker: false}\n",
     "retry.policies.429.retry", 3, "expected true or false"},
    {"PolicyIsAScalar", "retry:\n  policies:\n    \"429\": true\n", "retry.policies.429", 3,
     "expected a mapping"},

    // Upstreams.
    {"UpstreamsEmptyList", "upstreams: []\n", "upstreams", 1,
     "expected a non-empty list of upstreams, got an empty list"},
    {"UpstreamsIsAMapping", "upstreams:\n  openai: {}\n", "upstreams", 2,
     "expected a non-empty list"},
    {"UpstreamsIsEmpty", "upstreams:\n", "upstreams", 1, "expected a non-empty list"},
    {"UpstreamIsAScalar", "upstreams:\n  - openai\n", "upstreams[0]", 2, "expected a mapping"},
    {"UpstreamWithoutName", "upstreams:\n  - base_url: https://a.example\n", "upstreams[0].name", 2,
     "missing required key"},
    {"UpstreamWithoutBaseUrl", "upstreams:\n  - name: a\n", "upstreams[0].base_url", 2,
     "missing required key"},
    {"UpstreamEmptyName", "upstreams:\n  - name: \"\"\n    base_url: https://a.example\n",
     "upstreams[0].name", 2, "must be non-empty"},
    {"UpstreamNameWithSpace",
     "upstreams:\n  - name: my upstream\n    base_url: https://a.example\n", "upstreams[0].name", 2,
     "letters, digits"},
    {"DuplicateUpstreamName", UPSTREAM "  - name: a\n    base_url: https://b.example\n",
     "upstreams[1].name", 4, "duplicate upstream name, already used by upstreams[0]"},
    {"BaseUrlWrongScheme", "upstreams:\n  - name: a\n    base_url: ftp://a.example\n",
     "upstreams[0].base_url", 3, "must start with http:// or https://"},
    {"BaseUrlNoScheme", "upstreams:\n  - name: a\n    base_url: api.openai.com\n",
     "upstreams[0].base_url", 3, "must start with http:// or https://"},
    {"BaseUrlWithQuery", "upstreams:\n  - name: a\n    base_url: https://a.example/v1?x=1\n",
     "upstreams[0].base_url", 3, "query"},
    {"BaseUrlWithFragment", "upstreams:\n  - name: a\n    base_url: https://a.example#top\n",
     "upstreams[0].base_url", 3, "fragment"},
    {"BaseUrlWithoutHost", "upstreams:\n  - name: a\n    base_url: https:///v1\n",
     "upstreams[0].base_url", 3, "valid host"},
    {"BaseUrlBadPort", "upstreams:\n  - name: a\n    base_url: http://a.example:99999\n",
     "upstreams[0].base_url", 3, "valid host and optional port"},
    {"BaseUrlWithSpace", "upstreams:\n  - name: a\n    base_url: https://a.example/my path\n",
     "upstreams[0].base_url", 3, "spaces"},
    {"BaseUrlWithCredentials", "upstreams:\n  - name: a\n    base_url: https://u:p@a.example\n",
     "upstreams[0].base_url", 3, "credentials"},
    {"HeaderNameInvalid", UPSTREAM "    headers:\n      \"Bad Header\": x\n",
     "upstreams[0].headers.Bad Header", 5, "not a valid HTTP header name"},
    {"HeaderManaged", UPSTREAM "    headers:\n      Host: evil.example\n",
     "upstreams[0].headers.Host", 5, "set by Bulwark"},
    {"HeaderRepeated", UPSTREAM "    headers:\n      X-A: 1\n      x-a: 2\n",
     "upstreams[0].headers.x-a", 6, "duplicate header"},
    {"HeaderValueWithLineBreak", UPSTREAM "    headers:\n      X-A: \"a\\r\\nX-B: b\"\n",
     "upstreams[0].headers.X-A", 5, "line breaks"},

    // The document itself.
    {"SyntaxError", "server:\n  listen: [1\nlog: {}\n", "", 3, "invalid YAML"},
    {"TabIndentation", "server:\n\tworkers: 1\n", "", 2, "invalid YAML"},
    {"RootIsAList", "- server\n", "", 1, "expected a mapping, got a list"},
    {"RootIsAScalar", "hello\n", "", 1, "expected a mapping, got a scalar"},
    {"TwoDocuments", "log: {}\n---\nmetrics: {}\n", "", 3, "expected one YAML document"},
    // yaml-cpp's LoadAll never returned on these: it read empty documents forever.
    {"LeadingComma", ",\n", "", 1, "invalid YAML: unexpected \",\""},
    {"CommaAfterDocumentStart", "---\n,\nlog: {}\n", "", 2, "invalid YAML: unexpected \",\""},
    {"Anchor", "log: &log {level: info}\n", "", 1, "anchors (&name) and aliases (*name)"},
    {"AliasToNowhere", "log: *log\n", "", 1, "invalid YAML"},
    {"NonScalarKey", "? [a, b]\n: 1\n", "", 1, "keys must be plain strings"},
};

#undef UPSTREAM

INSTANTIATE_TEST_SUITE_P(Validation, ConfigErrorTest, testing::ValuesIn(kErrorCases),
                         [](const testing::TestParamInfo<ErrorCase>& info) {
                           return std::string(info.param.name);
                         });

// ---- Several errors at once ----

TEST(ConfigErrorsTest, ReportsEveryErrorInFileOrder) {
  LoadResult result = load(R"yaml(server:
  workers: -2
  max_request_body: huge
upstreams:
  - name: a
    base_url: ftp://a
  - name: a
    base_url: https://b
retry:
  max_atempts: 3
  jitter: sometimes
  budget: {ratio: 2}
circuit_breaker:
  failure_rate_threshold: 0
log:
  level: loud
)yaml");
  EXPECT_FALSE(result.config.has_value());
  std::vector<std::pair<std::string, int>> found;
  for (const ConfigError& error : result.errors) found.emplace_back(error.path, error.line);
  EXPECT_THAT(
      found, ElementsAre(Pair("server.workers", 2), Pair("server.max_request_body", 3),
                         Pair("upstreams[0].base_url", 6), Pair("upstreams[1].name", 7),
                         Pair("retry.max_atempts", 10), Pair("retry.jitter", 11),
                         Pair("retry.budget.ratio", 12),
                         Pair("circuit_breaker.failure_rate_threshold", 14), Pair("log.level", 16)))
      << describe(result);
}

TEST(ConfigErrorsTest, ABadValueDoesNotAlsoTripTheRulesThatUseIt) {
  LoadResult result = load("retry:\n  base_delay: soon\n  max_delay: 100ms\n");
  ASSERT_EQ(result.errors.size(), 1u) << describe(result);
  EXPECT_EQ(result.errors[0].path, "retry.base_delay");
}

TEST(ConfigErrorsTest, AMisshapenSectionIsOneError) {
  LoadResult result = load("upstreams:\n  - 42\nretry:\n  policies:\n    \"429\": [true]\n");
  std::vector<std::string> paths;
  for (const ConfigError& error : result.errors) paths.push_back(error.path);
  EXPECT_THAT(paths, ElementsAre("upstreams[0]", "retry.policies.429")) << describe(result);
}

TEST(ConfigErrorsTest, ColumnsPointAtTheOffendingValue) {
  LoadResult result = load("retry:\n  jitter: random\n");
  ASSERT_EQ(result.errors.size(), 1u);
  EXPECT_EQ(result.errors[0].column, 11);
  result = load("retry:\n  max_atempts: 3\n");
  ASSERT_EQ(result.errors.size(), 1u);
  EXPECT_EQ(result.errors[0].column, 3);  // the key itself
}

// ---- What the file may not do ----

TEST(ConfigDocumentTest, AnAliasIsAnErrorNamingTheLineOfItsAnchor) {
  // Anchors and aliases let a few bytes stand for a large value many times over (a list of
  // aliased upstreams, each with the same thousand headers); proxy.yaml writes values out.
  LoadResult result = load(R"yaml(upstreams:
  - name: a
    base_url: https://a.example
    headers: &common
      X-Team: search
  - name: b
    base_url: https://b.example
    headers: *common
)yaml");
  EXPECT_FALSE(result.config.has_value());
  ASSERT_EQ(result.errors.size(), 1u) << describe(result);
  EXPECT_EQ(result.errors[0].line, 4);
  EXPECT_EQ(result.errors[0].column, 14);
  EXPECT_THAT(result.errors[0].message, HasSubstr("not supported; write the value out in full"));
}

std::string nested(int depth) {
  return "retry:\n  non_retryable_429_codes: " + std::string(depth, '[') + std::string(depth, ']') +
         "\n";
}

TEST(ConfigDocumentTest, NestingDeeperThanTheLimitIsAnErrorAtItsLine) {
  // The root mapping and retry are two levels; the lists bring it to the limit and past it.
  LoadResult at_limit = load(nested(kMaxYamlDepth - 2));
  ASSERT_EQ(at_limit.errors.size(), 1u) << describe(at_limit);
  EXPECT_THAT(at_limit.errors[0].message, HasSubstr("expected an error code"));

  LoadResult too_deep = load(nested(kMaxYamlDepth - 1));
  ASSERT_EQ(too_deep.errors.size(), 1u) << describe(too_deep);
  EXPECT_EQ(too_deep.errors[0].line, 2);
  EXPECT_THAT(too_deep.errors[0].message, HasSubstr("nested deeper than 32 levels"));
}

TEST(ConfigDocumentTest, DeepNestingFailsWithoutExhaustingTheStack) {
  for (char open : {'[', '{'}) {
    LoadResult result = load("log: " + std::string(200000, open));
    ASSERT_EQ(result.errors.size(), 1u) << describe(result);
    EXPECT_THAT(result.errors[0].message, HasSubstr("nested deeper than"));
  }
  std::string dashes;
  for (int i = 0; i < 50000; ++i) dashes += "- ";
  LoadResult result = load(dashes + "x\n");
  ASSERT_EQ(result.errors.size(), 1u) << describe(result);
  EXPECT_THAT(result.errors[0].message, HasSubstr("nested deeper than"));
}

TEST(ConfigDocumentTest, ManyKeysLoadInLinearTime) {
  // Key lookups used to scan the mapping: 100k headers took minutes to check.
  std::string yaml = "upstreams:\n  - name: a\n    base_url: https://a.example\n    headers:\n";
  constexpr int kHeaders = 50000;
  for (int i = 0; i < kHeaders; ++i) yaml += "      X-" + std::to_string(i) + ": v\n";
  yaml += "      x-7: again\n";
  const auto start = std::chrono::steady_clock::now();
  LoadResult result = load(yaml);
  EXPECT_LT(std::chrono::steady_clock::now() - start, seconds(10));
  ASSERT_EQ(result.errors.size(), 1u) << describe(result);
  EXPECT_EQ(result.errors[0].path, "upstreams[0].headers.x-7");
  EXPECT_THAT(result.errors[0].message, HasSubstr("duplicate header"));
}

// ---- Secrets ----

TEST(ConfigSecretsTest, ApiKeysNeverAppearInErrors) {
  const std::string secret = "sk-SECRET-0123456789";
  const std::vector<std::string> documents = {
      "upstreams:\n  - name: a\n    base_url: https://a\n    api_key: {k: " + secret + "}\n",
      "upstreams:\n  - name: a\n    base_url: https://a\n    api_key: [" + secret + "]\n",
      "upstreams:\n  - name: a\n    base_url: https://a\n    api_key: \"" + secret + "\\n\"\n",
      "upstreams:\n  - name: a\n    base_url: https://a\n    api_key: \"" + secret + "${NOPE}\"\n",
      "upstreams:\n  - name: a\n    base_url: https://a\n    api_key: \"" + secret + "${\"\n",
      "upstreams:\n  - name: a\n    base_url: https://a\n    api_key: " + secret +
          "\n    api_key: " + secret + "\n",
      "upstreams:\n  - name: a\n    base_url: https://a\n    api_key: \"${KEY}\\r\"\n",
      "upstreams:\n  - name: a\n    base_url: \"https://" + secret + "@a.example\"\n",
      "upstreams:\n  - name: a\n    base_url: https://a\n    headers: {Authorization: \"Bearer " +
          secret + "\\n\"}\n",
      "upstreams:\n  - name: a\n    base_url: https://a\n    api_key: " + secret +
          "\n    max_inflight: x\n",
      "upstreams:\n  - name: a\n    base_url: https://a\n    api_key: \"" + secret + "\"\n  x: [\n",
  };
  for (const std::string& yaml : documents) {
    LoadResult result = load(yaml, {{"KEY", secret}});
    EXPECT_FALSE(result.ok()) << yaml;
    for (const ConfigError& error : result.errors) {
      EXPECT_THAT(error.toString(), Not(HasSubstr("SECRET"))) << yaml;
    }
  }
}

// ---- Messages ----

TEST(ConfigErrorStringTest, ToStringFormats) {
  EXPECT_EQ((ConfigError{"retry.max_atempts", 12, 3, "unknown key"}).toString(),
            "line 12, column 3: retry.max_atempts: unknown key");
  EXPECT_EQ((ConfigError{"", 2, 1, "invalid YAML: x"}).toString(),
            "line 2, column 1: invalid YAML: x");
  EXPECT_EQ((ConfigError{"", 0, 0, "cannot open x"}).toString(), "cannot open x");
  EXPECT_EQ((ConfigError{"a.b", 0, 0, "bad"}).toString(), "a.b: bad");
}

// ---- Files ----

TEST(ConfigFileTest, MissingFileIsAnError) {
  LoadResult result = loadConfigFile("/nonexistent/bulwark/proxy.yaml", fakeEnv());
  EXPECT_FALSE(result.config.has_value());
  ASSERT_EQ(result.errors.size(), 1u);
  EXPECT_THAT(result.errors[0].toString(),
              HasSubstr("/nonexistent/bulwark/proxy.yaml: No such file or directory"));
}

TEST(ConfigFileTest, DirectoryIsAnError) {
  LoadResult result = loadConfigFile(std::filesystem::temp_directory_path().string(), fakeEnv());
  ASSERT_EQ(result.errors.size(), 1u);
  EXPECT_THAT(result.errors[0].message, HasSubstr("is a directory"));
}

TEST(ConfigFileTest, ErrorsCarryTheirLines) {
  const std::filesystem::path path =
      std::filesystem::temp_directory_path() /
      ("bulwark_config_test_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) +
       ".yaml");
  std::ofstream(path) << "log:\n  level: info\n  colour: true\n";
  LoadResult result = loadConfigFile(path.string(), fakeEnv());
  std::filesystem::remove(path);
  ASSERT_EQ(result.errors.size(), 1u);
  EXPECT_EQ(result.errors[0].toString(), "line 3, column 3: log.colour: unknown key");
}

TEST(ConfigFileTest, ProcessEnvReadsTheEnvironment) {
  ::setenv("BULWARK_CONFIG_TEST_VAR", "42", 1);
  const EnvLookup env = processEnv();
  EXPECT_EQ(env("BULWARK_CONFIG_TEST_VAR"), "42");
  EXPECT_EQ(env("BULWARK_CONFIG_TEST_UNSET_VAR"), std::nullopt);
  ::unsetenv("BULWARK_CONFIG_TEST_VAR");
}

// ---- Broken input never crashes ----

void expectConsistent(const LoadResult& result, const std::string& yaml) {
  EXPECT_EQ(result.ok(), result.config.has_value()) << yaml;
  if (result.config) {
    EXPECT_FALSE(result.config->upstreams.empty()) << yaml;
  }
}

TEST(ConfigRobustnessTest, EveryTruncationOfTheShippedFileLoadsOrFails) {
  const std::string text = readShippedConfig();
  ASSERT_FALSE(text.empty());
  for (std::size_t length = 0; length <= text.size(); ++length) {
    const std::string prefix = text.substr(0, length);
    LoadResult result;
    EXPECT_NO_THROW(result = load(prefix)) << length;
    expectConsistent(result, prefix);
  }
}

TEST(ConfigRobustnessTest, RandomByteDamageLoadsOrFails) {
  const std::string text = readShippedConfig();
  ASSERT_FALSE(text.empty());
  std::mt19937 random(20240611);
  const std::string alphabet = "{}[]:,-?*&!|>'\"%@`#\n\t ${}\\\x01\xff";
  std::uniform_int_distribution<std::size_t> position(0, text.size() - 1);
  std::uniform_int_distribution<std::size_t> symbol(0, alphabet.size() - 1);
  for (int round = 0; round < 500; ++round) {
    std::string damaged = text;
    for (int hit = 0; hit < 1 + round % 5; ++hit)
      damaged[position(random)] = alphabet[symbol(random)];
    LoadResult result;
    EXPECT_NO_THROW(result = load(damaged)) << damaged;
    expectConsistent(result, damaged);
  }
}

TEST(ConfigRobustnessTest, HostileDocumentsLoadOrFail) {
  const std::vector<std::string> documents = {
      std::string(10000, '['),
      std::string(10000, '{'),
      "a: &a [*a]\n",
      "server: *nowhere\n",
      "server: &s {workers: 1}\nlog: *s\n",
      "retry:\n  non_retryable_429_codes: &c [a, *c]\n",
      std::string("log:\n  level: \0info\n", 20),
      "\xef\xbb\xbflog: {level: info}\n",
      "!!binary aGVsbG8=\n",
      "server: !!map {workers: !!str 1}\n",
      "%YAML 1.2\n---\nlog: {}\n",
      "%FOO\n",
      "upstreams:\n" + std::string(2000, ' ') + "- x\n",
  };
  for (const std::string& yaml : documents) {
    LoadResult result;
    EXPECT_NO_THROW(result = load(yaml));
    expectConsistent(result, yaml);
  }
}

}  // namespace
}  // namespace bulwark::config

namespace bulwark::config {
namespace {

TEST(ConfigSecretsTest, ValuesFromTheEnvironmentAreNeverRepeatedInErrors) {
  std::string yaml =
      "upstreams:\n  - name: a\n    base_url: http://127.0.0.1:1\n    max_inflight: ${KEY}\n";
  LoadResult result = loadConfigString(yaml, [](const std::string& name) {
    return name == "KEY" ? std::optional<std::string>("sk-live-SECRET") : std::nullopt;
  });
  ASSERT_EQ(result.errors.size(), 1u);
  EXPECT_EQ(result.errors[0].toString().find("SECRET"), std::string::npos)
      << result.errors[0].toString();
  EXPECT_NE(result.errors[0].toString().find("upstreams[0].max_inflight"), std::string::npos);
}

}  // namespace
}  // namespace bulwark::config

namespace bulwark::config {
namespace {

// ---- routes ----

constexpr char kRoutes[] = R"yaml(
upstreams:
  - name: openai
    base_url: https://api.openai.com
  - name: azure
    base_url: https://example.openai.azure.com/openai
timeouts:
  first_byte: 30s
retry:
  max_attempts: 3
  base_delay: 500ms
routes:
  - name: reasoning
    match: {path: /v1/chat/completions, model: "o*"}
    timeouts: {first_byte: 600s, total: 900s}
    retry: {max_attempts: 2}
    upstreams: [openai, azure]
  - name: embeddings
    match: {path: /v1/embeddings}
    retry:
      max_attempts: 5
      policies:
        "400": {retry: true, breaker: false}
  - name: chat
    match: {path: /v1/chat/*}
    upstreams: [azure, openai]
)yaml";

TEST(RouteConfigTest, ARouteOverridesOnlyWhatItNames) {
  const Config config = loadValid(kRoutes);
  ASSERT_EQ(config.routes.size(), 3u);
  const RouteConfig& reasoning = config.routes[0];
  EXPECT_EQ(reasoning.name, "reasoning");
  EXPECT_EQ(reasoning.match.path, "/v1/chat/completions");
  EXPECT_EQ(reasoning.match.model, "o*");
  EXPECT_EQ(reasoning.timeouts.first_byte, seconds(600));
  EXPECT_EQ(reasoning.timeouts.total, seconds(900));
  EXPECT_EQ(reasoning.timeouts.connect, config.timeouts.connect);  // inherited
  EXPECT_EQ(reasoning.retry.max_attempts, 2);
  EXPECT_EQ(reasoning.retry.base_delay, milliseconds(500));  // from the top level
  EXPECT_EQ(reasoning.upstreams, (std::vector<std::size_t>{0, 1}));

  const RouteConfig& embeddings = config.routes[1];
  EXPECT_EQ(embeddings.timeouts, config.timeouts);
  EXPECT_EQ(embeddings.retry.max_attempts, 5);
  EXPECT_TRUE(embeddings.retry.policies.at("400").retry);             // added
  EXPECT_TRUE(embeddings.retry.policies.at("5xx").breaker);           // kept
  EXPECT_EQ(embeddings.upstreams, (std::vector<std::size_t>{0, 1}));  // every upstream

  EXPECT_EQ(config.routes[2].upstreams, (std::vector<std::size_t>{1, 0}));
  EXPECT_EQ(config.default_route.name, "default");
  EXPECT_EQ(config.default_route.timeouts.first_byte, seconds(30));
  EXPECT_EQ(config.default_route.retry, config.retry);
}

TEST(RouteConfigTest, AdmissionHasItsDefaultsAndARouteOverridesIt) {
  const Config defaults = loadValid("");
  EXPECT_TRUE(defaults.admission.enabled);
  EXPECT_EQ(defaults.admission.max_queue, 1000);
  EXPECT_EQ(defaults.admission.max_wait, seconds(30));
  EXPECT_DOUBLE_EQ(defaults.admission.headroom, 0.02);
  EXPECT_DOUBLE_EQ(defaults.admission.bytes_per_token, 4);
  EXPECT_EQ(defaults.admission.default_output_tokens, 1000);
  EXPECT_EQ(defaults.admission.image_tokens, 800);
  EXPECT_DOUBLE_EQ(defaults.admission.burst, 0);  // auto: learned
  EXPECT_EQ(defaults.default_route.admission, defaults.admission);

  const Config config = loadValid(R"yaml(
admission: {max_wait: 5s, headroom: 0.1, burst: auto}
routes:
  - name: batchy
    match: {path: /v1/embeddings}
    admission: {max_wait: 120s, max_queue: 10, burst: 0.1}
  - name: off
    match: {path: /v1/chat/completions}
    admission: {enabled: false}
)yaml");
  EXPECT_EQ(config.default_route.admission.max_wait, seconds(5));
  EXPECT_EQ(config.routes[0].admission.max_wait, seconds(120));
  EXPECT_EQ(config.routes[0].admission.max_queue, 10);
  EXPECT_DOUBLE_EQ(config.routes[0].admission.headroom, 0.1);  // from the top level
  EXPECT_DOUBLE_EQ(config.routes[0].admission.burst, 0.1);
  EXPECT_DOUBLE_EQ(config.routes[1].admission.burst, 0);
  EXPECT_FALSE(config.routes[1].admission.enabled);
  EXPECT_EQ(config.routes[1].admission.max_wait, seconds(5));
}

TEST(ClusterConfigTest, AbsentMeansOneProcessAndAUrlIsSplitUp) {
  EXPECT_FALSE(loadValid("").cluster.has_value());
  EXPECT_FALSE(loadValid("cluster:\n").cluster.has_value());
  const Config config = loadValid("cluster:\n  redis: ${REDIS_URL}\n  timeout: 20ms\n",
                                  {{"REDIS_URL", "redis://bulwark:s3cret@redis.internal:6380/2"}});
  ASSERT_TRUE(config.cluster.has_value());
  const ClusterConfig& c = *config.cluster;
  EXPECT_EQ(c.host, "redis.internal");
  EXPECT_EQ(c.port, 6380);
  EXPECT_EQ(c.user, "bulwark");
  EXPECT_EQ(c.password, "s3cret");
  EXPECT_EQ(c.db, 2);
  EXPECT_EQ(c.key_prefix, "bulwark:default:");
  EXPECT_EQ(c.timeout, milliseconds(20));
  EXPECT_EQ(c.sync_interval, seconds(1));
  const ClusterConfig plain = *loadValid("cluster: {redis: \"redis://[::1]\"}\n").cluster;
  EXPECT_EQ(plain.host, "::1");
  EXPECT_EQ(plain.port, 6379);
  EXPECT_EQ(plain.password, "");
}

TEST(ClusterConfigTest, MistakesAreErrorsThatNeverQuoteThePassword) {
  struct Case {
    std::string yaml;
    std::string path;
    std::string message;
  };
  const std::vector<Case> cases{
      {"cluster: {redis: \"rediss://:pw@h:6380\"}\n", "cluster.redis", "Debian 12 ships 0.14"},
      {"cluster: {redis: \"http://:pw@h\"}\n", "cluster.redis", "must start with redis://"},
      {"cluster: {redis: \"redis://:pw@h/99\"}\n", "cluster.redis", "from 0 to 15"},
      {"cluster: {redis: \"redis://:pw@h:99999\"}\n", "cluster.redis", "valid host"},
      {"cluster: {key_prefix: x}\n", "cluster.redis", "required"},
      {"cluster: {redis: \"redis://h\", timeout: 0s}\n", "cluster.timeout", "greater than 0"},
      {"routes:\n  - name: a\n    cluster: {redis: \"redis://h\"}\n", "routes[0].cluster",
       "cannot be set per route"},
  };
  for (const Case& c : cases) {
    LoadResult result = load(c.yaml);
    ASSERT_FALSE(result.ok()) << c.yaml;
    bool found = false;
    for (const ConfigError& e : result.errors) {
      EXPECT_EQ(e.message.find("pw"), std::string::npos) << e.message;
      if (e.path == c.path) {
        found = true;
        EXPECT_THAT(e.message, HasSubstr(c.message)) << c.yaml;
      }
    }
    EXPECT_TRUE(found) << c.yaml << describe(result);
  }
}

TEST(RouteConfigTest, TheFirstMatchingRouteApplies) {
  const Config config = loadValid(kRoutes);
  EXPECT_EQ(routeFor(config, "/v1/chat/completions", "o3-mini").name, "reasoning");
  EXPECT_EQ(routeFor(config, "/v1/chat/completions?x=1", "o1").name, "reasoning");
  EXPECT_EQ(routeFor(config, "/v1/chat/completions", "gpt-4o").name, "chat");
  EXPECT_EQ(routeFor(config, "/v1/chat/completions", "").name, "chat");
  EXPECT_EQ(routeFor(config, "/v1/embeddings", "text-embedding-3-small").name, "embeddings");
  EXPECT_EQ(routeFor(config, "/v1/embeddings/x", "").name, "embeddings");
  EXPECT_EQ(routeFor(config, "/v1/embeddingsx", "").name, "default");  // whole segments
  EXPECT_EQ(routeFor(config, "/v1/files", "").name, "default");
}

TEST(RouteConfigTest, MistakesAreErrorsWithTheirLine) {
  const std::string base =
      "upstreams:\n  - name: openai\n    base_url: https://api.openai.com\nroutes:\n";
  struct Case {
    std::string routes;
    std::string path;
    int line;
    std::string message;
  };
  const std::vector<Case> cases{
      {"  - name: a\n    upstreams: [openai, azure]\n", "routes[0].upstreams[1]", 6,
       "unknown upstream \"azure\"; the upstreams are: openai"},
      {"  - name: a\n    circuit_breaker: {failure_threshold: 2}\n", "routes[0].circuit_breaker", 6,
       "cannot be set per route"},
      {"  - name: a\n    retry: {budget: {ratio: 0.5}}\n", "routes[0].retry.budget", 6,
       "belongs to the upstream"},
      {"  - name: a\n  - name: a\n", "routes[1].name", 6, "duplicate route name"},
      {"  - name: a\n    match: {path: v1/chat}\n", "routes[0].match.path", 6,
       "must start with '/'"},
      {"  - name: a\n    upstreams: []\n", "routes[0].upstreams", 6, "non-empty list"},
      {"  - name: a\n    timeouts: {first_bite: 1s}\n", "routes[0].timeouts.first_bite", 6,
       "unknown key"},
      {"  - match: {path: /v1}\n", "routes[0].name", 5, "required"},
      {"  - name: a\n    hedge: {after: soon}\n", "routes[0].hedge.after", 6, "expected p95"},
      {"  - name: a\n    hedge: {after: 0s}\n", "routes[0].hedge.after", 6, "greater than 0"},
      {"  - name: a\n    hedge: {after: 1s, max: 5}\n", "routes[0].hedge.max", 6, "at most 3"},
      {"  - name: a\n    hedge: {max: 1}\n", "routes[0].hedge.after", 6, "required"},
      {"  - name: a\n    admission: {headroom: 1}\n", "routes[0].admission.headroom", 6,
       "less than 1"},
      {"  - name: a\n    admission: {bytes_per_token: 0}\n", "routes[0].admission.bytes_per_token",
       6, "greater than 0"},
      {"  - name: a\n    admission: {max_queue: -1}\n", "routes[0].admission.max_queue", 6,
       "at least 0"},
      {"  - name: a\n    admission: {max_wiat: 1s}\n", "routes[0].admission.max_wiat", 6,
       "unknown key"},
      {"  - name: a\n    admission: {burst: 0}\n", "routes[0].admission.burst", 6,
       "expected auto or a share"},
      {"  - name: a\n    admission: {burst: 1.5}\n", "routes[0].admission.burst", 6,
       "at most 1"},
      {"  - name: a\n    admission: {burst: often}\n", "routes[0].admission.burst", 6,
       "expected auto"},
  };
  for (const Case& c : cases) {
    LoadResult result = load(base + c.routes);
    ASSERT_FALSE(result.ok()) << c.routes;
    bool found = false;
    for (const ConfigError& e : result.errors) {
      if (e.path == c.path) {
        found = true;
        EXPECT_EQ(e.line, c.line) << c.routes;
        EXPECT_THAT(e.message, HasSubstr(c.message)) << c.routes;
      }
    }
    EXPECT_TRUE(found) << c.routes << describe(result);
  }
}

}  // namespace
}  // namespace bulwark::config
