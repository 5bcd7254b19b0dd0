"""The soak test, short: tests/soak/soak.py for 20 s, as CI runs it. The
documented 10-minute run is `python3 tests/soak/soak.py --seconds 600`.

Run from tests/integration with PYTHONPATH=tests: python3 -m unittest -v test_soak_short
"""

import json
import os
import subprocess
import sys
import tempfile
import unittest

from harness import TESTS_DIR, bulwark_binary

SOAK = TESTS_DIR / "soak" / "soak.py"
SECONDS = float(os.environ.get("BULWARK_SOAK_SECONDS", "20"))


class ShortSoakTest(unittest.TestCase):

    def test_short_soak_every_request_answered_and_nothing_grows(self):
        with tempfile.TemporaryDirectory() as tmp:
            summary_path = os.path.join(tmp, "summary.json")
            proc = subprocess.run(
                [sys.executable, str(SOAK), "--seconds", str(SECONDS), "--concurrency", "12",
                 # memory sizes mean nothing under ASan (the sanitizer job); fds still count
                 *(["--rss-tolerance-mib", "100000"]
                   if os.environ.get("BULWARK_SANITIZED") == "1" else []),
                 "--warmup", "5", "--summary-json", summary_path],
                capture_output=True, text=True, timeout=SECONDS + 120,
                env={**os.environ, "BULWARK_BIN": str(bulwark_binary())})
            sys.stdout.write(proc.stdout)
            self.assertTrue(os.path.exists(summary_path),
                            f"soak.py wrote no summary (exit {proc.returncode})\n"
                            f"{proc.stdout}\n{proc.stderr[-3000:]}")
            with open(summary_path) as f:
                summary = json.load(f)
        self.assertEqual(summary["failure_examples"], [], "requests without a right answer")
        self.assertEqual(summary["problems"], [])
        self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
        # The run did what it is for: real traffic, with faults on both sides of the commit
        # point, and every request accounted for.
        self.assertGreater(summary["requests"], 200)
        answers = summary["answers"]
        for kind in ("ok", "interrupted", "upstream error"):
            self.assertGreater(answers.get(kind, 0), 0, f"no {kind!r} answers: {answers}")
        kinds = summary["upstream_attempt_kinds"]
        for kind in ("drop", "hang", "cut", "stall_mid", "status:503"):
            self.assertGreater(kinds.get(kind, 0), 0, f"the fake never served {kind!r}")


if __name__ == "__main__":
    unittest.main()
