#!/usr/bin/env python3
"""Quota-aware admission bench (see "Admission bench" in tests/bench/README.md).

A fake OpenAI upstream with OpenAI's per-model limiter (gpt-4o-mini: 120 RPM, 20,000 TPM) sits
behind Bulwark; tests/e2e/ratelimit_load.mjs (the official openai SDK, SDK retries off) sends
a burst of chat completions through Bulwark from many concurrent clients. The scenario runs
with `admission: {enabled: false}` and with `admission: {enabled: true}` against two kinds of
limiter, each run with a fresh limiter and a fresh Bulwark, and reports upstream 429s, client
success, how much of the limiter's capacity was used, and client latency, side by side:
  - whole: the limiter holds its whole minute, and `remaining` / `reset` speak of it;
  - short: the limiter enforces its minute in short buckets (--bucket, a tenth of the minute
    by default), as OpenAI documents its "quantized" limits, and `remaining` / `reset` speak
    of the bucket.

    python3 tests/bench/admission.py                 # real time: ~6 minutes a run, 4 runs
    python3 tests/bench/admission.py --kinds short   # one kind
    python3 tests/bench/admission.py --smoke         # < 1 min: runs end to end, goals not judged

Bulwark takes a limit as per minute, so the limiter runs in real time. --window W < 60
compresses a run by scaling the limiter instead: its limits times 60 / W, its bucket times
W / 60 (the refill per second and the bucket are then those of a W-second minute); that makes
every kind a short-bucket one, which is why the smoke run uses only that kind.

Run from the repository root. Binary: --binary, else $BULWARK_BIN, else build-dev/bulwark,
else build/bulwark; it is copied to a temp directory first, so a rebuild during the run changes
nothing. ADMISSION_KEY_MISSING=1: mode "off" writes no `admission:` key at all (for a binary
that does not know the key yet). Writes admission.json and admission.md to --out (default
$BENCH_OUT, else tests/bench/results); the smoke run writes admission-smoke.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
TESTS = REPO / "tests"
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))
sys.path.insert(1, str(TESTS / "integration"))

MODEL = "gpt-4o-mini"
RPM, TPM = 120, 20_000
DRIVER = TESTS / "e2e" / "ratelimit_load.mjs"
GOALS = {"max_429_share": 0.02, "min_success": 1.0, "min_capacity_used": 0.95}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--window", type=float, help="seconds per limiter minute (default 60; smoke 3)")
    p.add_argument("--clients", type=int, help="concurrent SDK clients (default 20; smoke 8)")
    p.add_argument("--requests", type=int, help="requests per mode (default 300; smoke 40)")
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat both modes; the order alternates (off,on / on,off); the table "
                        "shows the median of the rounds (default 1)")
    p.add_argument("--modes", default="off,on", help="comma-separated subset of off,on")
    p.add_argument("--kinds", help="comma-separated subset of whole,short (default both; "
                                   "smoke: short)")
    p.add_argument("--bucket", type=float, default=0.1,
                   help="the short kind's bucket, a share of the minute (default 0.1)")
    p.add_argument("--max-attempts", type=int, default=10,
                   help="Bulwark's retry.max_attempts in every run (default 10)")
    p.add_argument("--seed", type=int, default=1, help="the driver's seed: same requests per mode")
    p.add_argument("--deadline", type=float, default=120,
                   help="client per-request timeout in limiter seconds (default 120 = 2 limiter "
                        "minutes; the driver gets 120 * window / 60 real seconds)")
    p.add_argument("--delay-ms", default="100-300",
                   help="the fake's latency for an admitted request, LO-HI ms, chosen per "
                        "request from a hash of its body (default 100-300; 429s are immediate)")
    p.add_argument("--binary", help="bulwark binary (copied before use)")
    p.add_argument("--out", help="output directory (default $BENCH_OUT or tests/bench/results)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny run (window 3 s, 8 clients, 40 requests): checks that it runs "
                        "and writes results, not the goals")
    p.add_argument("--check-goals", action="store_true",
                   help="exit 1 if mode on (when run) misses a goal")
    args = p.parse_args(argv)
    args.window = args.window or (3.0 if args.smoke else 60.0)
    args.clients = args.clients or (8 if args.smoke else 20)
    args.requests = args.requests or (40 if args.smoke else 150)
    args.kinds = [k.strip() for k in (args.kinds or ("short" if args.smoke else "whole,short"))
                  .split(",") if k.strip()]
    if not args.kinds or set(args.kinds) - {"whole", "short"}:
        p.error("--kinds takes whole, short or whole,short")
    if not 0 < args.bucket <= 1:
        p.error("--bucket is a share of the minute in (0, 1]")
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.modes or set(args.modes) - {"off", "on"}:
        p.error("--modes takes off, on or off,on")
    if args.window <= 0 or args.clients < 1 or args.requests < 1 or args.rounds < 1:
        p.error("--window, --clients, --requests and --rounds must be positive")
    lo, _, hi = args.delay_ms.partition("-")
    args.delay = (float(lo) / 1000, float(hi or lo) / 1000)
    return args


def find_binary(args: argparse.Namespace) -> Path:
    for candidate in (args.binary, os.environ.get("BULWARK_BIN"), REPO / "build-dev" / "bulwark",
                      REPO / "build" / "bulwark"):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate).resolve()
    sys.exit("admission.py: no bulwark binary (build one, or pass --binary / set BULWARK_BIN)")


def delay_responder(lo: float, hi: float):
    """The fake's answer to an admitted chat request: its default completion after a latency
    in [lo, hi] s taken from a hash of the body (the same request waits the same in each
    mode). Runs after the limiter, so 429s stay immediate."""
    from fake_upstream.fake_upstream import Action, chat_completion

    def respond(request):
        if not request.path.endswith("/chat/completions"):
            return None
        fraction = (zlib.crc32(request.body or b"") & 0xFFFF) / 0xFFFF
        return Action(body=chat_completion(id=f"chatcmpl-fake-{request.index}"),
                      delay=lo + (hi - lo) * fraction)
    return respond


def scrape(url: str) -> dict:
    """Counters of interest from Bulwark's /metrics: {metric: {labels-string: value}}."""
    wanted = ("bulwark_upstream_attempts_total", "bulwark_retries_total",
              "bulwark_requests_total", "bulwark_retry_budget_exhausted_total")
    out: dict = {name: {} for name in wanted}
    try:
        text = urllib.request.urlopen(url, timeout=5).read().decode()
    except OSError as error:
        return {"error": str(error)}
    for line in text.splitlines():
        m = re.match(r"^([a-z_]+)(\{[^}]*\})?\s+(\S+)$", line)
        if m and m.group(1) in out:
            out[m.group(1)][m.group(2) or ""] = float(m.group(3))
    return out


def label(labels: str, name: str) -> str:
    m = re.search(name + r'="([^"]*)"', labels)
    return m.group(1) if m else ""


def limiter_settings(kind: str, args: argparse.Namespace) -> dict:
    """The fake limiter of a kind, in real time: a compressed window scales it (see above)."""
    scale = 60.0 / args.window
    bucket = 1.0 if kind == "whole" else args.bucket
    return {"rpm": RPM * scale, "tpm": TPM * scale, "window": 60.0,
            "bucket": min(1.0, bucket / scale)}


def run_mode(mode: str, args: argparse.Namespace, kind: str = "whole") -> dict:
    from harness import Bulwark, BulwarkDied, FakeUpstream  # after BULWARK_BIN is set

    settings = limiter_settings(kind, args)
    limits = {MODEL: settings}
    # log level info: the harness waits for the "listening" line
    config: dict = {"retry": {"max_attempts": args.max_attempts}}
    deadline_ms = round(args.deadline * args.window / 60 * 1000)
    if mode == "on":
        # A request may wait for room as long as its client waits for it (the default
        # max_wait, 30 s, is shorter than these clients' deadline).
        config["admission"] = {"enabled": True, "max_wait": f"{deadline_ms}ms"}
    elif os.environ.get("ADMISSION_KEY_MISSING", "") not in ("", "0"):
        pass  # a binary from before the admission key: mode off is its only behaviour
    else:
        config["admission"] = {"enabled": False}
    result: dict = {"mode": mode, "kind": kind, "limiter": settings,
                    "admission_config": config.get("admission", "(key omitted)"),
                    "deadline_ms": deadline_ms}
    with FakeUpstream(rate_limits=limits, responder=delay_responder(*args.delay)) as fake:
        limiter = fake.limiters[MODEL]
        try:
            bulwark = Bulwark([fake], config).start()
        except BulwarkDied as error:
            result["error"] = f"bulwark did not start: {str(error)[:2000]}"
            return result
        try:
            env = dict(os.environ, BASE_URL=bulwark.openai_base_url, CLIENTS=str(args.clients),
                       REQUESTS=str(args.requests), SEED=str(args.seed),
                       DEADLINE_MS=str(deadline_ms), MODEL=MODEL)
            started = time.monotonic()
            proc = subprocess.run(["node", str(DRIVER)], env=env, cwd=DRIVER.parent,
                                  capture_output=True, text=True,
                                  timeout=600 + args.requests * deadline_ms / 1000)
            wall = time.monotonic() - started
            metrics = scrape(f"{bulwark.admin_url}/metrics") if bulwark.admin_port else {}
        finally:
            try:
                bulwark.stop()
            except BulwarkDied as error:
                result["bulwark_exit"] = str(error)[:2000]
        accepted, rejected, charged = limiter.accepted, limiter.rejected, limiter.tokens_charged
        token_capacity = limiter.token_capacity()
        charged_span_min = ((limiter.last_charge_at - limiter.first_charge_at) / 60
                            if limiter.first_charge_at is not None else 0.0)
        fake_requests = len(fake.requests)
    try:
        driver = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        driver = {"error": "no JSON summary line"}
    if proc.returncode != 0 or "error" in driver:
        result["error"] = (f"driver exit {proc.returncode}: {driver.get('error')}; "
                           f"stderr: {proc.stderr[-2000:]}")
        result["driver"] = driver
        return result

    elapsed = driver["duration_s"]              # first request sent -> last answer received
    minutes = elapsed / 60                      # the limiter runs in real time
    attempts = accepted + rejected
    bw_attempts = metrics.get("bulwark_upstream_attempts_total", {})
    by_outcome: dict = {}
    for labels, value in bw_attempts.items():
        key = label(labels, "outcome") or labels
        by_outcome[key] = by_outcome.get(key, 0) + value
    result.update({
        "upstream_attempts": attempts,
        "upstream_429": rejected,
        "upstream_429_share": rejected / attempts if attempts else 0.0,
        "upstream_accepted": accepted,
        "fake_requests_seen": fake_requests,
        "bulwark_attempts_metric": sum(bw_attempts.values()) if bw_attempts else None,
        "bulwark_attempts_by_outcome": by_outcome,
        "bulwark_retries_metric": sum(metrics.get("bulwark_retries_total", {}).values()) or 0,
        "bulwark_budget_exhausted_metric":
            sum(metrics.get("bulwark_retry_budget_exhausted_total", {}).values()) or 0,
        "client_attempts_header_sum": driver.get("attempts_sum"),
        "client_requests": driver["requests"],
        "client_ok": driver["ok"],
        "client_failures": driver["failures"],
        "success_rate": driver["ok"] / driver["requests"] if driver["requests"] else 0.0,
        "elapsed_s": elapsed,
        "elapsed_limiter_min": minutes,
        "wall_s_with_node_startup": round(wall, 3),
        "tokens_charged": charged,
        "achieved_tpm": charged / minutes if minutes else 0.0,
        "achieved_rpm": accepted / minutes if minutes else 0.0,
        # capacity available = the initial full bucket + the refill between the limiter's
        # first and last admitted request (the fake's own account)
        "token_capacity": token_capacity,
        "request_capacity": settings["rpm"] * (settings["bucket"] + charged_span_min),
        "p50_ms": driver["p50_ms"], "p99_ms": driver["p99_ms"], "max_ms": driver["max_ms"],
        "ok_p50_ms": driver["ok_p50_ms"], "ok_p99_ms": driver["ok_p99_ms"],
        "driver": driver,
    })
    result["tpm_share"] = charged / result["token_capacity"]
    # the part of the capacity that bought an answer the client got (charged includes attempts
    # admitted upstream whose answer never reached the client, e.g. past its deadline)
    result["delivered_tokens"] = driver.get("ok_est_tokens")
    result["delivered_share"] = (driver["ok_est_tokens"] / result["token_capacity"]
                                 if driver.get("ok_est_tokens") is not None else None)
    result["rpm_share"] = accepted / result["request_capacity"]
    result["steady_tpm_ratio"] = result["achieved_tpm"] / settings["tpm"]
    result["binding"] = "tokens" if result["tpm_share"] >= result["rpm_share"] else "requests"
    result["capacity_used"] = max(result["tpm_share"], result["rpm_share"])
    result["goals"] = {
        "429_share": result["upstream_429_share"] <= GOALS["max_429_share"],
        "success": result["success_rate"] >= GOALS["min_success"],
        "capacity_used": result["capacity_used"] >= GOALS["min_capacity_used"],
    }
    return result


NUMERIC = ("upstream_attempts", "upstream_429", "upstream_429_share", "success_rate",
           "client_ok", "elapsed_s", "elapsed_limiter_min", "tokens_charged", "achieved_tpm",
           "achieved_rpm", "tpm_share", "rpm_share", "delivered_share", "upstream_accepted", "steady_tpm_ratio", "capacity_used",
           "p50_ms", "p99_ms", "max_ms", "bulwark_attempts_metric", "client_attempts_header_sum")


def summarise(runs: list[dict]) -> dict:
    """Per mode: the median of each number over its rounds (the only value with one round)."""
    out: dict = {}
    for mode in dict.fromkeys(r["label"] for r in runs):  # kind-mode, in run order
        good = [r for r in runs if r["label"] == mode and "error" not in r]
        bad = [r for r in runs if r["label"] == mode and "error" in r]
        if not good:
            if bad:
                out[mode] = {"error": bad[0]["error"]}
            continue
        summary = {k: statistics.median(r[k] for r in good if r.get(k) is not None)
                   for k in NUMERIC if any(r.get(k) is not None for r in good)}
        summary["rounds"] = len(good)
        summary["admission_config"] = good[0]["admission_config"]
        summary["binding"] = good[0]["binding"]
        summary["client_failures"] = good[0]["client_failures"] if len(good) == 1 else \
            [r["client_failures"] for r in good]
        summary["goals"] = {
            "429_share": summary["upstream_429_share"] <= GOALS["max_429_share"],
            "success": summary["success_rate"] >= GOALS["min_success"],
            "capacity_used": summary["capacity_used"] >= GOALS["min_capacity_used"],
        }
        out[mode] = summary
    return out


def pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def markdown(report: dict) -> str:
    s = report["settings"]
    modes = report["summary"]
    cols = list(modes)

    def cell(mode: str, fn) -> str:
        m = modes[mode]
        if "error" in m:
            return "did not run"
        try:
            return fn(m)
        except (KeyError, TypeError):
            return "n/a"

    def met(mode: str, goal: str) -> str:
        m = modes[mode]
        return "" if "error" in m else (" ✓" if m["goals"][goal] else " ✗")

    rows = [
        ("Config `admission:`", lambda m: (json.dumps(m["admission_config"])
                                           if isinstance(m["admission_config"], dict) else
                                           "key omitted: the binary's default"), "", None),
        ("Upstream attempts (limiter)", lambda m: f"{m['upstream_attempts']:.0f}", "", None),
        ("Bulwark attempts metric / x-bulwark-attempts sum",
         lambda m: f"{m.get('bulwark_attempts_metric', 0):.0f} / "
                   f"{m.get('client_attempts_header_sum', 0):.0f}", "", None),
        ("Upstream 429s (share of attempts)",
         lambda m: f"{m['upstream_429']:.0f} ({pct(m['upstream_429_share'])})", "≤ 2 %",
         "429_share"),
        ("Client success", lambda m: f"{m['client_ok']:.0f}/{s['requests']} "
                                     f"({pct(m['success_rate'])})", "100 %", "success"),
        ("Capacity used (binding bucket)",
         lambda m: f"{pct(m['capacity_used'])} ({m['binding']})", "≥ 95 %", "capacity_used"),
        ("Tokens charged / token capacity", lambda m: f"{pct(m['tpm_share'])}", "", None),
        ("… of it for answers the client got", lambda m: f"{pct(m['delivered_share'])} "
         f"({m['client_ok']:.0f} of {m['upstream_accepted']:.0f} admitted)", "", None),
        ("Requests admitted / request capacity", lambda m: f"{pct(m['rpm_share'])}", "", None),
        ("Achieved TPM (steady ratio to the limit)",
         lambda m: f"{m['achieved_tpm']:.0f} ({pct(m['steady_tpm_ratio'])})", "", None),
        ("Elapsed (limiter minutes)",
         lambda m: f"{m['elapsed_s']:.1f} s ({m['elapsed_limiter_min']:.2f})", "", None),
        ("Client latency p50 / p99 / max",
         lambda m: f"{m['p50_ms']:.0f} / {m['p99_ms']:.0f} / {m['max_ms']:.0f} ms", "", None),
    ]
    lines = [
        f"# Quota-aware admission: off vs on, two kinds of limiter",
        "",
        f"{s['clients']} SDK clients, {s['requests']} chat completions per run (prompt 50-2000 "
        f"chars, max_tokens 100-1000, seed {s['seed']}), Bulwark's retry.max_attempts "
        f"{s['max_attempts']}; limiter {MODEL}: {RPM} RPM, {TPM:,} TPM (times 60 / window "
        f"{s['window']:g} s), kinds: whole = the limiter holds its minute, short = it holds "
        f"{s['bucket']:g} of it and reports that bucket; client timeout "
        f"{s['deadline_limiter_s']:g} limiter s ({s['deadline_ms']} ms); fake latency "
        f"{s['delay_ms']} ms per admitted request; {s['rounds']} round(s)"
        f"{' (median)' if s['rounds'] > 1 else ''}. {report['when']}, load average "
        f"{report['loadavg']}.",
        "",
        "| Metric | " + " | ".join(f"{c.replace('-', ', admission ')}" for c in cols)
        + " | Goal |",
        "| --- | " + " | ".join("---" for _ in cols) + " | --- |",
    ]
    for name, fn, goal, key in rows:
        lines.append(f"| {name} | " + " | ".join(
            cell(c, fn) + (met(c, key) if key else "") for c in cols) + f" | {goal} |")
    for c in cols:
        if "error" in modes[c]:
            lines += ["", f"Mode {c} did not run: `{modes[c]['error'][:300]}`"]
    lines += [
        "",
        "Capacity: the limiter starts full (its bucket: the whole minute, or the short bucket) "
        "and refills continuously at its limit per minute, so between its first and last "
        "admitted request (T minutes) it can admit at most limit × (bucket + T). Capacity used "
        "= tokens charged / (TPM × (bucket + T)), and likewise for requests; the larger (the "
        "binding bucket) is judged. Tokens charged are "
        "the limiter's own: prompt estimate (bytes / 4) + max_tokens, per admitted request. "
        "The steady ratio (tokens / T / 20,000) leaves out the burst and can exceed 100 %. "
        "An attempt the limiter admitted can still fail the client (its deadline, which Bulwark "
        "takes from x-stainless-timeout, ends while the answer is on its way): the row under it "
        "counts only the tokens of requests that succeeded.",
        "Upstream attempts and 429s are the limiter's counters (every attempt reaching the "
        "fake); Bulwark's `bulwark_upstream_attempts_total` and the clients' summed "
        "`x-bulwark-attempts` are cross-checks (a client that timed out has no header).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("node") is None:
        sys.exit("admission.py: node is not installed")
    if not (TESTS / "e2e" / "node_modules" / "openai").is_dir():
        sys.exit("admission.py: tests/e2e/node_modules/openai missing (npm ci in tests/e2e)")
    out = Path(args.out or os.environ.get("BENCH_OUT") or HERE / "results").resolve()
    source = find_binary(args)
    workdir = Path(tempfile.mkdtemp(prefix="bulwark-admission-"))
    try:
        binary = workdir / "bulwark"
        shutil.copy2(source, binary)
        os.environ["BULWARK_BIN"] = str(binary)
        digest = hashlib.sha256(binary.read_bytes()).hexdigest()[:16]
        runs: list[dict] = []
        for round_no in range(args.rounds):
            order = args.modes if round_no % 2 == 0 else list(reversed(args.modes))
            for kind, mode in ((k, m) for k in args.kinds for m in order):
                print(f"admission.py: round {round_no + 1}/{args.rounds}, {kind} limiter, "
                      f"mode {mode} ...", file=sys.stderr, flush=True)
                result = run_mode(mode, args, kind)
                result["label"] = f"{kind}-{mode}"
                result["round"] = round_no + 1
                runs.append(result)
                brief = {k: result.get(k) for k in ("upstream_attempts", "upstream_429",
                                                    "client_ok", "capacity_used", "p50_ms",
                                                    "p99_ms", "elapsed_s", "error")
                         if result.get(k) is not None}
                print(f"admission.py:   {json.dumps(brief)}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    report = {
        "when": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "binary": {"path": str(source), "sha256_16": digest},
        "settings": {"window": args.window, "clients": args.clients, "requests": args.requests,
                     "rounds": args.rounds, "modes": args.modes, "seed": args.seed,
                     "deadline_limiter_s": args.deadline,
                     "deadline_ms": round(args.deadline * args.window / 60 * 1000),
                     "delay_ms": args.delay_ms, "smoke": args.smoke, "kinds": args.kinds,
                     "bucket": args.bucket, "max_attempts": args.max_attempts,
                     "limits": {MODEL: {"rpm": RPM, "tpm": TPM}},
                     "admission_key_missing": os.environ.get("ADMISSION_KEY_MISSING", "")
                     not in ("", "0")},
        "goals": GOALS,
        "summary": summarise(runs),
        "runs": runs,
    }
    out.mkdir(parents=True, exist_ok=True)
    stem = "admission-smoke" if args.smoke else "admission"
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{stem}.md").write_text(markdown(report))
    print((out / f"{stem}.md").read_text())
    print(f"admission.py: wrote {out / (stem + '.json')} and {out / (stem + '.md')}",
          file=sys.stderr)
    if any("error" in r for r in runs):
        return 1
    if args.check_goals and not args.smoke:
        for label, summary in report["summary"].items():
            if label.endswith("-on") and not all(summary.get("goals", {"ran": False}).values()):
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
