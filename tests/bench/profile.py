#!/usr/bin/env python3
"""Profiles Bulwark under the bench's throughput load and draws a flame graph.

    python3 tests/bench/profile.py --label after [--binary build/bulwark] [--seconds 5]

Starts the bench's nginx origin and a Bulwark in front of it (the same configurations as
bench.py: 1 worker, log level warn), drives it with wrk (-t1 -c50, the chat completion POST),
records `perf record -F 1999 --call-graph dwarf` of the Bulwark process for --seconds, and
writes to --out (default tests/bench/results/):

    profile-<label>.svg   the flame graph (flamegraph.py)
    profile-<label>.md    where the samples are: by library, and Bulwark's functions inclusive

Needs Debian's linux-perf (perf) and what bench.py needs. perf must be allowed to profile the
process (root, or kernel.perf_event_paranoid <= 1).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench  # noqa: E402  (the servers and their configurations)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--label", required=True)
    ap.add_argument("--binary", default=str(bench.BULWARK_BIN))
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--out", default=str(bench.OUT))
    args = ap.parse_args()
    perf = shutil.which("perf")
    if perf is None:
        print("profile: perf not found (apt-get install linux-perf)", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    binary = bench.TMP / "bulwark"
    shutil.copy2(args.binary, binary)
    (bench.TMP / "body.json").write_text(bench.REQUEST_BODY)
    origin = bench.origin_nginx(None, 0).start()
    proxy = bench.Bulwark("bulwark-profile", origin.port, binary).start()
    try:
        bench.check_answers(proxy.port, "bulwark")
        wrk = subprocess.Popen(
            [bench.WRK, "-t1", "-c50", f"-d{int(args.seconds) + 3}s", "--timeout", "5s",
             "-s", str(HERE / "post.lua"), f"http://127.0.0.1:{proxy.port}"],
            env=dict(os.environ, BENCH_BODY_FILE=str(bench.TMP / "body.json")),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)  # warmed up: connections open, pools filled
        data = bench.TMP / "perf.data"
        subprocess.run([perf, "record", "-F", "1999", "--call-graph", "dwarf,32768", "-o",
                        str(data), "-p", str(proxy.pid), "--", "sleep", str(args.seconds)],
                       check=True, capture_output=True)
        wrk_out = wrk.communicate(timeout=60)[0]
        script = subprocess.run([perf, "script", "-i", str(data), "-F", "comm,tid,ip,sym,dso"],
                                check=True, capture_output=True, text=True)
        svg, md = out / f"profile-{args.label}.svg", out / f"profile-{args.label}.md"
        subprocess.run([sys.executable, str(HERE / "flamegraph.py"), "--svg", str(svg),
                        "--summary", str(md), "--title",
                        f"Bulwark ({args.label}) under wrk -c50, plain HTTP/1.1, 1 worker"],
                       input=script.stdout, text=True, check=True)
        rps = next((l for l in wrk_out.splitlines() if l.startswith("Requests/sec")), "")
        print(f"profile: {svg} and {md} ({rps.strip()})")
        return 0
    finally:
        proxy.stop()
        origin.stop()
        bench.cleanup()


if __name__ == "__main__":
    sys.exit(main())
