#include "proxy/fleet/fleet.h"

#include <hiredis/hiredis.h>

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <random>
#include <vector>

#include "proxy/observe/logger.h"

namespace bulwark::fleet {

namespace {

// The fleet-wide streak of one breaker, in one round trip: count the failure, note when the
// streak began (the first failure's wall-clock ms), keep both for the breaker's window, tell
// the fleet a streak is running (so its next success resets it), and answer {count, began}.
// KEYS: fails, began. ARGV: now ms, ttl ms, channel, "upstream\tmodel".
constexpr char kStreakScript[] = R"lua(
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2]) end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local began = redis.call('GET', KEYS[2]) or ARGV[1]
redis.call('PUBLISH', ARGV[3], 'fail\t' .. ARGV[4])
return {n, began}
)lua";

// Reserves ARGV cost in this sidecar's fields of the hash KEYS[1] if every live sidecar's
// reservations together stay within the room; answers {1 (reserved) or 0 (nothing held),
// the fleet's latest view if it is newer than the sidecar's, else false}.
// A sidecar is live while its key (ARGV[7] .. id) exists; a dead one's fields are dropped.
// The room is only as good as the view it came from. A sidecar publishes a response's view
// (field ARGV[8] of the hash KEYS[2]) before it drops that request's reservation, so if the
// latest view was sent after ARGV[9] (the newest view this sidecar has taken), its request
// may be in neither the sidecar's view nor the reservations: that view bounds the room too,
// less the headroom share ARGV[10] of its limits (its refill since is not counted).
// ARGV: id, cost tokens, cost requests, room tokens, room requests, ttl ms, alive prefix,
// view field, newest view taken (wall ms), headroom.
constexpr char kReserveScript[] = R"lua(
local room_t, room_r = tonumber(ARGV[4]), tonumber(ARGV[5])
local newer = false
local latest = redis.call('HGET', KEYS[2], ARGV[8])
if latest then
  local f = {}
  for v in string.gmatch(latest .. '\t', '([^\t]*)\t') do f[#f + 1] = v end
  local sent = tonumber(f[10])
  if #f == 11 and sent and sent > tonumber(ARGV[9]) then
    newer = latest
    local keep = tonumber(ARGV[10])
    local lr, rr, lt, rt = tonumber(f[4]), tonumber(f[5]), tonumber(f[7]), tonumber(f[8])
    if lr and rr then room_r = math.min(room_r, rr - keep * lr) end
    if lt and rt then room_t = math.min(room_t, rt - keep * lt) end
  end
end
redis.call('HINCRBYFLOAT', KEYS[1], ARGV[1] .. ':t', ARGV[2])
redis.call('HINCRBYFLOAT', KEYS[1], ARGV[1] .. ':r', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
local fields = redis.call('HGETALL', KEYS[1])
local tokens, requests = 0, 0
for i = 1, #fields, 2 do
  local field = fields[i]
  local sidecar = string.sub(field, 1, -3)
  if sidecar == ARGV[1] or redis.call('EXISTS', ARGV[7] .. sidecar) == 1 then
    if string.sub(field, -1) == 't' then
      tokens = tokens + tonumber(fields[i + 1])
    else
      requests = requests + tonumber(fields[i + 1])
    end
  else
    redis.call('HDEL', KEYS[1], field)
  end
end
if tokens > room_t or requests > room_r then
  redis.call('HINCRBYFLOAT', KEYS[1], ARGV[1] .. ':t', -tonumber(ARGV[2]))
  redis.call('HINCRBYFLOAT', KEYS[1], ARGV[1] .. ':r', -tonumber(ARGV[3]))
  return {0, newer}
end
return {1, newer}
)lua";

// Keeps the latest message of a kind per (upstream, model) in a hash, for sidecars that start
// later, and publishes it. "Latest" is by the number in tab-separated field ARGV[5] (1-based)
// of the message: a view's send time, a pause's end. Messages arrive in the order their
// responses ended, not the order their requests were sent, so an older one arriving late
// does not replace a newer one in the hash (it is still published: each receiver keeps the
// newest it has). KEYS: the hash. ARGV: field, message, ttl ms, channel, order field.
constexpr char kKeepAndPublishScript[] = R"lua(
local function order(message)
  local i = 0
  for v in string.gmatch(message .. '\t', '([^\t]*)\t') do
    i = i + 1
    if i == tonumber(ARGV[5]) then return tonumber(v) end
  end
  return nil
end
local held = redis.call('HGET', KEYS[1], ARGV[1])
local held_order = held and order(held)
local new_order = order(ARGV[2])
if not (held_order and new_order and held_order > new_order) then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
redis.call('PUBLISH', ARGV[4], ARGV[2])
return 1
)lua";

// How long the reservation hashes and a sidecar's liveness outlast their last refresh.
constexpr long long kReservationTtlMs = 120000;

std::string decimal(double value) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.3f", value);
  return buf;
}

// The worker's own connection, and whether this thread is applying what the fleet said (its
// transitions are the fleet's, not to be published again).
thread_local std::unique_ptr<RedisLink> t_link;
thread_local bool t_applying = false;

long long wallMs(const resilience::Clock& clock) {
  return std::chrono::duration_cast<resilience::Millis>(clock.wallNow().time_since_epoch()).count();
}

std::optional<long long> number(const redisReply* reply) {
  if (reply == nullptr) return std::nullopt;
  if (reply->type == REDIS_REPLY_INTEGER) return reply->integer;
  if (reply->type != REDIS_REPLY_STRING) return std::nullopt;
  long long out = 0;
  auto [end, ec] = std::from_chars(reply->str, reply->str + reply->len, out);
  if (ec != std::errc() || end != reply->str + reply->len) return std::nullopt;
  return out;
}

std::vector<std::string_view> split(std::string_view text, char separator) {
  std::vector<std::string_view> out;
  for (std::size_t at = 0;;) {
    std::size_t next = text.find(separator, at);
    out.push_back(text.substr(at, next - at));
    if (next == std::string_view::npos) return out;
    at = next + 1;
  }
}

// Applies what the fleet said with t_applying set.
template <typename F>
void applying(F&& apply) {
  t_applying = true;
  apply();
  t_applying = false;
}

}  // namespace

Fleet::Fleet(const config::ClusterConfig& config, std::string ip,
             resilience::UpstreamRegistry& upstreams, const resilience::Clock& clock,
             observe::Metrics& metrics)
    : config_(config),
      ip_(std::move(ip)),
      address_(config.host + ":" + std::to_string(config.port) + "/" + std::to_string(config.db)),
      channel_(config.key_prefix + "events"),
      upstreams_(upstreams),
      clock_(clock),
      metrics_(metrics) {
  std::random_device random;
  char id[17];
  std::snprintf(id, sizeof id, "%08x%08x", random(), random());
  id_ = id;
}

Fleet::~Fleet() = default;

RedisLink::Options Fleet::linkOptions(std::string name) const {
  RedisLink::Options options;
  options.ip = ip_;
  options.port = config_.port;
  options.user = config_.user;
  options.password = config_.password;
  options.db = config_.db;
  options.timeout = config_.timeout;
  options.name = std::move(name);
  return options;
}

void Fleet::start(event_base* main_base) {
  RedisLink::Hooks errors{nullptr, [this](std::string_view op) { metrics_.clusterError(op); }};
  RedisLink::Hooks subscriber_hooks = errors;
  subscriber_hooks.on_state = [this](bool up) {
    subscriber_up_.store(up, std::memory_order_relaxed);
    metrics_.clusterUp(this->up());
  };
  subscriber_ = std::make_unique<RedisLink>(main_base, linkOptions("subscriber"), subscriber_hooks);
  subscriber_->subscribe(
      channel_, [this](std::string_view message) { onMessage(message, Source::kPublished); });
  RedisLink::Hooks syncer_hooks = errors;
  syncer_hooks.on_state = [this](bool up) {
    syncer_up_.store(up, std::memory_order_relaxed);
    metrics_.clusterUp(this->up());
    if (up) sync();  // what the fleet decided while this sidecar was away
  };
  syncer_ = std::make_unique<RedisLink>(main_base, linkOptions("sync"), syncer_hooks);
  metrics_.clusterUp(false);
  subscriber_->start();
  syncer_->start();
  sync_timer_.reset(event_new(main_base, -1, EV_PERSIST, &Fleet::onSyncTimer, this));
  timeval tv = support::toTimeval(config_.sync_interval.count());
  evtimer_add(sync_timer_.get(), &tv);
}

void Fleet::attachWorker(event_base* worker_base, int index) {
  t_link = std::make_unique<RedisLink>(
      worker_base, linkOptions("worker " + std::to_string(index)),
      RedisLink::Hooks{nullptr, [this](std::string_view op) { metrics_.clusterError(op); }});
  t_link->start();
}

void Fleet::detachWorker() {
  t_link.reset();
}

std::string Fleet::key(std::string_view family, std::string_view what, const std::string& upstream,
                       const std::string& model) const {
  std::string out = config_.key_prefix + std::string(family) + ":" + upstream;
  if (!model.empty()) out += ":" + model;
  out += ":";
  out += what;
  return out;
}

Fleet::Streak& Fleet::streak(const std::string& upstream, const std::string& model) {
  std::lock_guard lock(streaks_mutex_);
  std::unique_ptr<Streak>& state = streaks_[upstream + "\t" + model];
  if (!state) state = std::make_unique<Streak>();
  return *state;
}

bool Fleet::active() const {
  return t_link != nullptr && t_link->up();
}

void Fleet::confirm(const std::string& upstream, const std::string& model,
                    const resilience::QuotaCost& cost, const resilience::QuotaCost& room,
                    double headroom, long long seen,
                    std::function<void(bool fits, Ticket ticket)> done) {
  RedisLink* link = t_link.get();
  if (link == nullptr || !link->up()) {
    done(true, Ticket{});
    return;
  }
  std::string slot = upstream + "\t" + model;
  link->command(
      {"EVAL", kReserveScript, "2", key("quota", "reserved", upstream, model),
       config_.key_prefix + "quota:views", id_, decimal(cost.tokens), decimal(cost.requests),
       decimal(room.tokens), decimal(room.requests), std::to_string(kReservationTtlMs),
       config_.key_prefix + "alive:", slot, std::to_string(seen), decimal(headroom)},
      "reserve", [this, slot, cost, done = std::move(done)](const redisReply* reply) {
        if (reply == nullptr || reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
            reply->element[0]->type != REDIS_REPLY_INTEGER) {
          done(true, Ticket{});  // no answer in time: the local view decides
          return;
        }
        if (const redisReply* newer = reply->element[1]; newer->type == REDIS_REPLY_STRING) {
          // The fleet's latest view is newer than this sidecar's: take it now. (Marked as
          // taken even if it does not parse: the next reservation does not bring it back.)
          std::string_view latest(newer->str, newer->len);
          std::vector<std::string_view> parts = split(latest, '\t');
          long long sent = 0;
          if (parts.size() == 11) {
            std::from_chars(parts[9].data(), parts[9].data() + parts[9].size(), sent);
          }
          onMessage(latest, Source::kReserved);
          tookView(slot, sent);
        }
        if (reply->element[0]->integer != 1) {
          done(false, Ticket{});
          return;
        }
        {
          std::lock_guard lock(reserved_mutex_);
          resilience::QuotaCost& mine = reserved_[slot];
          mine.requests += cost.requests;
          mine.tokens += cost.tokens;
        }
        done(true, Ticket{true});
      });
}

long long Fleet::newestView(const std::string& upstream, const std::string& model) const {
  std::lock_guard lock(views_mutex_);
  auto it = newest_view_ms_.find(upstream + "\t" + model);
  return it == newest_view_ms_.end() ? 0 : it->second;
}

bool Fleet::firstSight(std::string_view sender, std::string_view seq) {
  std::string key = std::string(sender) + ";" + std::string(seq);
  std::lock_guard lock(views_mutex_);
  if (!seen_views_.insert(key).second) return false;
  seen_order_.push_back(std::move(key));
  if (seen_order_.size() > kSeenViewsKept) {
    seen_views_.erase(seen_order_.front());
    seen_order_.pop_front();
  }
  return true;
}

void Fleet::tookView(const std::string& slot, long long as_of_ms) {
  std::lock_guard lock(views_mutex_);
  long long& newest = newest_view_ms_[slot];
  newest = std::max(newest, as_of_ms);
}

void Fleet::end(const std::string& upstream, const std::string& model,
                const resilience::QuotaCost& cost, Ticket ticket) {
  if (!ticket.fleet_reserved) return;
  {
    std::lock_guard lock(reserved_mutex_);
    resilience::QuotaCost& mine = reserved_[upstream + "\t" + model];
    mine.requests = std::max(0.0, mine.requests - cost.requests);
    mine.tokens = std::max(0.0, mine.tokens - cost.tokens);
  }
  RedisLink* link = t_link.get();
  if (link == nullptr || !link->up()) return;  // the next sync rewrites the fields
  std::string hash = key("quota", "reserved", upstream, model);
  link->command({"HINCRBYFLOAT", hash, id_ + ":t", decimal(-cost.tokens)}, "unreserve");
  link->command({"HINCRBYFLOAT", hash, id_ + ":r", decimal(-cost.requests)}, "unreserve");
}

namespace {

std::string field(const std::optional<double>& value) {
  return value ? decimal(*value) : std::string();
}
std::string field(const std::optional<resilience::Millis>& value) {
  return value ? std::to_string(value->count()) : std::string();
}
std::optional<double> numberField(std::string_view text) {
  double out = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return out;
}
std::optional<resilience::Millis> millisField(std::string_view text) {
  std::optional<double> ms = numberField(text);
  if (!ms) return std::nullopt;
  return resilience::Millis(static_cast<long long>(*ms));
}

}  // namespace

void Fleet::observed(const std::string& upstream, const std::string& model,
                     const resilience::RateLimitHeaders& h, resilience::WallTime as_of,
                     const resilience::QuotaCost& cost) {
  RedisLink* link = t_link.get();
  if (link == nullptr || !link->up()) return;
  long long as_of_ms =
      std::chrono::duration_cast<resilience::Millis>(as_of.time_since_epoch()).count();
  tookView(upstream + "\t" + model, as_of_ms);
  publishKept(upstream + "\t" + model,
              "quota\t" + upstream + "\t" + model + "\t" + field(h.limit_requests) + "\t" +
                  field(h.remaining_requests) + "\t" + field(h.reset_requests) + "\t" +
                  field(h.limit_tokens) + "\t" + field(h.remaining_tokens) + "\t" +
                  field(h.reset_tokens) + "\t" + std::to_string(as_of_ms) + "\t" + id_ + ";" +
                  decimal(cost.requests) + ";" + decimal(cost.tokens) + ";" +
                  std::to_string(view_seq_.fetch_add(1, std::memory_order_relaxed)),
              "views", kReservationTtlMs, /*order_field=*/10);
}

void Fleet::publishKept(const std::string& field, const std::string& message, std::string_view hash,
                        long long ttl_ms, int order_field) {
  if (ttl_ms <= 0) return;
  t_link->command(
      {"EVAL", kKeepAndPublishScript, "1", config_.key_prefix + "quota:" + std::string(hash), field,
       message, std::to_string(ttl_ms), channel_, std::to_string(order_field)},
      "publish");
}

void Fleet::cooledDown(const std::string& upstream, const std::string& model,
                       resilience::WallTime until) {
  RedisLink* link = t_link.get();
  if (link == nullptr || !link->up()) return;
  long long until_ms =
      std::chrono::duration_cast<resilience::Millis>(until.time_since_epoch()).count();
  publishKept(upstream + "\t" + model,
              "cooldown\t" + upstream + "\t" + model + "\t" + std::to_string(until_ms) + "\t" + id_,
              "cooldowns", until_ms - wallMs(clock_), /*order_field=*/4);
}

void Fleet::onOutcome(const std::string& upstream, const std::string& model, bool counted_failure,
                      bool busy) {
  RedisLink* link = t_link.get();
  if (link == nullptr || !link->up()) return;  // alone: the local breaker decides
  Streak& state = streak(upstream, model);
  if (!counted_failure) {
    state.last_success_ms.store(wallMs(clock_), std::memory_order_relaxed);
    if (state.dirty.exchange(false)) {
      link->command({"DEL", key("breaker", "fails", upstream, model),
                     key("breaker", "began", upstream, model)},
                    "del");
    }
    return;
  }
  state.dirty.store(true);
  resilience::UpstreamHealth* health = upstreams_.find(upstream);
  if (health == nullptr) return;
  const long long now_ms = wallMs(clock_);
  const long long ttl_ms = std::max<long long>(1000, health->breakerWindow().count());
  link->command(
      {"EVAL", kStreakScript, "2", key("breaker", "fails", upstream, model),
       key("breaker", "began", upstream, model), std::to_string(now_ms), std::to_string(ttl_ms),
       channel_, upstream + "\t" + model},
      "eval", [this, upstream, model, busy, now_ms](const redisReply* reply) {
        if (reply == nullptr || reply->type != REDIS_REPLY_ARRAY || reply->elements != 2) {
          return;
        }
        std::optional<long long> count = number(reply->element[0]);
        std::optional<long long> began = number(reply->element[1]);
        if (!count || !began) return;
        resilience::UpstreamHealth* h = upstreams_.find(upstream);
        if (h == nullptr) return;
        // A success here since the streak began: it is no streak, only failures that other
        // sidecars' resets (announced over pub/sub, a moment late) did not separate.
        if (streak(upstream, model).last_success_ms.load(std::memory_order_relaxed) >= *began) {
          return;
        }
        h->breakerFor(model).applyFleetStreak(
            static_cast<int>(*count), resilience::Millis(std::max(0LL, now_ms - *began)), busy);
      });
}

void Fleet::onTransition(const std::string& upstream, const std::string& model,
                         resilience::BreakerState from, resilience::BreakerState to) {
  if (t_applying) return;  // the fleet's own decision, arriving here
  RedisLink* link = t_link.get();
  if (link == nullptr || !link->up()) return;
  resilience::UpstreamHealth* health = upstreams_.find(upstream);
  if (health == nullptr) return;
  if (to == resilience::BreakerState::kOpen) {
    resilience::CircuitBreaker::Snapshot snap = health->breakerFor(model).snapshot();
    long long left = std::chrono::ceil<resilience::Millis>(snap.open_until - clock_.now()).count();
    if (left <= 0) return;
    {
      std::lock_guard lock(own_mutex_);
      own_open_[upstream + "\t" + model] = true;  // this sidecar will probe
    }
    std::string reopen = std::to_string(wallMs(clock_) + left);
    link->command({"SET", key("breaker", "open", upstream, model), reopen + "\t" + id_, "PX",
                   std::to_string(left)},
                  "set");
    link->command(
        {"PUBLISH", channel_, "open\t" + upstream + "\t" + model + "\t" + reopen + "\t" + id_},
        "publish");
  } else if (to == resilience::BreakerState::kClosed &&
             from == resilience::BreakerState::kHalfOpen) {
    link->command({"DEL", key("breaker", "open", upstream, model)}, "del");
    link->command({"PUBLISH", channel_, "close\t" + upstream + "\t" + model}, "publish");
  }
}

void Fleet::applyOpen(const std::string& upstream, const std::string& model, long long reopen_ms,
                      std::string_view sender) {
  if (sender == id_) return;  // its own, coming back
  resilience::UpstreamHealth* health = upstreams_.find(upstream);
  if (health == nullptr) return;
  {
    std::lock_guard lock(own_mutex_);
    bool& own = own_open_[upstream + "\t" + model];
    // Two sidecars opened it at once: the smaller id probes, the other defers.
    if (own && id_ < sender) return;
    own = false;
  }
  resilience::CircuitBreaker& breaker = health->breakerFor(model);
  resilience::SteadyTime until = clock_.now() + resilience::Millis(reopen_ms - wallMs(clock_));
  resilience::Millis grace = breaker.snapshot().current_recovery_timeout;
  applying([&] { breaker.applyFleetOpen(until, /*probe_elsewhere=*/true, grace); });
}

void Fleet::onMessage(std::string_view message, Source source) {
  std::vector<std::string_view> parts = split(message, '\t');
  if (parts.size() < 3) return;
  std::string upstream(parts[1]);
  std::string model(parts[2]);
  resilience::UpstreamHealth* health = upstreams_.find(upstream);
  if (health == nullptr) return;  // not an upstream of this sidecar
  if (parts[0] == "fail") {
    streak(upstream, model).dirty.store(true);
  } else if (parts[0] == "quota" && parts.size() == 11) {
    // The sender, and (from builds that send them) its request's cost and the view's number:
    // "id;requests;tokens;seq". Builds that read only the id see another sidecar's view.
    std::vector<std::string_view> sender = split(parts[10], ';');
    if (sender[0] == id_) return;  // its own view, already taken (and marked)
    resilience::RateLimitHeaders h;
    h.limit_requests = numberField(parts[3]);
    h.remaining_requests = numberField(parts[4]);
    h.reset_requests = millisField(parts[5]);
    h.limit_tokens = numberField(parts[6]);
    h.remaining_tokens = numberField(parts[7]);
    h.reset_tokens = millisField(parts[8]);
    std::optional<double> as_of_ms = numberField(parts[9]);
    if (!as_of_ms) return;
    resilience::SteadyTime now = clock_.now();
    resilience::SteadyTime as_of =
        now - resilience::Millis(wallMs(clock_) - static_cast<long long>(*as_of_ms));
    resilience::Quota& quota = health->quotaFor(model);
    std::optional<double> requests, tokens;
    bool first = false;
    if (sender.size() == 4) {
      requests = numberField(sender[1]);
      tokens = numberField(sender[2]);
      first = firstSight(sender[0], sender[3]);
    }
    if (first && source != Source::kSynced && requests && tokens) {
      quota.observeOthers(h, now, std::min(as_of, now), {*requests, *tokens});
    } else {
      quota.observe(h, now, std::min(as_of, now));
    }
    // Marked once the quota holds it (a stale one changes nothing, and is marked too).
    tookView(upstream + "\t" + model, static_cast<long long>(*as_of_ms));
  } else if (parts[0] == "cooldown" && parts.size() == 5) {
    if (parts[4] == id_) return;
    std::optional<double> until_ms = numberField(parts[3]);
    if (!until_ms) return;
    health->quotaFor(model).cooldown(
        clock_.now() + resilience::Millis(static_cast<long long>(*until_ms) - wallMs(clock_)));
  } else if (parts[0] == "open" && parts.size() == 5) {
    long long reopen = 0;
    auto [end, ec] = std::from_chars(parts[3].data(), parts[3].data() + parts[3].size(), reopen);
    if (ec == std::errc()) applyOpen(upstream, model, reopen, parts[4]);
  } else if (parts[0] == "close") {
    {
      std::lock_guard lock(own_mutex_);
      own_open_.erase(upstream + "\t" + model);
    }
    applying([&] { health->breakerFor(model).applyFleetClose(); });
  }
}

void Fleet::sync() {
  if (!syncer_ || !syncer_->up()) return;
  // The latest rate-limit views and 429 pauses: a sidecar knows them before it sends anything
  // (older views than its own are ignored, by send time).
  for (std::string_view hash : {"views", "cooldowns"}) {
    syncer_->command({"HVALS", config_.key_prefix + "quota:" + std::string(hash)}, "hvals",
                     [this](const redisReply* reply) {
                       if (reply == nullptr || reply->type != REDIS_REPLY_ARRAY) return;
                       for (std::size_t i = 0; i < reply->elements; ++i) {
                         const redisReply* value = reply->element[i];
                         if (value->type == REDIS_REPLY_STRING) {
                           onMessage(std::string_view(value->str, value->len), Source::kSynced);
                         }
                       }
                     });
  }
  // This sidecar is alive, and holds exactly what it has in flight.
  syncer_->command({"SET", config_.key_prefix + "alive:" + id_, "1", "PX",
                    std::to_string(std::max<long long>(3000, 3 * config_.sync_interval.count()))},
                   "set");
  std::map<std::string, resilience::QuotaCost> mine;
  {
    std::lock_guard lock(reserved_mutex_);
    mine = reserved_;
  }
  for (const auto& [slot, cost] : mine) {
    std::vector<std::string_view> parts = split(slot, '\t');
    std::string hash = key("quota", "reserved", std::string(parts[0]), std::string(parts[1]));
    syncer_->command(
        {"HSET", hash, id_ + ":t", decimal(cost.tokens), id_ + ":r", decimal(cost.requests)},
        "hset");
    syncer_->command({"PEXPIRE", hash, std::to_string(kReservationTtlMs)}, "pexpire");
  }
  for (resilience::UpstreamHealth* health : upstreams_.current()) {
    std::string upstream = health->name();
    syncer_->command({"GET", key("breaker", "open", upstream, "")}, "get",
                     [this, upstream](const redisReply* reply) {
                       if (reply == nullptr || reply->type != REDIS_REPLY_STRING) return;
                       std::vector<std::string_view> value =
                           split(std::string_view(reply->str, reply->len), '\t');
                       long long reopen = 0;
                       if (value.size() != 2) return;
                       auto [end, ec] = std::from_chars(value[0].data(),
                                                        value[0].data() + value[0].size(), reopen);
                       if (ec == std::errc()) applyOpen(upstream, "", reopen, value[1]);
                     });
  }
}

void Fleet::onSyncTimer(evutil_socket_t, short, void* arg) {
  static_cast<Fleet*>(arg)->sync();
}

}  // namespace bulwark::fleet
