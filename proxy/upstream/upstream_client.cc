#include "proxy/upstream/upstream_client.h"

#include <cstdlib>

#include "proxy/observe/logger.h"
#include "proxy/upstream/attempt.h"

namespace bulwark::upstream {

namespace {
constexpr size_t kMaxIdleHandles = 256;
}

UpstreamClient::UpstreamClient(event_base* base) : base_(base), multi_(curl_multi_init()) {
  for (const char* name : {"http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                           "ALL_PROXY"}) {
    const char* value = std::getenv(name);
    environment_proxy_ = environment_proxy_ || (value != nullptr && value[0] != '\0');
  }
  timer_.reset(evtimer_new(base_, &UpstreamClient::onTimer, this));
  curl_multi_setopt(multi_.get(), CURLMOPT_SOCKETFUNCTION, &UpstreamClient::socketCallback);
  curl_multi_setopt(multi_.get(), CURLMOPT_SOCKETDATA, this);
  curl_multi_setopt(multi_.get(), CURLMOPT_TIMERFUNCTION, &UpstreamClient::timerCallback);
  curl_multi_setopt(multi_.get(), CURLMOPT_TIMERDATA, this);
  curl_multi_setopt(multi_.get(), CURLMOPT_PIPELINING, CURLPIPE_MULTIPLEX);
  // Keep enough idle upstream connections for a busy worker to reuse them.
  curl_multi_setopt(multi_.get(), CURLMOPT_MAXCONNECTS, 256L);
}

UpstreamClient::~UpstreamClient() {
  // Teardown order: easy handles, then the multi handle, then our events.
  idle_handles_.clear();
  multi_.reset();
  socket_events_.clear();
  timer_.reset();
}

CURL* UpstreamClient::acquireHandle() {
  if (!idle_handles_.empty()) {
    CURL* handle = idle_handles_.back().release();
    idle_handles_.pop_back();
    return handle;
  }
  return curl_easy_init();
}

void UpstreamClient::releaseHandle(CURL* handle) {
  if (handle == nullptr) return;
  if (idle_handles_.size() >= kMaxIdleHandles) {
    curl_easy_cleanup(handle);
    return;
  }
  curl_easy_reset(handle);
  idle_handles_.emplace_back(handle);
}

bool UpstreamClient::add(CURL* handle) {
  return curl_multi_add_handle(multi_.get(), handle) == CURLM_OK;
}

void UpstreamClient::remove(CURL* handle) {
  curl_multi_remove_handle(multi_.get(), handle);
}

int UpstreamClient::socketCallback(CURL*, curl_socket_t fd, int what, void* clientp, void*) {
  auto* self = static_cast<UpstreamClient*>(clientp);
  if (what == CURL_POLL_REMOVE) {
    self->socket_events_.erase(fd);
    return 0;
  }
  short kind = EV_PERSIST;
  if (what & CURL_POLL_IN) kind |= EV_READ;
  if (what & CURL_POLL_OUT) kind |= EV_WRITE;
  support::EventPtr& ev = self->socket_events_[fd];
  if (!ev) {
    ev.reset(event_new(self->base_, fd, kind, &UpstreamClient::onSocketEvent, self));
  } else {
    // The same socket with other interests: re-arm its event rather than allocating anew.
    event_del(ev.get());
    event_assign(ev.get(), self->base_, fd, kind, &UpstreamClient::onSocketEvent, self);
  }
  event_add(ev.get(), nullptr);
  return 0;
}

int UpstreamClient::timerCallback(CURLM*, long timeout_ms, void* clientp) {
  auto* self = static_cast<UpstreamClient*>(clientp);
  if (timeout_ms < 0) {
    evtimer_del(self->timer_.get());
  } else {
    timeval tv = support::toTimeval(timeout_ms);
    evtimer_add(self->timer_.get(), &tv);
  }
  return 0;
}

void UpstreamClient::onSocketEvent(evutil_socket_t fd, short events, void* arg) {
  auto* self = static_cast<UpstreamClient*>(arg);
  int action = 0;
  if (events & EV_READ) action |= CURL_CSELECT_IN;
  if (events & EV_WRITE) action |= CURL_CSELECT_OUT;
  int running = 0;
  curl_multi_socket_action(self->multi_.get(), fd, action, &running);
  self->checkDone();
}

void UpstreamClient::onTimer(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<UpstreamClient*>(arg);
  int running = 0;
  curl_multi_socket_action(self->multi_.get(), CURL_SOCKET_TIMEOUT, 0, &running);
  self->checkDone();
}

void UpstreamClient::checkDone() {
  int pending = 0;
  while (CURLMsg* msg = curl_multi_info_read(multi_.get(), &pending)) {
    if (msg->msg != CURLMSG_DONE) continue;
    CURL* easy = msg->easy_handle;
    CURLcode result = msg->data.result;
    char* priv = nullptr;
    curl_easy_getinfo(easy, CURLINFO_PRIVATE, &priv);
    // Outside every curl callback here, so the attempt may remove its handle and its
    // observer may start or destroy other attempts.
    if (priv != nullptr) reinterpret_cast<Attempt*>(priv)->onCurlDone(result);
  }
}

}  // namespace bulwark::upstream
