"""End to end through the official `openai` npm package (tests/e2e/chat.mjs), SDK retries off.

Needs node and tests/e2e/node_modules: `npm ci --prefix tests/e2e`.
"""

import json
import os
import shutil
import subprocess
import unittest

from harness import DEFAULT_CONTENT, TESTS_DIR, Bulwark, FakeUpstream, chat_chunk, chat_completion

E2E_DIR = TESTS_DIR / "e2e"


def run_chat(base_url: str, **env) -> tuple[dict, subprocess.CompletedProcess]:
    node = shutil.which("node")
    if node is None:
        raise AssertionError("node is not installed; the e2e tests need Node 18+")
    if not (E2E_DIR / "node_modules" / "openai" / "package.json").is_file():
        raise AssertionError(f"{E2E_DIR}/node_modules is missing: run `npm ci --prefix tests/e2e` "
                             f"(the test script does this) before the integration tests")
    proc = subprocess.run([node, "chat.mjs"], cwd=E2E_DIR, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "BASE_URL": base_url, **env})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise AssertionError(f"chat.mjs printed no summary (exit {proc.returncode})\n"
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


if __name__ == "__main__":
    unittest.main()
