"""End to end through the official `openai` npm package (tests/e2e/chat.mjs, retry.mjs), SDK
retries off unless a test says otherwise.

Needs node and tests/e2e/node_modules: `npm ci --prefix tests/e2e`.
"""

import json
import os
import shutil
import subprocess
import unittest

from harness import (DEFAULT_CONTENT, TESTS_DIR, Bulwark, FakeUpstream, chat_chunk,
                     chat_completion, openai_error)

E2E_DIR = TESTS_DIR / "e2e"


def run_chat(base_url: str, **env) -> tuple[dict, subprocess.CompletedProcess]:
    return run_script("chat.mjs", base_url, **env)


def run_script(script: str, base_url: str, **env) -> tuple[dict, subprocess.CompletedProcess]:
    node = shutil.which("node")
    if node is None:
        raise AssertionError("node is not installed; the e2e tests need Node 18+")
    if not (E2E_DIR / "node_modules" / "openai" / "package.json").is_file():
        raise AssertionError(f"{E2E_DIR}/node_modules is missing: run `npm ci --prefix tests/e2e` "
                             f"(the test script does this) before the integration tests")
    proc = subprocess.run([node, script], cwd=E2E_DIR, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "BASE_URL": base_url, **env})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise AssertionError(f"{script} printed no summary (exit {proc.returncode})\n"
                             f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return json.loads(lines[-1]), proc


class OpenAISdkTest(unittest.TestCase):
    def setUp(self):
        self.fake = FakeUpstream().start()
        self.addCleanup(self.fake.stop)
        self.bulwark = Bulwark([self.fake]).start()
        self.addCleanup(self.bulwark.stop)

    def assert_passed(self, summary: dict, proc: subprocess.CompletedProcess) -> None:
        self.assertTrue(summary.get("ok") and proc.returncode == 0,
                        f"chat.mjs failed (exit {proc.returncode}): {json.dumps(summary)}\n"
                        f"stderr:\n{proc.stderr}")

    def test_chat_and_stream_with_scripted_upstream(self):
        pieces = ["Hel", "lo", " through", " Bulwark."]
        self.fake.script([
            {"body": chat_completion("Hi from the scripted upstream."),
             "headers": [("x-request-id", "req_sdk_chat")]},
            {"sse": [chat_chunk("", role="assistant")] + [chat_chunk(p) for p in pieces] +
                    [chat_chunk(finish_reason="stop")],
             "gap": 0.05, "headers": [("x-request-id", "req_sdk_stream")]},
        ])
        summary, proc = run_chat(self.bulwark.openai_base_url,
                                 EXPECT_CHAT="Hi from the scripted upstream.",
                                 EXPECT_STREAM="".join(pieces))
        self.assert_passed(summary, proc)
        self.assertEqual(summary["chat"]["request_id"], "req_sdk_chat")
        self.assertEqual(summary["stream"]["request_id"], "req_sdk_stream")
        for part in ("chat", "stream"):
            self.assertEqual(summary[part]["upstream"], "fake0")
            self.assertEqual(summary[part]["attempts"], "1")

        chat, stream = self.fake.wait_for_requests(2)
        for req in (chat, stream):
            self.assertEqual((req.method, req.path), ("POST", "/v1/chat/completions"))
            self.assertEqual(req.header("authorization"), "Bearer sk-test")
        self.assertNotIn("stream", chat.json())
        self.assertIs(stream.json()["stream"], True)

    def test_chat_and_stream_with_default_upstream(self):
        summary, proc = run_chat(self.bulwark.openai_base_url,
                                 EXPECT_CHAT=DEFAULT_CONTENT, EXPECT_STREAM=DEFAULT_CONTENT)
        self.assert_passed(summary, proc)
        self.assertEqual(summary["chat"]["usage"]["total_tokens"], 16)
        self.assertEqual(len(self.fake.requests), 2)


class OpenAISdkRetryTest(unittest.TestCase):
    """tests/e2e/retry.mjs: Bulwark's retries as the SDK sees them."""

    def setUp(self):
        self.fake = FakeUpstream().start()
        self.addCleanup(self.fake.stop)
        self.bulwark = Bulwark([self.fake], {
            "retry": {"base_delay": "50ms", "jitter": "none",
                      "budget": {"ratio": 1.0, "min_per_second": 1000}},
            "circuit_breaker": {"failure_threshold": 1000, "min_requests": 1000},
        }).start()
        self.addCleanup(self.bulwark.stop)

    def test_sdk_without_retries_gets_through_upstream_failures(self):
        stream_pieces = ["Clean", " stream", " after", " a retry."]
        cut_pieces = ["This", " answer", " was", " cut", " short."]
        failures = [openai_error(f"boom {i}") for i in (1, 2, 3)]
        self.fake.script([
            # chat: 503, 429 (retry-after-ms), 200
            {"status": 503, "headers": [("x-request-id", "req_chat_503")]},
            {"status": 429, "headers": [("retry-after-ms", "100"),
                                        ("x-request-id", "req_chat_429")]},
            {"body": chat_completion("Made it through Bulwark."),
             "headers": [("x-request-id", "req_chat_200")]},
            # stream: the first attempt's first event is an error, then a good stream
            {"sse": [openai_error("The server had an error while processing your request.")],
             "done": False},
            {"sse": [chat_chunk("", role="assistant")] + [chat_chunk(p) for p in stream_pieces] +
                    [chat_chunk(finish_reason="stop")],
             "gap": 0.02, "headers": [("x-request-id", "req_stream_ok")]},
            # interrupted: cut after the role chunk and two pieces of text
            {"sse": [chat_chunk("", role="assistant")] + [chat_chunk(p) for p in cut_pieces] +
                    [chat_chunk(finish_reason="stop")],
             "cut_after": 3, "gap": 0.02},
            # gave_up: three 500s for Bulwark's three attempts, then what an SDK retry would get
            *({"status": 500, "body": failure} for failure in failures),
            {"body": chat_completion("An SDK retry on top of Bulwark's must not happen.")},
        ])
        summary, proc = run_script("retry.mjs", self.bulwark.openai_base_url,
                                   EXPECT_CHAT="Made it through Bulwark.",
                                   EXPECT_STREAM="".join(stream_pieces))
        self.assertTrue(summary.get("ok") and proc.returncode == 0,
                        f"retry.mjs failed (exit {proc.returncode}): {json.dumps(summary)}\n"
                        f"stderr:\n{proc.stderr}\n{self.bulwark.output(tail=30)}")

        self.assertEqual(summary["chat"]["attempts"], "3")
        self.assertEqual(summary["chat"]["request_id"], "req_chat_200")
        self.assertEqual(summary["stream"]["attempts"], "2")
        self.assertEqual(summary["stream"]["request_id"], "req_stream_ok")

        interrupted = summary["interrupted"]
        self.assertEqual(interrupted["content"], "".join(cut_pieces[:2]))
        self.assertIsNone(interrupted["finish_reason"])
        self.assertEqual(interrupted["raised"]["error_class"], "APIError", interrupted)
        self.assertEqual(interrupted["raised"]["code"], "stream_interrupted", interrupted)
        self.assertEqual(interrupted["raised"]["type"], "bulwark_error", interrupted)

        gave_up = summary["gave_up"]["raised"]
        self.assertEqual(gave_up["error_class"], "InternalServerError", gave_up)
        self.assertEqual(gave_up["status"], 500)
        self.assertEqual(gave_up["message"], "500 boom 3")
        self.assertEqual(gave_up["should_retry"], "false")
        self.assertEqual(gave_up["attempts"], "3")

        requests = self.fake.requests
        self.assertEqual(len(requests), 3 + 2 + 1 + 3,
                         [(r.index, r.status, r.header("x-stainless-retry-count"))
                          for r in requests])
        self.assertEqual(self.fake.queued, 1, "the SDK retried on top of Bulwark")
        for req in requests:
            self.assertEqual((req.method, req.path), ("POST", "/v1/chat/completions"))
            # The SDK announces its own first try; Bulwark retries nonetheless.
            self.assertEqual(req.header("x-stainless-retry-count"), "0")
        chat = requests[:3]
        self.assertGreaterEqual(chat[2].arrived_at - chat[1].arrived_at, 0.1,
                                "retry-after-ms: 100 was not honoured")


if __name__ == "__main__":
    unittest.main()
