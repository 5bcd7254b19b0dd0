"""Command line, hot reload and graceful shutdown of the real bulwark binary.

- CLI: `--check-config` prints "ok" or every error ("line L, column C: key.path: message"),
  never an api_key; `--version`; unknown flags; starting with an invalid file; the shipped
  proxy.yaml is valid.
- SIGHUP: a valid file applies to new requests without dropping connections or in-flight
  streams, and keeps the breaker state of upstreams that stay; an invalid one is logged and
  changes nothing.
- SIGTERM/SIGINT: /readyz 503, listener closed, idle connections closed, in-flight requests
  and streams finish, exit 0; past shutdown_grace whatever still runs is cut and logged.

Every test gets its own fake upstream(s) and bulwark. Retry backoff is short and deterministic
and the retry budget and breaker are out of reach unless a test is about them.

Run from tests/integration with PYTHONPATH=tests: python3 -m unittest -v test_lifecycle
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest
from pathlib import Path

from harness import (REPO_DIR, Bulwark, FakeUpstream, HttpResult, RawConnection, bulwark_binary,
                     chat_chunk, chat_completion, http_request, raw_request)
from harness import CHAT_PATH, merged, sse_body  # shared helpers

CHAT_BODY = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
STREAM_BODY = json.dumps({"model": "gpt-4o-mini", "stream": True,
                          "messages": [{"role": "user", "content": "hi"}]})
ATTEMPT_FAILED = "upstream attempt failed"
RELOADED = "configuration reloaded"
REJECTED = "reload rejected"
SHUTTING_DOWN = "shutting down"
CUT = "shutdown_grace reached; connections cut"
NEEDS_RESTART = "reload: server.listen"

# "line 8, column 3: retry.max_atempts: unknown key"
ERROR_LINE = re.compile(r"^line (\d+), column (\d+): ([A-Za-z0-9_.\[\]-]+): (.+)$")

FAST = {
    "retry": {
        "max_attempts": 3,
        "base_delay": "10ms",
        "jitter": "none",
        "budget": {"ratio": 1.0, "min_per_second": 1000},
    },
    "timeouts": {"first_byte": "3s"},
    "circuit_breaker": {"failure_threshold": 1000, "min_requests": 1000},
}


def stream_events(label: str, pieces: int) -> list:
    cid = f"chatcmpl-{label}"
    return ([chat_chunk("", role="assistant", id=cid)] +
            [chat_chunk(f" {label}{i}", id=cid) for i in range(pieces)] +
            [chat_chunk(finish_reason="stop", id=cid)])


def run_cli(*args: str, env: dict | None = None, cwd: str | None = None,
            timeout: float = 10.0) -> subprocess.CompletedProcess:
    """bulwark with these arguments; OPENAI_API_KEY removed from the environment unless given."""
    full_env = dict(os.environ)
    full_env.pop("OPENAI_API_KEY", None)
    full_env.update(env or {})
    return subprocess.run([str(bulwark_binary()), *args], env=full_env, cwd=cwd,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout)


# --- §1 command line ------------------------------------------------------------------------

# Line numbers matter: the errors below name them.
INVALID_YAML = """\
server:
  listen: 127.0.0.1:0
upstreams:
  - name: primary
    base_url: http://127.0.0.1:9
    api_key: sk-live-LITERAL-SECRET-0123456789
retry:
  max_atempts: 3
  base_delay: 5 parsecs
  budget:
    ratio: 1.5
circuit_breaker:
  failure_threshold: 5
"""
LITERAL_SECRET = "sk-live-LITERAL-SECRET-0123456789"
ENV_SECRET = "sk-env-SECRET-9876543210"


class CliTest(unittest.TestCase):

    def setUp(self):
        tmp = tempfile.TemporaryDirectory(prefix="bulwark-cli-")
        self.addCleanup(tmp.cleanup)
        self.dir = Path(tmp.name)

    def write(self, text: str, name: str = "proxy.yaml") -> str:
        path = self.dir / name
        path.write_text(text)
        return str(path)

    def assert_no_secret(self, result: subprocess.CompletedProcess, *secrets: str) -> None:
        for secret in secrets:
            # the whole key, and any telling piece of it
            for piece in (secret, secret[-10:]):
                self.assertNotIn(piece, result.stdout)
                self.assertNotIn(piece, result.stderr)

    def error_lines(self, text: str) -> list[tuple[int, str, str]]:
        """(line, key path, message) of each error line; fails on any other line."""
        out = []
        for line in text.splitlines():
            match = ERROR_LINE.match(line)
            self.assertIsNotNone(match, f"not an error line: {line!r}\n{text}")
            self.assertGreater(int(match.group(2)), 0, line)
            out.append((int(match.group(1)), match.group(3), match.group(4)))
        return out

    def test_check_config_valid_file_prints_ok(self):
        path = self.write("upstreams:\n  - name: a\n    base_url: http://127.0.0.1:9\n"
                          "    api_key: ${BULWARK_TEST_KEY}\n"
                          "retry:\n  max_attempts: ${BULWARK_TEST_UNSET:-2}\n")
        result = run_cli("--check-config", path, env={"BULWARK_TEST_KEY": ENV_SECRET})
        self.assertEqual((result.returncode, result.stdout, result.stderr), (0, "ok\n", ""))

    def test_check_config_reports_every_error_with_line_and_key_path(self):
        result = run_cli("--check-config", self.write(INVALID_YAML))
        self.assertEqual(result.returncode, 1, result)
        errors = self.error_lines(result.stdout)
        self.assertEqual([(line, path) for line, path, _ in errors],
                         [(8, "retry.max_atempts"), (9, "retry.base_delay"),
                          (11, "retry.budget.ratio")], result.stdout)
        self.assertIn("unknown key", errors[0][2])
        self.assertIn("5 parsecs", errors[1][2])
        self.assertIn("1.5", errors[2][2])
        self.assertNotIn("ok", result.stdout.split())
        self.assert_no_secret(result, LITERAL_SECRET)

    def test_api_keys_are_never_printed_even_in_errors(self):
        head = "upstreams:\n  - name: a\n    base_url: http://127.0.0.1:9\n    api_key: "
        cases = {
            # the key's own value is invalid (a line break, from the environment)
            "env key with a line break": ("${BULWARK_TEST_KEY}\n", ENV_SECRET + "\r\nX-Evil: 1"),
            # a malformed reference next to a key
            "malformed reference": ('"${BULWARK_TEST_KEY}-${BROKEN"\n', ENV_SECRET),
            # invalid YAML on the key's line
            "YAML error on the key line": (LITERAL_SECRET + ": oops: no\n", None),
            # a valid key, errors elsewhere in the same upstream
            "errors around a literal key": (LITERAL_SECRET + "\n    base_url: ftp://x\n"
                                            "    max_inflight: -1\n    colour: blue\n", None),
            "errors around an env key": ("${BULWARK_TEST_KEY}\n    base_url: ftp://x\n"
                                         "    colour: blue\n", ENV_SECRET),
        }
        for name, (rest, env_value) in cases.items():
            with self.subTest(name):
                env = {"BULWARK_TEST_KEY": env_value} if env_value else {}
                path = self.write(head + rest)
                checked = run_cli("--check-config", path, env=env)
                self.assertEqual(checked.returncode, 1, checked)
                self.assertTrue(checked.stdout.strip(), checked)
                self.assert_no_secret(checked, LITERAL_SECRET, ENV_SECRET)
                started = run_cli("--config", path, env=env)
                self.assertEqual(started.returncode, 1, started)
                self.assert_no_secret(started, LITERAL_SECRET, ENV_SECRET)

    def test_missing_env_var_without_default_is_an_error_naming_it(self):
        path = self.write("upstreams:\n  - name: a\n    base_url: ${BULWARK_TEST_UNSET_URL}\n"
                          "timeouts:\n  connect: ${BULWARK_TEST_UNSET_CONNECT:-2s}\n")
        result = run_cli("--check-config", path)
        self.assertEqual(result.returncode, 1, result)
        errors = self.error_lines(result.stdout)
        self.assertEqual(len(errors), 1, result.stdout)
        line, key, message = errors[0]
        self.assertEqual((line, key), (3, "upstreams[0].base_url"))
        self.assertIn("BULWARK_TEST_UNSET_URL", message)
        self.assertNotIn("BULWARK_TEST_UNSET_CONNECT", result.stdout)  # it has a default

    def test_version(self):
        result = run_cli("--version")
        self.assertEqual(result.returncode, 0, result)
        self.assertRegex(result.stdout, r"^bulwark \d+\.\d+\.\d+\S*\n$")

    def test_unknown_flag_exits_2(self):
        for args in (["--bogus"], ["--check-config"], ["--config"]):
            with self.subTest(args=args):
                result = run_cli(*args)
                self.assertEqual(result.returncode, 2, result)
                self.assertTrue(result.stderr.strip(), result)
                self.assertEqual(result.stdout, "")

    def test_starting_with_an_invalid_config_exits_1_with_the_errors_on_stderr(self):
        started = time.monotonic()
        result = run_cli("--config", self.write(INVALID_YAML))
        self.assertLess(time.monotonic() - started, 5)
        self.assertEqual(result.returncode, 1, result)
        for needle in ("line 8, column", "retry.max_atempts", "line 9, column",
                       "retry.base_delay", "line 11, column", "retry.budget.ratio"):
            self.assertIn(needle, result.stderr)
        self.assertNotIn("listening", result.stdout)
        self.assert_no_secret(result, LITERAL_SECRET)

    def test_default_config_path_is_proxy_yaml_in_the_working_directory(self):
        self.write(INVALID_YAML)  # ./proxy.yaml
        result = run_cli(cwd=str(self.dir))
        self.assertEqual(result.returncode, 1, result)
        self.assertIn("retry.max_atempts", result.stderr)

    def test_shipped_proxy_yaml_is_valid(self):
        shipped = str(REPO_DIR / "proxy.yaml")
        for env in ({}, {"OPENAI_API_KEY": ENV_SECRET}):
            with self.subTest(openai_api_key=bool(env)):
                result = run_cli("--check-config", shipped, env=env)
                self.assertEqual((result.returncode, result.stdout), (0, "ok\n"), result)
                self.assert_no_secret(result, ENV_SECRET)


# --- shared helpers for the running binary --------------------------------------------------


class LifecycleTestCase(unittest.TestCase):

    def start_fake(self) -> FakeUpstream:
        fake = FakeUpstream().start()
        self.addCleanup(fake.stop)
        return fake

    def start_bulwark(self, upstreams: list, config: dict | None = None) -> Bulwark:
        bulwark = Bulwark(upstreams, merged(FAST, config or {})).start()
        self.addCleanup(bulwark.stop)
        return bulwark

    def chat(self, bulwark: Bulwark, headers: dict | None = None) -> HttpResult:
        return http_request(bulwark.port, "POST", CHAT_PATH, CHAT_BODY, headers=headers,
                            timeout=10)

    def admin(self, bulwark: Bulwark, path: str) -> HttpResult:
        return http_request(bulwark.admin_port, "GET", path, timeout=5)

    def open_stream(self, bulwark: Bulwark, fake: FakeUpstream, events: list, gap: float):
        """A streamed chat completion whose first chunk has arrived:
        (connection, response, body iterator)."""
        fake.push({"sse": events, "gap": gap})
        conn = RawConnection(bulwark.port, timeout=10)
        self.addCleanup(conn.close)
        conn.send(raw_request("POST", CHAT_PATH, STREAM_BODY,
                              headers=[("Content-Type", "application/json")]))
        resp = conn.read_head()
        self.assertEqual(resp.status, 200, resp.headers)
        body = conn.iter_body(resp, "POST")
        next(body)
        return conn, resp, body

    def reload(self, bulwark: Bulwark, changes: dict, expect: str = RELOADED) -> list[dict]:
        """Rewrite proxy.yaml with `changes` merged in, SIGHUP, wait for the outcome lines
        (msg starting with `expect`) logged after the signal."""
        return self.reload_config(bulwark, merged(bulwark.config, changes), expect)

    def reload_config(self, bulwark: Bulwark, config: dict,
                      expect: str = RELOADED) -> list[dict]:
        seen = len(bulwark.logs)
        bulwark.write_config(config)
        bulwark.signal(signal.SIGHUP)
        outcome = (RELOADED, REJECTED)
        bulwark.wait_for_log(lambda e: e in bulwark.logs[seen:] and
                             str(e.get("msg", "")).startswith(outcome))
        lines = [e for e in bulwark.logs[seen:] if str(e.get("msg", "")).startswith(expect)]
        self.assertTrue(lines, f"expected {expect!r} after SIGHUP\n{bulwark.output(tail=20)}")
        return lines


# --- §7 SIGHUP ------------------------------------------------------------------------------


class ReloadTest(LifecycleTestCase):

    def test_max_attempts_3_to_1_applies_to_the_next_request_while_a_stream_completes(self):
        fake = self.start_fake()
        bulwark = self.start_bulwark([fake])
        events = stream_events("kept", 4)
        conn, stream, body = self.open_stream(bulwark, fake, events, gap=0.25)
        fake.wait_for_requests(1)

        self.reload(bulwark, {"retry": {"max_attempts": 1}})
        reloaded_at = time.monotonic()
        fake.push({"status": 503})  # a second attempt would get the default 200
        resp = self.chat(bulwark)
        self.assertEqual(resp.status, 503, resp.body[:300])
        self.assertEqual(resp.header("x-bulwark-attempts"), "1")
        self.assertEqual(len(fake.requests), 2)

        for _ in body:
            pass
        self.assertTrue(stream.complete, stream.body[-200:])
        self.assertEqual(bytes(stream.body), sse_body(events))
        self.assertGreater(stream.pieces[-1][0], reloaded_at, "the stream ended before the reload")
        # the stream's connection survived the reload: it carries another request
        conn.send(raw_request("POST", CHAT_PATH, CHAT_BODY,
                              headers=[("Content-Type", "application/json")]))
        again = conn.read_response("POST")
        self.assertEqual(again.status, 200, again.body[:300])
        self.assertEqual(again.json()["object"], "chat.completion")

    def test_invalid_file_is_rejected_and_the_old_config_stays(self):
        fake = self.start_fake()
        bulwark = self.start_bulwark([fake])
        self.reload(bulwark, {"retry": {"max_attempts": 1, "max_atempts": 1,
                                        "budget": {"ratio": 2}}}, expect=REJECTED)
        rejected = bulwark.wait_for_logs(  # one line per error
            lambda e: str(e.get("msg", "")).startswith(REJECTED), 2)
        errors = " | ".join(str(e) for e in rejected)
        self.assertIn("retry.max_atempts", errors)
        self.assertIn("retry.budget.ratio", errors)
        self.assertRegex(errors, r"line \d+, column \d+")
        self.assertFalse([e for e in bulwark.logs if e.get("msg") == RELOADED])
        self.assertTrue(all(e.get("level") == "error" for e in rejected), rejected)

        fake.script([{"status": 503}, {"status": 503},
                     {"body": chat_completion("still retried three times")}])
        resp = self.chat(bulwark)
        self.assertEqual(resp.status, 200, resp.body[:300])
        self.assertEqual(resp.header("x-bulwark-attempts"), "3")
        self.assertEqual(resp.json()["choices"][0]["message"]["content"],
                         "still retried three times")

        # the next valid file is taken
        clean = merged(bulwark.config, {"retry": {"budget": {"ratio": 1.0}}})
        del clean["retry"]["max_atempts"]
        self.reload_config(bulwark, clean)
        fake.push({"status": 503})
        resp = self.chat(bulwark)
        self.assertEqual((resp.status, resp.header("x-bulwark-attempts")), (503, "1"))

    def test_changed_base_url_and_new_upstream_take_effect(self):
        first, second, third = self.start_fake(), self.start_fake(), self.start_fake()
        bulwark = self.start_bulwark([("primary", first)])
        self.assertEqual(self.chat(bulwark).header("x-bulwark-upstream"), "primary")
        self.assertEqual(len(first.requests), 1)

        self.reload(bulwark, {"upstreams": [{"name": "primary", "base_url": second.base_url}]})
        resp = self.chat(bulwark)
        self.assertEqual(resp.status, 200, resp.body[:300])
        self.assertEqual(resp.header("x-bulwark-upstream"), "primary")
        self.assertEqual((len(first.requests), len(second.requests)), (1, 1))

        self.reload(bulwark, {"upstreams": [{"name": "added", "base_url": third.base_url},
                                            {"name": "primary", "base_url": second.base_url}]})
        resp = self.chat(bulwark)
        self.assertEqual(resp.status, 200, resp.body[:300])
        self.assertEqual(resp.header("x-bulwark-upstream"), "added")
        self.assertEqual([len(f.requests) for f in (first, second, third)], [1, 1, 1])
        services = self.admin(bulwark, "/health/detailed").json()["services"]
        self.assertEqual(set(services), {"added", "primary"})

    def test_log_level_warn_stops_the_access_lines(self):
        before, after = self.start_fake(), self.start_fake()
        bulwark = self.start_bulwark([("before", before)])
        self.chat(bulwark)
        bulwark.wait_for_log(lambda e: e.get("msg") == "request" and e.get("upstream") == "before")

        # At warn the "configuration reloaded" line is (rightly) silent, so the upstream
        # switch tells when the new config is live.
        bulwark.write_config(merged(bulwark.config, {
            "log": {"level": "warn"}, "retry": {"max_attempts": 1},
            "upstreams": [{"name": "after", "base_url": after.base_url}]}))
        bulwark.signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while not after.requests:
            self.assertLess(time.monotonic(), deadline, "the reload never took effect")
            self.assertEqual(http_request(bulwark.port, "GET", "/v1/models").status, 200)

        after.push({"status": 503})
        self.assertEqual(self.chat(bulwark).status, 503)
        warn = bulwark.wait_for_log(lambda e: e.get("msg") == ATTEMPT_FAILED and
                                    e.get("upstream") == "after")
        self.assertEqual(warn.get("level"), "warn", warn)
        infos = [e for e in bulwark.logs if e.get("upstream") == "after" and
                 e.get("level") in ("info", "debug")]
        self.assertEqual(infos, [], "info lines logged at level warn")

    def test_breaker_state_of_a_staying_upstream_survives_a_reload(self):
        fake = self.start_fake()
        bulwark = self.start_bulwark([fake], {
            "retry": {"max_attempts": 1},
            "circuit_breaker": {"failure_threshold": 2, "recovery_timeout": "30s"}})
        fake.script([{"status": 503}, {"status": 503}])
        self.assertEqual([self.chat(bulwark).status for _ in range(2)], [503, 503])
        bulwark.wait_for_log(lambda e: e.get("to") == "OPEN")
        before = self.admin(bulwark, "/health/detailed").json()["services"]["fake0"]
        self.assertEqual(before["circuitBreaker"], "OPEN", before)

        self.reload(bulwark, {"retry": {"max_attempts": 2, "base_delay": "20ms"},
                              "timeouts": {"first_byte": "4s"},
                              "circuit_breaker": {"failure_threshold": 3,
                                                  "recovery_timeout": "20s"}})
        health = self.admin(bulwark, "/health/detailed").json()
        after = health["services"]["fake0"]
        self.assertEqual(after["circuitBreaker"], "OPEN", health)
        self.assertFalse(after["healthy"])
        self.assertEqual(after["lastFailureTime"], before["lastFailureTime"])
        resp = self.chat(bulwark)
        self.assertEqual(resp.status, 503, resp.body[:300])
        self.assertEqual(resp.json()["error"]["code"], "circuit_open")
        self.assertEqual(len(fake.requests), 2, "an OPEN breaker let a request through")

    def test_timeout_and_breaker_settings_apply_to_new_requests(self):
        fake = self.start_fake()
        bulwark = self.start_bulwark([fake])  # first_byte 3s, breaker out of reach
        self.reload(bulwark, {"retry": {"max_attempts": 2},
                              "timeouts": {"first_byte": "200ms"},
                              "circuit_breaker": {"failure_threshold": 2,
                                                  "recovery_timeout": "30s"}})
        fake.script([{"delay": 1.5}, {"status": 503}])
        started = time.monotonic()
        resp = self.chat(bulwark)
        self.assertLess(time.monotonic() - started, 1.0, "the old first_byte timeout applied")
        self.assertEqual((resp.status, resp.header("x-bulwark-attempts")), (503, "2"))
        _, attempts = self.access_and_attempts(bulwark)
        self.assertEqual([a.get("outcome") for a in attempts], ["timeout", "503"])
        bulwark.wait_for_log(lambda e: e.get("to") == "OPEN")  # 2 counted failures
        resp = self.chat(bulwark)
        self.assertEqual(resp.status, 503, resp.body[:300])
        self.assertEqual(resp.json()["error"]["code"], "circuit_open")
        self.assertEqual(len(fake.requests), 2)

    def access_and_attempts(self, bulwark: Bulwark) -> tuple[dict, list[dict]]:
        access = bulwark.wait_for_log(lambda e: e.get("msg") == "request")
        return access, [e for e in bulwark.logs if e.get("msg") == ATTEMPT_FAILED and
                        e.get("request_id") == access["request_id"]]

    def test_changed_listen_admin_listen_or_workers_need_a_restart(self):
        fake = self.start_fake()
        changes = {
            "listen": {"server": {"listen": "127.0.0.1:1"}},
            "admin_listen": {"server": {"admin_listen": "127.0.0.1:1"}},
            "workers": {"server": {"workers": 2}},
            "nothing needing a restart": {"server": {"shutdown_grace": "3s"}},
        }
        for name, change in changes.items():
            with self.subTest(name):
                bulwark = self.start_bulwark([fake])
                self.reload(bulwark, merged(change, {"retry": {"max_attempts": 1}}))
                warns = [e for e in bulwark.logs if e.get("level") == "warn" and
                         "restart" in str(e.get("msg"))]
                self.assertEqual(len(warns), 0 if name.startswith("nothing") else 1,
                                 bulwark.output(tail=10))
                # the old listeners still serve, with the rest of the new config
                fake.push({"status": 503})
                resp = self.chat(bulwark)
                self.assertEqual((resp.status, resp.header("x-bulwark-attempts")), (503, "1"))
                self.assertEqual(self.admin(bulwark, "/readyz").status, 200)
                bulwark.stop()

    def test_restart_warning_compares_with_what_is_running(self):
        # The warning is about the running listeners, not about the previous file: it stays
        # while the file differs from them and goes once the file matches them again.
        fake = self.start_fake()
        bulwark = self.start_bulwark([fake])
        running = bulwark.config["server"]["listen"]
        self.assertEqual(running, "127.0.0.1:0")
        warned: list[list[dict]] = []
        for change in ({"server": {"listen": "127.0.0.1:1"}},  # differs: warn
                       {"retry": {"max_attempts": 2}},          # still differs: warn again
                       {"server": {"listen": running}}):        # matches again: no warning
            seen = len(bulwark.logs)
            self.reload(bulwark, change)
            warned.append([e for e in bulwark.logs[seen:] if e.get("level") == "warn" and
                           "restart" in str(e.get("msg"))])
        self.assertEqual([len(w) for w in warned], [1, 1, 0], bulwark.output(tail=20))
        for line in warned[0] + warned[1]:
            self.assertTrue(str(line["msg"]).startswith(NEEDS_RESTART), line)
        # still served on the port it started with, with the last file's retry settings
        fake.script([{"status": 503}, {"status": 503}])
        resp = self.chat(bulwark)
        self.assertEqual((resp.status, resp.header("x-bulwark-attempts")), (503, "2"))


# --- §7 SIGTERM / SIGINT --------------------------------------------------------------------


class ShutdownTest(LifecycleTestCase):

    def drain_lets_everything_finish(self, sig: int) -> None:
        fake = self.start_fake()
        bulwark = self.start_bulwark([fake], {"server": {"shutdown_grace": "5s"}})
        idle = RawConnection(bulwark.port, timeout=5)
        self.addCleanup(idle.close)
        idle.send(raw_request("GET", "/v1/models"))
        self.assertEqual(idle.read_response().status, 200)  # now an idle keep-alive connection
        events = stream_events("drained", 4)
        _, stream, body = self.open_stream(bulwark, fake, events, gap=0.3)
        slow: list = []
        slow_thread = threading.Thread(target=lambda: slow.append(
            self.chat(bulwark, headers={"X-Fake-Delay": "0.6"})))
        slow_thread.start()
        fake.wait_for_requests(3)

        signalled = time.monotonic()
        bulwark.signal(sig)
        bulwark.wait_for_log(lambda e: str(e.get("msg", "")).startswith(SHUTTING_DOWN))
        closed_at = idle.wait_closed(1.0)
        self.assertIsNotNone(closed_at, "idle keep-alive connection not closed on drain")
        self.assertLess(closed_at - signalled, 0.5)

        ready = self.admin(bulwark, "/readyz")
        self.assertEqual(ready.status, 503)
        self.assertIn(b"draining", ready.body)
        self.assertEqual(self.admin(bulwark, "/healthz").status, 200)
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", bulwark.port), timeout=1).close()
        checked_at = time.monotonic()

        for _ in body:
            pass
        self.assertTrue(stream.complete, stream.body[-200:])
        self.assertEqual(bytes(stream.body), sse_body(events))
        self.assertGreater(stream.pieces[-1][0], checked_at, "the stream was over too early")
        slow_thread.join(5)
        self.assertEqual(slow[0].status, 200, slow[0].body[:300])
        self.assertEqual(slow[0].json()["object"], "chat.completion")

        code = bulwark.wait_exit(3)
        exited_at = time.monotonic()
        self.assertEqual(code, 0, bulwark.output(tail=20))
        self.assertLess(exited_at - stream.pieces[-1][0], 1.0, "waited for the grace period")
        self.assertFalse([e for e in bulwark.logs if e.get("msg") == CUT])
        statuses = sorted(e.get("status") for e in bulwark.logs if e.get("msg") == "request")
        self.assertEqual(statuses, [200, 200, 200])

    def test_sigterm_lets_in_flight_streams_finish_and_exits_0(self):
        self.drain_lets_everything_finish(signal.SIGTERM)

    def test_sigint_behaves_like_sigterm(self):
        self.drain_lets_everything_finish(signal.SIGINT)

    def test_stream_longer_than_shutdown_grace_is_cut_and_logged(self):
        fake = self.start_fake()
        bulwark = self.start_bulwark([fake], {"server": {"shutdown_grace": "1s"}})
        _, stream, body = self.open_stream(bulwark, fake, stream_events("long", 8), gap=0.5)
        (upstream_req,) = fake.wait_for_requests(1)

        signalled = time.monotonic()
        bulwark.signal(signal.SIGTERM)
        for _ in body:
            pass
        cut_at = time.monotonic()
        self.assertFalse(stream.complete, "the stream was not cut")
        self.assertNotIn(b"[DONE]", stream.body)
        self.assertGreater(cut_at - signalled, 0.8, "cut before shutdown_grace")
        code = bulwark.wait_exit(3)
        self.assertEqual(code, 0, bulwark.output(tail=20))
        self.assertLess(time.monotonic() - signalled, 2.0, "exit later than grace + 1 s")
        cut = [e for e in bulwark.logs if e.get("msg") == CUT]
        self.assertEqual(len(cut), 1, bulwark.output(tail=20))
        self.assertEqual(cut[0].get("level"), "warn")
        self.assertTrue(fake.wait_peer_closed(upstream_req, 1.0), "upstream transfer not cancelled")

    def test_stream_cut_by_shutdown_grace_ends_with_the_interruption_event(self):
        # §3.3: a stream that cannot finish ends with an error event and no final chunk,
        # so the SDKs raise instead of returning truncated text.
        fake = self.start_fake()
        bulwark = self.start_bulwark([fake], {"server": {"shutdown_grace": "1s"}})
        events = stream_events("cut", 8)
        _, stream, body = self.open_stream(bulwark, fake, events, gap=0.5)

        bulwark.signal(signal.SIGTERM)
        for _ in body:
            pass
        self.assertFalse(stream.complete, "the chunked body was ended like a complete one")
        data = bytes(stream.body)
        self.assertNotIn(b"[DONE]", data)
        self.assertTrue(data.endswith(b"\n\n"), data[-200:])
        *relayed, last = data[:-2].split(b"\n\n")
        self.assertTrue(relayed, data)
        self.assertTrue(sse_body(events).startswith(b"".join(e + b"\n\n" for e in relayed)),
                        data)
        self.assertTrue(last.startswith(b"data: "), last)
        event = json.loads(last[len(b"data: "):])
        self.assertIn("error", event, f"the stream did not end with an error event: {last!r}")
        error = event["error"]
        self.assertEqual((error["type"], error["code"]), ("bulwark_error", "stream_interrupted"),
                         error)
        self.assertTrue(error["message"])

        code = bulwark.wait_exit(3)
        self.assertEqual(code, 0, bulwark.output(tail=20))
        cut = [e for e in bulwark.logs if e.get("msg") == CUT]
        self.assertEqual([e.get("level") for e in cut], ["warn"], bulwark.output(tail=20))
        access = [e for e in bulwark.logs if e.get("msg") == "request"]
        self.assertEqual([(e.get("status"), e.get("client_left")) for e in access],
                         [(200, False)], access)

    def test_requests_still_waiting_when_shutdown_grace_ends_get_an_answer(self):
        # One request whose only attempt hangs gets Bulwark's own 503 shutting_down; one whose
        # retry hangs after a 503 gets that upstream 503. Both with x-should-retry: false.
        fake = self.start_fake()
        bulwark = self.start_bulwark([fake], {"server": {"shutdown_grace": "1s"},
                                              "timeouts": {"first_byte": "10s"}})
        results: dict[str, HttpResult | Exception] = {}

        def send(name: str) -> threading.Thread:
            def run() -> None:
                try:
                    results[name] = self.chat(bulwark)
                except Exception as error:  # e.g. the connection closed without a response
                    results[name] = error
            thread = threading.Thread(target=run)
            thread.start()
            return thread

        fake.push({"hang": True})
        threads = [send("waiting")]
        (hung,) = fake.wait_for_requests(1)
        fake.script([{"status": 503}, {"hang": True}])
        threads.append(send("retrying"))
        fake.wait_for_requests(3)

        signalled = time.monotonic()
        bulwark.signal(signal.SIGTERM)
        for thread in threads:
            thread.join(5)
        self.assertGreater(time.monotonic() - signalled, 0.8, "answered before shutdown_grace")

        for name in ("waiting", "retrying"):
            self.assertIsInstance(results.get(name), HttpResult, f"{name}: {results.get(name)!r}")
        waiting = results["waiting"]
        self.assertEqual(waiting.status, 503, waiting.body[:300])
        self.assertTrue((waiting.header("content-type") or "").startswith("application/json"))
        error = waiting.json()["error"]
        self.assertEqual((error["type"], error["code"], error["param"]),
                         ("bulwark_error", "shutting_down", None), error)
        self.assertTrue(error["message"])
        self.assertEqual(waiting.header_all("x-should-retry"), ["false"], waiting.headers)

        retrying = results["retrying"]
        self.assertEqual(retrying.status, 503, retrying.body[:300])
        self.assertEqual(retrying.json()["error"]["type"], "server_error", retrying.body[:300])
        self.assertEqual(fake.requests[1].index, 2)
        self.assertEqual(retrying.header("x-request-id"), "req_2")  # that attempt's answer
        self.assertEqual(retrying.header_all("x-bulwark-attempts"), ["2"], retrying.headers)
        self.assertEqual(retrying.header_all("x-should-retry"), ["false"], retrying.headers)

        code = bulwark.wait_exit(3)
        self.assertEqual(code, 0, bulwark.output(tail=20))
        self.assertEqual(len([e for e in bulwark.logs if e.get("msg") == CUT]), 1,
                         bulwark.output(tail=20))
        statuses = [e.get("status") for e in bulwark.logs if e.get("msg") == "request"]
        self.assertEqual(statuses, [503, 503])
        self.assertTrue(fake.wait_peer_closed(hung, 1.0), "upstream attempt not cancelled")


if __name__ == "__main__":
    unittest.main()
