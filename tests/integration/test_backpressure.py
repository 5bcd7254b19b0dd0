"""A client that reads slower than the upstream sends pauses the upstream transfer:
Bulwark's memory stays bounded and every byte still arrives, in order.

Run from tests/integration with PYTHONPATH=tests: python3 -m unittest -v test_backpressure
"""

import base64
import json
import os
import time
import unittest

from harness import Bulwark, FakeUpstream, RawConnection, raw_request
from harness import rss_kib  # shared helpers

CHUNK = 64 * 1024
CHUNKS = 512  # 32 MiB in all: far more than the kernel's socket buffers can hide


class BackpressureTest(unittest.TestCase):
    def test_slow_client_pauses_the_upstream_and_memory_stays_bounded(self):
        with FakeUpstream() as fake, Bulwark([fake]) as bulwark:
            # Incompressible payloads, so that on a compressing transport the upstream still
            # has megabytes to send (see test_fault_matrix's huge bodies).
            noise = base64.b64encode(os.urandom(CHUNK)).decode()
            payloads = [f"{i:08d}" + noise[i % 64:i % 64 + CHUNK - 8] for i in range(CHUNKS)]
            fake.push({"sse": payloads, "gap": 0, "done": True})
            baseline = rss_kib(bulwark.proc.pid)
            body = json.dumps({"model": "gpt-4o-mini", "stream": True, "messages": []})
            with RawConnection(bulwark.port, timeout=30) as conn:
                conn.send(raw_request("POST", "/v1/chat/completions", body,
                                      headers=[("Content-Type", "application/json")]))
                head = conn.read_head()
                self.assertEqual(head.status, 200)
                request = fake.wait_for_requests(1)[0]

                # The client reads nothing more: the upstream must stall (held back by
                # Bulwark) long before it has sent everything.
                deadline = time.monotonic() + 20
                sent, stable_since = -1, time.monotonic()
                while time.monotonic() < deadline:
                    now_sent = len(request.chunks_sent_at)
                    if now_sent != sent:
                        sent, stable_since = now_sent, time.monotonic()
                    elif time.monotonic() - stable_since > 0.5:
                        break
                    time.sleep(0.05)  # polling an external process's progress
                self.assertLess(sent, CHUNKS // 2,
                                "the upstream was not paused for a client that reads nothing")
                grown_kib = rss_kib(bulwark.proc.pid) - baseline
                if os.environ.get("BULWARK_SANITIZED") != "1":  # ASan's allocator inflates RSS
                    self.assertLess(grown_kib, 16 * 1024,
                                    f"bulwark grew by {grown_kib} KiB for one stalled stream")

                # Now read it all: every event arrives whole and in order.
                received = b"".join(piece for _, piece in conn.iter_body(head))
                self.assertTrue(head.complete)
            events = [e for e in received.split(b"\n\n") if e]
            self.assertEqual(len(events), CHUNKS + 1)
            for i, event in enumerate(events[:CHUNKS]):
                self.assertTrue(event.startswith(b"data: %08d" % i), f"event {i} out of order")
                self.assertEqual(len(event), len("data: ") + CHUNK)
            self.assertEqual(events[-1], b"data: [DONE]")


if __name__ == "__main__":
    unittest.main()
