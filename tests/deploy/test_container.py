"""The container's runtime contract, without Docker: the binary started the way the image starts
it — the image's file layout, its default /etc/bulwark/proxy.yaml, UID/GID 65532 — with every
filesystem read-only (a private mount namespace: `unshare --mount`, then each mount remounted
read-only; /tmp too, so "nothing written outside /tmp" is really "nothing written"). Through
it: the Dockerfile's own HEALTHCHECK command, the admin endpoints, a request proxied to a fake
upstream with the key from OPENAI_API_KEY, /metrics holding only the metrics and labels the
dashboards may use, and a clean exit 0 on SIGTERM.

Needs root (for the mount namespace and the UID switch), as in CI; util-linux's unshare and
setpriv (Essential in Debian). Skipped, saying so, where they are not available.

    python3 -m unittest -v test_container   (from tests/deploy, PYTHONPATH=tests; BULWARK_BIN)
"""

from __future__ import annotations

import http.client
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
from pathlib import Path

import dockerfile
from dockerfile import REPO_DIR

from fake_upstream.fake_upstream import FakeUpstream

BINARY = Path(os.environ.get("BULWARK_BIN") or REPO_DIR / "build" / "bulwark")
UID = GID = 65532
API_KEY = "sk-container-test"

# Remount every mount of the new namespace read-only (kernel filesystems excepted), prove it,
# drop to the image's user and become bulwark.
READ_ONLY_THEN_EXEC = r"""
set -u
awk '{print $5}' /proc/self/mountinfo | sort -u | while read -r mp; do
  case "$mp" in /proc|/proc/*|/sys|/sys/*|/dev|/dev/*) continue ;; esac
  mount -o remount,bind,ro "$mp" 2>/dev/null || true
done
for probe in / /tmp "$ROOT" "$ROOT/etc/bulwark"; do
  if touch "$probe/.rw-probe" 2>/dev/null; then
    rm -f "$probe/.rw-probe"; echo "$probe is still writable" >&2; exit 97
  fi
done
cd /
exec setpriv --reuid=$UID_ --regid=$GID_ --clear-groups --no-new-privs -- \
  "$ROOT/usr/local/bin/bulwark" --config "$ROOT/etc/bulwark/proxy.yaml"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, path: str, method: str = "GET", body: bytes | None = None,
        headers: dict | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def can_isolate() -> str | None:
    """Why the read-only namespace cannot be set up here, or None."""
    if os.geteuid() != 0:
        return "needs root (mount namespace, UID switch); CI runs as root"
    for tool in ("unshare", "setpriv", "mount", "awk"):
        if not shutil.which(tool):
            return f"{tool} is not installed"
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"unshare --mount is not permitted here: {probe.stderr.strip()}"
    return None


class ContainerRuntimeTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        reason = can_isolate()
        if reason:
            raise unittest.SkipTest(reason)
        if not BINARY.is_file():
            raise AssertionError(f"build the binary first ({BINARY})")
        _, stages = dockerfile.parse()
        cls.runtime = stages[-1]

        # The image's layout: COPY'd files, root-owned, world-readable, in a world-readable tree.
        cls.root = Path(tempfile.mkdtemp(prefix="bulwark-image-"))
        os.chmod(cls.root, 0o755)
        for source, target, mode in ((BINARY, "usr/local/bin/bulwark", 0o755),
                                     (REPO_DIR / "deploy" / "proxy.yaml", "etc/bulwark/proxy.yaml", 0o644)):
            dest = cls.root / target
            dest.parent.mkdir(parents=True, exist_ok=True)
            for parent in [dest.parent, *dest.parent.parents]:
                if parent == cls.root:
                    break
                os.chmod(parent, 0o755)
            shutil.copyfile(source, dest)
            os.chmod(dest, mode)

        cls.fake = FakeUpstream().start()
        cls.admin_port = free_port()
        cls.env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "ROOT": str(cls.root), "UID_": str(UID), "GID_": str(GID),
            # The variables the image's proxy.yaml reads (deploy/proxy.yaml documents them).
            "BULWARK_LISTEN": "127.0.0.1:0",
            "BULWARK_ADMIN_LISTEN": f"127.0.0.1:{cls.admin_port}",
            "BULWARK_UPSTREAM_URL": cls.fake.base_url,
            "OPENAI_API_KEY": API_KEY,
        }
        cls.stdout: list[str] = []
        cls.stderr: list[str] = []
        cls.proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", READ_ONLY_THEN_EXEC],
            env=cls.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        for stream, sink in ((cls.proc.stdout, cls.stdout), (cls.proc.stderr, cls.stderr)):
            threading.Thread(target=lambda s=stream, k=sink: k.extend(iter(s.readline, "")), daemon=True).start()
        cls.port = cls._wait_listening()

    @classmethod
    def _wait_listening(cls) -> int:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for line in list(cls.stdout):
                entry = json.loads(line)
                if entry.get("msg") == "listening":
                    return int(entry["listen"].rsplit(":", 1)[1])
            if cls.proc.poll() is not None:
                break
            time.sleep(0.05)
        output = "".join(cls.stdout) + "".join(cls.stderr)
        cls._cleanup()
        raise AssertionError(f"bulwark did not start in the read-only namespace "
                             f"(exit {cls.proc.returncode}):\n{output}")

    @classmethod
    def _cleanup(cls):
        if cls.proc.poll() is None:
            cls.proc.kill()
            cls.proc.wait(10)
        cls.fake.stop()
        shutil.rmtree(cls.root, ignore_errors=True)

    @classmethod
    def tearDownClass(cls):
        cls._cleanup()

    def healthcheck(self) -> subprocess.CompletedProcess:
        return subprocess.run(dockerfile.healthcheck_command(self.runtime), env=self.env,
                              capture_output=True, text=True, timeout=10)

    # The order matters for the last test only (it stops the process): unittest sorts by name.

    def test_1_runs_as_the_image_user(self):
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        uids = re.search(r"^Uid:\s+(\d+)\s+(\d+)", status, re.M).groups()
        gids = re.search(r"^Gid:\s+(\d+)\s+(\d+)", status, re.M).groups()
        self.assertEqual(uids, (str(UID), str(UID)))
        self.assertEqual(gids, (str(GID), str(GID)))
        self.assertEqual(os.readlink(f"/proc/{self.proc.pid}/exe"), str(self.root / "usr/local/bin/bulwark"))

    def test_2_healthcheck_command_passes(self):
        result = self.healthcheck()
        self.assertEqual(result.returncode, 0, result.stderr)

    def test_3_admin_endpoints(self):
        self.assertEqual(get(self.admin_port, "/healthz")[0], 200)
        self.assertEqual(get(self.admin_port, "/readyz")[0], 200)
        status, _, body = get(self.admin_port, "/health/detailed")
        self.assertEqual(status, 200)
        self.assertIn("openai", json.loads(body)["services"])

    def test_4_proxies_with_the_key_from_the_environment(self):
        body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode()
        status, headers, data = get(self.port, "/v1/chat/completions", "POST", body,
                                    {"Content-Type": "application/json", "Authorization": "Bearer sk-app"})
        self.assertEqual(status, 200, data)
        self.assertEqual(headers.get("x-bulwark-upstream"), "openai")
        request = self.fake.wait_for_requests(1, timeout=5)[-1]
        self.assertEqual(request.header("authorization"), f"Bearer {API_KEY}")

    def test_5_metrics_are_the_catalogued_ones(self):
        catalog = json.loads((Path(__file__).parent / "bulwark_metrics.json").read_text())["metrics"]
        allowed = {}
        for name, meta in catalog.items():
            if meta["type"] == "histogram":
                allowed[f"{name}_bucket"] = set(meta["labels"]) | {"le"}
                allowed[f"{name}_sum"] = allowed[f"{name}_count"] = set(meta["labels"])
            else:
                allowed[name] = set(meta["labels"])
        status, _, body = get(self.admin_port, "/metrics")
        self.assertEqual(status, 200)
        seen = set()
        for line in body.decode().splitlines():
            if not line or line.startswith("#"):
                continue
            match = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s", line)
            self.assertIsNotNone(match, line)
            name, labels = match.group(1), match.group(2) or ""
            self.assertIn(name, allowed, f"{name} is exported but not in bulwark_metrics.json")
            names = set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', labels))
            self.assertEqual(names, allowed[name], f"{name}: labels {sorted(names)}")
            seen.add(name)
        # After one proxied request these have samples (the rest appear with retries, tokens, ...).
        for name in ("bulwark_requests_total", "bulwark_upstream_attempts_total",
                     "bulwark_request_duration_seconds_bucket", "bulwark_circuit_breaker_state",
                     "bulwark_build_info"):
            self.assertIn(name, seen)

    def test_6_logs_are_json_lines_on_stdout(self):
        self.assertTrue(self.stdout)
        for line in list(self.stdout):
            self.assertIsInstance(json.loads(line), dict, line)
        self.assertNotIn(API_KEY, "".join(self.stdout) + "".join(self.stderr), "the key is never logged")

    def test_7_sigterm_exits_0_and_the_healthcheck_then_fails(self):
        self.proc.send_signal(signal.SIGTERM)
        self.assertEqual(self.proc.wait(15), 0, "".join(self.stdout[-5:]) + "".join(self.stderr))
        self.assertEqual(self.stderr, [], "nothing on stderr (e.g. a failed write)")
        self.assertNotEqual(self.healthcheck().returncode, 0)


if __name__ == "__main__":
    unittest.main()
