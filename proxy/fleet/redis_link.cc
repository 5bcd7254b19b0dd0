#include "proxy/fleet/redis_link.h"

#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include <algorithm>
#include <utility>

#include "proxy/observe/logger.h"

namespace bulwark::fleet {

namespace {

constexpr resilience::Millis kFirstBackoff{100};
constexpr resilience::Millis kMaxBackoff{5000};

bool isError(const redisReply* reply) {
  return reply == nullptr || reply->type == REDIS_REPLY_ERROR;
}

std::uint64_t idOf(void* privdata) {
  return static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(privdata));
}

}  // namespace

RedisLink::RedisLink(event_base* base, Options options, Hooks hooks)
    : base_(base), options_(std::move(options)), hooks_(std::move(hooks)) {
  timeout_timer_.reset(evtimer_new(base_, &RedisLink::onTimer, this));
  reconnect_timer_.reset(evtimer_new(base_, &RedisLink::onReconnectTimer, this));
}

RedisLink::~RedisLink() {
  stopping_ = true;
  pending_.clear();  // their owners are going away too: no callbacks
  if (context_ != nullptr) {
    context_->data = nullptr;
    redisAsyncFree(context_);
    context_ = nullptr;
  }
}

void RedisLink::start() {
  connect();
}

void RedisLink::connect() {
  context_ = redisAsyncConnect(options_.ip.c_str(), options_.port);
  if (context_ == nullptr || context_->err != 0) {
    if (context_ != nullptr) {
      redisAsyncFree(context_);
      context_ = nullptr;
    }
    if (hooks_.on_error) hooks_.on_error("connect");
    scheduleReconnect();
    return;
  }
  context_->data = this;
  redisLibeventAttach(context_, base_);
  redisAsyncSetConnectCallback(context_, &RedisLink::onConnect);
  redisAsyncSetDisconnectCallback(context_, &RedisLink::onDisconnect);
  // Queued until the connection is up, in order: authenticate, choose the database, and a
  // PING whose PONG says the link works.
  auto must_succeed = [this](std::string_view what) {
    return [this, what](const redisReply* reply) {
      if (!isError(reply)) return;
      observe::logError("fleet: Redis refused the connection's set-up; local state decides",
                        {{"link", options_.name}, {"step", what}});
      dropConnection(what);
    };
  };
  if (!options_.password.empty()) {
    std::vector<std::string> auth{"AUTH"};
    if (!options_.user.empty()) auth.push_back(options_.user);
    auth.push_back(options_.password);
    send(auth, next_id_);
    pending_.push_back({next_id_++, "auth", clock_.now() + options_.timeout, must_succeed("auth")});
  }
  if (options_.db != 0) {
    send({"SELECT", std::to_string(options_.db)}, next_id_);
    pending_.push_back(
        {next_id_++, "select", clock_.now() + options_.timeout, must_succeed("select")});
  }
  send({"PING"}, next_id_);
  pending_.push_back(
      {next_id_++, "connect", clock_.now() + options_.timeout, [this](const redisReply* reply) {
         if (isError(reply)) return;
         backoff_ = kFirstBackoff;
         if (!channel_.empty()) {
           std::string subscribe = "SUBSCRIBE";
           const char* argv[] = {subscribe.c_str(), channel_.c_str()};
           const std::size_t lens[] = {subscribe.size(), channel_.size()};
           redisAsyncCommandArgv(context_, &RedisLink::onMessage, nullptr, 2, argv, lens);
         }
         setUp(true);
       }});
  armTimeoutCheck();
}

void RedisLink::send(const std::vector<std::string>& argv, std::uint64_t id) {
  std::vector<const char*> args;
  std::vector<std::size_t> lens;
  for (const std::string& a : argv) {
    args.push_back(a.data());
    lens.push_back(a.size());
  }
  redisAsyncCommandArgv(context_, &RedisLink::onReply,
                        reinterpret_cast<void*>(static_cast<std::uintptr_t>(id)),
                        static_cast<int>(args.size()), args.data(), lens.data());
}

void RedisLink::command(const std::vector<std::string>& argv, std::string_view op, Callback done) {
  if (!up_ || context_ == nullptr) {
    if (done) done(nullptr);
    return;
  }
  std::uint64_t id = next_id_++;
  pending_.push_back({id, std::string(op), clock_.now() + options_.timeout, std::move(done)});
  send(argv, id);
  armTimeoutCheck();
}

void RedisLink::subscribe(std::string channel, std::function<void(std::string_view)> on_message) {
  channel_ = std::move(channel);
  on_message_ = std::move(on_message);
}

void RedisLink::finishPending(std::uint64_t id, const redisReply* reply) {
  auto it =
      std::find_if(pending_.begin(), pending_.end(), [&](const Pending& p) { return p.id == id; });
  if (it == pending_.end()) return;  // timed out already
  Pending done = std::move(*it);
  pending_.erase(it);
  if (reply != nullptr && reply->type == REDIS_REPLY_ERROR && hooks_.on_error) {
    hooks_.on_error(done.op);
  }
  if (done.done) done.done(isError(reply) ? nullptr : reply);
}

void RedisLink::armTimeoutCheck() {
  if (pending_.empty()) return;
  if (evtimer_pending(timeout_timer_.get(), nullptr)) return;
  resilience::Millis left =
      std::max(resilience::Millis(1),
               std::chrono::ceil<resilience::Millis>(pending_.front().deadline - clock_.now()));
  timeval tv = support::toTimeval(left.count());
  evtimer_add(timeout_timer_.get(), &tv);
}

void RedisLink::onTimer(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<RedisLink*>(arg);
  if (self->pending_.empty()) return;
  if (self->pending_.front().deadline > self->clock_.now()) {
    self->armTimeoutCheck();
    return;
  }
  // Redis answers in order: the oldest command has no answer within cluster.timeout, so none
  // behind it will come in time either. Drop the connection; local state decides until a
  // new one works.
  std::string op = self->pending_.front().op;
  self->dropConnection(op == "connect" ? "no answer to the connection's PING"
                                       : "no answer within cluster.timeout");
}

void RedisLink::dropConnection(std::string_view why) {
  if (context_ == nullptr) return;
  redisAsyncContext* context = context_;
  context_ = nullptr;
  context->data = nullptr;  // its callbacks, run by the free below, find no link
  // Everything still pending fails now, each counted once.
  std::deque<Pending> failed = std::move(pending_);
  pending_.clear();
  evtimer_del(timeout_timer_.get());
  redisAsyncFree(context);
  for (Pending& p : failed) {
    if (hooks_.on_error) hooks_.on_error(p.op);
    if (p.done) p.done(nullptr);
  }
  if (up_) {
    observe::logWarn("fleet: Redis link down; local state decides until it is back",
                     {{"link", options_.name}, {"reason", why}});
  }
  setUp(false);
  scheduleReconnect();
}

void RedisLink::scheduleReconnect() {
  if (stopping_ || evtimer_pending(reconnect_timer_.get(), nullptr)) return;
  timeval tv = support::toTimeval(backoff_.count());
  evtimer_add(reconnect_timer_.get(), &tv);
  backoff_ = std::min(backoff_ * 2, kMaxBackoff);
}

void RedisLink::onReconnectTimer(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<RedisLink*>(arg);
  if (self->context_ == nullptr && !self->stopping_) self->connect();
}

void RedisLink::setUp(bool up) {
  if (up_ == up) return;
  up_ = up;
  if (up) {
    observe::logInfo(
        "fleet: Redis link up",
        {{"link", options_.name}, {"redis", options_.ip + ":" + std::to_string(options_.port)}});
  }
  if (hooks_.on_state) hooks_.on_state(up);
}

void RedisLink::onConnect(const redisAsyncContext* ac, int status) {
  auto* self = static_cast<RedisLink*>(ac->data);
  if (self == nullptr || status == REDIS_OK) return;  // the PING's answer makes it up
  // The connection failed: hiredis frees the context after this callback.
  self->context_ = nullptr;
  if (self->hooks_.on_error) self->hooks_.on_error("connect");
  std::deque<Pending> failed = std::move(self->pending_);
  self->pending_.clear();
  for (Pending& p : failed) {
    if (p.done) p.done(nullptr);
  }
  self->setUp(false);
  self->scheduleReconnect();
}

void RedisLink::onDisconnect(const redisAsyncContext* ac, int) {
  auto* self = static_cast<RedisLink*>(ac->data);
  if (self == nullptr) return;  // freed by dropConnection() or the destructor
  // Redis closed the connection (or it broke); hiredis has failed what was pending and frees
  // the context after this callback.
  self->context_ = nullptr;
  if (self->up_) {
    observe::logWarn("fleet: Redis link down; local state decides until it is back",
                     {{"link", self->options_.name}, {"reason", "connection closed"}});
  }
  self->setUp(false);
  self->scheduleReconnect();
}

void RedisLink::onReply(redisAsyncContext* ac, void* reply, void* privdata) {
  auto* self = static_cast<RedisLink*>(ac->data);
  if (self == nullptr) return;
  self->finishPending(idOf(privdata), static_cast<redisReply*>(reply));
}

void RedisLink::onMessage(redisAsyncContext* ac, void* reply, void*) {
  auto* self = static_cast<RedisLink*>(ac->data);
  auto* r = static_cast<redisReply*>(reply);
  if (self == nullptr || r == nullptr || r->type != REDIS_REPLY_ARRAY || r->elements != 3) return;
  const redisReply* kind = r->element[0];
  const redisReply* payload = r->element[2];
  if (kind->type != REDIS_REPLY_STRING || std::string_view(kind->str, kind->len) != "message") {
    return;  // the subscription's confirmation
  }
  if (payload->type == REDIS_REPLY_STRING && self->on_message_) {
    self->on_message_(std::string_view(payload->str, payload->len));
  }
}

}  // namespace bulwark::fleet
