// unique_ptr owners for libevent objects, so teardown order is visible in types.
#pragma once

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <event2/http.h>
#include <event2/listener.h>

#include <cassert>
#include <memory>

namespace bulwark::support {

struct EventBaseDeleter {
  void operator()(event_base* b) const { event_base_free(b); }
};
struct EventDeleter {
  void operator()(event* e) const { event_free(e); }
};
struct BuffereventDeleter {
  void operator()(bufferevent* b) const { bufferevent_free(b); }
};
struct ListenerDeleter {
  void operator()(evconnlistener* l) const { evconnlistener_free(l); }
};
struct EvhttpDeleter {
  void operator()(evhttp* h) const { evhttp_free(h); }
};

using EventBasePtr = std::unique_ptr<event_base, EventBaseDeleter>;
using EventPtr = std::unique_ptr<event, EventDeleter>;
using BuffereventPtr = std::unique_ptr<bufferevent, BuffereventDeleter>;
using ListenerPtr = std::unique_ptr<evconnlistener, ListenerDeleter>;
using EvhttpPtr = std::unique_ptr<evhttp, EvhttpDeleter>;

// An event stored inside its owner (no allocation per request): for the timers and deferred
// callbacks that every exchange and attempt has. Deleted from its base when reset or
// destroyed, so the base must outlive it.
class InlineEvent {
 public:
  InlineEvent() = default;
  ~InlineEvent() { reset(); }
  InlineEvent(const InlineEvent&) = delete;
  InlineEvent& operator=(const InlineEvent&) = delete;

  void assign(event_base* base, evutil_socket_t fd, short what, event_callback_fn callback,
              void* arg) {
    reset();
    event_assign(&event_, base, fd, what, callback, arg);
    assigned_ = true;
  }
  void reset() {
    if (assigned_) event_del(&event_);
    assigned_ = false;
  }
  // Arming or firing an event that was never assigned is a bug (asserted); in a release
  // build it does nothing rather than hand libevent a null event.
  void add(const timeval* tv) {
    assert(assigned_);
    if (assigned_) event_add(&event_, tv);
  }
  void activate() {
    assert(assigned_);
    if (assigned_) event_active(&event_, 0, 0);
  }
  // Removes it from the loop; nothing to do when it was never assigned.
  void del() {
    if (assigned_) event_del(&event_);
  }

 private:
  event event_{};
  bool assigned_ = false;
};

// An event most owners never use (a retry's wait, a hedge, a deferred failure): made on its
// first add or activation, so an owner that never uses it pays neither the allocation nor
// the event_del at teardown, and carries a pointer instead of the event itself (120 bytes
// less per exchange or attempt for each, which counts for every held stream).
class OnDemandEvent {
 public:
  OnDemandEvent() = default;
  ~OnDemandEvent() {
    if (event_ != nullptr) event_free(event_);  // event_free deletes it from its base first
  }
  OnDemandEvent(const OnDemandEvent&) = delete;
  OnDemandEvent& operator=(const OnDemandEvent&) = delete;

  void prepare(event_base* base, evutil_socket_t fd, short what, event_callback_fn callback,
               void* arg) {
    base_ = base;
    fd_ = fd;
    what_ = what;
    callback_ = callback;
    arg_ = arg;
  }
  void add(const timeval* tv) { event_add(ready(), tv); }
  void activate() { event_active(ready(), 0, 0); }
  // Removes the event from the loop, if it was ever made.
  void del() {
    if (event_ != nullptr) event_del(event_);
  }

 private:
  event* ready() {
    if (event_ == nullptr) event_ = event_new(base_, fd_, what_, callback_, arg_);
    return event_;
  }

  event* event_ = nullptr;
  event_base* base_ = nullptr;
  event_callback_fn callback_ = nullptr;
  void* arg_ = nullptr;
  evutil_socket_t fd_ = -1;
  short what_ = 0;
};

inline timeval toTimeval(long long millis) {
  timeval tv;
  tv.tv_sec = static_cast<time_t>(millis / 1000);
  tv.tv_usec = static_cast<suseconds_t>((millis % 1000) * 1000);
  return tv;
}

}  // namespace bulwark::support
