#!/usr/bin/env python3
"""A flame graph (SVG) from `perf script` output, and a table of where the samples are.

    perf script -i perf.data -F comm,tid,ip,sym,dso | python3 flamegraph.py --svg out.svg \
        --title "Bulwark under wrk" [--summary out.md]

Frames without a symbol (libcurl, libevent and libc ship without debug symbols) are named
after their library, and a run of them is one frame. Colours say whose code a frame is:
Bulwark (orange), libcurl (blue), libevent (green), the allocator and the rest of libc (red),
the kernel (grey), others (purple). The summary counts each sample once, by the library its
leaf frame is in, and by Bulwark's first-level handlers.
"""

from __future__ import annotations

import argparse
import collections
import html
import re
import sys

FRAME = re.compile(r"^\s+([0-9a-f]+)\s+(.*?)\s+\((.*)\)$")


def frame_name(sym: str, dso: str) -> str:
    lib = dso.rsplit("/", 1)[-1]
    if sym.startswith("[unknown]") or re.fullmatch(r"0x[0-9a-f]+", sym) or not sym:
        return lib.split(".so")[0] if ".so" in lib else lib
    sym = re.sub(r"\(.*", "", sym) if not sym.startswith("operator") else sym
    sym = sym.replace(" (inlined)", "")
    return sym[:160]


def owner(name: str, dso: str) -> str:
    if "kernel" in dso or name.startswith("[k]"):
        return "kernel"
    if "libcurl" in dso or name == "libcurl":
        return "libcurl"
    if "libevent" in dso or name.startswith(("event_", "evbuffer", "bufferevent")):
        return "libevent"
    if re.search(r"malloc|free|calloc|realloc|tcache|unlink_chunk|operator new|operator delete",
                 name):
        return "allocator"
    if "libc.so" in dso or "libstdc++" in dso or "vdso" in dso:
        return "libc"
    if "bulwark" in dso or "bulwark::" in name:
        return "bulwark"
    return "other"


COLOURS = {"bulwark": "#f28e2b", "libcurl": "#4e79a7", "libevent": "#59a14f",
           "allocator": "#e15759", "libc": "#ff9d9a", "kernel": "#bab0ac", "other": "#b07aa1"}


def read_stacks(lines) -> tuple[collections.Counter, collections.Counter, dict]:
    stacks: collections.Counter = collections.Counter()
    leaf_owner: collections.Counter = collections.Counter()
    owners: dict[str, str] = {}
    frames: list[tuple[str, str]] = []

    def flush() -> None:
        if not frames:
            return
        # An inlined frame is in the library of the function it was inlined into (the next
        # real frame towards the root).
        real = ""
        for i in range(len(frames) - 1, -1, -1):
            if frames[i][1] == "inlined":
                frames[i] = (frames[i][0], real)
            else:
                real = frames[i][1]
        path: list[str] = []
        for sym, dso in reversed(frames):  # root first
            name = frame_name(sym, dso)
            if path and path[-1] == name and owner(name, dso) != "bulwark":
                continue  # a run of frames in one library without symbols
            owners.setdefault(name, owner(name, dso))
            path.append(name)
        stacks[";".join(path)] += 1
        leaf_sym, leaf_dso = frames[0]
        leaf_owner[owner(frame_name(leaf_sym, leaf_dso), leaf_dso)] += 1

    for line in lines:
        line = line.rstrip("\n")
        if not line.strip():
            flush()
            frames = []
            continue
        m = FRAME.match(line)
        if m:
            frames.append((m.group(2), m.group(3)))
    flush()
    return stacks, leaf_owner, owners


def build_tree(stacks: collections.Counter) -> dict:
    root: dict = {"name": "all", "value": 0, "children": {}}
    for path, count in stacks.items():
        node = root
        node["value"] += count
        for name in path.split(";"):
            node = node["children"].setdefault(name, {"name": name, "value": 0, "children": {}})
            node["value"] += count
    return root


def svg(tree: dict, owners: dict, title: str, width: int = 1600, row: int = 17) -> str:
    total = tree["value"] or 1
    rects: list[str] = []
    max_depth = 0

    def walk(node: dict, x: float, depth: int) -> None:
        nonlocal max_depth
        max_depth = max(max_depth, depth)
        w = node["value"] / total * width
        if w < 0.3:
            return
        pct = 100.0 * node["value"] / total
        colour = COLOURS.get(owners.get(node["name"], "other"), COLOURS["other"])
        label = node["name"]
        text = label if len(label) * 7 < w else (label[: int(w / 7) - 2] + "…" if w > 30 else "")
        rects.append((depth, x, w, colour, f"{html.escape(label)} ({pct:.1f} %, "
                      f"{node['value']} samples)", html.escape(text)))
        cx = x
        for child in sorted(node["children"].values(), key=lambda c: -c["value"]):
            walk(child, cx, depth + 1)
            cx += child["value"] / total * width

    walk(tree, 0.0, 0)
    top = 40
    height = top + (max_depth + 1) * row + 40
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="monospace" font-size="11">',
           f'<rect width="100%" height="100%" fill="#ffffff"/>',
           f'<text x="8" y="20" font-size="15" font-family="sans-serif">{html.escape(title)}'
           f' ({total} samples; width = share of CPU samples; root at the bottom)</text>']
    legend_x = 8
    for name, colour in COLOURS.items():
        out.append(f'<rect x="{legend_x}" y="{height - 22}" width="12" height="12" '
                   f'fill="{colour}"/><text x="{legend_x + 16}" y="{height - 12}">{name}</text>')
        legend_x += 110
    bottom = height - 40
    for depth, x, w, colour, tip, text in rects:
        y = bottom - (depth + 1) * row
        out.append(f'<g><title>{tip}</title><rect x="{x:.1f}" y="{y}" width="{max(w - 0.5, 0.1):.1f}"'
                   f' height="{row - 1}" fill="{colour}" rx="1"/>'
                   + (f'<text x="{x + 3:.1f}" y="{y + row - 5}">{text}</text>' if text else "")
                   + "</g>")
    out.append("</svg>")
    return "\n".join(out)


def summary(stacks: collections.Counter, leaf_owner: collections.Counter) -> str:
    total = sum(leaf_owner.values()) or 1
    lines = ["| Where the CPU samples are (leaf frame) | share |", "| --- | ---: |"]
    for name, count in leaf_owner.most_common():
        lines.append(f"| {name} | {100.0 * count / total:.1f} % |")
    # Bulwark's own functions, inclusive of what they call (each sample once per function).
    inclusive: collections.Counter = collections.Counter()
    for path, count in stacks.items():
        for name in set(path.split(";")):
            if "bulwark::" in name:
                inclusive[name] += count
    lines += ["", "| Bulwark function (inclusive) | share |", "| --- | ---: |"]
    for name, count in inclusive.most_common(25):
        lines.append(f"| `{name}` | {100.0 * count / total:.1f} % |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--svg", required=True)
    ap.add_argument("--title", default="CPU profile")
    ap.add_argument("--summary")
    args = ap.parse_args()
    stacks, leaf_owner, owners = read_stacks(sys.stdin)
    if not stacks:
        print("flamegraph: no samples on stdin", file=sys.stderr)
        return 1
    with open(args.svg, "w") as f:
        f.write(svg(build_tree(stacks), owners, args.title))
    if args.summary:
        with open(args.summary, "w") as f:
            f.write(summary(stacks, leaf_owner))
    return 0


if __name__ == "__main__":
    sys.exit(main())
