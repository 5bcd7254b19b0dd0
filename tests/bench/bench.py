#!/usr/bin/env python3
"""Bulwark vs nginx benchmark: run by tests/bench/run.sh (see tests/bench/README.md).

Starts, on loopback and as the current user:
  origin    nginx (1 worker) answering POST /v1/chat/completions with a fixed chat.completion
  sse       sse_upstream.py, paced OpenAI-shaped SSE streams stamped with their send time
  nginx     nginx as a reverse proxy (1 worker, upstream keep-alive, proxy_buffering off)
  bulwark   build/bulwark (workers: 1, log level warn, breaker thresholds out of reach)
  ceiling   ceiling.c: libcurl multi-socket on libevent driving the origin directly, with
            Bulwark's options: the fastest a libcurl-based proxy can go
and measures both proxies and the ceiling in alternating order over several rounds, with
direct-to-upstream runs as the baseline for "added" latencies. The throughput rounds run
twice: plain HTTP to the origin, and TLS to it (the production-like path). Writes results.md, results.png and results.json
to $BENCH_OUT (default tests/bench/results).
"""

from __future__ import annotations

import atexit
import ctypes
import datetime
import json
import os
import platform
import pwd
import grp
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


def env_num(name: str, default: float) -> float:
    value = os.environ.get(name, "")
    return float(value) if value.strip() else default


SMOKE = os.environ.get("BENCH_SMOKE", "") not in ("", "0")
SECONDS = env_num("BENCH_SECONDS", 1 if SMOKE else 10)
ROUNDS = int(env_num("BENCH_ROUNDS", 1 if SMOKE else 3))
CONNS = int(env_num("BENCH_CONNS", 50))
WRK_THREADS = int(env_num("BENCH_WRK_THREADS", 1))
RATES = [int(r) for r in os.environ.get("BENCH_RATES", "1000,5000").split(",") if r.strip()]
LAT_SECONDS = env_num("BENCH_LAT_SECONDS", SECONDS)
HELD_STREAMS = int(env_num("BENCH_HELD_STREAMS", 50 if SMOKE else 1000))
SSE_STREAMS = int(env_num("BENCH_SSE_STREAMS", 5 if SMOKE else 20))
SSE_CHUNKS = int(env_num("BENCH_SSE_CHUNKS", 10 if SMOKE else 50))
SSE_INTERVAL_MS = env_num("BENCH_SSE_INTERVAL_MS", 20)
OUT = Path(os.environ.get("BENCH_OUT") or HERE / "results").resolve()
BULWARK_BIN = Path(os.environ.get("BULWARK_BIN") or REPO / "build" / "bulwark").resolve()
# Optional: an earlier Bulwark binary, measured in the same throughput rounds ("baseline").
BASELINE_BIN = Path(os.environ["BENCH_BASELINE_BIN"]).resolve() \
    if os.environ.get("BENCH_BASELINE_BIN") else None
CLIENT_BIN = Path(os.environ.get("BENCH_CLIENT") or "").resolve()
CEILING_BIN = Path(os.environ.get("BENCH_CEILING") or "").resolve()
NGINX = os.environ.get("BENCH_NGINX") or shutil.which("nginx") or "/usr/sbin/nginx"
WRK = os.environ.get("BENCH_WRK") or shutil.which("wrk") or "wrk"
PHASES = {"throughput", "tls", "latency", "streaming", "memory"}
ONLY = {p.strip() for p in os.environ.get("BENCH_ONLY", "").split(",") if p.strip()} or PHASES

# Pinning: the process under test (a proxy, or the ceiling) gets the last core to itself; the
# load generators, the origin and the SSE upstream share the others. Without it, which core
# the scheduler puts a proxy on (next to wrk or not) moved one proxy's throughput by 30 %
# between rounds. BENCH_PIN=0 turns it off; it needs 2 cores or more and taskset.
_CPUS = sorted(os.sched_getaffinity(0))
PIN = os.environ.get("BENCH_PIN", "1") != "0" and len(_CPUS) >= 2 and bool(shutil.which("taskset"))
PIN_UNDER_TEST = ["taskset", "-c", str(_CPUS[-1])] if PIN else []
PIN_LOAD = ["taskset", "-c", ",".join(str(c) for c in _CPUS[:-1])] if PIN else []

TMP = Path(tempfile.mkdtemp(prefix="bulwark-bench-"))
PROCS: list[subprocess.Popen] = []
CLK_TCK = os.sysconf("SC_CLK_TCK")
FAILURES: list[str] = []

REQUEST_BODY = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello"}]}'
STREAM_BODY = ('{"model":"gpt-4o-mini","stream":true,'
               '"messages":[{"role":"user","content":"Count slowly"}]}')
ORIGIN_RESPONSE = (
    '{"id":"chatcmpl-bench0001","object":"chat.completion","created":1700000000,'
    '"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_bench","choices":[{"index":0,'
    '"message":{"role":"assistant","content":"Hello! How can I help you today?",'
    '"refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":9,'
    '"completion_tokens":9,"total_tokens":18,"prompt_tokens_details":{"cached_tokens":0},'
    '"completion_tokens_details":{"reasoning_tokens":0}}}')


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- processes ------------------------------------------------------------------------------

_LIBC = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """SIGTERM this process when its parent goes (a killed run leaves nothing behind)."""
    _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args[0]} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on port {port} after {timeout} s")


def spawn(args: list[str], log_name: str, **kw) -> subprocess.Popen:
    logf = open(TMP / log_name, "ab")
    proc = subprocess.Popen(args, stdout=kw.pop("stdout", logf), stderr=logf,
                            stdin=kw.pop("stdin", subprocess.DEVNULL), start_new_session=True,
                            preexec_fn=die_with_parent, **kw)
    PROCS.append(proc)
    return proc


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        except ProcessLookupError:
            pass
    if proc in PROCS:
        PROCS.remove(proc)


def cleanup() -> None:
    for proc in list(PROCS):
        try:
            stop(proc, signal.SIGQUIT if "nginx" in str(proc.args[0]) else signal.SIGTERM)
        except Exception:  # noqa: BLE001 - best effort on the way out
            pass
    if os.environ.get("BENCH_KEEP_TMP"):
        print(f"temp files kept in {TMP}")
    else:
        shutil.rmtree(TMP, ignore_errors=True)


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        return [int(x) for x in text.split()]
    except OSError:
        out = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                    if int(fields[1]) == pid:
                        out.append(int(entry.name))
                except (OSError, IndexError, ValueError):
                    pass
        return out


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    return sum(cpu_split(pid))


def cpu_split(pid: int) -> tuple[float, float]:
    """CPU seconds in user space and in the kernel, all threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


# --- the servers ----------------------------------------------------------------------------


def nginx_user_line() -> str:
    if os.geteuid() != 0:
        return ""  # workers run as the current user anyway
    user = pwd.getpwuid(os.getuid())
    return f"user {user.pw_name} {grp.getgrgid(user.pw_gid).gr_name};\n"


def nginx_conf(prefix: Path, http_block: str) -> str:
    return f"""{nginx_user_line()}worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 16384; }}
http {{
  access_log off;
  client_body_temp_path {prefix}/client_body;
  proxy_temp_path {prefix}/proxy;
  fastcgi_temp_path {prefix}/fastcgi;
  uwsgi_temp_path {prefix}/uwsgi;
  scgi_temp_path {prefix}/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
{http_block}
}}
"""


class Nginx:
    """One nginx instance (master + 1 worker) with its own prefix directory."""

    def __init__(self, name: str, http_block_for_port, pin: list[str]):
        self.name = name
        self.pin = pin
        self.port = free_port()
        self.prefix = TMP / name
        self.prefix.mkdir(parents=True, exist_ok=True)
        (self.prefix / "nginx.conf").write_text(nginx_conf(self.prefix,
                                                           http_block_for_port(self.port)))
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Nginx":
        conf = str(self.prefix / "nginx.conf")
        check = subprocess.run([NGINX, "-t", "-q", "-p", str(self.prefix), "-c", conf],
                               capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"nginx config {conf} is invalid:\n{check.stderr}")
        self.proc = spawn(self.pin + [NGINX, "-p", str(self.prefix), "-c", conf],
                          f"{self.name}.log")
        wait_port(self.port, proc=self.proc)
        return self

    @property
    def pid(self) -> int:
        """The worker: it does all the work and holds all the connection memory."""
        assert self.proc is not None
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            kids = children(self.proc.pid)
            if kids:
                return kids[0]
            time.sleep(0.05)
        raise RuntimeError(f"{self.name}: no nginx worker process")

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc, signal.SIGQUIT)  # graceful: the master waits for its worker
            self.proc = None


def answering_server(listen: str, extra: str = "") -> str:
    """An nginx server block that answers the chat completion itself, as the origin does."""
    body = ORIGIN_RESPONSE.replace("\\", "\\\\").replace("'", "\\'")
    return f"""  server {{
    listen {listen} backlog=4096;{extra}
    location = /v1/chat/completions {{
      default_type application/json;
      add_header x-request-id req_bench;
      add_header openai-processing-ms 1;
      add_header x-ratelimit-remaining-requests 9999;
      add_header x-ratelimit-remaining-tokens 199990;
      return 200 '{body}';
    }}
    location / {{ return 404; }}
  }}"""


def origin_nginx(pki: dict | None, tls_port: int) -> Nginx:
    """The origin. With pki a second server answers the same over TLS on tls_port, with a
    certificate from the test CA. It offers HTTP/1.1 only (ALPN): see the README on why the
    TLS round is not HTTP/2."""
    tls = "" if not pki else f"""
    ssl_certificate {pki['cert']};
    ssl_certificate_key {pki['key']};
    ssl_session_cache shared:origin:10m;"""

    def block(port: int) -> str:
        blocks = [answering_server(f"127.0.0.1:{port}")]
        if pki:
            blocks.append(answering_server(f"127.0.0.1:{tls_port} ssl", tls))
        return "\n".join(blocks)
    return Nginx("origin", block, PIN_LOAD)


def answering_nginx() -> Nginx:
    """The client side alone: nginx pinned as a proxy is, answering each request itself (the
    origin's answer) over the same keep-alive connections from wrk. Its CPU per request is
    what reading a request and writing an answer cost on this machine, kernel included: work
    any proxy does on top of its upstream side, and the ceiling does not."""
    return Nginx("answering", lambda port: answering_server(f"127.0.0.1:{port}"),
                 PIN_UNDER_TEST)


def proxy_nginx(name: str, upstream_port: int, ca_file: str = "") -> Nginx:
    """nginx as the proxy; with ca_file it reaches the origin over TLS (verified, sessions
    reused, keep-alive: nginx speaks HTTP/1.1 to upstreams)."""
    scheme = "https" if ca_file else "http"
    tls = "" if not ca_file else f"""
      proxy_ssl_trusted_certificate {ca_file};
      proxy_ssl_verify on;
      proxy_ssl_name localhost;  # the certificate also names localhost; nginx checks names, not IPs
      proxy_ssl_session_reuse on;"""

    def block(port: int) -> str:
        return f"""  upstream bench_origin {{
    server 127.0.0.1:{upstream_port};
    keepalive 128;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
  }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      proxy_pass {scheme}://bench_origin;{tls}
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_read_timeout 300s;
      proxy_send_timeout 300s;
    }}
  }}"""
    return Nginx(name, block, PIN_UNDER_TEST)


class Bulwark:
    def __init__(self, name: str, upstream_port: int, binary: Path, ca_file: str = ""):
        self.name = name
        self.port = free_port()
        self.admin_port = free_port()
        self.binary = binary
        self.dir = TMP / name
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "proxy.yaml").write_text(f"""server:
  listen: 127.0.0.1:{self.port}
  admin_listen: 127.0.0.1:{self.admin_port}
  workers: 1
  max_connections: 100000
  idle_timeout: 300s
  shutdown_grace: 1s
upstreams:
  - name: bench
    base_url: {"https" if ca_file else "http"}://127.0.0.1:{upstream_port}
{f'    ca_file: "{ca_file}"' + chr(10) if ca_file else ""}timeouts:
  connect: 5s
  first_byte: 120s
  idle: 300s
  total: 3600s
circuit_breaker:
  failure_threshold: 1000000
  failure_rate_threshold: 1
  min_requests: 1000000
log:
  level: warn
  format: json
""")
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Bulwark":
        self.proc = spawn(PIN_UNDER_TEST + [str(self.binary), "--config",
                                            str(self.dir / "proxy.yaml")],
                          f"{self.name}.log", cwd=str(self.dir))
        wait_port(self.port, proc=self.proc)
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(
                        f"http://127.0.0.1:{self.admin_port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: /readyz never answered 200")
            time.sleep(0.05)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc, signal.SIGTERM)
            self.proc = None


class SseUpstream:
    def __init__(self):
        self.proc = spawn(PIN_LOAD + [sys.executable, str(HERE / "sse_upstream.py"), "--port", "0",
                           "--chunks", str(SSE_CHUNKS), "--interval-ms", str(SSE_INTERVAL_MS)],
                          "sse_upstream.log", stdout=subprocess.PIPE)
        line = self.proc.stdout.readline().decode()
        if not line.startswith("LISTENING "):
            raise RuntimeError(f"sse_upstream did not start: {line!r}")
        self.port = int(line.split()[1])


# --- measurements ---------------------------------------------------------------------------


def check_answers(port: int, what: str) -> None:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions",
                                 data=REQUEST_BODY.encode(), method="POST",
                                 headers={"Content-Type": "application/json",
                                          "Authorization": "Bearer sk-bench"})
    with urllib.request.urlopen(req, timeout=5) as r:
        body = r.read()
        if r.status != 200 or b'"chat.completion"' not in body:
            raise RuntimeError(f"{what}: unexpected answer {r.status} {body[:200]!r}")


def run_wrk(port: int, seconds: float) -> dict:
    cmd = PIN_LOAD + [WRK, "-t", str(WRK_THREADS), "-c", str(CONNS), "-d", f"{max(1, round(seconds))}s",
           "--timeout", "5s", "-s", str(HERE / "post.lua"), f"http://127.0.0.1:{port}"]
    env = dict(os.environ, BENCH_BODY_FILE=str(TMP / "body.json"))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=seconds + 60,
                         preexec_fn=die_with_parent)
    m = re.search(r"^BENCH_JSON (.*)$", out.stdout, re.M)
    if out.returncode != 0 or not m:
        raise RuntimeError(f"wrk failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    data = json.loads(m.group(1))
    data["rps"] = data["requests"] / (data["duration_us"] / 1e6)
    data["errors"] = sum(v for k, v in data.items() if k.startswith("errors_"))
    return data


def run_ceiling(port: int, seconds: float, ca_file: str = "") -> dict:
    """The libcurl ceiling straight at the origin: its own CPU time is what libcurl, libevent
    and the kernel cost per request with Bulwark's options."""
    scheme = "https" if ca_file else "http"
    cmd = PIN_UNDER_TEST + [str(CEILING_BIN), "-u", f"{scheme}://127.0.0.1:{port}/v1/chat/completions",
           "-c", str(CONNS), "-d", str(seconds), "-b", str(TMP / "body.json")]
    if ca_file:
        cmd += ["--cacert", ca_file]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60,
                         preexec_fn=die_with_parent)
    lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
    if not lines:
        raise RuntimeError(f"ceiling failed ({out.returncode}): {out.stderr}")
    data = json.loads(lines[-1])
    data["cpu_ms_per_1000"] = data["cpu_us_per_request"]
    data["user_us"], data["sys_us"] = data["user_us_per_request"], data["sys_us_per_request"]
    return data


def run_client(args: list[str], timeout: float) -> dict:
    cmd = PIN_LOAD + [str(CLIENT_BIN)] + args
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                         preexec_fn=die_with_parent)
    lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
    if not lines:
        raise RuntimeError(f"benchclient failed ({out.returncode}): {out.stderr}")
    data = json.loads(lines[-1])
    data["exit"] = out.returncode
    if out.stderr.strip():
        data["stderr"] = out.stderr.strip()[-500:]
    return data


def rounds_order(names: list[str], r: int) -> list[str]:
    """Rotate the order every round so no target always runs first (or right after another)."""
    k = r % len(names)
    return names[k:] + names[:k]


def median(values: list[float]) -> float:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def measure_throughput(targets: dict, results: dict, key: str = "throughput",
                       ca_file: str = "") -> None:
    """targets: name -> (port, pid); "ceiling" -> (origin port, 0) runs the ceiling client
    there instead of wrk through a proxy."""
    log(f"{key}: wrk -t{WRK_THREADS} -c{CONNS} (ceiling: {CONNS} transfers), {SECONDS:g} s x "
        f"{ROUNDS} rounds")
    runs: dict[str, list] = {name: [] for name in targets}
    for r in range(ROUNDS):
        for name in rounds_order(list(targets), r):
            port, pid = targets[name]
            if name == "ceiling":
                data = run_ceiling(port, SECONDS, ca_file)
                runs[name].append(data)
                log(f"  round {r + 1} {name:8s} {data['rps']:9.0f} req/s  cpu "
                    f"{data['cpu_ms_per_1000']:.1f} ms/1000 req"
                    + (f"  ERRORS {data['errors']}" if data["errors"] else ""))
                if data["errors"]:
                    FAILURES.append(f"{key} ceiling round {r}: {data['errors']} errors")
                continue
            user0, sys0 = cpu_split(pid) if pid else (0.0, 0.0)
            data = run_wrk(port, SECONDS)
            user1, sys1 = cpu_split(pid) if pid else (0.0, 0.0)
            if pid:
                n = max(1, data["requests"])
                data["cpu_s"] = (user1 - user0) + (sys1 - sys0)
                data["cpu_ms_per_1000"] = 1e6 * data["cpu_s"] / n
                data["user_us"] = 1e6 * (user1 - user0) / n
                data["sys_us"] = 1e6 * (sys1 - sys0) / n
            if data["errors"]:
                FAILURES.append(f"{key} {name} round {r}: {data['errors']} errors")
            runs[name].append(data)
            log(f"  round {r + 1} {name:8s} {data['rps']:9.0f} req/s"
                + (f"  cpu {data['cpu_ms_per_1000']:.1f} ms/1000 req" if pid else "")
                + (f"  ERRORS {data['errors']}" if data["errors"] else ""))
    results[key] = {"runs": runs}
    for name in runs:
        results[key][name] = {
            "rps": median([d["rps"] for d in runs[name]]),
            "cpu_ms_per_1000": median([d.get("cpu_ms_per_1000") for d in runs[name]]),
        }
        if all("user_us" in d for d in runs[name]):
            for part in ("user_us", "sys_us"):
                results[key][name][part] = median([d[part] for d in runs[name]])
    if "ceiling" in runs:
        # Bulwark's own CPU per request: its CPU minus the ceiling's, paired within each round;
        # and above both the ceiling and the client side alone (nginx answering by itself).
        for name in ("bulwark", "baseline"):
            if name in runs:
                results[key][name]["own_us_per_request"] = median(
                    [b["cpu_ms_per_1000"] - c["cpu_ms_per_1000"]
                     for b, c in zip(runs[name], runs["ceiling"])])
                if "answering" in runs:
                    both = list(zip(runs[name], runs["ceiling"], runs["answering"]))
                    results[key][name]["above_both_us_per_request"] = median(
                        [b["cpu_ms_per_1000"] - c["cpu_ms_per_1000"] - a["cpu_ms_per_1000"]
                         for b, c, a in both])
                    for part in ("user_us", "sys_us"):
                        results[key][name][f"above_both_{part}"] = median(
                            [b[part] - c[part] - a[part] for b, c, a in both])


def measure_latency(targets: dict, results: dict) -> None:
    body = str(TMP / "body.json")
    results["latency"] = {}
    for rate in RATES:
        log(f"latency at {rate} req/s (open loop): {LAT_SECONDS:g} s x {ROUNDS} rounds")
        runs: dict[str, list] = {name: [] for name in targets}
        for r in range(ROUNDS):
            for name in rounds_order(list(targets), r):
                port, pid = targets[name]
                cpu0 = cpu_seconds(pid) if pid else 0.0
                data = run_client(["rate", "-p", str(port), "-r", str(rate), "-d",
                                   str(LAT_SECONDS), "-c", "32", "-b", body],
                                  timeout=LAT_SECONDS + 60)
                if pid:
                    data["cpu_ms"] = 1e6 * (cpu_seconds(pid) - cpu0) / max(1, data["completed"])
                if data["errors"] or data["non200"] or data["timeouts"]:
                    FAILURES.append(f"latency {rate} {name} round {r}: errors {data['errors']}"
                                    f" non200 {data['non200']} timeouts {data['timeouts']}")
                runs[name].append(data)
                log(f"  round {r + 1} {name:8s} p50 {data['service_p50_us']:8.1f} µs  "
                    f"p99 {data['service_p99_us']:8.1f} µs  p99.9 {data['service_p999_us']:8.1f}"
                    f" µs  (from due: p99 {data['lat_p99_us']:.0f} µs; {data['achieved_rps']:.0f}"
                    f" req/s; cpu {data.get('cpu_ms', 0):.1f} ms/1000)")
        summary: dict = {"runs": runs}
        for name in runs:
            # Service time (write -> last byte): see benchclient.c on why it is the measure.
            summary[name] = {p: median([d[f"service_{p}_us"] for d in runs[name]])
                             for p in ("p50", "p90", "p99", "p999")}
            summary[name].update({f"from_due_{p}": median([d[f"lat_{p}_us"] for d in runs[name]])
                                  for p in ("p50", "p99", "p999")})
            summary[name]["wait_max"] = max(d["wait_max_us"] for d in runs[name])
            if name != "direct":
                summary[name]["cpu_ms_per_1000"] = median([d["cpu_ms"] for d in runs[name]])
                # added = proxy - direct, paired within each round, then the median of rounds
                for p in ("p50", "p99", "p999"):
                    summary[name][f"added_{p}"] = median(
                        [a[f"service_{p}_us"] - b[f"service_{p}_us"]
                         for a, b in zip(runs[name], runs["direct"])])
                    summary[name][f"added_from_due_{p}"] = median(
                        [a[f"lat_{p}_us"] - b[f"lat_{p}_us"]
                         for a, b in zip(runs[name], runs["direct"])])
        results["latency"][str(rate)] = summary


def measure_streaming(targets: dict, results: dict) -> None:
    stagger_us = SSE_INTERVAL_MS * 1000 / max(1, SSE_STREAMS)
    log(f"streaming: {SSE_STREAMS} streams x {SSE_CHUNKS} chunks every {SSE_INTERVAL_MS:g} ms"
        f" x {ROUNDS} rounds")
    runs: dict[str, list] = {name: [] for name in targets}
    for r in range(ROUNDS):
        for name in rounds_order(list(targets), r):
            port = targets[name][0]
            data = run_client(["sse", "-p", str(port), "-n", str(SSE_STREAMS), "-s",
                               str(stagger_us), "-b", str(TMP / "stream_body.json"),
                               "-H", f"x-bench-chunks: {SSE_CHUNKS}",
                               "-H", f"x-bench-interval-ms: {SSE_INTERVAL_MS:g}", "-t", "120"],
                              timeout=180)
            if data["errors"] or data["ended"] != SSE_STREAMS:
                FAILURES.append(f"streaming {name} round {r}: {data['errors']} errors, "
                                f"{data['ended']}/{SSE_STREAMS} streams ended")
            runs[name].append(data)
            log(f"  round {r + 1} {name:8s} ttfc p50 {data['ttfc_p50_us']:8.1f} µs  "
                f"chunk p50 {data['chunk_p50_us']:7.1f} µs  p99 {data['chunk_p99_us']:8.1f} µs"
                f"  ({data['stamped']} chunks)")
    summary: dict = {"runs": runs}
    for name in runs:
        summary[name] = {f"{m}_{p}": median([d[f"{m}_{p}_us"] for d in runs[name]])
                         for m in ("ttfc", "chunk") for p in ("p50", "p99")}
        if name != "direct":
            for m in ("ttfc", "chunk"):
                for p in ("p50", "p99"):
                    summary[name][f"added_{m}_{p}"] = median(
                        [a[f"{m}_{p}_us"] - b[f"{m}_{p}_us"]
                         for a, b in zip(runs[name], runs["direct"])])
    results["streaming"] = summary


def hold_streams(port: int, pid: int, n: int) -> dict:
    """Opens n endless streams through the proxy, measures its RSS while they are held."""
    proc = subprocess.Popen(
        PIN_LOAD + [str(CLIENT_BIN), "sse", "--hold", "-p", str(port), "-n", str(n), "-b",
         str(TMP / "stream_body.json"), "-H", "x-bench-chunks: 0",
         "-H", "x-bench-interval-ms: 1000", "-t", "120"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=die_with_parent)
    PROCS.append(proc)
    t0 = time.monotonic()
    ready = proc.stdout.readline()
    opened_s = time.monotonic() - t0
    if not ready.startswith("READY"):
        stop(proc)
        raise RuntimeError(f"holding {n} streams failed: {ready!r} {proc.stderr.read()[-500:]}")
    state = json.loads(ready.split(" ", 1)[1])
    time.sleep(1.0)  # every stream has had a heartbeat event pass through
    samples = []
    for _ in range(3):
        samples.append(rss_kib(pid))
        time.sleep(0.3)
    out, err = proc.communicate("release\n", timeout=60)
    PROCS.remove(proc)
    final = json.loads([l for l in out.splitlines() if l.startswith("{")][-1])
    return {"held_rss_kib": max(samples), "open_s": round(opened_s, 2), "ready": state,
            "events": final["events"], "errors": final["errors"]}


def measure_memory(sse_port: int, results: dict, bulwark_bin: Path) -> None:
    log(f"memory: idle RSS, then {HELD_STREAMS} streams held open x {ROUNDS} rounds "
        "(fresh proxies each round)")
    runs: dict[str, list] = {"nginx": [], "bulwark": []}
    for r in range(ROUNDS):
        for name in rounds_order(["nginx", "bulwark"], r):
            proxy = (proxy_nginx(f"nginx-mem{r}", sse_port) if name == "nginx"
                     else Bulwark(f"bulwark-mem{r}", sse_port, bulwark_bin)).start()
            try:
                pid = proxy.pid
                time.sleep(0.3)
                start_kib = rss_kib(pid)
                # a few streams first, so the one-off costs (pools, first connection) are paid
                run_client(["sse", "-p", str(proxy.port), "-n", "20", "-s", "1000", "-b",
                            str(TMP / "stream_body.json"), "-H", "x-bench-chunks: 5",
                            "-H", "x-bench-interval-ms: 2"], timeout=60)
                time.sleep(0.5)
                idle_kib = rss_kib(pid)
                held = hold_streams(proxy.port, pid, HELD_STREAMS)
                time.sleep(1.0)
                after_kib = rss_kib(pid)
                data = {"start_rss_kib": start_kib, "idle_rss_kib": idle_kib,
                        "after_rss_kib": after_kib, **held,
                        "kib_per_stream": (held["held_rss_kib"] - idle_kib) / HELD_STREAMS}
                if held["errors"] or held["ready"]["first"] != HELD_STREAMS:
                    FAILURES.append(f"memory {name} round {r}: {held['ready']}")
                runs[name].append(data)
                log(f"  round {r + 1} {name:8s} idle {idle_kib / 1024:6.1f} MiB  held "
                    f"{held['held_rss_kib'] / 1024:6.1f} MiB  -> {data['kib_per_stream']:5.1f}"
                    f" KiB/stream (opened in {held['open_s']} s)")
            finally:
                proxy.stop()
    results["memory"] = {"runs": runs}
    for name in runs:
        results["memory"][name] = {
            "kib_per_stream": median([d["kib_per_stream"] for d in runs[name]]),
            "held_rss_kib": median([d["held_rss_kib"] for d in runs[name]]),
            "stream_idle_rss_kib": median([d["idle_rss_kib"] for d in runs[name]]),
        }


# --- report ---------------------------------------------------------------------------------


def fmt(v, digits: int = 0) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "—"
    return f"{v:,.{digits}f}"


def ratio(b, n) -> str:
    if b is None or n is None or n != n or b != b or n <= 0 or b < 0:
        return "—"
    return f"{b / n:.2f}×"


def verdict(ok: bool | None) -> str:
    return "—" if ok is None else ("yes" if ok else "**no**")


def get(res: dict, *path):
    """res[path...], or None where that part of the bench did not run."""
    for key in path:
        if not isinstance(res, dict) or key not in res:
            return None
        res = res[key]
    return res


def build_rows(res: dict) -> list[dict]:
    rows = []

    def row(key: str, metric: str, n, b, digits: int, goal: str = "—", ok=None) -> None:
        ran = n is not None and b is not None
        met = "—" if ok is None else (verdict(ok(b, n)) if ran else "not run")
        rows.append(dict(metric=metric, nginx=fmt(n, digits), bulwark=fmt(b, digits),
                         ratio=ratio(b, n), goal=goal, met=met, key=key, nv=n, bv=b))

    row("throughput", f"Throughput, req/s (wrk, {CONNS} keep-alive conns)",
        get(res, "throughput", "nginx", "rps"), get(res, "throughput", "bulwark", "rps"), 0,
        "≥ 0.5× nginx", lambda b, n: b >= 0.5 * n)
    for rate in RATES:
        for p, goal in (("p50", 60), ("p99", 500)):
            has_goal = rate == 1000
            row(f"lat_{p}_{rate}", f"Added latency {p} at {rate // 1000}k req/s, µs",
                get(res, "latency", str(rate), "nginx", f"added_{p}"),
                get(res, "latency", str(rate), "bulwark", f"added_{p}"), 1,
                f"≤ {goal} µs" if has_goal else "—",
                (lambda b, n, g=goal: b <= g) if has_goal else None)
    n, b = get(res, "idle", "nginx"), get(res, "idle", "bulwark")
    row("idle", "Idle resident memory, MiB", n / 1024 if n else None, b / 1024 if b else None,
        1, "≤ 15 MiB", lambda b, n: b <= 15)
    row("per_stream", f"Resident memory per concurrent SSE stream, KiB ({HELD_STREAMS} held)",
        get(res, "memory", "nginx", "kib_per_stream"),
        get(res, "memory", "bulwark", "kib_per_stream"), 1, "≤ 24 KiB", lambda b, n: b <= 24)
    for m, label in (("ttfc", "SSE added time to first chunk"),
                     ("chunk", "SSE added per-chunk delay")):
        for p in ("p50", "p99"):
            goal = m == "chunk" and p == "p99"
            row(f"{m}_{p}", f"{label} {p}, µs", get(res, "streaming", "nginx", f"added_{m}_{p}"),
                get(res, "streaming", "bulwark", f"added_{m}_{p}"), 1,
                "≤ 300 µs" if goal else "—", (lambda b, n: b <= 300) if goal else None)
    row("cpu", "CPU time per 1000 requests, ms (throughput run)",
        get(res, "throughput", "nginx", "cpu_ms_per_1000"),
        get(res, "throughput", "bulwark", "cpu_ms_per_1000"), 1)
    rate = max(RATES)
    row("cpu_rate", f"CPU time per 1000 requests, ms (at {rate // 1000}k req/s)",
        get(res, "latency", str(rate), "nginx", "cpu_ms_per_1000"),
        get(res, "latency", str(rate), "bulwark", "cpu_ms_per_1000"), 1)
    return rows


def ceiling_table(res: dict) -> list[str]:
    """The libcurl ceiling, over plain HTTP and over TLS: what libcurl costs, what Bulwark adds."""
    keys = [k for k in ("throughput", "tls") if get(res, k, "ceiling")]
    if not keys:
        return []
    names = {"throughput": "plain HTTP/1.1", "tls": "HTTP/1.1 over TLS to the origin"}
    lines = ["", "The libcurl ceiling (`ceiling.c`: libcurl multi-socket on libevent, Bulwark's "
             "options, straight at the origin), same rounds:", "",
             "| | " + " | ".join(names[k] for k in keys) + " |",
             "| --- |" + " ---: |" * len(keys)]

    def line(label: str, cell) -> None:
        lines.append(f"| {label} | " + " | ".join(cell(k) for k in keys) + " |")

    line("ceiling, req/s", lambda k: fmt(get(res, k, "ceiling", "rps")))
    line("nginx, req/s", lambda k: fmt(get(res, k, "nginx", "rps")))
    line("Bulwark, req/s", lambda k: fmt(get(res, k, "bulwark", "rps")))
    line("CPU per request, µs: ceiling / nginx / Bulwark", lambda k: " / ".join(
        fmt(get(res, k, n, "cpu_ms_per_1000"), 1) for n in ("ceiling", "nginx", "bulwark")))
    own = lambda k: get(res, k, "bulwark", "own_us_per_request")
    line("**Bulwark's own CPU per request above the ceiling, µs** (goal ≤ 12)",
         lambda k: f"{fmt(own(k), 1)} ({verdict(own(k) <= 12) if own(k) is not None else '—'})")
    if any(get(res, k, "answering") for k in keys):
        line("the client side alone (nginx answering each request itself): CPU per request, µs",
             lambda k: fmt(get(res, k, "answering", "cpu_ms_per_1000"), 1))

        def split(name: str):
            return lambda k: (f"{fmt(get(res, k, name, 'user_us'), 1)} / "
                              f"{fmt(get(res, k, name, 'sys_us'), 1)}")
        line("user / kernel CPU per request, µs: ceiling", split("ceiling"))
        line("user / kernel: the client side alone", split("answering"))
        line("user / kernel: Bulwark", split("bulwark"))
        line("**Bulwark's CPU per request above the ceiling and the client side alone, µs** "
             "(user / kernel)", lambda k: (
                 f"{fmt(get(res, k, 'bulwark', 'above_both_us_per_request'), 1)} "
                 f"({fmt(get(res, k, 'bulwark', 'above_both_user_us'), 1)} / "
                 f"{fmt(get(res, k, 'bulwark', 'above_both_sys_us'), 1)})"))
    line("Bulwark / ceiling throughput", lambda k: ratio(get(res, k, "bulwark", "rps"),
                                                         get(res, k, "ceiling", "rps")))
    line("Bulwark / nginx throughput", lambda k: ratio(get(res, k, "bulwark", "rps"),
                                                       get(res, k, "nginx", "rps")))
    if any(get(res, k, "baseline") for k in keys):
        line("baseline Bulwark (BENCH_BASELINE_BIN), req/s",
             lambda k: fmt(get(res, k, "baseline", "rps")))
        line("baseline: CPU per request / own CPU above the ceiling, µs", lambda k: (
            f"{fmt(get(res, k, 'baseline', 'cpu_ms_per_1000'), 1)} / "
            f"{fmt(get(res, k, 'baseline', 'own_us_per_request'), 1)}"))
        line("Bulwark / baseline throughput", lambda k: ratio(get(res, k, "bulwark", "rps"),
                                                          get(res, k, "baseline", "rps")))
    return lines


def write_markdown(res: dict, rows: list[dict], path: Path) -> None:
    meta = res["meta"]
    lines = [
        "# Bulwark vs nginx",
        "",
        f"Measured {meta['date']} on {meta['cpu']} ({meta['cores']} cores, kernel "
        f"{meta['kernel']}), {meta['nginx']}, bulwark {meta['bulwark']}; "
        f"{ROUNDS} round(s) alternating the proxies, {SECONDS:g} s per throughput run, "
        f"{LAT_SECONDS:g} s per latency run{' (SMOKE run: numbers are meaningless)' if SMOKE else ''}."
        " Each proxy: 1 worker"
        + (f", pinned with the ceiling to core {_CPUS[-1]}; load generators, origin and SSE "
           f"upstream on the other core(s)" if PIN else ", not pinned") + ". Values are medians over the rounds; \"added\" is the proxy's "
        "percentile minus the direct-to-upstream percentile of the same round. Request latency "
        "is the open-loop generator's service time (request written -> response complete); "
        "results.json also has it counted from each request's due time.",
        "",
    ]
    load = meta["load_before"][0]
    if load > 1.0:
        lines += [f"The machine was busy with other work (load average {load:.1f} at the start, "
                  f"{meta.get('load_after', [0])[0]:.1f} at the end, on {meta['cores']} cores): "
                  "tail latencies (p99) are then dominated by waits for a CPU, for both "
                  "proxies alike; the p50s, the ratios and the CPU times are the steadier "
                  "figures.", ""]
    if ONLY != PHASES:
        lines += [f"Only these parts ran (BENCH_ONLY): {', '.join(sorted(ONLY))}.", ""]
    lines += [
        "| Metric | nginx | Bulwark | Bulwark / nginx | Goal | Met? |",
        "| --- | ---: | ---: | ---: | --- | --- |",
    ]
    for row in rows:
        lines.append(f"| {row['metric']} | {row['nginx']} | {row['bulwark']} | {row['ratio']} | "
                     f"{row['goal']} | {row['met']} |")
    lines += ceiling_table(res)
    lines += ["", "Baselines (direct to the upstream, no proxy):", ""]
    lines.append("| Baseline | p50 µs | p99 µs | p99.9 µs |")
    lines.append("| --- | ---: | ---: | ---: |")
    for rate in RATES:
        d = get(res, "latency", str(rate), "direct") or {}
        lines.append(f"| request latency at {rate} req/s | {fmt(d.get('p50'), 1)} | "
                     f"{fmt(d.get('p99'), 1)} | {fmt(d.get('p999'), 1)} |")
        lines.append(f"| same, counted from the due time | {fmt(d.get('from_due_p50'), 1)} | "
                     f"{fmt(d.get('from_due_p99'), 1)} | {fmt(d.get('from_due_p999'), 1)} |")
    d = get(res, "streaming", "direct") or {}
    lines.append(f"| SSE time to first chunk | {fmt(d.get('ttfc_p50'), 1)} | "
                 f"{fmt(d.get('ttfc_p99'), 1)} | — |")
    lines.append(f"| SSE per-chunk delay | {fmt(d.get('chunk_p50'), 1)} | "
                 f"{fmt(d.get('chunk_p99'), 1)} | — |")
    if get(res, "throughput", "direct"):
        lines.append("")
        lines.append(f"Direct throughput (wrk straight to the origin): "
                     f"{fmt(res['throughput']['direct']['rps'])} req/s.")
    if FAILURES:
        lines += ["", "**Errors during the run** (the numbers above are suspect):", ""]
        lines += [f"- {f}" for f in FAILURES]
    lines += ["", "![Bulwark vs nginx](results.png)", ""]
    path.write_text("\n".join(lines))


def write_chart(rows: list[dict], out: Path) -> bool:
    gnuplot = shutil.which("gnuplot")
    if not gnuplot:
        log("gnuplot not found: no chart")
        return False
    by = {r["key"]: r for r in rows}

    def num(v) -> float:
        return 0.0 if v is None or v != v else float(v)

    def dat(name: str, keys: list[tuple[str, str]]) -> tuple[str, float, float]:
        p = TMP / f"{name}.dat"
        values = []
        with p.open("w") as f:
            for key, label in keys:
                nv, bv = num(by[key]["nv"]), num(by[key]["bv"])
                values += [nv, bv]
                f.write(f'"{label}" {nv} {bv}\n')
        return str(p), min(values), max(values), len(keys)

    rates_keys = []
    for rate in RATES:
        rates_keys += [(f"lat_p50_{rate}", f"p50, {rate // 1000}k/s"),
                       (f"lat_p99_{rate}", f"p99, {rate // 1000}k/s")]
    panels = [
        ("Throughput (req/s, higher is better)", dat("tp", [("throughput", "req/s")]), None, 0),
        ("Added request latency (µs, lower is better)", dat("lat", rates_keys), 500, 1),
        ("Memory (lower is better)", dat("mem", [("idle", "idle RSS, MiB"),
                                                 ("per_stream", "RSS per SSE stream, KiB")]),
         None, 1),
        ("SSE added delay (µs, lower is better)",
         dat("sse", [("ttfc_p50", "first chunk p50"), ("ttfc_p99", "first chunk p99"),
                     ("chunk_p50", "per chunk p50"), ("chunk_p99", "per chunk p99")]), 300, 1),
    ]
    script = [
        "set terminal pngcairo size 1400,900 font 'sans,11' noenhanced",
        f"set output '{out}'",
        "set multiplot layout 2,2 title 'Bulwark vs nginx (1 worker each, medians of "
        f"{ROUNDS} round(s){', SMOKE run' if SMOKE else ''})' font 'sans,14'",
        "set style data histograms",
        "set style histogram clustered gap 1",
        "set style fill solid 0.85 border -1",
        "set boxwidth 0.9",
        "set key top left",
        "set grid ytics",
        "set xtics nomirror",
        "set style textbox opaque noborder",
    ]
    for title, (path, lo, hi, count), goal, digits in panels:
        if goal:
            hi = max(hi, goal)
        span = (hi - min(lo, 0)) or 1
        script.append(f"set title '{title}'")
        script.append(f"set xrange [-0.6:{count - 0.4}]")
        script.append(f"set yrange [{min(lo, 0) - (0.05 * span if lo < 0 else 0)}:"
                      f"{hi + 0.15 * span}]")
        script.append("unset arrow")
        if goal:
            script.append(f"set arrow from graph 0, first {goal} to graph 1, first {goal} "
                          "nohead dt 2 lc rgb '#aa0000'")
            script.append(f"set label 1 'goal {goal} µs (p99)' at graph 0.5, first {goal} "
                          "center offset 0,0.7 tc rgb '#aa0000' front boxed")
        else:
            script.append("unset label 1")
        fmt_ = f"%.{digits}f"
        script.append(
            f"plot '{path}' using 2:xtic(1) title 'nginx' lc rgb '#4477aa', "
            f"'' using 3 title 'Bulwark' lc rgb '#ee7733', "
            f"'' using ($0-0.15):2:(sprintf('{fmt_}',$2)) with labels offset 0,0.7 font ',9' "
            f"notitle, "
            f"'' using ($0+0.15):3:(sprintf('{fmt_}',$3)) with labels offset 0,0.7 font ',9' "
            f"notitle")
    script.append("unset multiplot")
    (TMP / "chart.gp").write_text("\n".join(script) + "\n")
    r = subprocess.run([gnuplot, str(TMP / "chart.gp")], capture_output=True, text=True)
    if r.returncode != 0:
        log(f"gnuplot failed: {r.stderr}")
        return False
    return True


def meta() -> dict:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    nginx_v = subprocess.run([NGINX, "-v"], capture_output=True, text=True).stderr.strip()
    bulwark_v = subprocess.run([str(BULWARK_BIN), "--version"], capture_output=True,
                               text=True).stdout.strip()
    return {"date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "cpu": cpu,
            "cores": os.cpu_count(), "kernel": platform.release(),
            "nginx": nginx_v.replace("nginx version: ", ""), "bulwark": bulwark_v.split()[-1],
            "load_before": os.getloadavg(), "smoke": SMOKE,
            "config": {"seconds": SECONDS, "lat_seconds": LAT_SECONDS, "rounds": ROUNDS,
                       "conns": CONNS, "wrk_threads": WRK_THREADS, "rates": RATES,
                       "held_streams": HELD_STREAMS, "sse_streams": SSE_STREAMS,
                       "sse_chunks": SSE_CHUNKS, "sse_interval_ms": SSE_INTERVAL_MS,
                       "pin_under_test": PIN_UNDER_TEST, "pin_load": PIN_LOAD}}


def main() -> int:
    if ONLY - PHASES:
        log(f"BENCH_ONLY: unknown phase(s) {', '.join(sorted(ONLY - PHASES))}; "
            f"known: {', '.join(sorted(PHASES))}")
        return 2
    die_with_parent()
    atexit.register(cleanup)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < 3 * HELD_STREAMS + 100:
        log(f"open file limit {want} is too low for {HELD_STREAMS} streams: raise ulimit -n")
        return 2
    if not CEILING_BIN.is_file() and ONLY & {"throughput", "tls"}:
        log("BENCH_CEILING (the compiled ceiling client) is not set: run tests/bench/run.sh")
        return 2
    if not CLIENT_BIN.is_file():
        log("BENCH_CLIENT (the compiled benchclient) is not set: run tests/bench/run.sh")
        return 2
    if not BULWARK_BIN.is_file():
        log(f"bulwark binary not found at {BULWARK_BIN}: build it (ninja -C build) "
            "or set BULWARK_BIN")
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    # A private copy: a rebuild of build/bulwark during the run must not change what is measured.
    bulwark_bin = TMP / "bulwark"
    shutil.copy2(BULWARK_BIN, bulwark_bin)
    baseline_bin = None
    if BASELINE_BIN is not None:
        baseline_bin = TMP / "bulwark-baseline"
        shutil.copy2(BASELINE_BIN, baseline_bin)
    (TMP / "body.json").write_text(REQUEST_BODY)
    (TMP / "stream_body.json").write_text(STREAM_BODY)
    results: dict = {"meta": meta()}
    started = time.monotonic()

    pki = None
    if "tls" in ONLY:
        # The integration tests' TLS transport: a private CA and a 127.0.0.1 certificate.
        sys.path.insert(0, str(REPO / "tests" / "fake_upstream"))
        from fake_upstream import make_test_pki
        (TMP / "pki").mkdir()
        pki = make_test_pki(str(TMP / "pki"))
    tls_port = free_port()
    origin = origin_nginx(pki, tls_port).start()
    sse = SseUpstream()
    log(f"origin nginx on :{origin.port}" + (f" (TLS :{tls_port})" if pki else "")
        + f", sse upstream on :{sse.port}, temp {TMP}")

    # Request/response proxies, both in front of the nginx origin.
    ngx = proxy_nginx("nginx-proxy", origin.port)
    bw = Bulwark("bulwark-proxy", origin.port, bulwark_bin)
    ngx.start()
    bw.start()
    for port, what in ((origin.port, "origin"), (ngx.port, "nginx"), (bw.port, "bulwark")):
        check_answers(port, what)
    # Idle: after a short warm-up (200 requests), the proxy at rest.
    for port in (ngx.port, bw.port):
        run_client(["rate", "-p", str(port), "-r", "400", "-d", "0.5", "-c", "4", "-b",
                    str(TMP / "body.json")], timeout=30)
    time.sleep(1.0)
    results["idle"] = {"nginx": rss_kib(ngx.pid), "bulwark": rss_kib(bw.pid),
                       "nginx_master": rss_kib(ngx.proc.pid)}
    log(f"idle RSS: nginx worker {results['idle']['nginx']} KiB (master "
        f"{results['idle']['nginx_master']} KiB), bulwark {results['idle']['bulwark']} KiB")

    if "throughput" in ONLY:
        answering = answering_nginx().start()
        check_answers(answering.port, "nginx answering by itself")
        targets = {"nginx": (ngx.port, ngx.pid), "bulwark": (bw.port, bw.pid),
                   "ceiling": (origin.port, 0), "answering": (answering.port, answering.pid)}
        base = Bulwark("baseline-proxy", origin.port, baseline_bin).start() \
            if baseline_bin else None
        if base:
            check_answers(base.port, "baseline bulwark")
            targets["baseline"] = (base.port, base.pid)
        measure_throughput(targets, results)
        answering.stop()
        if base:
            base.stop()
        if not SMOKE:  # for context only: how fast the origin is on its own
            results["throughput"]["direct"] = {"rps": run_wrk(origin.port, SECONDS)["rps"]}
        results["idle"]["bulwark_after_load"] = rss_kib(bw.pid)
    if "latency" in ONLY:
        measure_latency({"direct": (origin.port, 0), "nginx": (ngx.port, ngx.pid),
                         "bulwark": (bw.port, bw.pid)}, results)
    ngx.stop()
    bw.stop()

    if pki:
        ngx = proxy_nginx("nginx-tls", tls_port, pki["ca_file"]).start()
        bw = Bulwark("bulwark-tls", tls_port, bulwark_bin, pki["ca_file"]).start()
        for port, what in ((ngx.port, "nginx over TLS"), (bw.port, "bulwark over TLS")):
            check_answers(port, what)
        answering = answering_nginx().start()  # the client side stays plain HTTP
        targets = {"nginx": (ngx.port, ngx.pid), "bulwark": (bw.port, bw.pid),
                   "ceiling": (tls_port, 0), "answering": (answering.port, answering.pid)}
        base = Bulwark("baseline-tls", tls_port, baseline_bin, pki["ca_file"]).start() \
            if baseline_bin else None
        if base:
            check_answers(base.port, "baseline bulwark over TLS")
            targets["baseline"] = (base.port, base.pid)
        measure_throughput(targets, results, "tls", pki["ca_file"])
        answering.stop()
        ngx.stop()
        bw.stop()
        if base:
            base.stop()

    if "streaming" in ONLY:
        # Streaming proxies, both in front of the paced SSE upstream.
        ngx = proxy_nginx("nginx-sse", sse.port).start()
        bw = Bulwark("bulwark-sse", sse.port, bulwark_bin).start()
        measure_streaming({"direct": (sse.port, 0), "nginx": (ngx.port, ngx.pid),
                           "bulwark": (bw.port, bw.pid)}, results)
        ngx.stop()
        bw.stop()
    if "memory" in ONLY:
        measure_memory(sse.port, results, bulwark_bin)
    origin.stop()
    results["meta"]["load_after"] = os.getloadavg()

    results["meta"]["elapsed_s"] = round(time.monotonic() - started, 1)
    results["failures"] = FAILURES
    rows = build_rows(results)
    results["table"] = [{k: v for k, v in r.items() if k not in ("nv", "bv")} for r in rows]
    (OUT / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    write_markdown(results, rows, OUT / "results.md")
    chart = write_chart(rows, OUT / "results.png")
    print()
    print((OUT / "results.md").read_text())
    log(f"done in {results['meta']['elapsed_s']} s: {OUT / 'results.md'}"
        + ("" if chart else " (no chart)"))
    if FAILURES:
        log(f"{len(FAILURES)} measurement(s) had errors:")
        for f in FAILURES:
            log(f"  {f}")
        return 1
    return 0 if chart else 1


if __name__ == "__main__":
    sys.exit(main())
