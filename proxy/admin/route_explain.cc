#include "proxy/admin/route_explain.h"

#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include "config/routes.h"
#include "config/units.h"

namespace bulwark::admin {

namespace {
using Writer = rapidjson::Writer<rapidjson::StringBuffer>;

void key(Writer& w, std::string_view k) { w.Key(k.data(), static_cast<rapidjson::SizeType>(k.size())); }
void str(Writer& w, std::string_view v) {
  w.String(v.data(), static_cast<rapidjson::SizeType>(v.size()));
}
void duration(Writer& w, std::string_view k, config::Duration d) {
  key(w, k);
  str(w, config::formatDuration(d));
}

const char* jitterName(config::Jitter jitter) {
  switch (jitter) {
    case config::Jitter::kFull:
      return "full";
    case config::Jitter::kEqual:
      return "equal";
    case config::Jitter::kDecorrelated:
      return "decorrelated";
    case config::Jitter::kNone:
      return "none";
  }
  return "full";
}
}  // namespace

std::string routeExplanationJson(const config::Config& config, std::string_view path,
                                 std::string_view model) {
  const config::RouteConfig& route = config::routeFor(config, path, model);
  rapidjson::StringBuffer buffer;
  Writer w(buffer);
  w.StartObject();
  key(w, "request");
  w.StartObject();
  key(w, "path");
  str(w, path);
  key(w, "model");
  str(w, model);
  w.EndObject();
  key(w, "route");
  str(w, route.name);
  key(w, "match");
  w.StartObject();
  key(w, "path");
  str(w, route.match.path);
  key(w, "model");
  str(w, route.match.model);
  w.EndObject();
  key(w, "upstreams");
  w.StartArray();
  for (std::size_t index : route.upstreams) str(w, config.upstreams[index].name);
  w.EndArray();
  key(w, "timeouts");
  w.StartObject();
  duration(w, "connect", route.timeouts.connect);
  duration(w, "first_byte", route.timeouts.first_byte);
  duration(w, "idle", route.timeouts.idle);
  duration(w, "total", route.timeouts.total);
  w.EndObject();
  const config::RetryConfig& retry = route.retry;
  key(w, "retry");
  w.StartObject();
  key(w, "max_attempts");
  w.Int(retry.max_attempts);
  duration(w, "base_delay", retry.base_delay);
  duration(w, "max_delay", retry.max_delay);
  key(w, "exponential_base");
  w.Double(retry.exponential_base);
  key(w, "jitter");
  str(w, jitterName(retry.jitter));
  key(w, "honor_retry_after");
  w.Bool(retry.honor_retry_after);
  duration(w, "max_retry_after", retry.max_retry_after);
  key(w, "failover");
  w.Bool(retry.failover);
  key(w, "non_retryable_429_codes");
  w.StartArray();
  for (const std::string& code : retry.non_retryable_429_codes) str(w, code);
  w.EndArray();
  key(w, "policies");
  w.StartObject();
  for (const auto& [outcome, policy] : retry.policies) {
    key(w, outcome);
    w.StartObject();
    key(w, "retry");
    w.Bool(policy.retry);
    key(w, "breaker");
    w.Bool(policy.breaker);
    w.EndObject();
  }
  w.EndObject();
  w.EndObject();
  w.EndObject();
  return std::string(buffer.GetString(), buffer.GetSize()) + "\n";
}

}  // namespace bulwark::admin
