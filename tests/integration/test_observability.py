"""Observability through the real bulwark binary (admin endpoints, metrics, logs): what a reliability engineer sees on /metrics, /health/detailed and in the logs after
traffic they can reason about, checked the way they would check it — `promtool check metrics`,
a real Prometheus server scraping Bulwark and answering PromQL, JSON log lines, and the
absence of API keys and bodies from everything Bulwark prints.

Every test gets its own fake upstream(s) and bulwark. Backoff is short and deterministic
(base_delay 10ms, jitter none); the retry budget is out of reach. The only sleeps wait for
Bulwark's own clock (a breaker's recovery_timeout).

Run from tests/integration with PYTHONPATH=tests: python3 -m unittest -v test_observability
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.parse
import urllib.request
import uuid

from harness import (Bulwark, FakeUpstream, HttpResult, RawConnection, RawResponse,
                     bulwark_binary, chat_chunk, chat_completion, http_request, openai_error,
                     parse_text_log, raw_request)
from harness import CHAT_PATH, closed_port, merged, wait_until  # shared helpers

RESPONSES_PATH = "/v1/responses"
ATTEMPT_FAILED = "upstream attempt failed"
TRANSITION = "circuit breaker transition"

FAST = {
    "retry": {"max_attempts": 3, "base_delay": "10ms", "jitter": "none",
              "budget": {"ratio": 1.0, "min_per_second": 1000}},
    "timeouts": {"first_byte": "2s"},
    "circuit_breaker": {"failure_threshold": 1000, "min_requests": 1000},
}

# The documented families: family -> (type, labels of its samples; histograms add "le" to their buckets).
SPEC_FAMILIES = {
    "bulwark_requests_total": ("counter", {"upstream", "code"}),
    "bulwark_request_duration_seconds": ("histogram", {"upstream"}),
    "bulwark_upstream_attempts_total": ("counter", {"upstream", "outcome"}),
    "bulwark_upstream_time_to_first_byte_seconds": ("histogram", {"upstream"}),
    "bulwark_retries_total": ("counter", {"upstream", "reason"}),
    "bulwark_retry_budget_exhausted_total": ("counter", {"upstream"}),
    "bulwark_retry_delay_seconds": ("histogram", {"upstream", "source"}),
    "bulwark_circuit_breaker_state": ("gauge", {"upstream"}),
    "bulwark_circuit_breaker_transitions_total": ("counter", {"upstream", "to"}),
    "bulwark_circuit_breaker_rejections_total": ("counter", {"upstream"}),
    "bulwark_stream_interruptions_total": ("counter", {"upstream"}),
    "bulwark_inflight_requests": ("gauge", {"upstream"}),
    "bulwark_tokens_total": ("counter", {"upstream", "model", "kind"}),
    "bulwark_build_info": ("gauge", {"version"}),
    # Second round.
    "bulwark_request_body_bytes_total": ("counter", {"upstream"}),
    "bulwark_hedges_total": ("counter", {"upstream", "result"}),
    "bulwark_ratelimit_remaining": ("gauge", {"upstream", "model", "kind"}),
    "bulwark_ratelimit_limit": ("gauge", {"upstream", "model", "kind"}),
    "bulwark_admission_queue_depth": ("gauge", {"upstream"}),
    "bulwark_admission_wait_seconds": ("histogram", {"upstream"}),
    "bulwark_admission_rejections_total": ("counter", {"upstream", "reason"}),
    "bulwark_cluster_up": ("gauge", set()),
    "bulwark_cluster_errors_total": ("counter", {"op"}),
}
# Exported only in fleet mode (a cluster: section); test_fleet checks them.
FLEET_FAMILIES = {"bulwark_cluster_up", "bulwark_cluster_errors_total"}
# 10 ms ... 5 min: LLM latencies.
EXPECTED_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300]

ISO_8601 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)\Z")


# --- helpers ---------------------------------------------------------------------------------


def chat_body(model: str = "gpt-4o-mini", content: str = "hi", **extra) -> str:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": content}],
                       **extra})


def usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def chat_stream_events(model: str, text: str = "streamed", with_usage: dict | None = None,
                       cid: str = "chatcmpl-obs") -> list:
    events = [chat_chunk("", role="assistant", model=model, id=cid)]
    events += [chat_chunk(piece, model=model, id=cid) for piece in (text, " and", " done")]
    events.append(chat_chunk(finish_reason="stop", model=model, id=cid))
    if with_usage is not None:
        events.append(chat_chunk(model=model, id=cid, usage=with_usage))
    return events


def parse_iso(text: str) -> datetime.datetime:
    assert ISO_8601.match(text), f"not an ISO-8601 timestamp: {text!r}"
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


class Exposition:
    """A parsed Prometheus text exposition: # TYPE / # HELP lines and samples."""

    _SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?\Z")
    _LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

    def __init__(self, text: str):
        self.text = text
        self.types: dict[str, str] = {}
        self.helps: dict[str, str] = {}
        self.samples: list[tuple[str, dict, float]] = []
        for line in text.splitlines():
            if not line.strip():
                continue
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split(" ", 3)
                self.types[name] = kind
            elif line.startswith("# HELP "):
                parts = line.split(" ", 3)
                self.helps[parts[2]] = parts[3] if len(parts) > 3 else ""
            elif line.startswith("#"):
                continue
            else:
                match = self._SAMPLE.match(line)
                assert match, f"unparseable sample line: {line!r}"
                name, labels, value = match.groups()
                self.samples.append((name, dict(self._LABEL.findall(labels or "")),
                                     float(value)))

    def family_of(self, sample_name: str) -> str:
        for suffix in ("_bucket", "_sum", "_count"):
            base = sample_name[:-len(suffix)] if sample_name.endswith(suffix) else None
            if base and self.types.get(base) == "histogram":
                return base
        return sample_name

    def series(self, name: str, **labels: str) -> list[tuple[dict, float]]:
        """Samples of `name` whose labels include `labels`."""
        return [(l, v) for n, l, v in self.samples
                if n == name and all(l.get(k) == str(w) for k, w in labels.items())]

    def value(self, name: str, **labels: str) -> float | None:
        """The value of the one sample of `name` with exactly these labels (None if absent)."""
        found = [v for n, l, v in self.samples if n == name and l == {k: str(w) for k, w in
                                                                        labels.items()}]
        assert len(found) <= 1, (name, labels, found)
        return found[0] if found else None

    def table(self, name: str, key: str, **labels: str) -> dict[str, float]:
        """{label `key` value: sample value} for the samples of `name` matching `labels`."""
        return {l[key]: v for l, v in self.series(name, **labels)}


def scrape(bulwark: Bulwark) -> Exposition:
    resp = http_request(bulwark.admin_port, "GET", "/metrics")
    assert resp.status == 200, resp
    return Exposition(resp.body.decode("utf-8"))


def health(bulwark: Bulwark) -> dict:
    resp = http_request(bulwark.admin_port, "GET", "/health/detailed")
    assert resp.status == 200, (resp.status, resp.body)
    return resp.json()


def stream(bulwark: Bulwark, body: str, path: str = CHAT_PATH,
           headers: list | None = None) -> RawResponse:
    """A streamed request read to its end (or until bulwark closes)."""
    with RawConnection(bulwark.port, timeout=15) as conn:
        conn.send(raw_request("POST", path, body, headers=[
            ("Content-Type", "application/json"), *(headers or [])]))
        return conn.read_response("POST")


class ObservabilityTestCase(unittest.TestCase):

    def start_fake(self) -> FakeUpstream:
        fake = FakeUpstream().start()
        self.addCleanup(fake.stop)
        return fake

    def start_bulwark(self, upstreams: list, config: dict | None = None, **kwargs) -> Bulwark:
        bulwark = Bulwark(upstreams, merged(FAST, config or {}), **kwargs).start()
        self.addCleanup(bulwark.stop)
        return bulwark

    def post(self, bulwark: Bulwark, body: str, path: str = CHAT_PATH,
             headers: dict | None = None) -> HttpResult:
        return http_request(bulwark.port, "POST", path, body, headers=headers, timeout=15)

    def assert_attempts(self, resp: HttpResult | RawResponse, status: int, attempts: int,
                        upstream: str = "fake0") -> None:
        self.assertEqual(resp.status, status, bytes(resp.body)[:300])
        self.assertEqual(resp.header("x-bulwark-attempts"), str(attempts))
        self.assertEqual(resp.header("x-bulwark-upstream"), upstream)


# --- 1. /metrics after a scripted mix of traffic ---------------------------------------------


class MetricsTest(ObservabilityTestCase):
    maxDiff = None

    def test_metrics_after_a_scripted_mix_of_traffic(self):
        """Each request below has a known effect on every family; /metrics must show exactly
        that, in a form promtool accepts."""
        fake = self.start_fake()
        down = f"http://127.0.0.1:{closed_port()}"  # connect_error on every attempt
        # fake0 is the primary; "down" is the failover target. Its breaker opens after two
        # connect errors, so later retries skip it (a rejection) and go back to fake0.
        bulwark = self.start_bulwark([fake, ("down", down)], {
            "circuit_breaker": {"failure_threshold": 2, "recovery_timeout": "60s"}})

        # P1: 429 with a server hint -> failover to "down" (connect_error) -> fake0 200.
        fake.script([{"status": 429, "headers": [("retry-after-ms", "20")]}])
        self.assert_attempts(self.post(bulwark, chat_body()), 200, 3)
        # P2: 502 -> "down" (connect_error: its breaker opens) -> fake0 200.
        fake.script([{"status": 502}])
        self.assert_attempts(self.post(bulwark, chat_body()), 200, 3)
        # A: the 503-then-200 request: one 503 attempt, one retry; "down" is skipped (OPEN).
        fake.script([{"status": 503}])
        self.assert_attempts(self.post(bulwark, chat_body()), 200, 2)
        # B: a plain JSON completion with usage, and where gpt-4o's rate limit stands.
        fake.script([{"body": chat_completion(model="gpt-4o", prompt_tokens=120,
                                              completion_tokens=30),
                      "headers": [("x-ratelimit-limit-requests", "500"),
                                  ("x-ratelimit-remaining-requests", "499"),
                                  ("x-ratelimit-limit-tokens", "30000"),
                                  ("x-ratelimit-remaining-tokens", "28500"),
                                  ("x-ratelimit-reset-tokens", "3s")]}])
        self.assert_attempts(self.post(bulwark, chat_body("gpt-4o")), 200, 1)
        # C: a stream with include_usage whose last chunk carries the usage.
        fake.script([{"sse": chat_stream_events("o3-mini", with_usage=usage(50, 250))}])
        resp = stream(bulwark, chat_body("o3-mini", stream=True,
                                         stream_options={"include_usage": True}))
        self.assert_attempts(resp, 200, 1)
        self.assertTrue(resp.complete)
        # D: a 400 (not retried).
        fake.script([{"status": 400, "body": openai_error("bad", "invalid_request_error")}])
        self.assert_attempts(self.post(bulwark, chat_body()), 400, 1)
        # E: a stream cut after 2 chunks (its usage chunk never comes): an interruption.
        fake.script([{"sse": chat_stream_events("gpt-4.1", with_usage=usage(1, 1)),
                      "cut_after": 2}])
        resp = stream(bulwark, chat_body("gpt-4.1", stream=True,
                                         stream_options={"include_usage": True}))
        self.assert_attempts(resp, 200, 1)
        self.assertFalse(resp.complete)
        self.assertIn(b'"stream_interrupted"', bytes(resp.body))
        # F: the Responses API, usage as input_tokens / output_tokens.
        fake.script([{"body": {"id": "resp_1", "object": "response", "model": "gpt-5",
                               "status": "completed", "output": [],
                               "usage": {"input_tokens": 40, "output_tokens": 60,
                                         "total_tokens": 100}}}])
        self.assert_attempts(self.post(bulwark, json.dumps({"model": "gpt-5", "input": "hi"}),
                                       RESPONSES_PATH), 200, 1)
        bulwark.wait_for_logs(lambda e: e.get("msg") == "request", 8)

        metrics_text = http_request(bulwark.admin_port, "GET", "/metrics")
        self.assertEqual(metrics_text.status, 200)
        self.assertTrue(metrics_text.header("content-type", "").startswith("text/plain"),
                        metrics_text.headers)
        self.assert_promtool_accepts(metrics_text.body)
        m = Exposition(metrics_text.body.decode("utf-8"))
        self.assert_spec_families(m)

        # Final statuses: 7 x 200 (the cut stream's 200 was sent), one 400; all on fake0.
        self.assertEqual(m.table("bulwark_requests_total", "code", upstream="fake0"),
                         {"200": 7, "400": 1})
        self.assertEqual(m.series("bulwark_requests_total", upstream="down"), [])
        self.assertEqual(m.table("bulwark_upstream_attempts_total", "outcome", upstream="fake0"),
                         {"200": 7, "429": 1, "502": 1, "503": 1, "400": 1})
        self.assertEqual(m.table("bulwark_upstream_attempts_total", "outcome", upstream="down"),
                         {"connect_error": 2})
        self.assertEqual(m.table("bulwark_retries_total", "reason", upstream="fake0"),
                         {"429": 1, "502": 1, "503": 1})
        self.assertEqual(m.table("bulwark_retries_total", "reason", upstream="down"),
                         {"connect_error": 2})
        # Retry waits: the 429's 20 ms hint (server), the other retries' backoff.
        self.assertEqual(m.value("bulwark_retry_delay_seconds_count", upstream="fake0",
                                 source="server"), 1)
        self.assertAlmostEqual(m.value("bulwark_retry_delay_seconds_sum", upstream="fake0",
                                       source="server"), 0.02, places=3)
        self.assertEqual(m.value("bulwark_retry_delay_seconds_count", upstream="fake0",
                                 source="backoff"), 2)
        self.assertEqual(m.value("bulwark_retry_delay_seconds_count", upstream="down",
                                 source="backoff"), 2)
        for upstream in ("fake0", "down"):
            self.assertEqual(m.value("bulwark_retry_budget_exhausted_total",
                                     upstream=upstream), 0)
            self.assertEqual(m.value("bulwark_inflight_requests", upstream=upstream), 0)
        # The rate limit fake0 reported for gpt-4o; nothing queued or refused.
        self.assertEqual({(l["model"], l["kind"]): v
                          for l, v in m.series("bulwark_ratelimit_limit", upstream="fake0")},
                         {("gpt-4o", "requests"): 500, ("gpt-4o", "tokens"): 30000})
        self.assertEqual({(l["model"], l["kind"]): v
                          for l, v in m.series("bulwark_ratelimit_remaining", upstream="fake0")},
                         {("gpt-4o", "requests"): 499, ("gpt-4o", "tokens"): 28500})
        self.assertEqual(m.value("bulwark_admission_queue_depth", upstream="fake0"), 0)
        self.assertEqual(m.table("bulwark_admission_rejections_total", "reason", upstream="fake0"),
                         {"queue_full": 0, "wait_exceeded": 0})
        # Every request that names a model was admitted at once: 7 on fake0 (the 400 too; the
        # stream cut and the Responses call included), plus the retries that came back to it.
        self.assertEqual(m.value("bulwark_admission_wait_seconds_bucket", upstream="fake0",
                                 le="0.01"),
                         m.value("bulwark_admission_wait_seconds_count", upstream="fake0"))
        # The breaker: fake0 stayed closed; "down" opened once and turned one retry away.
        self.assertEqual(m.value("bulwark_circuit_breaker_state", upstream="fake0"), 0)
        self.assertEqual(m.value("bulwark_circuit_breaker_state", upstream="down"), 1)
        # Every transition series exists from the start (at 0), so increase() sees a first trip.
        self.assertEqual(m.table("bulwark_circuit_breaker_transitions_total", "to",
                                 upstream="down"), {"OPEN": 1, "HALF_OPEN": 0, "CLOSED": 0})
        self.assertEqual(m.table("bulwark_circuit_breaker_transitions_total", "to",
                                 upstream="fake0"), {"OPEN": 0, "HALF_OPEN": 0, "CLOSED": 0})
        self.assertEqual(m.value("bulwark_circuit_breaker_rejections_total", upstream="down"), 1)
        self.assertEqual(m.value("bulwark_circuit_breaker_rejections_total", upstream="fake0"), 0)
        self.assertEqual(m.value("bulwark_stream_interruptions_total", upstream="fake0"), 1)
        self.assertEqual(m.value("bulwark_stream_interruptions_total", upstream="down"), 0)
        # Tokens: JSON (3 x the fake's default 9/7, and gpt-4o), the stream's usage chunk,
        # the Responses API; nothing for the cut stream.
        tokens = {(l["model"], l["kind"]): v
                  for l, v in m.series("bulwark_tokens_total", upstream="fake0")}
        self.assertEqual(tokens, {
            ("gpt-4o-mini", "prompt"): 27, ("gpt-4o-mini", "completion"): 21,
            ("gpt-4o", "prompt"): 120, ("gpt-4o", "completion"): 30,
            ("o3-mini", "prompt"): 50, ("o3-mini", "completion"): 250,
            ("gpt-5", "prompt"): 40, ("gpt-5", "completion"): 60,
        })
        # Histograms: one duration per request, one time-to-first-byte per fake0 attempt.
        self.assertEqual(m.value("bulwark_request_duration_seconds_count", upstream="fake0"), 8)
        self.assertEqual(m.value("bulwark_request_duration_seconds_bucket", upstream="fake0",
                                 le="+Inf"), 8)
        self.assertGreater(m.value("bulwark_request_duration_seconds_sum", upstream="fake0"), 0)
        self.assertEqual(m.value("bulwark_upstream_time_to_first_byte_seconds_count",
                                 upstream="fake0"), 11)
        self.assertIsNone(m.value("bulwark_upstream_time_to_first_byte_seconds_count",
                                  upstream="down"))
        for family in ("bulwark_request_duration_seconds",
                       "bulwark_upstream_time_to_first_byte_seconds",
                       "bulwark_retry_delay_seconds"):
            buckets = [l["le"] for l, _ in m.series(family + "_bucket", upstream="fake0")]
            buckets = list(dict.fromkeys(buckets))  # retry delays: one set per source
            self.assertEqual(buckets[-1], "+Inf", family)
            self.assertEqual([float(b) for b in buckets[:-1]], EXPECTED_BUCKETS, family)
        version = subprocess.run([str(bulwark_binary()), "--version"], capture_output=True,
                                 text=True, check=True).stdout.split()[-1]
        self.assertEqual(m.series("bulwark_build_info"), [({"version": version}, 1.0)])

    def test_families_and_promtool_on_a_fresh_bulwark(self):
        """Before any traffic, /metrics is already valid and shows the per-upstream gauges
        and the counters an alert would watch, at zero."""
        fake = self.start_fake()
        bulwark = self.start_bulwark([fake, ("backup", fake)])
        resp = http_request(bulwark.admin_port, "GET", "/metrics")
        self.assertEqual(resp.status, 200)
        self.assert_promtool_accepts(resp.body)
        m = Exposition(resp.body.decode())
        for upstream in ("fake0", "backup"):
            for family in ("bulwark_circuit_breaker_state", "bulwark_inflight_requests",
                           "bulwark_retry_budget_exhausted_total",
                           "bulwark_circuit_breaker_rejections_total",
                           "bulwark_stream_interruptions_total"):
                self.assertEqual(m.value(family, upstream=upstream), 0, (family, upstream))
        self.assertEqual(len(m.series("bulwark_build_info")), 1)
        for name, kind in m.types.items():
            self.assertIn(name, SPEC_FAMILIES, "a family the metric catalogue does not list")
            self.assertEqual(kind, SPEC_FAMILIES[name][0], name)

    # -- assertions

    def assert_promtool_accepts(self, text: bytes) -> None:
        promtool = shutil.which("promtool")
        if promtool is None:
            self.skipTest("promtool not installed (Debian package prometheus; scripts/deps.sh)")
        result = subprocess.run([promtool, "check", "metrics"], input=text,
                                capture_output=True, timeout=30)
        self.assertEqual(result.returncode, 0,
                         f"promtool check metrics failed (exit {result.returncode}):\n"
                         f"{result.stdout.decode()}{result.stderr.decode()}")

    def assert_spec_families(self, m: Exposition) -> None:
        """Every documented family with its type, a HELP line, its labels; and no other."""
        bulwark_types = {n: t for n, t in m.types.items() if n.startswith("bulwark_")}
        self.assertEqual(bulwark_types, {n: t for n, (t, _) in SPEC_FAMILIES.items()
                                         if n not in FLEET_FAMILIES})
        for name in set(SPEC_FAMILIES) - FLEET_FAMILIES:
            self.assertTrue(m.helps.get(name), f"{name} has no HELP text")
        for sample_name, labels, _ in m.samples:
            family = m.family_of(sample_name)
            self.assertIn(family, SPEC_FAMILIES, sample_name)
            kind, expected = SPEC_FAMILIES[family]
            if sample_name.endswith("_bucket") and kind == "histogram":
                expected = expected | {"le"}
            self.assertEqual(set(labels), expected, f"labels of {sample_name}: {labels}")


# --- 2. a real Prometheus server scrapes Bulwark ---------------------------------------------


def free_port() -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def get_json(url: str, timeout: float = 2.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


class PrometheusServer:
    """`prometheus` on 127.0.0.1 (a free port), scraping `targets` every second, with its
    TSDB in a temporary directory. Bounded: every wait has a timeout."""

    def __init__(self, targets: list[str], job: str = "bulwark"):
        self.targets = targets
        self.job = job
        self.dir = tempfile.mkdtemp(prefix="bulwark-prom-")
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.log_path = os.path.join(self.dir, "prometheus.log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, attempts: int = 3) -> "PrometheusServer":
        config = os.path.join(self.dir, "prometheus.yml")
        with open(config, "w") as f:
            f.write("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
                    "  evaluation_interval: 1s\n"
                    f"scrape_configs:\n  - job_name: {json.dumps(self.job)}\n"
                    f"    static_configs:\n      - targets: {json.dumps(self.targets)}\n")
        for _ in range(attempts):  # the free port may be taken between probe and bind
            self.port = free_port()
            with open(self.log_path, "wb") as log:
                self.proc = subprocess.Popen(
                    ["prometheus", f"--config.file={config}",
                     f"--storage.tsdb.path={os.path.join(self.dir, 'data')}",
                     f"--web.listen-address=127.0.0.1:{self.port}"],
                    cwd=self.dir, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    with urllib.request.urlopen(self.url + "/-/ready", timeout=1) as resp:
                        if resp.status == 200:
                            return self
                except OSError:
                    pass
                time.sleep(0.1)
            self.stop(keep_dir=True)
        raise AssertionError(f"prometheus did not become ready:\n{self.log()}")

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def stop(self, keep_dir: bool = False) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        if not keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def query(self, promql: str) -> list[dict]:
        url = self.url + "/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        answer = get_json(url)
        assert answer.get("status") == "success", answer
        return answer["data"]["result"]


@unittest.skipUnless(shutil.which("prometheus"), "prometheus not installed (scripts/deps.sh)")
class PrometheusScrapeTest(ObservabilityTestCase):

    def test_prometheus_scrapes_bulwark_and_answers_promql(self):
        started = time.monotonic()
        fake = self.start_fake()
        bulwark = self.start_bulwark([fake])
        for _ in range(3):
            self.assertEqual(self.post(bulwark, chat_body()).status, 200)
        fake.push({"status": 400})
        self.assertEqual(self.post(bulwark, chat_body()).status, 400)

        prometheus = PrometheusServer([f"127.0.0.1:{bulwark.admin_port}"]).start()
        self.addCleanup(prometheus.stop)

        def target_up():
            targets = get_json(prometheus.url + "/api/v1/targets")["data"]["activeTargets"]
            mine = [t for t in targets if t["labels"].get("job") == "bulwark"]
            return mine[0] if mine and mine[0]["health"] == "up" else None
        try:
            target = wait_until(target_up, 10, 0.2, "the scrape target to be up")
        except AssertionError:
            raise AssertionError(f"target never up: "
                                 f"{get_json(prometheus.url + '/api/v1/targets')}\n"
                                 f"{prometheus.log()}")
        self.assertEqual(target["lastError"], "")
        self.assertEqual(target["scrapeUrl"], f"http://127.0.0.1:{bulwark.admin_port}/metrics")

        def requests_by_code():
            result = prometheus.query("bulwark_requests_total")
            return {r["metric"]["code"]: (r["metric"], float(r["value"][1])) for r in result}
        by_code = wait_until(requests_by_code, 5, 0.2, "bulwark_requests_total in Prometheus")
        self.assertEqual({code: value for code, (_, value) in by_code.items()},
                         {"200": 3.0, "400": 1.0})
        labels, _ = by_code["200"]
        self.assertEqual(labels, {"__name__": "bulwark_requests_total", "code": "200",
                                  "upstream": "fake0", "job": "bulwark",
                                  "instance": f"127.0.0.1:{bulwark.admin_port}"})
        # An aggregate an SRE would alert on: the share of requests that ended in an error.
        errors = prometheus.query('sum(bulwark_requests_total{code=~"[45].."}) / '
                                  'sum(bulwark_requests_total)')
        self.assertAlmostEqual(float(errors[0]["value"][1]), 0.25)
        self.assertEqual(prometheus.query("bulwark_circuit_breaker_state")[0]["value"][1], "0")
        prometheus.stop()
        self.assertLess(time.monotonic() - started, 25, "keep this test bounded")


# --- 3. /healthz /readyz /health/detailed ----------------------------------------------------


class HealthTest(ObservabilityTestCase):

    def assert_service_shape(self, service: dict) -> None:
        self.assertEqual(set(service), {"circuitBreaker", "failureCount", "healthy",
                                        "lastFailureTime", "inflight", "quotas"})
        self.assertIs(type(service["quotas"]), dict)
        self.assertIn(service["circuitBreaker"], ("CLOSED", "OPEN", "HALF_OPEN"))
        self.assertIs(type(service["failureCount"]), int)
        self.assertIs(type(service["healthy"]), bool)
        self.assertIs(type(service["inflight"]), int)
        if service["lastFailureTime"] is not None:
            parse_iso(service["lastFailureTime"])

    def assert_document_shape(self, doc: dict, upstreams: list[str]) -> None:
        self.assertEqual(set(doc), {"status", "timestamp", "services"})
        self.assertIn(doc["status"], ("ok", "degraded", "down"))
        stamp = parse_iso(doc["timestamp"])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.assertLess(abs((now - stamp).total_seconds()), 5, doc["timestamp"])
        self.assertEqual(list(doc["services"]), upstreams)  # configured order, by name
        for service in doc["services"].values():
            self.assert_service_shape(service)

    def test_liveness_readiness_and_detailed_health_when_all_is_well(self):
        fake = self.start_fake()
        bulwark = self.start_bulwark([("primary", fake), ("fallback", fake)])
        live = http_request(bulwark.admin_port, "GET", "/healthz")
        self.assertEqual((live.status, live.body.strip()), (200, b"ok"))
        ready = http_request(bulwark.admin_port, "GET", "/readyz")
        self.assertEqual((ready.status, ready.body.strip()), (200, b"ready"))
        resp = http_request(bulwark.admin_port, "GET", "/health/detailed")
        self.assertEqual(resp.status, 200)
        self.assertTrue(resp.header("content-type", "").startswith("application/json"),
                        resp.headers)
        doc = resp.json()
        self.assert_document_shape(doc, ["primary", "fallback"])
        self.assertEqual(doc["status"], "ok")
        for service in doc["services"].values():
            self.assertEqual(service, {"circuitBreaker": "CLOSED", "failureCount": 0,
                                       "healthy": True, "lastFailureTime": None,
                                       "inflight": 0, "quotas": {}})

    def test_breaker_open_shows_down_then_recovers_to_ok(self):
        fake = self.start_fake()
        bulwark = self.start_bulwark([fake], {"circuit_breaker": {
            "failure_threshold": 3, "recovery_timeout": "1s"}})
        fake.script([{"status": 503}] * 3)
        before = datetime.datetime.now(datetime.timezone.utc)
        self.assert_attempts(self.post(bulwark, chat_body()), 503, 3)
        after = datetime.datetime.now(datetime.timezone.utc)
        opened_at = time.monotonic()

        doc = health(bulwark)
        self.assert_document_shape(doc, ["fake0"])
        self.assertEqual(doc["status"], "down")
        service = doc["services"]["fake0"]
        self.assertEqual(service["circuitBreaker"], "OPEN")
        self.assertIs(service["healthy"], False)
        self.assertGreaterEqual(service["failureCount"], 3)
        last_failure = parse_iso(service["lastFailureTime"])
        slack = datetime.timedelta(milliseconds=50)
        self.assertTrue(before - slack <= last_failure <= after + slack,
                        (before, last_failure, after))
        m = scrape(bulwark)
        self.assertEqual(m.value("bulwark_circuit_breaker_state", upstream="fake0"), 1)
        self.assertEqual(m.table("bulwark_circuit_breaker_transitions_total", "to",
                                 upstream="fake0"), {"OPEN": 1, "HALF_OPEN": 0, "CLOSED": 0})
        # While OPEN, requests fail fast and count as rejections.
        rejected = self.post(bulwark, chat_body())
        self.assertEqual(rejected.status, 503)
        self.assertEqual(rejected.json()["error"]["code"], "circuit_open")
        self.assertEqual(scrape(bulwark).value("bulwark_circuit_breaker_rejections_total",
                                               upstream="fake0"), 1)

        # After recovery_timeout a probe succeeds: CLOSED, healthy, status ok again.
        time.sleep(max(0.0, opened_at + 1.1 - time.monotonic()))  # Bulwark's clock
        self.assert_attempts(self.post(bulwark, chat_body()), 200, 1)
        doc = health(bulwark)
        self.assertEqual(doc["status"], "ok")
        self.assertEqual(doc["services"]["fake0"]["circuitBreaker"], "CLOSED")
        self.assertIs(doc["services"]["fake0"]["healthy"], True)
        self.assertEqual(doc["services"]["fake0"]["failureCount"], 0)
        self.assertEqual(parse_iso(doc["services"]["fake0"]["lastFailureTime"]), last_failure)
        m = scrape(bulwark)
        self.assertEqual(m.value("bulwark_circuit_breaker_state", upstream="fake0"), 0)
        self.assertEqual(m.table("bulwark_circuit_breaker_transitions_total", "to",
                                 upstream="fake0"), {"OPEN": 1, "HALF_OPEN": 1, "CLOSED": 1})
        # Log lines are written by a background thread: wait for the last one to arrive.
        bulwark.wait_for_log(lambda e: e.get("msg") == TRANSITION and e.get("to") == "CLOSED")
        transitions = [(e["from"], e["to"], e["level"]) for e in bulwark.logs
                       if e.get("msg") == TRANSITION]
        self.assertEqual(transitions, [("CLOSED", "OPEN", "error"), ("OPEN", "HALF_OPEN", "info"),
                                       ("HALF_OPEN", "CLOSED", "info")])

    def test_one_open_breaker_with_a_healthy_fallback_is_degraded(self):
        primary = self.start_fake()
        fallback = self.start_fake()
        bulwark = self.start_bulwark([("primary", primary), ("fallback", fallback)],
                                     {"circuit_breaker": {"failure_threshold": 2,
                                                          "recovery_timeout": "60s"}})
        primary.script([{"status": 503}, {"status": 503}])
        for _ in range(2):  # each: primary 503 -> fallback 200
            self.assert_attempts(self.post(bulwark, chat_body()), 200, 2, "fallback")
        doc = health(bulwark)
        self.assert_document_shape(doc, ["primary", "fallback"])
        self.assertEqual(doc["status"], "degraded")
        self.assertEqual(doc["services"]["primary"]["circuitBreaker"], "OPEN")
        self.assertIs(doc["services"]["primary"]["healthy"], False)
        self.assertGreaterEqual(doc["services"]["primary"]["failureCount"], 2)
        parse_iso(doc["services"]["primary"]["lastFailureTime"])
        fallback = doc["services"]["fallback"]
        self.assertEqual({k: v for k, v in fallback.items() if k != "quotas"}, {
            "circuitBreaker": "CLOSED", "failureCount": 0, "healthy": True,
            "lastFailureTime": None, "inflight": 0})
        # The fallback answered gpt-4o-mini requests, without rate-limit headers: a quota
        # that knows no limit yet.
        self.assertEqual(fallback["quotas"]["gpt-4o-mini"]["tokens"]["limit"], None)
        self.assertEqual(fallback["quotas"]["gpt-4o-mini"]["queued"], 0)
        # Requests now go straight to the fallback.
        self.assert_attempts(self.post(bulwark, chat_body()), 200, 1, "fallback")

    def test_inflight_shows_a_request_in_progress(self):
        fake = self.start_fake()
        bulwark = self.start_bulwark([fake])
        fake.push({"delay": 30})  # held until the test lets go (the client leaves)
        conn = RawConnection(bulwark.port, timeout=15)
        self.addCleanup(conn.close)
        conn.send(raw_request("POST", CHAT_PATH, chat_body(),
                              headers=[("Content-Type", "application/json")]))
        fake.wait_for_requests(1)
        doc = wait_until(lambda: (d := health(bulwark))["services"]["fake0"]["inflight"] == 1
                         and d, 5, what="inflight 1 in /health/detailed")
        self.assertEqual(doc["status"], "ok")
        self.assertEqual(scrape(bulwark).value("bulwark_inflight_requests", upstream="fake0"), 1)
        conn.close()  # the client leaves: the upstream transfer is cancelled
        wait_until(lambda: health(bulwark)["services"]["fake0"]["inflight"] == 0, 5,
                   what="inflight back to 0")
        self.assertEqual(scrape(bulwark).value("bulwark_inflight_requests", upstream="fake0"), 0)
        access = bulwark.wait_for_log(lambda e: e.get("msg") == "request")
        self.assertEqual((access["status"], access["client_left"]), (499, True))

    def test_readyz_turns_503_while_draining(self):
        fake = self.start_fake()
        bulwark = self.start_bulwark([fake], {"server": {"shutdown_grace": "5s"}})
        fake.push({"delay": 1.0})
        result: dict = {}
        client = threading.Thread(target=lambda: result.update(
            resp=self.post(bulwark, chat_body())))
        client.start()
        fake.wait_for_requests(1)
        bulwark.signal(signal.SIGTERM)
        bulwark.wait_for_log(lambda e: e.get("msg", "").startswith("shutting down"))
        ready = http_request(bulwark.admin_port, "GET", "/readyz")
        self.assertEqual((ready.status, ready.body.strip()), (503, b"draining"))
        live = http_request(bulwark.admin_port, "GET", "/healthz")
        self.assertEqual(live.status, 200)  # still alive: only not ready
        client.join(10)
        self.assertEqual(result["resp"].status, 200)  # the in-flight request finished
        self.assertEqual(bulwark.wait_exit(10), 0)


# --- 4. logs ---------------------------------------------------------------------------------


LEVELS = {"debug", "info", "warn", "error"}


class LogTest(ObservabilityTestCase):

    def test_every_line_is_a_json_object_with_ts_level_msg(self):
        primary = self.start_fake()
        fallback = self.start_fake()
        bulwark = self.start_bulwark([("primary", primary), ("fallback", fallback)], {
            "log": {"level": "debug"},
            "circuit_breaker": {"failure_threshold": 2, "recovery_timeout": "60s"}})
        primary.script([{"status": 503, "headers": [("x-request-id", "req_upstream_1")]},
                        {"status": 500}])
        self.assert_attempts(self.post(bulwark, chat_body()), 200, 2, "fallback")  # 503 -> ok
        fallback.push({"sse": chat_stream_events("gpt-4o-mini"), "cut_after": 2})
        resp = stream(bulwark, chat_body(stream=True))  # 500 (opens) -> fallback: cut
        self.assertFalse(resp.complete)
        fallback.push({"delay": 30})
        with RawConnection(bulwark.port) as conn:  # a client that leaves early (499)
            conn.send(raw_request("POST", CHAT_PATH, chat_body(),
                                  headers=[("Content-Type", "application/json")]))
            wait_until(lambda: len(fallback.requests) == 3, 5, what="the slow request")
        bulwark.wait_for_logs(lambda e: e.get("msg") == "request", 3)
        bulwark.stop()  # the shutdown lines are lines too

        self.assertEqual(bulwark.stderr_lines, [])
        self.assertGreater(len(bulwark.logs), 6)
        for entry in bulwark.logs:
            self.assertNotIn("_raw", entry, f"not a JSON object: {entry.get('_raw')!r}")
            self.assertIsInstance(entry.get("msg"), str, entry)
            self.assertTrue(entry["msg"], entry)
            self.assertIn(entry.get("level"), LEVELS, entry)
            parse_iso(entry.get("ts", ""))

        by_msg: dict[str, list[dict]] = {}
        for entry in bulwark.logs:
            by_msg.setdefault(entry["msg"], []).append(entry)
        failed = by_msg[ATTEMPT_FAILED]
        self.assertEqual(len(failed), 2)
        for entry in failed:
            self.assertEqual(entry["level"], "warn")
            self.assertIsInstance(entry["request_id"], str)
            self.assertTrue(entry["request_id"])
            self.assertEqual(entry["upstream"], "primary")
            self.assertEqual((entry["attempt"], entry["max_attempts"]), (1, 3))
            self.assertIs(entry["retryable"], True)
            self.assertIs(entry["breaker_counted"], True)
            self.assertIsInstance(entry["delay_ms"], int)
            self.assertIn("upstream_request_id", entry)
        self.assertEqual([e["outcome"] for e in failed], ["503", "500"])
        self.assertEqual(failed[0]["upstream_request_id"], "req_upstream_1")

        transitions = by_msg[TRANSITION]
        self.assertEqual([(e["upstream"], e["from"], e["to"], e["level"]) for e in transitions],
                         [("primary", "CLOSED", "OPEN", "error")])
        self.assertIn("model", transitions[0])

        access = by_msg["request"]
        self.assertEqual(len(access), 3)
        for entry in access:
            self.assertEqual(entry["level"], "info")
            for key, kind in (("request_id", str), ("method", str), ("path", str),
                              ("status", int), ("attempts", int), ("upstream", str),
                              ("duration_ms", int), ("bytes", int),
                              ("upstream_request_id", str), ("client_left", bool)):
                self.assertIsInstance(entry.get(key), kind, (key, entry))
        first, streamed, left = access
        self.assertEqual((first["method"], first["path"], first["status"], first["attempts"],
                          first["upstream"], first["client_left"]),
                         ("POST", CHAT_PATH, 200, 2, "fallback", False))
        self.assertEqual(first["request_id"], failed[0]["request_id"])
        self.assertEqual(first["upstream_request_id"], "req_1")  # the fallback's x-request-id
        self.assertGreater(first["bytes"], 0)
        self.assertEqual((streamed["status"], streamed["attempts"]), (200, 2))
        self.assertEqual(streamed["request_id"], failed[1]["request_id"])
        self.assertEqual(len({e["request_id"] for e in access}), 3)
        self.assertEqual((left["status"], left["client_left"]), (499, True))
        interrupted = by_msg["stream interrupted after the commit point"]
        self.assertEqual(interrupted[0]["request_id"], streamed["request_id"])

    def test_text_format_gives_plain_lines(self):
        fake = self.start_fake()
        bulwark = self.start_bulwark([fake], {"log": {"format": "text"}})
        fake.push({"status": 503})
        self.assert_attempts(self.post(bulwark, chat_body()), 200, 2)
        bulwark.wait_for_log(lambda e: " request " in e.get("_raw", ""))
        bulwark.stop()
        self.assertGreater(len(bulwark.logs), 3)
        parsed = []
        for entry in bulwark.logs:
            line = entry.get("_raw")
            self.assertIsNotNone(line, f"a JSON line in text mode: {entry}")
            with self.assertRaises(ValueError, msg=line):
                json.loads(line)
            fields = parse_text_log(line)
            self.assertIsNotNone(fields, line)
            parse_iso(fields["ts"])
            self.assertIn(fields["level"], LEVELS, line)
            parsed.append(fields)
        failed = [f for f in parsed if f["msg"] == ATTEMPT_FAILED]
        self.assertEqual([(f["level"], f["outcome"], f["attempt"]) for f in failed],
                         [("warn", "503", "1")])
        access = [f for f in parsed if f["msg"] == "request"]
        self.assertEqual([(a["status"], a["attempts"], a["path"]) for a in access],
                         [("200", "2", CHAT_PATH)])

    def test_api_keys_and_bodies_never_appear_in_output(self):
        token = uuid.uuid4().hex
        client_key = f"sk-live-SECRET-client-{token}"
        upstream_key = f"sk-proj-SECRET-upstream-{token}"
        azure_key = f"azure-SECRET-{token}"
        request_marker = f"REQUEST-BODY-MARKER-{token}"
        response_marker = f"RESPONSE-BODY-MARKER-{token}"
        error_marker = f"ERROR-BODY-MARKER-{token}"
        secrets = [client_key, upstream_key, azure_key, request_marker, response_marker,
                   error_marker, token]

        fake = self.start_fake()
        bulwark = self.start_bulwark([{"fake": fake, "name": "fake0", "api_key": "${KEY}"}], {
            "log": {"level": "debug"},
            "circuit_breaker": {"failure_threshold": 2, "recovery_timeout": "60s"},
        }, env={"KEY": upstream_key})
        self.assertNotIn(upstream_key, bulwark.config_text)  # the config holds ${KEY} only
        headers = {"Authorization": f"Bearer {client_key}", "api-key": azure_key,
                   "OpenAI-Organization": "org-fake"}
        body = chat_body(content=f"please keep {request_marker} private")

        # Success, with the marker in both bodies.
        fake.push({"body": chat_completion(f"the answer: {response_marker}")})
        resp = self.post(bulwark, body, headers=headers)
        self.assertEqual(resp.status, 200)
        self.assertIn(response_marker.encode(), resp.body)
        # An error body with the marker, retried; then a stream carrying the marker.
        fake.script([{"status": 500, "body": openai_error(f"boom {error_marker}")},
                     {"sse": chat_stream_events("gpt-4o-mini", text=response_marker)}])
        streamed = stream(bulwark, chat_body(content=request_marker, stream=True),
                          headers=list(headers.items()))
        self.assertIn(response_marker.encode(), bytes(streamed.body))
        # A 401 (not retried), an interrupted stream, a key in the query string.
        fake.script([{"status": 401, "body": openai_error(f"bad key {error_marker}",
                                                          "invalid_request_error")},
                     {"sse": chat_stream_events("gpt-4o-mini", text=response_marker),
                      "cut_after": 3}])
        self.assertEqual(self.post(bulwark, body, headers=headers).status, 401)
        stream(bulwark, chat_body(content=request_marker, stream=True),
               path=f"{CHAT_PATH}?api-key={azure_key}", headers=list(headers.items()))
        # Two upstream failures in a row: the breaker opens, the next request is rejected.
        fake.script([{"status": 503, "body": openai_error(error_marker)}] * 2)
        self.assertEqual(self.post(bulwark, body, headers=headers).status, 503)
        self.assertEqual(self.post(bulwark, body, headers=headers).status, 503)
        # A reload (SIGHUP) re-reads ${KEY}.
        bulwark.signal(signal.SIGHUP)
        bulwark.wait_for_log(lambda e: e.get("msg") == "configuration reloaded")

        # The key Bulwark sent upstream is the configured one, never the client's.
        sent = fake.requests[0]
        self.assertEqual(sent.header("authorization"), f"Bearer {upstream_key}")
        admin = (http_request(bulwark.admin_port, "GET", "/metrics").body +
                 http_request(bulwark.admin_port, "GET", "/health/detailed").body).decode()
        bulwark.wait_for_logs(lambda e: e.get("msg") == "request", 6)
        bulwark.stop()
        stdout = "\n".join(e.get("_raw") or json.dumps(e) for e in bulwark.logs)
        stderr = "\n".join(bulwark.stderr_lines)
        self.assertGreater(len(bulwark.logs), 10)
        for name, text in (("stdout", stdout), ("stderr", stderr), ("admin endpoints", admin)):
            for secret in secrets:
                self.assertNotIn(secret, text, f"{secret!r} leaked into {name}")
            self.assertNotIn("SECRET", text, name)
            self.assertNotIn("Bearer", text, name)


# --- 5. the model label is bounded -----------------------------------------------------------


class TokenLabelTest(ObservabilityTestCase):

    def test_max_model_labels_caps_distinct_models_the_rest_are_other(self):
        fake = self.start_fake()
        bulwark = self.start_bulwark([fake], {"metrics": {"max_model_labels": 2}})
        for model in ("model-a", "model-b", "model-c", "model-d", "model-a"):
            fake.push({"body": chat_completion(model=model, prompt_tokens=10,
                                               completion_tokens=1)})
            self.assertEqual(self.post(bulwark, chat_body(model)).status, 200)
        bulwark.wait_for_logs(lambda e: e.get("msg") == "request", 5)
        tokens = {(l["model"], l["kind"]): v
                  for l, v in scrape(bulwark).series("bulwark_tokens_total", upstream="fake0")}
        self.assertEqual(tokens, {
            ("model-a", "prompt"): 20, ("model-a", "completion"): 2,
            ("model-b", "prompt"): 10, ("model-b", "completion"): 1,
            ("other", "prompt"): 20, ("other", "completion"): 2,
        })

    def test_tokens_from_responses_api_stream_and_streams_without_usage(self):
        fake = self.start_fake()
        bulwark = self.start_bulwark([fake])
        completed = {"type": "response.completed", "response": {
            "id": "resp_2", "object": "response", "model": "gpt-5-mini", "status": "completed",
            "usage": {"input_tokens": 33, "output_tokens": 44, "total_tokens": 77}}}
        fake.push({"sse_raw": True, "done": False, "sse": [
            'event: response.created\ndata: {"type":"response.created","response":'
            '{"id":"resp_2","model":"gpt-5-mini","status":"in_progress"}}\n\n',
            'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
            '"delta":"hi"}\n\n',
            "event: response.completed\ndata: " + json.dumps(completed) + "\n\n"]})
        resp = stream(bulwark, json.dumps({"model": "gpt-5-mini", "input": "hi",
                                           "stream": True}), RESPONSES_PATH)
        self.assertEqual(resp.status, 200)
        self.assertTrue(resp.complete)
        # A chat stream without include_usage carries no usage: nothing is counted for it.
        fake.push({"sse": chat_stream_events("gpt-4o-nousage")})
        self.assertTrue(stream(bulwark, chat_body("gpt-4o-nousage", stream=True)).complete)
        # An error body with a usage-like object is not a completion.
        fake.push({"status": 400, "body": {"error": {"message": "x"}, "model": "gpt-err",
                                           "usage": {"prompt_tokens": 5}}})
        self.assertEqual(self.post(bulwark, chat_body("gpt-err")).status, 400)
        bulwark.wait_for_logs(lambda e: e.get("msg") == "request", 3)
        tokens = {(l["model"], l["kind"]): v
                  for l, v in scrape(bulwark).series("bulwark_tokens_total")}
        self.assertEqual(tokens, {("gpt-5-mini", "prompt"): 33,
                                  ("gpt-5-mini", "completion"): 44})


# --- known Bulwark bugs (reported; remove the decorator once fixed) ---------------------------


class RegressionTest(ObservabilityTestCase):

    def test_a_retry_abandoned_because_the_breaker_opened_is_not_counted_as_a_retry(self):
        """attempts = requests + retries is how dashboards compute retry amplification. When an
        attempt's failure opens the breaker, Bulwark still schedules (and counts) a retry,
        waits, then abandons it ("retry abandoned", circuit_open): retries_total says 2 for a
        request that made 2 attempts."""
        fake = self.start_fake()
        bulwark = self.start_bulwark([fake], {"circuit_breaker": {
            "failure_threshold": 2, "recovery_timeout": "60s"}})
        fake.script([{"status": 503}] * 3)
        self.assert_attempts(self.post(bulwark, chat_body()), 503, 2)
        m = scrape(bulwark)
        self.assertEqual(m.table("bulwark_upstream_attempts_total", "outcome"), {"503": 2})
        self.assertEqual(m.table("bulwark_retries_total", "reason"), {"503": 1})
        self.assertEqual(m.value("bulwark_retry_delay_seconds_count", upstream="fake0",
                                 source="backoff"), 1)

    def test_usage_of_a_crlf_framed_event_stream_is_counted(self):
        """SSE allows CRLF line endings; the commit-point scanner handles them (an error first
        event framed with CRLF is retried), the usage tap does not (it splits on "\n\n")."""
        fake = self.start_fake()
        bulwark = self.start_bulwark([fake])
        events = chat_stream_events("crlf-model", with_usage=usage(7, 8))
        fake.push({"sse_raw": True, "done": False,
                   "sse": ["data: " + json.dumps(e) + "\r\n\r\n" for e in events] +
                   ["data: [DONE]\r\n\r\n"]})
        resp = stream(bulwark, chat_body("crlf-model", stream=True,
                                         stream_options={"include_usage": True}))
        self.assertTrue(resp.complete)
        bulwark.wait_for_log(lambda e: e.get("msg") == "request")
        tokens = {(l["model"], l["kind"]): v
                  for l, v in scrape(bulwark).series("bulwark_tokens_total")}
        self.assertEqual(tokens, {("crlf-model", "prompt"): 7, ("crlf-model", "completion"): 8})


if __name__ == "__main__":
    unittest.main()
