#include "proxy/upstream/upstream_client.h"

#include <algorithm>
#include <cstdlib>

#include "proxy/observe/logger.h"
#include "proxy/upstream/attempt.h"

namespace bulwark::upstream {

namespace {
constexpr size_t kMaxIdleHandles = 256;
constexpr size_t kMaxWarmProfiles = 64;  // upstreams x lanes; more only after many reloads

// "https://host:port" of an absolute URL (everything before the path).
std::string_view originOf(std::string_view url) {
  std::size_t scheme_end = url.find("://");
  if (scheme_end == std::string_view::npos) return url;
  return url.substr(0, url.find('/', scheme_end + 3));
}
}  // namespace

UpstreamClient::UpstreamClient(event_base* base) : base_(base), share_(curl_share_init()) {
  curl_share_setopt(share_.get(), CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
  for (const char* name : {"http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                           "ALL_PROXY"}) {
    const char* value = std::getenv(name);
    environment_proxy_ = environment_proxy_ || (value != nullptr && value[0] != '\0');
  }
  initLane(multiplexed_, true);
  initLane(http1_, false);
}

void UpstreamClient::initLane(Lane& lane, bool multiplex) {
  lane.client = this;
  lane.multi.reset(curl_multi_init());
  lane.timer.reset(evtimer_new(base_, &UpstreamClient::onTimer, &lane));
  CURLM* multi = lane.multi.get();
  curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, &UpstreamClient::socketCallback);
  curl_multi_setopt(multi, CURLMOPT_SOCKETDATA, &lane);
  curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, &UpstreamClient::timerCallback);
  curl_multi_setopt(multi, CURLMOPT_TIMERDATA, &lane);
  // Keep enough idle upstream connections for a busy worker to reuse them.
  curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, 256L);
  if (multiplex) {
    curl_multi_setopt(multi, CURLMOPT_PIPELINING, CURLPIPE_MULTIPLEX);
    // Without a cap, libcurl 7.88 opens one new connection per request once the first is
    // full (a new connection is not shared until it is confirmed), so a burst of 300 made
    // hundreds of TLS handshakes. Past the cap, requests wait in libcurl for a stream slot.
    curl_multi_setopt(multi, CURLMOPT_MAX_HOST_CONNECTIONS, kMaxMultiplexedConnections);
  } else {
    curl_multi_setopt(multi, CURLMOPT_PIPELINING, CURLPIPE_NOTHING);
  }
}

UpstreamClient::~UpstreamClient() {
  // Teardown order: easy handles, then the multi handles, then our events; the share
  // once no handle uses it.
  idle_handles_.clear();
  warm_handles_.clear();
  for (Lane* lane : {&multiplexed_, &http1_}) {
    lane->multi.reset();
    lane->socket_events.clear();
    lane->timer.reset();
  }
  share_.reset();
}

std::unique_ptr<Transfer> UpstreamClient::createAttempt(AttemptObserver& observer,
                                                        AttemptRequest request) {
  return std::make_unique<Attempt>(*this, observer, std::move(request));
}

CURL* UpstreamClient::acquireHandle(const std::string* profile, bool* warm) {
  *warm = false;
  if (profile != nullptr) {
    auto it = warm_handles_.find(*profile);
    if (it != warm_handles_.end() && !it->second.empty()) {
      CURL* handle = it->second.back().release();
      it->second.pop_back();
      --warm_count_;
      *warm = true;
      return handle;
    }
  }
  if (!idle_handles_.empty()) {
    CURL* handle = idle_handles_.back().release();
    idle_handles_.pop_back();
    return handle;
  }
  return curl_easy_init();
}

void UpstreamClient::releaseHandle(CURL* handle, const std::string* warm_profile) {
  if (handle == nullptr) return;
  if (warm_profile != nullptr && warm_count_ < kMaxIdleHandles &&
      (warm_handles_.size() < kMaxWarmProfiles || warm_handles_.contains(*warm_profile))) {
    warm_handles_[*warm_profile].emplace_back(handle);
    ++warm_count_;
    return;
  }
  if (idle_handles_.size() >= kMaxIdleHandles) {
    curl_easy_cleanup(handle);
    return;
  }
  curl_easy_reset(handle);
  idle_handles_.emplace_back(handle);
}

bool UpstreamClient::multiplexes(std::string_view url) const {
  return url.starts_with("https://") &&
         !http1_only_origins_.contains(std::string(originOf(url)));
}

void UpstreamClient::noteHttp1Only(std::string_view url) {
  if (http1_only_origins_.size() < 1024) http1_only_origins_.emplace(originOf(url));
}

bool UpstreamClient::add(CURL* handle, bool multiplex) {
  Lane& l = lane(multiplex);
  if (curl_multi_add_handle(l.multi.get(), handle) != CURLM_OK) return false;
  l.running.push_back(handle);
  return true;
}

void UpstreamClient::remove(CURL* handle, bool multiplex) {
  Lane& l = lane(multiplex);
  curl_multi_remove_handle(l.multi.get(), handle);
  std::erase(l.running, handle);
}

void UpstreamClient::flushMultiplexedConnections() {
  // A copy: resuming a transfer may deliver its held bytes, and an observer may then pause
  // (never add or remove) transfers.
  std::vector<CURL*> running = multiplexed_.running;
  for (CURL* handle : running) {
    char* priv = nullptr;
    curl_easy_getinfo(handle, CURLINFO_PRIVATE, &priv);
    auto* attempt = reinterpret_cast<Attempt*>(priv);
    if (attempt == nullptr || attempt->paused()) continue;
    curl_easy_pause(handle, CURLPAUSE_RECV);
    curl_easy_pause(handle, CURLPAUSE_CONT);
  }
}

int UpstreamClient::socketCallback(CURL*, curl_socket_t fd, int what, void* clientp, void*) {
  auto* lane = static_cast<Lane*>(clientp);
  if (what == CURL_POLL_REMOVE) {
    lane->socket_events.erase(fd);
    return 0;
  }
  short kind = EV_PERSIST;
  if (what & CURL_POLL_IN) kind |= EV_READ;
  if (what & CURL_POLL_OUT) kind |= EV_WRITE;
  support::EventPtr& ev = lane->socket_events[fd];
  event_base* base = lane->client->base_;
  if (!ev) {
    ev.reset(event_new(base, fd, kind, &UpstreamClient::onSocketEvent, lane));
  } else {
    // The same socket with other interests: re-arm its event rather than allocating anew.
    event_del(ev.get());
    event_assign(ev.get(), base, fd, kind, &UpstreamClient::onSocketEvent, lane);
  }
  event_add(ev.get(), nullptr);
  return 0;
}

int UpstreamClient::timerCallback(CURLM*, long timeout_ms, void* clientp) {
  auto* lane = static_cast<Lane*>(clientp);
  if (timeout_ms < 0) {
    evtimer_del(lane->timer.get());
  } else if (timeout_ms == 0 && !lane->in_timer) {
    // "At once" (a transfer was just added): run in this pass of the loop. A 0 ms timer
    // would cost a pass of its own, with an epoll_wait, on every request. Asked again from
    // inside the timer's own run, it waits for the next pass, so sockets are polled between.
    evtimer_del(lane->timer.get());
    event_active(lane->timer.get(), EV_TIMEOUT, 0);
  } else {
    timeval tv = support::toTimeval(timeout_ms);
    evtimer_add(lane->timer.get(), &tv);
  }
  return 0;
}

void UpstreamClient::onSocketEvent(evutil_socket_t fd, short events, void* arg) {
  auto* lane = static_cast<Lane*>(arg);
  int action = 0;
  if (events & EV_READ) action |= CURL_CSELECT_IN;
  // A socket reported writable only may hold the upstream's answer by the time curl writes
  // (an upload refused part-way, the refusal followed by a reset): told both, curl reads
  // before it writes, so the answer is seen instead of being lost to the send error. Costs
  // one empty read per writable-only event: uploads and connects, and any transfer whose
  // output outgrew the socket buffer (a large held body, an h2 connection with queued frames).
  if (events & EV_WRITE) action |= CURL_CSELECT_OUT | CURL_CSELECT_IN;
  int running = 0;
  curl_multi_socket_action(lane->multi.get(), fd, action, &running);
  checkDone(*lane);
}

void UpstreamClient::onTimer(evutil_socket_t, short, void* arg) {
  auto* lane = static_cast<Lane*>(arg);
  int running = 0;
  lane->in_timer = true;
  curl_multi_socket_action(lane->multi.get(), CURL_SOCKET_TIMEOUT, 0, &running);
  lane->in_timer = false;
  checkDone(*lane);
}

void UpstreamClient::checkDone(Lane& lane) {
  int pending = 0;
  while (CURLMsg* msg = curl_multi_info_read(lane.multi.get(), &pending)) {
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
