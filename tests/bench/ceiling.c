/* The libcurl ceiling: the fastest any proxy built on libcurl's multi-socket API can go.
 *
 * It drives the origin directly the way Bulwark's upstream side does: libcurl multi with
 * CURLMOPT_SOCKETFUNCTION/TIMERFUNCTION on a libevent loop, one thread, the same easy-handle
 * options (protocols, path as is, no proxy lookup, TCP keep-alive, decoded bodies, a header
 * and a write callback, the same request headers), `-c` transfers always in flight over
 * keep-alive connections, each easy handle configured once and re-added after every answer.
 * What it does not do is everything a proxy does on top: accept and parse a client request,
 * choose, account, write the answer back. So its CPU time per request, measured in the same
 * run, is the part of a proxy's CPU that libcurl (plus the loop and the kernel) costs.
 *
 *   ceiling -u http://127.0.0.1:PORT/v1/chat/completions -c 50 -d 10 -b body.json
 *           [--cacert ca.pem] [--h2]
 *
 * Prints one JSON line: requests, errors, duration_us, rps, cpu_s, cpu_us_per_request.
 */
#include <curl/curl.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

struct sock {
  struct event *ev;
  curl_socket_t fd;
};

static struct event_base *base;
static CURLM *multi;
static struct event *timer;
static struct event *stop_timer;
static long long requests, errors;
static const char *body;
static size_t body_len;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* CPU time in user space and in the kernel, seconds. */
static void cpu_s(double *user, double *sys) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  *user = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6;
  *sys = ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static void check_done(void) {
  CURLMsg *msg;
  int pending;
  while ((msg = curl_multi_info_read(multi, &pending)) != NULL) {
    if (msg->msg != CURLMSG_DONE) continue;
    CURL *easy = msg->easy_handle;
    long status = 0;
    curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
    if (msg->data.result == CURLE_OK && status == 200) {
      requests++;
    } else if (errors++ < 3) {
      fprintf(stderr, "ceiling: transfer failed: status %ld, %s\n", status,
              curl_easy_strerror(msg->data.result));
    }
    curl_multi_remove_handle(multi, easy);
    curl_multi_add_handle(multi, easy);
  }
}

static void on_socket(evutil_socket_t fd, short what, void *arg) {
  (void)arg;
  int action = 0, running = 0;
  if (what & EV_READ) action |= CURL_CSELECT_IN;
  if (what & EV_WRITE) action |= CURL_CSELECT_OUT;
  curl_multi_socket_action(multi, fd, action, &running);
  check_done();
}

static void on_timer(evutil_socket_t fd, short what, void *arg) {
  (void)fd, (void)what, (void)arg;
  int running = 0;
  curl_multi_socket_action(multi, CURL_SOCKET_TIMEOUT, 0, &running);
  check_done();
}

static void on_stop(evutil_socket_t fd, short what, void *arg) {
  (void)fd, (void)what, (void)arg;
  event_base_loopbreak(base);  /* takes effect before any other callback runs */
}

static int socket_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp) {
  (void)easy, (void)userp;
  struct sock *s = socketp;
  if (what == CURL_POLL_REMOVE) {
    if (s) {
      event_free(s->ev);
      free(s);
      curl_multi_assign(multi, fd, NULL);
    }
    return 0;
  }
  short kind = EV_PERSIST | ((what & CURL_POLL_IN) ? EV_READ : 0) |
               ((what & CURL_POLL_OUT) ? EV_WRITE : 0);
  if (!s) {
    s = calloc(1, sizeof *s);
    s->fd = fd;
    s->ev = event_new(base, fd, kind, on_socket, NULL);
    curl_multi_assign(multi, fd, s);
  } else {
    event_del(s->ev);
    event_assign(s->ev, base, fd, kind, on_socket, NULL);
  }
  event_add(s->ev, NULL);
  return 0;
}

static int timer_cb(CURLM *m, long timeout_ms, void *userp) {
  (void)m, (void)userp;
  if (timeout_ms < 0) {
    evtimer_del(timer);
  } else {
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    evtimer_add(timer, &tv);
  }
  return 0;
}

/* A proxy reads every header line (to forward it); this one only looks at each. */
static size_t header_cb(char *data, size_t size, size_t n, void *userp) {
  size_t *count = userp;
  if (size * n > 0 && data[0] != '\r') (*count)++;
  return size * n;
}

static size_t write_cb(char *data, size_t size, size_t n, void *userp) {
  (void)data;
  *(size_t *)userp += size * n;
  return size * n;
}

static char *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long size = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *buf = malloc(size > 0 ? size : 1);
  *len = fread(buf, 1, size > 0 ? size : 0, f);
  fclose(f);
  return buf;
}

int main(int argc, char **argv) {
  const char *url = NULL, *cacert = NULL, *body_path = NULL;
  int conns = 50, h2 = 0;
  double seconds = 10;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "-u") && i + 1 < argc) url = argv[++i];
    else if (!strcmp(argv[i], "-c") && i + 1 < argc) conns = atoi(argv[++i]);
    else if (!strcmp(argv[i], "-d") && i + 1 < argc) seconds = atof(argv[++i]);
    else if (!strcmp(argv[i], "-b") && i + 1 < argc) body_path = argv[++i];
    else if (!strcmp(argv[i], "--cacert") && i + 1 < argc) cacert = argv[++i];
    else if (!strcmp(argv[i], "--h2")) h2 = 1;
    else {
      fprintf(stderr, "usage: ceiling -u URL [-c conns] [-d seconds] -b body.json "
                      "[--cacert ca.pem] [--h2]\n");
      return 2;
    }
  }
  if (!url || !body_path || conns < 1) {
    fprintf(stderr, "ceiling: -u URL and -b body.json are required\n");
    return 2;
  }
  body = read_file(body_path, &body_len);
  if (!body) {
    perror(body_path);
    return 2;
  }
  curl_global_init(CURL_GLOBAL_DEFAULT);
  base = event_base_new();
  multi = curl_multi_init();
  timer = evtimer_new(base, on_timer, NULL);
  stop_timer = evtimer_new(base, on_stop, NULL);
  curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
  curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, timer_cb);
  curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, 256L);
  curl_multi_setopt(multi, CURLMOPT_PIPELINING, h2 ? CURLPIPE_MULTIPLEX : CURLPIPE_NOTHING);
  CURLSH *share = curl_share_init();
  curl_share_setopt(share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);

  struct curl_slist *headers = NULL;
  headers = curl_slist_append(headers, "Content-Type: application/json");
  headers = curl_slist_append(headers, "Authorization: Bearer sk-bench");
  headers = curl_slist_append(headers, "Accept:");
  headers = curl_slist_append(headers, "Expect:");
  size_t header_lines = 0, body_bytes = 0;
  for (int i = 0; i < conns; i++) {
    CURL *h = curl_easy_init();
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_PATH_AS_IS, 1L);
    curl_easy_setopt(h, CURLOPT_HTTP_VERSION,
                     h2 ? (long)CURL_HTTP_VERSION_2TLS : (long)CURL_HTTP_VERSION_1_1);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(h, CURLOPT_PROXY, "");
    curl_easy_setopt(h, CURLOPT_SUPPRESS_CONNECT_HEADERS, 1L);
    curl_easy_setopt(h, CURLOPT_ACCEPT_ENCODING, "");
    curl_easy_setopt(h, CURLOPT_UPLOAD_BUFFERSIZE, 16384L);
    if (h2) curl_easy_setopt(h, CURLOPT_PIPEWAIT, 1L);
    curl_easy_setopt(h, CURLOPT_SHARE, share);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, header_cb);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, &header_lines);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, write_cb);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &body_bytes);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
    if (cacert) curl_easy_setopt(h, CURLOPT_CAINFO, cacert);
    curl_multi_add_handle(multi, h);
  }

  /* The first half second (connections, TLS handshakes) is warm-up, not counted. */
  double warm = seconds > 2 ? 0.5 : 0.1;
  struct timeval tv = {(long)warm, (long)((warm - (long)warm) * 1e6)};
  evtimer_add(stop_timer, &tv);
  event_base_dispatch(base);
  long long req0 = requests, err0 = errors;
  double u0, s0, u1, s1;
  double t0 = now_s();
  cpu_s(&u0, &s0);
  tv.tv_sec = (long)seconds;
  tv.tv_usec = (long)((seconds - (long)seconds) * 1e6);
  evtimer_add(stop_timer, &tv);
  event_base_dispatch(base);
  double t1 = now_s();
  cpu_s(&u1, &s1);
  double c0 = u0 + s0, c1 = u1 + s1;
  long long n = requests - req0, e = errors - err0;
  printf("{\"requests\": %lld, \"errors\": %lld, \"duration_us\": %.0f, \"rps\": %.1f, "
         "\"cpu_s\": %.4f, \"cpu_us_per_request\": %.2f, \"user_us_per_request\": %.2f, "
         "\"sys_us_per_request\": %.2f, \"header_lines\": %zu, \"body_bytes\": %zu}\n",
         n, e, (t1 - t0) * 1e6, n / (t1 - t0), c1 - c0, n ? 1e6 * (c1 - c0) / n : 0.0,
         n ? 1e6 * (u1 - u0) / n : 0.0, n ? 1e6 * (s1 - s0) / n : 0.0, header_lines,
         body_bytes);
  return n > 0 && e == 0 ? 0 : 1;
}
