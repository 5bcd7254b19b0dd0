#include "proxy/resilience/quota.h"

#include <algorithm>
#include <cctype>
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

std::optional<Millis> tryAgainIn(std::string_view error_body) {
  // Searched in the raw body: the phrase is OpenAI's, and a JSON string holds it verbatim.
  static constexpr std::string_view kPhrase = "try again in ";
  std::size_t at = error_body.find(kPhrase);
  if (at == std::string_view::npos) return std::nullopt;
  std::string_view rest = error_body.substr(at + kPhrase.size());
  std::size_t end = 0;
  while (end < rest.size() && end < 32 &&
         (std::isalnum(static_cast<unsigned char>(rest[end])) || rest[end] == '.')) {
    ++end;
  }
  std::string_view token = rest.substr(0, end);
  while (!token.empty() && token.back() == '.') token.remove_suffix(1);  // the sentence's end
  return parseGoDuration(token);
}

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

double Quota::Bucket::capacity() const {
  if (limit <= 0) return 0;
  if (fixed > 0) return fixed * limit;
  return learned > 0 ? std::min(learned, limit) : limit;
}

void Quota::Bucket::refill(SteadyTime now) {
  if (now <= updated) return;
  double elapsed_ms = std::chrono::duration<double, std::milli>(now - updated).count();
  if (limit > 0) remaining = std::min(capacity(), remaining + ratePerMs() * elapsed_ms);
  updated = now;
}

double Quota::Bucket::peakSeen(SteadyTime now) {
  const auto half = kPeakWindow / 2;
  if (now - peak_since >= kPeakWindow) {
    previous_peak = peak = 0;
    peak_since = now;
  } else if (now - peak_since >= half) {
    previous_peak = peak;
    peak = 0;
    peak_since += half;
  }
  return std::max(peak, previous_peak);
}

void Quota::Bucket::learn(double seen, std::optional<Millis> reset, SteadyTime now) {
  peakSeen(now);
  peak = std::max(peak, seen);
  // What the bucket holds when full: what is left now plus what refills until the reset. A
  // limiter that holds its whole minute says the limit; one with a short bucket, that bucket.
  double target = learned > 0 ? learned : limit;
  if (reset) target = seen + static_cast<double>(reset->count()) * ratePerMs();
  const double floor = peakSeen(now);  // the limiter held that much: proven room
  target = std::min(std::max(target, floor), limit);
  if (!lowered_at || target <= learned) {
    learned = target;
  } else {
    // A surprise said the cross-check was wrong for this limiter: trust grows back slowly.
    double minutes = std::chrono::duration<double>(now - raised_at).count() / 60.0;
    learned = std::max(floor, std::min(target, learned + kRaisePerMinute * limit *
                                                             std::max(0.0, minutes)));
  }
  raised_at = now;
}

void Quota::Bucket::lower(SteadyTime now) {
  if (limit <= 0 || fixed > 0) return;  // a fixed burst is the user's word
  learned = std::max(peakSeen(now), capacity() / 2);
  remaining = std::min(remaining, capacity());
  lowered_at = now;
  raised_at = now;
}

bool Quota::Bucket::observe(std::optional<double> new_limit, std::optional<double> new_remaining,
                            std::optional<Millis> reset, SteadyTime now, SteadyTime seen_as_of) {
  refill(now);
  if (new_limit && *new_limit > 0) limit = *new_limit;
  if (!new_remaining) return true;
  if (seen_as_of < as_of) return false;  // stale: a newer view is held already
  as_of = seen_as_of;
  double seen = limit > 0 ? std::min(*new_remaining, limit) : *new_remaining;
  if (limit > 0) learn(seen, reset, now);
  remaining = limit > 0 ? std::min(seen, capacity()) : seen;
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
  amount = std::min(amount, capacity() - keep);
  if (amount <= usable) return Millis(0);
  return Millis(static_cast<long long>(std::ceil((amount - usable) / ratePerMs())));
}

Quota::BucketView Quota::Bucket::view(SteadyTime now) const {
  Bucket b = *this;
  b.refill(now);
  BucketView v;
  v.limit = b.limit;
  v.capacity = b.capacity();
  v.remaining = b.remaining;
  v.reserved = b.reserved;
  if (b.limit > 0 && b.remaining < v.capacity) {
    v.until_full =
        Millis(static_cast<long long>(std::ceil((v.capacity - b.remaining) / b.ratePerMs())));
  }
  return v;
}

bool Quota::observe(const RateLimitHeaders& h, SteadyTime now) {
  return observe(h, now, now);
}

bool Quota::observe(const RateLimitHeaders& h, SteadyTime now, SteadyTime as_of, Hold own) {
  std::lock_guard lock(mutex_);
  return observeLocked(h, now, as_of, QuotaCost{0, 0}, own);  // nothing to count when stale
}

bool Quota::observeOthers(const RateLimitHeaders& h, SteadyTime now, SteadyTime as_of,
                          const QuotaCost& cost) {
  std::lock_guard lock(mutex_);
  return observeLocked(h, now, as_of, cost, 0);
}

bool Quota::observeLocked(const RateLimitHeaders& h, SteadyTime now, SteadyTime as_of,
                          const QuotaCost& cost, Hold own) {
  bool taken = true;
  auto take = [&](Bucket& bucket, std::optional<double> limit, std::optional<double> remaining,
                  std::optional<Millis> reset, double amount, bool Reservation::*in_view,
                  double QuotaCost::*share) {
    if (bucket.observe(limit, remaining, reset, now, as_of)) {
      if (remaining) countedBy(bucket, in_view, share, as_of, own);
      return;
    }
    taken = false;
    bucket.count(amount);
  };
  take(requests_, h.limit_requests, h.remaining_requests, h.reset_requests, cost.requests,
       &Reservation::in_requests_view, &QuotaCost::requests);
  take(tokens_, h.limit_tokens, h.remaining_tokens, h.reset_tokens, cost.tokens,
       &Reservation::in_tokens_view, &QuotaCost::tokens);
  return taken;
}

Quota::Admission Quota::tryReserve(const QuotaCost& cost, const QuotaRules& rules,
                                   SteadyTime now, Ticket ticket) {
  std::lock_guard lock(mutex_);
  if (cooldown_until_ && now < *cooldown_until_) {
    return {false, std::chrono::ceil<Millis>(*cooldown_until_ - now)};
  }
  requests_.refill(now);
  tokens_.refill(now);
  for (Bucket* bucket : {&requests_, &tokens_}) {
    bucket->fixed = rules.burst;
    bucket->remaining = std::min(bucket->remaining, bucket->capacity());
  }
  // The headroom is a share of the limit (refill time, for estimate errors and transit),
  // but never more than a quarter of a short burst, or nothing would ever fit in it.
  auto keep = [&](const Bucket& b) { return std::min(rules.headroom * b.limit, b.capacity() / 4); };
  // Everything queued ahead goes first: this request fits once their cost and its own do.
  QuotaCost ahead = aheadOf(ticket);
  std::optional<Millis> for_requests =
      requests_.waitFor(ahead.requests + cost.requests, keep(requests_));
  std::optional<Millis> for_tokens = tokens_.waitFor(ahead.tokens + cost.tokens, keep(tokens_));
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
  window_.addLocked(now, 1, 0);
  Hold hold = next_hold_++;
  holds_.emplace(hold, Reservation{cost, std::nullopt});
  return {true, Millis(0), hold};
}

bool Quota::admitting(SteadyTime now, bool* resumed) {
  std::lock_guard lock(mutex_);
  if (fallback_until_ && now < *fallback_until_) return false;
  if (fallback_until_) {
    last_fallback_end_ = fallback_until_;
    fallback_until_.reset();
    window_.clearLocked();  // the surprises that caused it are not held against the model again
  }
  if (resume_untold_ && resumed != nullptr) {
    *resumed = true;
    resume_untold_ = false;
  }
  return true;
}

bool Quota::surprised(const RateLimitHeaders& h, const QuotaCost& cost, SteadyTime now) {
  std::lock_guard lock(mutex_);
  // The bucket the request did not fit in is the one that was wrong; if the 429 says of
  // neither, both are lowered.
  bool short_requests = h.remaining_requests && *h.remaining_requests < cost.requests;
  bool short_tokens = h.remaining_tokens && *h.remaining_tokens < cost.tokens;
  if (short_requests || !short_tokens) requests_.lower(now);
  if (short_tokens || !short_requests) tokens_.lower(now);
  if (fallback_until_ && now < *fallback_until_) return false;
  window_.addLocked(now, 0, 1);
  SlidingCounts::Totals seen = window_.totals(now);
  if (seen.second < kFallbackSurprises ||
      static_cast<double>(seen.second) < kFallbackShare * static_cast<double>(seen.first)) {
    return false;
  }
  // Falling back again soon after the last one: the model is wrong for longer.
  bool again = last_fallback_end_ && now - *last_fallback_end_ < kFallbackMax;
  fallback_for_ = again ? std::min(kFallbackMax, fallback_for_ * 2) : kFallbackFor;
  fallback_until_ = now + fallback_for_;
  resume_untold_ = true;
  return true;
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

void Quota::countedBy(Bucket& bucket, bool Reservation::*in_view, double QuotaCost::*amount,
                      SteadyTime as_of, Hold own) {
  for (auto& [hold, r] : holds_) {
    if (!r.sent_at || r.*in_view) continue;
    if (hold == own || *r.sent_at + kReorder <= as_of) {
      r.*in_view = true;
    } else {
      bucket.count(r.cost.*amount);  // in flight, and not in this view
    }
  }
}

void Quota::sent(Hold hold, SteadyTime at) {
  std::lock_guard lock(mutex_);
  auto it = holds_.find(hold);
  if (it == holds_.end() || it->second.sent_at) return;
  it->second.sent_at = at;
  for (auto [bucket, amount] : {std::pair{&requests_, it->second.cost.requests},
                                {&tokens_, it->second.cost.tokens}}) {
    bucket->reserved = std::max(0.0, bucket->reserved - amount);
    bucket->count(amount);
  }
}

void Quota::end(Hold hold, bool counted) {
  auto it = holds_.find(hold);
  if (it == holds_.end()) return;
  const Reservation r = it->second;
  holds_.erase(it);
  if (r.sent_at) return;  // its cost left `remaining` when it was sent
  for (auto [bucket, amount] : {std::pair{&requests_, r.cost.requests}, {&tokens_, r.cost.tokens}}) {
    bucket->reserved = std::max(0.0, bucket->reserved - amount);
    if (counted) bucket->count(amount);
  }
}

void Quota::settle(Hold hold) {
  std::lock_guard lock(mutex_);
  end(hold, /*counted=*/false);  // the view just taken from its own answer counts it
}

void Quota::charge(Hold hold) {
  std::lock_guard lock(mutex_);
  end(hold, /*counted=*/true);
}

void Quota::release(Hold hold) {
  std::lock_guard lock(mutex_);
  end(hold, /*counted=*/false);  // the server never counted it: only the reservation goes
}

void Quota::cooldown(SteadyTime until) {
  std::lock_guard lock(mutex_);
  if (!cooldown_until_ || until > *cooldown_until_) cooldown_until_ = until;
}

bool Quota::knowsLimit() const {
  std::lock_guard lock(mutex_);
  return requests_.limit > 0 || tokens_.limit > 0;
}

Quota::View Quota::view(SteadyTime now) const {
  std::lock_guard lock(mutex_);
  View v;
  v.requests = requests_.view(now);
  v.tokens = tokens_.view(now);
  if (cooldown_until_ && now < *cooldown_until_) v.cooldown_until = cooldown_until_;
  v.queued = queue_.size();
  v.surprises = window_.totals(now).second;
  if (fallback_until_ && now < *fallback_until_) v.fallback_until = fallback_until_;
  return v;
}

}  // namespace bulwark::resilience
