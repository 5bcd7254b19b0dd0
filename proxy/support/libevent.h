// unique_ptr owners for libevent objects, so teardown order is visible in types.
#pragma once

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <event2/http.h>
#include <event2/listener.h>

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
  // Like assign(), but the event is assigned only when first added or activated: an event a
  // request never uses costs neither the assignment nor the delete at teardown.
  void prepare(event_base* base, evutil_socket_t fd, short what, event_callback_fn callback,
               void* arg) {
    reset();
    lazy_ = Lazy{base, fd, what, callback, arg};
  }
  void add(const timeval* tv) { event_add(ready(), tv); }
  void activate() { event_active(ready(), 0, 0); }
  // Removes the event from the loop, if it was ever assigned.
  void del() {
    if (assigned_) event_del(&event_);
  }
  void reset() {
    if (assigned_) event_del(&event_);
    assigned_ = false;
  }
  event* get() { return assigned_ ? &event_ : nullptr; }

 private:
  struct Lazy {
    event_base* base = nullptr;
    evutil_socket_t fd = -1;
    short what = 0;
    event_callback_fn callback = nullptr;
    void* arg = nullptr;
  };
  event* ready() {
    if (!assigned_) {
      event_assign(&event_, lazy_.base, lazy_.fd, lazy_.what, lazy_.callback, lazy_.arg);
      assigned_ = true;
    }
    return &event_;
  }

  event event_{};
  bool assigned_ = false;
  Lazy lazy_;
};

inline timeval toTimeval(long long millis) {
  timeval tv;
  tv.tv_sec = static_cast<time_t>(millis / 1000);
  tv.tv_usec = static_cast<suseconds_t>((millis % 1000) * 1000);
  return tv;
}

}  // namespace bulwark::support
