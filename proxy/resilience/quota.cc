#include "proxy/resilience/quota.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <string>

#include "proxy/resilience/backoff.h"

namespace bulwark::resilience {

namespace {

std::optional<double> number(std::string_view value) {
  std::string_view v = http::trimWhitespace(value);
  // Counts are whole numbers: read as one first, the general parse only for the rest.
  unsigned long long whole = 0;
  auto [whole_end, whole_ec] = std::from_chars(v.data(), v.data() + v.size(), whole);
  if (whole_ec == std::errc() && whole_end == v.data() + v.size()) {
    return static_cast<double>(whole);
  }
  double out = 0;
  auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), out);
  if (ec != std::errc() || end != v.data() + v.size() || !std::isfinite(out) || out < 0) {
    return std::nullopt;
  }
  return out;
}

std::optional<Millis> duration(std::string_view value) {
  return parseGoDuration(http::trimWhitespace(value));
}

}  // namespace

bool RateLimitHeaders::any() const {
  return limit_requests || limit_tokens || remaining_requests || remaining_tokens ||
         reset_requests || reset_tokens;
}

RateLimitHeaders parseRateLimitHeaders(const http::Headers& headers) {
  // One pass over the headers (this runs on every response); the first of each name counts.
  static constexpr std::string_view kPrefix = "x-ratelimit-";
  RateLimitHeaders out;
  bool seen[6] = {};
  for (const http::Header& h : headers) {
    std::string_view name = h.name;
    if (name.size() <= kPrefix.size() || (name[0] != 'x' && name[0] != 'X') ||
        !http::equalsIgnoreCase(name.substr(0, 12), kPrefix)) {
      continue;
    }
    name.remove_prefix(kPrefix.size());
    auto take = [&](int i, std::string_view want) {
      if (seen[i] || !http::equalsIgnoreCase(name, want)) return false;
      seen[i] = true;
      return true;
    };
    if (take(0, "limit-requests")) {
      out.limit_requests = number(h.value);
    } else if (take(1, "limit-tokens")) {
      out.limit_tokens = number(h.value);
    } else if (take(2, "remaining-requests")) {
      out.remaining_requests = number(h.value);
    } else if (take(3, "remaining-tokens")) {
      out.remaining_tokens = number(h.value);
    } else if (take(4, "reset-requests")) {
      out.reset_requests = duration(h.value);
    } else if (take(5, "reset-tokens")) {
      out.reset_tokens = duration(h.value);
    }
  }
  return out;
}

void Quota::Bucket::refill(SteadyTime now) {
  if (now <= updated) return;
  double elapsed_ms = std::chrono::duration<double, std::milli>(now - updated).count();
  if (limit > 0) remaining = std::min(limit, remaining + rate_per_ms * elapsed_ms);
  updated = now;
}

bool Quota::Bucket::observe(std::optional<double> new_limit, std::optional<double> new_remaining,
                            std::optional<Millis> reset, SteadyTime now, SteadyTime seen_as_of) {
  refill(now);
  if (new_limit && *new_limit > 0) limit = *new_limit;
  if (!new_remaining) return true;
  if (seen_as_of < as_of) return false;  // stale: a newer view is held already
  as_of = seen_as_of;
  remaining = limit > 0 ? std::min(*new_remaining, limit) : *new_remaining;
  // The server refills (limit - remaining) within `reset`: that is its speed. Without a
  // usable reset, a per-minute limit refills over a minute.
  if (limit > 0 && reset && reset->count() > 0 && remaining < limit) {
    rate_per_ms = (limit - remaining) / static_cast<double>(reset->count());
  } else if (limit > 0 && rate_per_ms == 0) {
    rate_per_ms = limit / 60000.0;
  }
  // No refill is credited for the time since: the upstream counted the request somewhere
  // between when it was sent and now, and its view already holds the refill up to then.
  // (`now` may be a little behind `updated`, read by another worker before it took the lock:
  // the refill clock never goes back, or that stretch would be credited twice.)
  updated = std::max(updated, now);
  return true;
}

std::optional<Millis> Quota::Bucket::waitFor(double amount, double keep) const {
  if (limit <= 0 || amount <= 0) return Millis(0);  // unknown limit: never blocks
  double usable = remaining - reserved - keep;
  // More than ever fits: it waits for a full bucket, and the upstream judges it.
  amount = std::min(amount, limit - keep);
  if (amount <= usable) return Millis(0);
  if (rate_per_ms <= 0) return std::nullopt;
  return Millis(static_cast<long long>(std::ceil((amount - usable) / rate_per_ms)));
}

Quota::BucketView Quota::Bucket::view(SteadyTime now) const {
  Bucket b = *this;
  b.refill(now);
  BucketView v;
  v.limit = b.limit;
  v.remaining = b.remaining;
  v.reserved = b.reserved;
  if (b.limit > 0 && b.rate_per_ms > 0 && b.remaining < b.limit) {
    v.until_full =
        Millis(static_cast<long long>(std::ceil((b.limit - b.remaining) / b.rate_per_ms)));
  }
  return v;
}

bool Quota::observe(const RateLimitHeaders& h, SteadyTime now) {
  return observe(h, now, now);
}

bool Quota::observe(const RateLimitHeaders& h, SteadyTime now, SteadyTime as_of) {
  return observeOthers(h, now, as_of, QuotaCost{0, 0});  // nothing to count when stale
}

bool Quota::observeOthers(const RateLimitHeaders& h, SteadyTime now, SteadyTime as_of,
                          const QuotaCost& cost) {
  std::lock_guard lock(mutex_);
  bool taken = true;
  auto take = [&](Bucket& bucket, std::optional<double> limit, std::optional<double> remaining,
                  std::optional<Millis> reset, double amount) {
    if (bucket.observe(limit, remaining, reset, now, as_of)) return;
    taken = false;
    bucket.count(amount);
  };
  take(requests_, h.limit_requests, h.remaining_requests, h.reset_requests, cost.requests);
  take(tokens_, h.limit_tokens, h.remaining_tokens, h.reset_tokens, cost.tokens);
  return taken;
}

Quota::Admission Quota::tryReserve(const QuotaCost& cost, double headroom, SteadyTime now,
                                   Ticket ticket) {
  std::lock_guard lock(mutex_);
  if (cooldown_until_ && now < *cooldown_until_) {
    return {false, std::chrono::ceil<Millis>(*cooldown_until_ - now)};
  }
  requests_.refill(now);
  tokens_.refill(now);
  // Everything queued ahead goes first: this request fits once their cost and its own do.
  QuotaCost ahead = aheadOf(ticket);
  std::optional<Millis> for_requests =
      requests_.waitFor(ahead.requests + cost.requests, headroom * requests_.limit);
  std::optional<Millis> for_tokens =
      tokens_.waitFor(ahead.tokens + cost.tokens, headroom * tokens_.limit);
  if (!for_requests || !for_tokens) return {false, Millis::max()};  // no refill rate known
  Millis wait = std::max(*for_requests, *for_tokens);
  if (ahead.requests > 0) {
    // Those ahead are admitted by their own workers' timers: check back soon after.
    return {false, std::max(wait, kQueueRecheck)};
  }
  if (wait.count() > 0) return {false, wait};
  requests_.reserved += cost.requests;
  tokens_.reserved += cost.tokens;
  if (ticket != 0) queue_.erase(ticket);
  return {true, Millis(0)};
}

QuotaCost Quota::aheadOf(Ticket ticket) const {
  QuotaCost ahead{0, 0};
  for (const auto& [queued, cost] : queue_) {
    if (ticket != 0 && queued >= ticket) break;
    ahead.requests += cost.requests;
    ahead.tokens += cost.tokens;
  }
  return ahead;
}

std::optional<Quota::Ticket> Quota::enqueue(const QuotaCost& cost, std::size_t max_queue) {
  std::lock_guard lock(mutex_);
  if (queue_.size() >= max_queue) return std::nullopt;
  Ticket ticket = next_ticket_++;
  queue_.emplace(ticket, cost);
  return ticket;
}

void Quota::leave(Ticket ticket) {
  std::lock_guard lock(mutex_);
  queue_.erase(ticket);
}

std::size_t Quota::queued() const {
  std::lock_guard lock(mutex_);
  return queue_.size();
}

void Quota::settle(const QuotaCost& cost) {
  std::lock_guard lock(mutex_);
  requests_.reserved = std::max(0.0, requests_.reserved - cost.requests);
  tokens_.reserved = std::max(0.0, tokens_.reserved - cost.tokens);
}

void Quota::charge(const QuotaCost& cost) {
  std::lock_guard lock(mutex_);
  for (auto [bucket, amount] : {std::pair{&requests_, cost.requests}, {&tokens_, cost.tokens}}) {
    bucket->reserved = std::max(0.0, bucket->reserved - amount);
    bucket->count(amount);
  }
}

void Quota::release(const QuotaCost& cost) {
  settle(cost);  // the server never counted it: only the reservation goes
}

void Quota::cooldown(SteadyTime until) {
  std::lock_guard lock(mutex_);
  if (!cooldown_until_ || until > *cooldown_until_) cooldown_until_ = until;
}

Quota::View Quota::view(SteadyTime now) const {
  std::lock_guard lock(mutex_);
  View v;
  v.requests = requests_.view(now);
  v.tokens = tokens_.view(now);
  if (cooldown_until_ && now < *cooldown_until_) v.cooldown_until = cooldown_until_;
  v.queued = queue_.size();
  return v;
}

}  // namespace bulwark::resilience
