"""scripts/demo.sh: the demo a newcomer runs must work without a key or a
network, show retries and a breaker opening and closing, and leave nothing running behind it.

Runs the script in its quick mode (DEMO_SECONDS=5) against the binary under test
(BULWARK_BIN, so the demo does not build).

Run from tests/integration with PYTHONPATH=tests: python3 -m unittest -v test_demo
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
import unittest

from harness import REPO_DIR, bulwark_binary

DEMO = REPO_DIR / "scripts" / "demo.sh"


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that mention `text` (e.g. the demo's work dir)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{pid}: {cmdline}")
    return found


class Demo:
    """scripts/demo.sh in its own session (so a Ctrl-C can be sent to its process group)."""

    def __init__(self, seconds: float):
        env = dict(os.environ, DEMO_SECONDS=str(seconds), BULWARK_BIN=str(bulwark_binary()),
                   DEMO_SEED="7")
        env.pop("DEMO_KEEP", None)
        self.proc = subprocess.Popen(["bash", str(DEMO)], cwd=REPO_DIR, env=env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self.cond:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self.cond.notify_all()

    def wait_for_line(self, pattern: str, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for line in self.lines:
                    match = re.search(pattern, line)
                    if match:
                        return match
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.proc.poll() is not None and not self.reader.is_alive():
                    raise AssertionError(f"no line matching {pattern!r}:\n{self.output}")
                self.cond.wait(min(remaining, 0.1))

    def wait(self, timeout: float) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"the demo did not finish within {timeout} s:\n{self.output}")
        self.reader.join(5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        self.reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    @property
    def output(self) -> str:
        with self.cond:
            return "\n".join(self.lines)


@unittest.skipUnless(os.access(bulwark_binary(), os.X_OK), "bulwark not built")
class DemoTest(unittest.TestCase):

    def start(self, seconds: float) -> Demo:
        demo = Demo(seconds)
        self.addCleanup(demo.kill)
        return demo

    def assert_cleaned_up(self, demo: Demo) -> None:
        work = demo.wait_for_line(r"demo: work dir (\S+)", 0).group(1)
        self.assertFalse(os.path.exists(work), f"{work} left behind")
        self.assertEqual(processes_mentioning(work), [], "processes left running")

    def test_quick_demo_shows_retries_and_a_breaker_opening_and_closing(self):
        started = time.monotonic()
        demo = self.start(5)
        code = demo.wait(90)
        out = demo.output
        self.assertEqual(code, 0, out)
        for heading in ("What happened:", "Final status seen by the clients",
                        "Attempts per request", "Retries by reason (bulwark_retries_total)",
                        "Circuit breaker", "Tokens counted", "Bulwark's log lines"):
            self.assertIn(heading, out)
        short = demo.wait_for_line(
            r"In short: (\d+) requests, (\d+) upstream attempts, (\d+) retries, breaker opened "
            r"(\d+)x and closed (\d+)x", 0)
        requests, attempts, retries, opened, closed = map(int, short.groups())
        self.assertGreater(requests, 10, out)
        self.assertGreaterEqual(retries, 1, out)
        self.assertGreaterEqual(opened, 1, out)
        self.assertGreaterEqual(closed, 1, out)
        # The transitions are shown as the log told them, and live.
        self.assertRegex(out, r"CLOSED -> OPEN")
        self.assertRegex(out, r"HALF_OPEN -> CLOSED")
        self.assertRegex(out, r"breaker openai-fake: CLOSED -> OPEN")
        # Real log lines (JSON) and the retry reasons with counts.
        self.assertRegex(out, r'\{"ts":"[^"]+","level":"warn","msg":"upstream attempt failed"')
        self.assertRegex(out, r"\n  (503|429|timeout|reset) +[1-9]\d* ")
        self.assertRegex(out, r"gpt-4o(-mini)? +prompt +[1-9]")
        self.assert_cleaned_up(demo)
        print(f"\n[demo quick mode: {time.monotonic() - started:.1f} s]")

    def test_ctrl_c_stops_everything(self):
        demo = self.start(60)
        demo.wait_for_line(r"Sending traffic for", 20)
        demo.wait_for_line(r"done +\d+", 10)  # traffic is flowing
        os.killpg(demo.proc.pid, signal.SIGINT)  # what a Ctrl-C in the terminal does
        code = demo.wait(15)
        self.assertEqual(code, 130, demo.output)
        self.assert_cleaned_up(demo)


if __name__ == "__main__":
    unittest.main()
