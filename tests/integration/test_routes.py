"""Routes: per-path and per-model timeouts, retry rules and failover chains.

The first route whose match takes a request applies; the top-level settings are the default.
The admin endpoint GET /config/routes shows which route a request would take; SIGHUP reloads
routes like the rest of the file.
"""
from __future__ import annotations

import json
import signal
import time
import unittest

from harness import (CHAT_PATH, SANITIZED, Bulwark, FakeUpstream, chat_completion, http_request,
                     merged, scrape)
from test_openai_sdk import run_script

EMBEDDINGS_PATH = "/v1/embeddings"
CONFIG = {
    "timeouts": {"connect": "1s", "first_byte": "300ms", "idle": "2s", "total": "10s"},
    "retry": {"max_attempts": 2, "base_delay": "10ms", "max_delay": "10ms", "jitter": "none",
              "budget": {"ratio": 1.0, "min_per_second": 1000}},
    "circuit_breaker": {"failure_threshold": 1000, "min_requests": 1000},
    "routes": [
        {"name": "reasoning", "match": {"path": CHAT_PATH, "model": "o*"},
         "timeouts": {"first_byte": "3s"}, "retry": {"max_attempts": 1}},
        {"name": "embeddings", "match": {"path": EMBEDDINGS_PATH},
         "retry": {"max_attempts": 5}},
        {"name": "chat", "match": {"path": "/v1/chat/*"}, "upstreams": ["fake1", "fake0"]},
    ],
}


def chat(model: str) -> str:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]})


def embeddings() -> str:
    return json.dumps({"model": "text-embedding-3-small", "input": "hello"})


class RoutesTest(unittest.TestCase):

    def setUp(self):
        self.a = FakeUpstream().start()
        self.addCleanup(self.a.stop)
        self.b = FakeUpstream().start()
        self.addCleanup(self.b.stop)
        self.bulwark = Bulwark([self.a, self.b], CONFIG).start()
        self.addCleanup(self.bulwark.stop)

    def post(self, path: str, body: str):
        return http_request(self.bulwark.port, "POST", path, body,
                            headers={"Content-Type": "application/json"}, timeout=15)

    def explain(self, path: str, model: str = "") -> dict:
        resp = http_request(self.bulwark.admin_port, "GET",
                            f"/config/routes?path={path}&model={model}", timeout=5)
        self.assertEqual(resp.status, 200, resp.body)
        return json.loads(resp.body)

    def test_a_reasoning_model_gets_its_routes_longer_first_byte_timeout(self):
        # Both upstreams think for 800 ms. The default first_byte (300 ms) gives up on
        # gpt-4o; the reasoning route's (3 s) waits for o3-mini.
        for fake in (self.a, self.b):
            fake.responder = lambda request: {"delay": 0.8}
        slow = self.post(CHAT_PATH, chat("o3-mini"))
        self.assertEqual(slow.status, 200, slow.body[:300])
        self.assertEqual(slow.header("x-bulwark-attempts"), "1")
        self.assertEqual(slow.header("x-bulwark-upstream"), "fake0")  # the default chain
        stuck = self.post(CHAT_PATH, chat("gpt-4o"))
        self.assertEqual(stuck.status, 502, stuck.body[:300])
        failed = [e for e in self.bulwark.logs if e.get("msg") == "upstream attempt failed"]
        self.assertTrue(failed)
        self.assertTrue(all(e["outcome"] == "timeout" for e in failed), failed)

    def test_embeddings_are_retried_harder_than_the_default(self):
        # Its chain is every upstream, in order; retries fail over and come back.
        self.a.script([{"status": 503}, {"status": 503}, {"status": 200, "body": {"data": []}}])
        self.b.script([{"status": 503}, {"status": 503}])
        resp = self.post(EMBEDDINGS_PATH, embeddings())
        self.assertEqual(resp.status, 200, resp.body[:300])
        self.assertEqual(resp.header("x-bulwark-attempts"), "5")
        self.assertEqual((len(self.a.requests), len(self.b.requests)), (3, 2))
        # A path no route takes: the top-level two attempts, failing over to fake1.
        self.a.script([{"status": 503}])
        self.b.script([{"status": 503}])
        resp = self.post("/v1/moderations", json.dumps({"input": "x"}))
        self.assertEqual(resp.status, 503)
        self.assertEqual(resp.header("x-bulwark-attempts"), "2")

    def test_a_route_has_its_own_failover_chain(self):
        resp = self.post(CHAT_PATH, chat("gpt-4o"))
        self.assertEqual(resp.status, 200)
        self.assertEqual(resp.header("x-bulwark-upstream"), "fake1")  # the chat route's first
        self.b.script([{"status": 503}])
        resp = self.post(CHAT_PATH, chat("gpt-4o"))
        self.assertEqual(resp.status, 200)
        self.assertEqual(resp.header("x-bulwark-attempts"), "2")
        self.assertEqual(resp.header("x-bulwark-upstream"), "fake0")  # its fallback

    def test_the_admin_endpoint_shows_the_route_and_its_settings(self):
        reasoning = self.explain(CHAT_PATH, "o1")
        self.assertEqual(reasoning["route"], "reasoning")
        self.assertEqual(reasoning["timeouts"]["first_byte"], "3s")
        self.assertEqual(reasoning["timeouts"]["total"], "10s")  # inherited
        self.assertEqual(reasoning["retry"]["max_attempts"], 1)
        self.assertEqual(reasoning["upstreams"], ["fake0", "fake1"])
        chat_route = self.explain(CHAT_PATH, "gpt-4o")
        self.assertEqual(chat_route["route"], "chat")
        self.assertEqual(chat_route["upstreams"], ["fake1", "fake0"])
        self.assertEqual(chat_route["retry"]["policies"]["5xx"], {"retry": True, "breaker": True})
        default = self.explain("/v1/files")
        self.assertEqual(default["route"], "default")
        self.assertEqual(default["timeouts"]["first_byte"], "300ms")
        bad = http_request(self.bulwark.admin_port, "GET", "/config/routes?path=v1", timeout=5)
        self.assertEqual(bad.status, 400)

    def test_sighup_reloads_routes(self):
        seen = len(self.bulwark.logs)
        config = merged(self.bulwark.config, {})
        config["routes"] = [{"name": "chat", "match": {"path": CHAT_PATH},
                             "upstreams": ["fake0"], "retry": {"max_attempts": 4}}]
        self.bulwark.write_config(config)
        self.bulwark.signal(signal.SIGHUP)
        self.bulwark.wait_for_log(lambda e: e in self.bulwark.logs[seen:] and
                                  e.get("msg") == "configuration reloaded")
        self.assertEqual(self.explain(CHAT_PATH, "o1")["route"], "chat")
        self.assertEqual(self.explain(EMBEDDINGS_PATH)["route"], "default")
        self.a.script([{"status": 503}] * 3)
        resp = self.post(CHAT_PATH, chat("gpt-4o"))
        self.assertEqual(resp.status, 200)
        self.assertEqual(resp.header("x-bulwark-attempts"), "4")
        self.assertEqual(resp.header("x-bulwark-upstream"), "fake0")

    def test_an_invalid_route_is_refused_at_reload_and_the_old_routes_stay(self):
        seen = len(self.bulwark.logs)
        config = merged(self.bulwark.config, {})
        config["routes"] = [{"name": "chat", "upstreams": ["nowhere"]}]
        self.bulwark.write_config(config)
        self.bulwark.signal(signal.SIGHUP)
        rejected = self.bulwark.wait_for_log(
            lambda e: e in self.bulwark.logs[seen:] and
            str(e.get("msg", "")).startswith("reload rejected"))
        self.assertIn("unknown upstream", json.dumps(rejected))
        self.assertEqual(self.explain(CHAT_PATH, "gpt-4o")["route"], "chat")
        self.assertEqual(self.explain(CHAT_PATH, "gpt-4o")["upstreams"], ["fake1", "fake0"])


if __name__ == "__main__":
    unittest.main()


class AzureFailoverTest(unittest.TestCase):
    """A chat completion, plain and streamed, through the official SDK, failing over from an
    OpenAI-style upstream to an Azure-style one: deployment path, api-version, api-key, and
    the model renamed to the deployment's."""

    def test_the_sdk_fails_over_to_an_azure_deployment(self):
        openai = FakeUpstream().start()
        self.addCleanup(openai.stop)
        azure = FakeUpstream().start()
        self.addCleanup(azure.stop)
        bulwark = Bulwark([
            {"name": "openai", "fake": openai},
            {"name": "azure", "base_url": azure.base_url + "/openai", "api_key": "azure-secret",
             "auth_header": "api-key", "api_version": "2024-10-21",
             "models": {"gpt-4o": "my-gpt4o", "*": ""}},
        ], {**CONFIG, "routes": [{"name": "chat", "match": {"path": CHAT_PATH},
                                  "upstreams": ["openai", "azure"]}]}).start()
        self.addCleanup(bulwark.stop)
        openai.script([{"status": 503}, {"status": 503}])
        summary, proc = run_script("chat.mjs", bulwark.openai_base_url, MODEL="gpt-4o")
        self.assertTrue(summary.get("ok"), (summary, proc.stderr))
        for kind in ("chat", "stream"):
            self.assertEqual(summary[kind]["upstream"], "azure", summary)
            self.assertEqual(summary[kind]["attempts"], "2", summary)

        self.assertEqual(len(openai.requests), 2)
        for request in openai.requests:
            self.assertEqual(request.path, CHAT_PATH)
            self.assertEqual(request.header("authorization"), "Bearer sk-test")
            self.assertEqual(json.loads(request.body)["model"], "gpt-4o")
        self.assertEqual(len(azure.requests), 2)
        for request in azure.requests:
            self.assertEqual(request.path, "/openai/deployments/my-gpt4o/chat/completions")
            self.assertEqual(request.query, "api-version=2024-10-21")
            self.assertEqual(request.header("api-key"), "azure-secret")
            self.assertIsNone(request.header("authorization"), "the OpenAI key went to Azure")
            self.assertEqual(json.loads(request.body)["model"], "my-gpt4o")
        self.assertTrue(json.loads(azure.requests[1].body)["stream"])

    def test_azures_retry_after_header_is_honoured(self):
        azure = FakeUpstream().start()
        self.addCleanup(azure.stop)
        config = {key: value for key, value in CONFIG.items() if key != "routes"}
        bulwark = Bulwark([{"name": "azure", "fake": azure}], config).start()
        self.addCleanup(bulwark.stop)
        azure.script([{"status": 429, "headers": {"x-ms-retry-after-ms": "400"}}])
        resp = http_request(bulwark.port, "POST", EMBEDDINGS_PATH, embeddings(),
                            headers={"Content-Type": "application/json"}, timeout=10)
        self.assertEqual(resp.status, 200)
        retry = bulwark.wait_for_log(lambda e: e.get("msg") == "upstream attempt failed")
        self.assertEqual(retry["delay_source"], "server")
        self.assertEqual(retry["delay_ms"], 400)


class HedgeTest(unittest.TestCase):
    """hedge: an attempt with no answer after `after` gets a twin; the first to answer wins and
    the other is cancelled, as if its client had left."""

    def start(self, route: dict, fakes: list) -> Bulwark:
        config = {key: value for key, value in CONFIG.items() if key != "routes"}
        config["routes"] = [{"name": "chat", "match": {"path": CHAT_PATH}, **route}]
        bulwark = Bulwark(fakes, config).start()
        self.addCleanup(bulwark.stop)
        return bulwark

    def fake(self) -> FakeUpstream:
        fake = FakeUpstream().start()
        self.addCleanup(fake.stop)
        return fake

    def timed_chat(self, bulwark: Bulwark):
        started = time.monotonic()
        resp = http_request(bulwark.port, "POST", CHAT_PATH, chat("gpt-4o"),
                            headers={"Content-Type": "application/json"}, timeout=15)
        return resp, time.monotonic() - started

    def test_a_slow_first_attempt_is_overtaken_on_the_next_upstream(self):
        slow, fast = self.fake(), self.fake()
        bulwark = self.start({"timeouts": {"first_byte": "10s"},
                              "hedge": {"after": "200ms", "max": 1}}, [slow, fast])
        slow.script([{"delay": 3}])
        fast.script([{"delay": 0.05}])
        resp, elapsed = self.timed_chat(bulwark)
        self.assertEqual(resp.status, 200, resp.body[:300])
        self.assertEqual(resp.header("x-bulwark-upstream"), "fake1")
        self.assertEqual(resp.header("x-bulwark-attempts"), "2")
        print(f"\nhedged answer after {elapsed * 1000:.0f} ms (after: 200ms, the hedge 50 ms)")
        if not SANITIZED:  # timings under a sanitizer measure the sanitizer
            self.assertLess(elapsed, 1.5)
        # The slow attempt was cancelled: its upstream saw the connection close.
        self.assertTrue(slow.wait_peer_closed(slow.requests[0], timeout=2))
        self.assertLess(slow.requests[0].peer_closed_at - fast.requests[0].arrived_at, 1.0)
        line = bulwark.wait_for_log(lambda e: e.get("msg") == "request")
        self.assertEqual((line["hedges"], line["winning_attempt"]), (1, 2))
        metrics = scrape(bulwark)
        self.assertEqual(metrics.value("bulwark_hedges_total", upstream="fake1", result="won"), 1)

    def test_alone_an_upstream_is_hedged_against_itself_and_the_first_answer_wins(self):
        only = self.fake()
        bulwark = self.start({"hedge": {"after": "150ms"}, "timeouts": {"first_byte": "10s"}},
                             [only])
        only.script([{"delay": 0.6, "body": chat_completion("first")},
                     {"delay": 5, "body": chat_completion("second")}])
        resp, elapsed = self.timed_chat(bulwark)
        self.assertEqual(resp.status, 200)
        self.assertEqual(json.loads(resp.body)["choices"][0]["message"]["content"], "first")
        self.assertEqual(resp.header("x-bulwark-attempts"), "2")
        self.assertTrue(only.wait_peer_closed(only.requests[1], timeout=2), "the hedge ran on")
        metrics = scrape(bulwark)
        self.assertEqual(metrics.value("bulwark_hedges_total", upstream="fake0", result="lost"), 1)

    def test_p95_waits_for_enough_samples_then_hedges_at_the_upstreams_p95(self):
        fake = self.fake()
        bulwark = self.start({"hedge": {"after": "p95"}, "timeouts": {"first_byte": "10s"}},
                             [fake])
        fake.script([{"delay": 0.5}])
        resp, _ = self.timed_chat(bulwark)  # no samples yet: no p95, no hedge
        self.assertEqual(resp.header("x-bulwark-attempts"), "1")
        fake.script([{"delay": 0.02}] * 19)
        for _ in range(19):  # the rest of the samples; none of these is hedged
            resp, _ = self.timed_chat(bulwark)
            self.assertEqual(resp.header("x-bulwark-attempts"), "1")
        fake.script([{"delay": 3}, {"delay": 0.02}])
        resp, elapsed = self.timed_chat(bulwark)
        self.assertEqual(resp.status, 200)
        self.assertEqual(resp.header("x-bulwark-attempts"), "2")
        if not SANITIZED:
            self.assertLess(elapsed, 1.0)

    def test_a_streamed_upload_is_never_hedged(self):
        fake = self.fake()
        bulwark = self.start({"hedge": {"after": "50ms"}, "match": {"path": "/v1/files"}}, [fake])
        fake.script([{"delay": 0.5}])
        body = b"x" * (9 * 1024 * 1024)  # over retry_body_limit: streamed
        resp = http_request(bulwark.port, "POST", "/v1/files", body,
                            headers={"Content-Type": "application/octet-stream"}, timeout=15)
        self.assertEqual(resp.status, 200)
        self.assertEqual(resp.header("x-bulwark-attempts"), "1")
        self.assertEqual(len(fake.requests), 1)
