#!/usr/bin/env python3
"""Instructions per request, by library: a noise-free view of where a proxy's CPU goes.

    python3 tests/bench/instructions.py --binary build/bulwark [--baseline old/bulwark] \
        [--requests 2000] [--out tests/bench/results]

Shared machines make CPU-time measurements drift by 10-30 % from minute to minute, more than
most single optimisations change. Instruction counts do not drift: each binary runs under
valgrind's callgrind against the bench's nginx origin (plain HTTP/1.1, the chat completion
POST), once with `--requests` / 4 and once with `--requests` requests from 4 keep-alive
connections at 200 a second, each run from start to exit; the difference between the two
counts, divided by the difference in requests, is what a request costs. The libcurl ceiling
(ceiling.c) runs under callgrind the same way. Reported: user-space instructions per request,
in total and by library (Bulwark's own code, libcurl, libevent, the C library with the
allocator, the rest). Kernel work (system calls) is not counted: see the bench's CPU times.

Writes instructions.md and instructions.json to --out. Needs valgrind (Debian's valgrind).
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench  # noqa: E402  (the origin and the Bulwark configuration)

def owner(path: str, binary_name: str) -> str:
    name = path.rsplit("/", 1)[-1]
    if "libcurl" in name:
        return "libcurl"
    if "libevent" in name:
        return "libevent"
    if name.startswith("libc.so") or name.startswith("libm.so") or "ld-linux" in name or \
            "mimalloc" in name:
        return "libc (with malloc)"
    if "libstdc++" in name:
        return "libstdc++"
    if name == "nginx":
        return "nginx"
    # Compiler-made clones ("[clone .isra.0]") print without their object; only the binary
    # under test has symbols for them.
    if name == binary_name or name.startswith("bulwark") or name.startswith("clone ") or \
            name.startswith("__"):
        return "bulwark"
    if "ceiling" in name:
        return "ceiling (its own code)"
    return "other: " + name.split(".so")[0]


def by_object(dump: Path, binary_name: str) -> dict[str, int]:
    """Self instructions by owner, read from the callgrind dump itself: every function's cost
    goes to the object it was compiled into ("ob="), code inlined from headers included.
    (callgrind_annotate's listing names no object for a function's lines from another file,
    such as std::string or rapidjson code inlined into Bulwark, so reading it loses those.)"""
    names: dict[str, str] = {}
    totals: dict[str, int] = {}
    current = "???"
    skip_call_cost = False
    with open(dump, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith(("ob=", "cob=")):
                # "ob=(7) /path" names object 7 (a call's "cob=" may name it first); "ob=(7)"
                # refers back to it.
                ref = line.split("=", 1)[1].strip()
                name = ref
                if ref.startswith("("):
                    key, _, name = ref.partition(")")
                    name = name.strip()
                    if name:
                        names[key] = name
                    name = names.get(key, "???")
                if line.startswith("ob="):
                    current = name
            elif line.startswith("calls="):
                skip_call_cost = True  # the next cost line is the callee's inclusive cost
            elif line[:1].isdigit() or line[:1] in "+-*":
                if skip_call_cost:
                    skip_call_cost = False
                    continue
                fields = line.split()
                if len(fields) > 1:
                    key = owner(current, binary_name)
                    totals[key] = totals.get(key, 0) + int(fields[1])
    return totals


def run_once(binary: Path, origin_port: int, requests: int, client: Path, label: str) -> dict:
    """One Bulwark under callgrind from start to exit, with `requests` requests through it:
    the instructions by library, and the requests that completed."""
    proxy = bench.Bulwark(label, origin_port, binary)
    dump = proxy.dir / "callgrind.out"
    return run_under_callgrind([str(binary), "--config", str(proxy.dir / "proxy.yaml")],
                               proxy.dir, proxy.port, dump, requests, client, label, binary.name)


def run_answering_once(requests: int, client: Path, label: str) -> dict:
    """nginx answering each request itself (one process, no master), under callgrind."""
    prefix = bench.TMP / label
    prefix.mkdir(parents=True, exist_ok=True)
    port = bench.free_port()
    conf = prefix / "nginx.conf"
    conf.write_text("master_process off;\n" + bench.nginx_conf(
        prefix, bench.answering_server(f"127.0.0.1:{port}")))
    return run_under_callgrind([bench.NGINX, "-p", str(prefix), "-c", str(conf)], prefix, port,
                               prefix / "callgrind.out", requests, client, label, "nginx")


def run_under_callgrind(cmd: list[str], cwd: Path, port: int, dump: Path, requests: int,
                        client: Path, label: str, binary_name: str) -> dict:
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={dump}", *cmd]
    proc = bench.spawn(cmd, f"{label}.log", cwd=str(cwd))
    try:
        bench.wait_port(port, timeout=120, proc=proc)
        r = subprocess.run([str(client), "rate", "-p", str(port), "-c", "4", "-b",
                            str(bench.TMP / "body.json"), "-r", "200", "-d",
                            f"{requests / 200:g}"],
                           check=True, capture_output=True, text=True, timeout=600)
        sent = json.loads([l for l in r.stdout.splitlines() if l.startswith("{")][-1])
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)  # callgrind writes its counts at exit
    finally:
        bench.stop(proc)
    return {"requests": sent.get("completed", 0),
            "errors": sent.get("errors", 0) + sent.get("non200", 0),
            "totals": by_object(dump, binary_name)}


def run_bulwark(binary: Path | None, origin_port: int, requests: int, client: Path,
                label: str) -> dict:
    """Instructions per request: two runs, `requests` / 4 and `requests` requests, each from
    start to exit; the difference is what the extra requests cost (start-up, warm-up and
    shutdown cancel out). Without a binary: nginx answering by itself, the same way."""
    if binary is None:
        small = run_answering_once(requests // 4, client, f"{label}-small")
        large = run_answering_once(requests, client, f"{label}-large")
    else:
        small = run_once(binary, origin_port, requests // 4, client, f"{label}-small")
        large = run_once(binary, origin_port, requests, client, f"{label}-large")
    extra = max(1, large["requests"] - small["requests"])
    keys = set(small["totals"]) | set(large["totals"])
    return {"requests": extra, "errors": small["errors"] + large["errors"],
            "per_request": {k: (large["totals"].get(k, 0) - small["totals"].get(k, 0)) / extra
                            for k in keys}}


def run_ceiling(ceiling: Path, origin_port: int, seconds: float) -> dict:
    dump = bench.TMP / "ceiling.callgrind"
    r = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={dump}",
                        str(ceiling), "-u", f"http://127.0.0.1:{origin_port}/v1/chat/completions",
                        "-c", "4", "-d", str(seconds), "-b", str(bench.TMP / "body.json")],
                       capture_output=True, text=True, timeout=600)
    data = json.loads([l for l in r.stdout.splitlines() if l.startswith("{")][-1])
    totals = by_object(dump, ceiling.name)
    # Start-up (TLS library and curl initialisation) is counted too: it is spread over
    # thousands of requests.
    return {"requests": data["requests"], "errors": data["errors"],
            "per_request": {k: v / max(1, data["requests"]) for k, v in totals.items()}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", default=str(bench.BULWARK_BIN))
    ap.add_argument("--baseline")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--out", default=str(bench.OUT))
    args = ap.parse_args()
    for tool in ("valgrind", "callgrind_annotate", "cc"):
        if shutil.which(tool) is None:
            print(f"instructions: {tool} not found (apt-get install valgrind)", file=sys.stderr)
            return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    client, ceiling = bench.TMP / "benchclient", bench.TMP / "ceiling"
    subprocess.run(["cc", "-O2", "-o", str(client), str(HERE / "benchclient.c")], check=True)
    # The ceiling runs on the allocator the binary under test links (mimalloc or the C
    # library's), so that the allocator's gain is not counted as Bulwark's own.
    needed = subprocess.run(["readelf", "-d", args.binary], capture_output=True, text=True).stdout
    allocator = ["-lmimalloc"] if "libmimalloc" in needed else []
    subprocess.run(["cc", "-O2", "-o", str(ceiling), str(HERE / "ceiling.c"), *allocator,
                    "-lcurl", "-levent"], check=True)
    (bench.TMP / "body.json").write_text(bench.REQUEST_BODY)
    binaries = {"bulwark": Path(args.binary)}
    if args.baseline:
        binaries = {"baseline": Path(args.baseline), **binaries}
    origin = bench.origin_nginx(None, 0).start()
    results: dict = {}
    try:
        for label, path in binaries.items():
            copy = bench.TMP / f"bulwark-{label}"
            shutil.copy2(path, copy)
            results[label] = run_bulwark(copy, origin.port, args.requests, client, label)
            print(f"{label}: {sum(results[label]['per_request'].values()):,.0f} instructions "
                  "per request", flush=True)
        results["ceiling"] = run_ceiling(ceiling, origin.port, 10)
        print(f"ceiling: {sum(results['ceiling']['per_request'].values()):,.0f} instructions "
              "per request", flush=True)
        # The client side alone: what reading a request and writing the answer cost in a
        # lean server (nginx answering by itself), work every proxy does and the ceiling not.
        results["answering"] = run_bulwark(None, origin.port, args.requests, client,
                                           "answering")
        print(f"answering: {sum(results['answering']['per_request'].values()):,.0f} "
              "instructions per request", flush=True)
    finally:
        origin.stop()
        bench.cleanup()
    names = list(results)
    parts = sorted({k for r in results.values() for k in r["per_request"]},
                   key=lambda k: -max(r["per_request"].get(k, 0) for r in results.values()))
    lines = ["# Instructions per request (user space, callgrind)", "",
             f"Bulwark: the difference between a run of {args.requests // 4} and a run of "
             f"{args.requests} requests (4 keep-alive connections, 200 a second, plain HTTP/1.1 "
             "to the bench's nginx origin), each from start to exit; the answering nginx (the client "
             "side alone: nginx answering each request itself) the same way. The ceiling: 10 s "
             "with 4 transfers, start-up included. Kernel work is not counted.", "",
             "| | " + " | ".join(names) + " |", "| --- |" + " ---: |" * len(names)]
    for part in parts:
        if all(abs(results[n]["per_request"].get(part, 0)) < 1 for n in names):
            continue
        lines.append(f"| {part} | " + " | ".join(
            f"{results[n]['per_request'].get(part, 0):,.0f}" for n in names) + " |")
    lines.append("| **total** | " + " | ".join(
        f"**{sum(results[n]['per_request'].values()):,.0f}**" for n in names) + " |")
    if "bulwark" in results and "ceiling" in results:
        own = sum(results["bulwark"]["per_request"].values()) - \
            sum(results["ceiling"]["per_request"].values())
        lines += ["", f"Bulwark above the ceiling: {own:,.0f} instructions per request."]
        if "answering" in results:
            side = sum(results["answering"]["per_request"].values())
            lines.append(f"The client side alone (`answering`: nginx answering each request "
                         f"itself, the same method as Bulwark's runs): {side:,.0f}. Bulwark "
                         f"above the ceiling and that: {own - side:,.0f}.")
    if "baseline" in results:
        b = sum(results["baseline"]["per_request"].values())
        a = sum(results["bulwark"]["per_request"].values())
        lines.append(f"Bulwark / baseline: {a / b:.2f}× the instructions.")
    (out / "instructions.md").write_text("\n".join(lines) + "\n")
    (out / "instructions.json").write_text(json.dumps(results, indent=1) + "\n")
    print("\n".join(lines))
    return 0 if all(r["errors"] == 0 for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
