// benchclient: the load generator of the Bulwark benchmark (tests/bench/run.sh builds it with cc).
//
//   benchclient rate -p PORT -r RATE -d SECONDS -c CONNS -b BODYFILE [-w WARMUP_S] [-H 'K: v']
//     Open loop: request i is due at t0 + i/RATE whatever happened before. A due request goes
//     out on an idle keep-alive connection (one request in flight per connection, no
//     pipelining); when none is idle it waits in a queue. Latency is counted from the time the
//     request was due, not from when it could be sent, so a stall shows in the percentiles
//     instead of silently lowering the rate (no coordinated omission). `service_*` are the
//     same from the actual write: with a pool of idle connections that never runs dry, a
//     stalled response does not delay the requests after it, so these are free of coordinated
//     omission too, and free of the generator's own wake-up lateness. `wait_*` (due -> write)
//     is that lateness plus any wait for a free connection: when it stays small, the pool
//     was big enough.
//
//   benchclient sse -p PORT -n STREAMS -b BODYFILE [-s STAGGER_US] [--hold] [-H 'K: v']
//     Opens STREAMS streaming requests (stream k starts at t0 + k*STAGGER_US), reads the SSE
//     events and, for each `data:` line carrying `t=<CLOCK_MONOTONIC ns>` (stamped by the
//     upstream just before it wrote the event), records recv_time - stamp. Time to first chunk
//     = first event received - request written. Without --hold it waits for every stream to
//     end. With --hold it prints `READY <json>` once every stream has its first event, keeps
//     them all open until a line (or EOF) arrives on stdin, then closes them.
//
// Output: one JSON object on stdout (latencies in microseconds). Linux only (epoll, timerfd).
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "benchclient: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
  exit(2);
}

// --- samples ------------------------------------------------------------------------------

typedef struct {
  uint64_t *v;
  size_t n, cap;
} samples_t;

static void samples_add(samples_t *s, uint64_t x) {
  if (s->n == s->cap) {
    s->cap = s->cap ? s->cap * 2 : 4096;
    s->v = realloc(s->v, s->cap * sizeof(uint64_t));
    if (!s->v) die("out of memory");
  }
  s->v[s->n++] = x;
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

// Percentiles (nearest rank) of the samples, in microseconds, as a JSON fragment.
static void print_dist(const char *prefix, samples_t *s) {
  qsort(s->v, s->n, sizeof(uint64_t), cmp_u64);
  static const double ps[] = {50, 90, 99, 99.9};
  static const char *names[] = {"p50", "p90", "p99", "p999"};
  double sum = 0;
  for (size_t i = 0; i < s->n; i++) sum += (double)s->v[i];
  printf("\"%s_count\": %zu, \"%s_mean_us\": %.2f", prefix, s->n, prefix,
         s->n ? sum / (double)s->n / 1000.0 : 0.0);
  for (int k = 0; k < 4; k++) {
    double v = 0;
    if (s->n) {
      size_t rank = (size_t)((ps[k] / 100.0) * (double)s->n + 0.999999);
      if (rank < 1) rank = 1;
      if (rank > s->n) rank = s->n;
      v = (double)s->v[rank - 1] / 1000.0;
    }
    printf(", \"%s_%s_us\": %.2f", prefix, names[k], v);
  }
  printf(", \"%s_max_us\": %.2f", prefix, s->n ? (double)s->v[s->n - 1] / 1000.0 : 0.0);
}

// --- HTTP/1.1 response parsing --------------------------------------------------------------

enum { P_HEAD, P_CL, P_CHUNK_SIZE, P_CHUNK_DATA, P_CHUNK_CRLF, P_TRAILER, P_EOF, P_DONE };

typedef struct conn {
  int fd;
  int idx;
  int connected;
  int busy;              // a request is in flight
  // write side
  const char *wbuf;
  size_t wlen, woff;
  // response parser
  int phase;
  char head[16384];
  size_t headlen;
  int status;
  int close_after;
  int64_t remaining;
  uint64_t chunk_size;
  int chunk_ext;         // inside a chunk extension (";name=value"): ignored
  size_t trailer_line;
  // timing
  uint64_t due_ns, sent_ns;
  int counted;           // rate mode: past the warm-up
  // sse
  char line[8192];
  size_t linelen;
  int got_first;
  int ended;
  long events;
  uint64_t start_at;
  int started;
} conn_t;

// body callback (set per mode)
static void (*on_body)(conn_t *c, const char *p, size_t n, uint64_t t);

static void reset_parser(conn_t *c) {
  c->phase = P_HEAD;
  c->headlen = 0;
  c->status = 0;
  c->close_after = 0;
  c->remaining = 0;
  c->chunk_size = 0;
  c->chunk_ext = 0;
  c->trailer_line = 0;
}

static const char *find_header(const char *head, const char *name) {
  size_t n = strlen(name);
  const char *p = strstr(head, "\r\n");
  while (p && p[2]) {
    p += 2;
    if (strncasecmp(p, name, n) == 0 && p[n] == ':') {
      p += n + 1;
      while (*p == ' ' || *p == '\t') p++;
      return p;
    }
    p = strstr(p, "\r\n");
  }
  return NULL;
}

// Parses the head in c->head (NUL-terminated, ends with CRLFCRLF). Returns -1 if malformed.
static int parse_head(conn_t *c) {
  if (strncmp(c->head, "HTTP/1.", 7) != 0) return -1;
  c->status = atoi(c->head + 9);
  const char *te = find_header(c->head, "transfer-encoding");
  const char *cl = find_header(c->head, "content-length");
  const char *co = find_header(c->head, "connection");
  if (co && strncasecmp(co, "close", 5) == 0) c->close_after = 1;
  if (strncmp(c->head, "HTTP/1.0", 8) == 0 && !(co && strncasecmp(co, "keep-alive", 10) == 0))
    c->close_after = 1;
  if (te && strncasecmp(te, "chunked", 7) == 0) {
    c->phase = P_CHUNK_SIZE;
    c->chunk_size = 0;
  } else if (cl) {
    c->remaining = strtoll(cl, NULL, 10);
    c->phase = c->remaining > 0 ? P_CL : P_DONE;
  } else if (c->status == 204 || c->status == 304 || c->status < 200) {
    c->phase = P_DONE;
  } else {
    c->phase = P_EOF;
    c->close_after = 1;
  }
  return 0;
}

// Feeds received bytes. Returns 1 when the response is complete (bytes past it are ignored:
// no pipelining), 0 when more is needed, -1 on a protocol error.
static int feed(conn_t *c, const char *p, size_t n, uint64_t t) {
  while (n > 0 || c->phase == P_DONE) {
    switch (c->phase) {
      case P_HEAD: {
        size_t room = sizeof(c->head) - 1 - c->headlen;
        size_t take = n < room ? n : room;
        memcpy(c->head + c->headlen, p, take);
        size_t old = c->headlen;
        c->headlen += take;
        c->head[c->headlen] = 0;
        size_t from = old >= 3 ? old - 3 : 0;
        char *end = strstr(c->head + from, "\r\n\r\n");
        if (!end) {
          if (c->headlen == sizeof(c->head) - 1) return -1;
          return 0;
        }
        size_t headbytes = (size_t)(end + 4 - c->head);
        size_t used = headbytes - old;
        c->head[headbytes] = 0;
        if (parse_head(c) < 0) return -1;
        p += used;
        n -= used;
        break;
      }
      case P_CL: {
        size_t take = (uint64_t)c->remaining < n ? (size_t)c->remaining : n;
        on_body(c, p, take, t);
        c->remaining -= (int64_t)take;
        p += take;
        n -= take;
        if (c->remaining == 0) c->phase = P_DONE;
        break;
      }
      case P_CHUNK_SIZE: {
        char ch = *p++;
        n--;
        if (ch == '\n') {
          c->chunk_ext = 0;
          if (c->chunk_size == 0) {
            c->phase = P_TRAILER;
            c->trailer_line = 0;
          } else {
            c->phase = P_CHUNK_DATA;
            c->remaining = (int64_t)c->chunk_size;
          }
        } else if (!c->chunk_ext) {
          int d = -1;
          if (ch >= '0' && ch <= '9') d = ch - '0';
          else if (ch >= 'a' && ch <= 'f') d = ch - 'a' + 10;
          else if (ch >= 'A' && ch <= 'F') d = ch - 'A' + 10;
          if (d >= 0) c->chunk_size = c->chunk_size * 16 + (uint64_t)d;
          else if (ch == ';') c->chunk_ext = 1;
          else if (ch != '\r' && ch != ' ' && ch != '\t') return -1;
        }
        break;
      }
      case P_CHUNK_DATA: {
        size_t take = (uint64_t)c->remaining < n ? (size_t)c->remaining : n;
        on_body(c, p, take, t);
        c->remaining -= (int64_t)take;
        p += take;
        n -= take;
        if (c->remaining == 0) {
          c->phase = P_CHUNK_CRLF;
        }
        break;
      }
      case P_CHUNK_CRLF: {
        char ch = *p++;
        n--;
        if (ch == '\n') {
          c->phase = P_CHUNK_SIZE;
          c->chunk_size = 0;
        }
        break;
      }
      case P_TRAILER: {
        char ch = *p++;
        n--;
        if (ch == '\n') {
          if (c->trailer_line == 0) c->phase = P_DONE;  // the empty line ends the message
          c->trailer_line = 0;
        } else if (ch != '\r') {
          c->trailer_line++;
        }
        break;
      }
      case P_EOF:
        on_body(c, p, n, t);
        return 0;
      case P_DONE:
        return 1;
    }
  }
  return c->phase == P_DONE ? 1 : 0;
}

// --- common socket plumbing ------------------------------------------------------------------

static int epfd;
static struct sockaddr_in target;
static char *request;
static size_t request_len;

static int open_conn(conn_t *c) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  int r = connect(fd, (struct sockaddr *)&target, sizeof(target));
  if (r < 0 && errno != EINPROGRESS) {
    close(fd);
    return -1;
  }
  c->fd = fd;
  c->connected = 0;
  c->wbuf = NULL;
  c->wlen = c->woff = 0;
  reset_parser(c);
  struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP, .data.u32 = (uint32_t)c->idx};
  if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl: %s", strerror(errno));
  return 0;
}

static void close_conn(conn_t *c) {
  if (c->fd >= 0) {
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
  }
  c->fd = -1;
  c->connected = 0;
  c->busy = 0;
}

static void want_write(conn_t *c, int on) {
  struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | (on ? EPOLLOUT : 0),
                           .data.u32 = (uint32_t)c->idx};
  epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

// Writes what is pending. Returns -1 on error.
static int flush_write(conn_t *c) {
  while (c->woff < c->wlen) {
    ssize_t w = send(c->fd, c->wbuf + c->woff, c->wlen - c->woff, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        want_write(c, 1);
        return 0;
      }
      return -1;
    }
    c->woff += (size_t)w;
  }
  want_write(c, 0);
  return 0;
}

static int start_request(conn_t *c) {
  c->wbuf = request;
  c->wlen = request_len;
  c->woff = 0;
  c->busy = 1;
  reset_parser(c);
  c->sent_ns = now_ns();
  return flush_write(c);
}

static char *build_request(const char *path, int port, const char *body, size_t body_len,
                           char **headers, int nheaders, size_t *out_len) {
  size_t cap = body_len + 4096;
  for (int i = 0; i < nheaders; i++) cap += strlen(headers[i]) + 2;
  char *r = malloc(cap);
  int n = snprintf(r, cap,
                   "POST %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
                   "Authorization: Bearer sk-bench\r\n",
                   path, port);
  for (int i = 0; i < nheaders; i++) n += snprintf(r + n, cap - (size_t)n, "%s\r\n", headers[i]);
  n += snprintf(r + n, cap - (size_t)n, "Content-Length: %zu\r\n\r\n", body_len);
  memcpy(r + n, body, body_len);
  *out_len = (size_t)n + body_len;
  return r;
}

static char *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) die("cannot open %s: %s", path, strerror(errno));
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *b = malloc((size_t)n + 1);
  if (fread(b, 1, (size_t)n, f) != (size_t)n) die("cannot read %s", path);
  fclose(f);
  while (n > 0 && (b[n - 1] == '\n' || b[n - 1] == '\r')) n--;
  b[n] = 0;
  *len = (size_t)n;
  return b;
}

static void set_timer(int tfd, uint64_t at_ns) {
  struct itimerspec its = {0};
  if (at_ns == 0) at_ns = 1;  // 0 would disarm
  its.it_value.tv_sec = (time_t)(at_ns / 1000000000ull);
  its.it_value.tv_nsec = (long)(at_ns % 1000000000ull);
  timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL);
}

#define TIMER_ID 0xFFFFFFF0u
#define STDIN_ID 0xFFFFFFF1u

// --- rate mode -----------------------------------------------------------------------------

static samples_t lat, svc, waits;
static long r_completed, r_errors, r_non200, r_reconnects, r_timeouts;

static void rate_body(conn_t *c, const char *p, size_t n, uint64_t t) {
  (void)c; (void)p; (void)n; (void)t;
}

static int run_rate(int port, double rate, double duration, int nconns, double warmup) {
  on_body = rate_body;
  conn_t *conns = calloc((size_t)nconns, sizeof(conn_t));
  int *idle = calloc((size_t)nconns, sizeof(int));
  int nidle = 0;
  for (int i = 0; i < nconns; i++) {
    conns[i].idx = i;
    conns[i].fd = -1;
    if (open_conn(&conns[i]) < 0) die("connect to port %d: %s", port, strerror(errno));
  }
  // Wait until every connection is up.
  struct epoll_event evs[256];
  int up = 0;
  uint64_t give_up = now_ns() + 5000000000ull;
  while (up < nconns) {
    if (now_ns() > give_up) die("could not connect %d connections", nconns);
    int k = epoll_wait(epfd, evs, 256, 100);
    for (int i = 0; i < k; i++) {
      conn_t *c = &conns[evs[i].data.u32];
      if (evs[i].events & (EPOLLERR | EPOLLHUP)) die("connect to port %d failed", port);
      if (!c->connected && (evs[i].events & EPOLLOUT)) {
        c->connected = 1;
        want_write(c, 0);
        idle[nidle++] = c->idx;
        up++;
      }
    }
  }

  int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  struct epoll_event tev = {.events = EPOLLIN, .data.u32 = TIMER_ID};
  epoll_ctl(epfd, EPOLL_CTL_ADD, tfd, &tev);

  size_t qcap = (size_t)(rate * (duration + 1)) + 16;
  uint64_t *queue = malloc(qcap * sizeof(uint64_t));
  size_t qhead = 0, qtail = 0;
  const double interval = 1e9 / rate;
  const uint64_t t0 = now_ns() + 1000000;  // 1 ms from now
  const uint64_t t_end = t0 + (uint64_t)(duration * 1e9);
  const uint64_t t_count = t0 + (uint64_t)(warmup * 1e9);
  uint64_t next_i = 0;
  uint64_t next_due = t0;
  uint64_t drain_deadline = 0;
  long busy = 0;

  for (;;) {
    uint64_t now = now_ns();
    // Everything due by now joins the queue.
    while (next_due <= now && next_due < t_end) {
      queue[qtail++] = next_due;
      next_i++;
      next_due = t0 + (uint64_t)((double)next_i * interval);
    }
    // Hand queued requests to idle connections.
    while (qhead < qtail && nidle > 0) {
      conn_t *c = &conns[idle[--nidle]];
      c->due_ns = queue[qhead++];
      c->counted = c->due_ns >= t_count;
      if (c->counted) samples_add(&waits, now - c->due_ns);
      busy++;
      if (start_request(c) < 0) {
        r_errors++;
        busy--;
        close_conn(c);
        r_reconnects++;
        if (open_conn(c) < 0) die("reconnect: %s", strerror(errno));
      }
    }
    if (next_due >= t_end && qhead == qtail) {
      if (busy == 0) break;
      if (!drain_deadline) drain_deadline = now + 5000000000ull;
      if (now > drain_deadline) {
        r_timeouts += busy;
        break;
      }
    }
    set_timer(tfd, next_due < t_end ? next_due : now + 10000000ull);
    int k = epoll_wait(epfd, evs, 256, -1);
    if (k < 0 && errno != EINTR) die("epoll_wait: %s", strerror(errno));
    for (int i = 0; i < k; i++) {
      if (evs[i].data.u32 == TIMER_ID) {
        uint64_t x;
        while (read(tfd, &x, sizeof(x)) > 0) {
        }
        continue;
      }
      conn_t *c = &conns[evs[i].data.u32];
      if (c->fd < 0) continue;
      if (!c->connected) {
        if (evs[i].events & (EPOLLERR | EPOLLHUP)) {
          close_conn(c);
          r_reconnects++;
          if (open_conn(c) < 0) die("reconnect: %s", strerror(errno));
          continue;
        }
        if (evs[i].events & EPOLLOUT) {
          c->connected = 1;
          want_write(c, 0);
          idle[nidle++] = c->idx;
        }
        continue;
      }
      if ((evs[i].events & EPOLLOUT) && c->busy && c->woff < c->wlen) {
        if (flush_write(c) < 0) goto conn_failed;
      }
      if (evs[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
        char buf[65536];
        for (;;) {
          ssize_t r = recv(c->fd, buf, sizeof(buf), 0);
          if (r < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            goto conn_failed;
          }
          uint64_t t = now_ns();
          if (r == 0) {
            if (c->busy && c->phase == P_EOF) {
              c->phase = P_DONE;
              goto complete_eof;
            }
            goto conn_failed;
          }
          if (!c->busy) goto conn_failed;  // unsolicited bytes
          int st = feed(c, buf, (size_t)r, t);
          if (st < 0) goto conn_failed;
          if (st == 1) {
          complete_eof:
            busy--;
            c->busy = 0;
            r_completed++;
            if (c->status != 200) r_non200++;
            if (c->counted) {
              samples_add(&lat, t - c->due_ns);
              samples_add(&svc, t - c->sent_ns);
            }
            if (c->close_after || c->fd < 0) {
              close_conn(c);
              r_reconnects++;
              if (open_conn(c) < 0) die("reconnect: %s", strerror(errno));
            } else {
              idle[nidle++] = c->idx;
            }
            break;
          }
        }
      }
      continue;
    conn_failed:
      if (c->busy) {
        busy--;
        r_errors++;
      } else {
        // an idle connection closed by the server (keep-alive limit): just reopen it
        for (int j = 0; j < nidle; j++)
          if (idle[j] == c->idx) {
            idle[j] = idle[--nidle];
            break;
          }
      }
      close_conn(c);
      r_reconnects++;
      if (open_conn(c) < 0) die("reconnect: %s", strerror(errno));
    }
  }
  double secs = (double)(now_ns() - t0) / 1e9;
  printf("{\"mode\": \"rate\", \"target_rps\": %.1f, \"duration_s\": %.3f, \"sent\": %llu, "
         "\"completed\": %ld, \"errors\": %ld, \"non200\": %ld, \"timeouts\": %ld, "
         "\"reconnects\": %ld, \"achieved_rps\": %.1f, ",
         rate, secs, (unsigned long long)next_i, r_completed, r_errors, r_non200, r_timeouts,
         r_reconnects, (double)r_completed / secs);
  print_dist("lat", &lat);
  printf(", ");
  print_dist("service", &svc);
  printf(", ");
  print_dist("wait", &waits);
  printf("}\n");
  return (r_errors || r_non200 || r_timeouts) ? 1 : 0;
}

// --- sse mode ------------------------------------------------------------------------------

static samples_t ttfc, chunk_delay;
static long s_events, s_stamped, s_errors, s_non200, s_ended, s_first;

static void sse_line(conn_t *c, const char *line, size_t n, uint64_t t) {
  if (n < 5 || strncmp(line, "data:", 5) != 0) return;
  s_events++;
  c->events++;
  if (!c->got_first) {
    c->got_first = 1;
    s_first++;
    samples_add(&ttfc, t - c->sent_ns);
  }
  const char *ts = memmem(line, n, "t=", 2);
  if (ts) {
    uint64_t stamp = strtoull(ts + 2, NULL, 10);
    if (stamp && c->events > 1) {  // the first event is counted in time to first chunk
      samples_add(&chunk_delay, t >= stamp ? t - stamp : 0);
      s_stamped++;
    }
  }
}

static void sse_body(conn_t *c, const char *p, size_t n, uint64_t t) {
  if (c->status != 200) return;
  for (size_t i = 0; i < n; i++) {
    char ch = p[i];
    if (ch == '\n') {
      size_t len = c->linelen;
      if (len && c->line[len - 1] == '\r') len--;
      c->line[len] = 0;
      sse_line(c, c->line, len, t);
      c->linelen = 0;
    } else if (c->linelen < sizeof(c->line) - 1) {
      c->line[c->linelen++] = ch;
    }
  }
}

static int run_sse(int port, int nstreams, double stagger_us, int hold, double timeout_s) {
  (void)port;
  on_body = sse_body;
  conn_t *conns = calloc((size_t)nstreams, sizeof(conn_t));
  const uint64_t t0 = now_ns() + 1000000;
  for (int i = 0; i < nstreams; i++) {
    conns[i].idx = i;
    conns[i].fd = -1;
    conns[i].start_at = t0 + (uint64_t)((double)i * stagger_us * 1000.0);
  }
  int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  struct epoll_event tev = {.events = EPOLLIN, .data.u32 = TIMER_ID};
  epoll_ctl(epfd, EPOLL_CTL_ADD, tfd, &tev);
  const int max_opening = 64;  // streams connected but without their first event yet
  int next_start = 0, opening = 0, finished = 0, ready_printed = 0, release = 0;
  uint64_t deadline = t0 + (uint64_t)(timeout_s * 1e9);
  struct epoll_event evs[256];

  for (;;) {
    uint64_t now = now_ns();
    while (next_start < nstreams && opening < max_opening && conns[next_start].start_at <= now) {
      conn_t *c = &conns[next_start++];
      if (open_conn(c) < 0) die("connect: %s (raise ulimit -n?)", strerror(errno));
      opening++;
    }
    if (hold && !ready_printed && s_first + s_errors >= nstreams) {
      printf("READY {\"streams\": %d, \"first\": %ld, \"errors\": %ld}\n", nstreams, s_first,
             s_errors);
      fflush(stdout);
      ready_printed = 1;
      struct epoll_event sev = {.events = EPOLLIN, .data.u32 = STDIN_ID};
      epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &sev);
    }
    if (release || finished >= nstreams) break;
    if (now > deadline) {
      fprintf(stderr, "benchclient: timed out: %d of %d streams finished, %ld first events\n",
              finished, nstreams, s_first);
      break;
    }
    uint64_t wake = now + 50000000ull;
    if (next_start < nstreams && opening < max_opening && conns[next_start].start_at < wake)
      wake = conns[next_start].start_at;
    set_timer(tfd, wake);
    int k = epoll_wait(epfd, evs, 256, -1);
    if (k < 0 && errno != EINTR) die("epoll_wait: %s", strerror(errno));
    for (int i = 0; i < k; i++) {
      uint32_t id = evs[i].data.u32;
      if (id == TIMER_ID) {
        uint64_t x;
        while (read(tfd, &x, sizeof(x)) > 0) {
        }
        continue;
      }
      if (id == STDIN_ID) {
        release = 1;
        continue;
      }
      conn_t *c = &conns[id];
      if (c->fd < 0) continue;
      if (!c->connected) {
        if (evs[i].events & (EPOLLERR | EPOLLHUP)) goto failed;
        if (evs[i].events & EPOLLOUT) {
          c->connected = 1;
          if (start_request(c) < 0) goto failed;
        }
        continue;
      }
      if ((evs[i].events & EPOLLOUT) && c->woff < c->wlen) {
        if (flush_write(c) < 0) goto failed;
      }
      if (evs[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
        char buf[65536];
        for (;;) {
          ssize_t r = recv(c->fd, buf, sizeof(buf), 0);
          if (r < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            goto failed;
          }
          uint64_t t = now_ns();
          int had_first = c->got_first;
          if (r == 0) {
            if (c->phase == P_EOF) goto ended;
            goto failed;
          }
          int st = feed(c, buf, (size_t)r, t);
          if (!had_first && c->got_first) opening--;
          if (st < 0) goto failed;
          if (c->phase != P_HEAD && c->status != 200 && !c->got_first) {
            s_non200++;
            goto failed;
          }
          if (st == 1) goto ended;
        }
      }
      continue;
    ended:
      s_ended++;
      finished++;
      if (!c->got_first) opening--;
      close_conn(c);
      continue;
    failed:
      s_errors++;
      finished++;
      if (!c->got_first) opening--;
      close_conn(c);
    }
  }
  for (int i = 0; i < nstreams; i++) close_conn(&conns[i]);
  printf("{\"mode\": \"sse\", \"streams\": %d, \"ended\": %ld, \"errors\": %ld, \"non200\": %ld, "
         "\"first_events\": %ld, \"events\": %ld, \"stamped\": %ld, ",
         nstreams, s_ended, s_errors, s_non200, s_first, s_events, s_stamped);
  print_dist("ttfc", &ttfc);
  printf(", ");
  print_dist("chunk", &chunk_delay);
  printf("}\n");
  if (hold) return (s_first == nstreams) ? 0 : 1;
  return (s_errors || s_ended != nstreams) ? 1 : 0;
}

// --- main ----------------------------------------------------------------------------------

static void usage(void) {
  fprintf(stderr,
          "usage: benchclient rate -p PORT -r RATE -d SECONDS [-c CONNS] -b BODYFILE [-w WARMUP]\n"
          "       benchclient sse  -p PORT -n STREAMS -b BODYFILE [-s STAGGER_US] [--hold]\n"
          "       common: [-P PATH] [-H 'Name: value']... [-t TIMEOUT_S]\n");
  exit(2);
}

int main(int argc, char **argv) {
  if (argc < 2) usage();
  const char *mode = argv[1];
  int port = 0, nconns = 32, nstreams = 0, hold = 0;
  double rate = 0, duration = 0, warmup = -1, stagger_us = 0, timeout_s = 120;
  const char *bodyfile = NULL, *path = "/v1/chat/completions";
  char *headers[32];
  int nheaders = 0;
  static struct option longopts[] = {{"hold", no_argument, NULL, 'L'}, {0, 0, 0, 0}};
  optind = 2;
  int opt;
  while ((opt = getopt_long(argc, argv, "p:r:d:c:b:w:n:s:P:H:t:", longopts, NULL)) != -1) {
    switch (opt) {
      case 'p': port = atoi(optarg); break;
      case 'r': rate = atof(optarg); break;
      case 'd': duration = atof(optarg); break;
      case 'c': nconns = atoi(optarg); break;
      case 'b': bodyfile = optarg; break;
      case 'w': warmup = atof(optarg); break;
      case 'n': nstreams = atoi(optarg); break;
      case 's': stagger_us = atof(optarg); break;
      case 'P': path = optarg; break;
      case 'H':
        if (nheaders < 32) headers[nheaders++] = optarg;
        break;
      case 't': timeout_s = atof(optarg); break;
      case 'L': hold = 1; break;
      default: usage();
    }
  }
  if (!port || !bodyfile) usage();
  prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);  // wake on time: the schedule is the measurement
  size_t body_len;
  char *body = read_file(bodyfile, &body_len);
  request = build_request(path, port, body, body_len, headers, nheaders, &request_len);
  memset(&target, 0, sizeof(target));
  target.sin_family = AF_INET;
  target.sin_port = htons((uint16_t)port);
  target.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  epfd = epoll_create1(EPOLL_CLOEXEC);
  if (strcmp(mode, "rate") == 0) {
    if (rate <= 0 || duration <= 0) usage();
    if (warmup < 0) warmup = duration >= 5 ? 1.0 : duration * 0.1;
    return run_rate(port, rate, duration, nconns, warmup);
  }
  if (strcmp(mode, "sse") == 0) {
    if (nstreams <= 0) usage();
    return run_sse(port, nstreams, stagger_us, hold, timeout_s);
  }
  usage();
  return 2;
}
