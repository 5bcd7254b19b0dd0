#include "proxy/observe/health.h"

#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

namespace bulwark::observe {

namespace {

void writeBucket(rapidjson::Writer<rapidjson::StringBuffer>& w,
                 const resilience::Quota::BucketView& bucket) {
  w.StartObject();
  w.Key("limit");
  if (bucket.limit > 0) {
    w.Int64(static_cast<std::int64_t>(bucket.limit));
  } else {
    w.Null();  // not reported yet
  }
  w.Key("capacity");
  w.Int64(static_cast<std::int64_t>(bucket.capacity));
  w.Key("remaining");
  w.Int64(static_cast<std::int64_t>(bucket.remaining));
  w.Key("reserved");
  w.Int64(static_cast<std::int64_t>(bucket.reserved));
  w.Key("reset_ms");
  w.Int64(bucket.until_full.count());
  w.EndObject();
}

void writeQuotas(rapidjson::Writer<rapidjson::StringBuffer>& w,
                 const resilience::UpstreamHealth& upstream, resilience::SteadyTime now) {
  w.Key("quotas");
  w.StartObject();
  for (const auto& [model, quota] : upstream.quotas()) {
    resilience::Quota::View view = quota->view(now);
    w.Key(model.c_str(), static_cast<rapidjson::SizeType>(model.size()));
    w.StartObject();
    w.Key("requests");
    writeBucket(w, view.requests);
    w.Key("tokens");
    writeBucket(w, view.tokens);
    w.Key("queued");
    w.Uint64(view.queued);
    w.Key("cooldown_ms");
    w.Int64(view.cooldown_until
                ? std::chrono::ceil<resilience::Millis>(*view.cooldown_until - now).count()
                : 0);
    // "model": admission holds back what would not fit; "fallback": 429s it did not foresee
    // kept coming, and requests go out as with admission off until fallback_ms ends.
    w.Key("admission");
    w.String(view.fallback_until ? "fallback" : "model");
    w.Key("fallback_ms");
    w.Int64(view.fallback_until
                ? std::chrono::ceil<resilience::Millis>(*view.fallback_until - now).count()
                : 0);
    w.Key("surprises");
    w.Int64(view.surprises);
    w.EndObject();
  }
  w.EndObject();
}

}  // namespace

std::string healthDetailedJson(const resilience::UpstreamRegistry& upstreams,
                               resilience::WallTime now, resilience::SteadyTime steady_now,
                               const ClusterHealth* cluster) {
  std::vector<resilience::UpstreamHealth*> current = upstreams.current();
  rapidjson::StringBuffer buffer;
  rapidjson::Writer<rapidjson::StringBuffer> w(buffer);
  bool any_not_closed = false;
  bool any_admits = false;
  w.StartObject();
  // The status comes first in the document but depends on every upstream: compute first.
  std::vector<resilience::CircuitBreaker::Snapshot> snapshots;
  for (resilience::UpstreamHealth* u : current) {
    snapshots.push_back(u->summary());
    any_not_closed |= snapshots.back().state != resilience::BreakerState::kClosed;
    any_admits |= snapshots.back().state != resilience::BreakerState::kOpen;
  }
  w.Key("status");
  w.String(!any_admits ? "down" : any_not_closed ? "degraded" : "ok");
  w.Key("timestamp");
  std::string ts = isoTimestamp(now);
  w.String(ts.c_str());
  if (cluster != nullptr) {
    w.Key("cluster");
    w.StartObject();
    w.Key("redis");
    w.String(cluster->redis.c_str(), static_cast<rapidjson::SizeType>(cluster->redis.size()));
    w.Key("up");
    w.Bool(cluster->up);
    w.EndObject();
  }
  w.Key("services");
  w.StartObject();
  for (std::size_t i = 0; i < current.size(); ++i) {
    const resilience::CircuitBreaker::Snapshot& snap = snapshots[i];
    w.Key(current[i]->name().c_str());
    w.StartObject();
    w.Key("circuitBreaker");
    w.String(resilience::breakerStateName(snap.state));
    w.Key("failureCount");
    w.Int(snap.consecutive_failures);
    w.Key("healthy");
    w.Bool(snap.state != resilience::BreakerState::kOpen);
    w.Key("lastFailureTime");
    if (snap.last_failure) {
      std::string last = isoTimestamp(*snap.last_failure);
      w.String(last.c_str());
    } else {
      w.Null();
    }
    w.Key("inflight");
    w.Int(current[i]->inflight());
    writeQuotas(w, *current[i], steady_now);
    w.EndObject();
  }
  w.EndObject();
  w.EndObject();
  return std::string(buffer.GetString(), buffer.GetSize());
}

}  // namespace bulwark::observe
