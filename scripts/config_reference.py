#!/usr/bin/env python3
"""Renders the shipped proxy.yaml into the README's configuration reference table.

The table is generated from the file's own comments, so the two cannot drift:
  scripts/config_reference.py --write   # refresh README.md
  scripts/config_reference.py --check   # exit 1 if README.md is out of date (a ctest test)
"""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
START = "<!-- config-reference:start -->"
END = "<!-- config-reference:end -->"
LINE = re.compile(r'^(?P<indent>\s*)(?P<dash>- )?(?P<key>"[^"]+"|[A-Za-z0-9_]+):\s*(?P<value>.*?)\s*(#\s*(?P<comment>.*))?$')


def rows(yaml_text: str) -> list[tuple[str, str, str]]:
    out = []
    stack: list[tuple[int, str]] = []  # (indent, key)
    for raw in yaml_text.splitlines():
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        m = LINE.match(raw)
        if not m:
            continue
        indent = len(m["indent"]) + (2 if m["dash"] else 0)
        key = m["key"].strip('"')
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parents = [k for _, k in stack]
        if m["dash"] and parents:
            parents[-1] += "[]"
            stack[-1] = (stack[-1][0], parents[-1])
        path = ".".join(parents + [key])
        value = m["value"]
        if value == "":
            stack.append((indent, key))
        comment = (m["comment"] or "").strip()
        if comment:
            out.append((path, value, comment))
    return out


def table(yaml_text: str) -> str:
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for path, value, comment in rows(yaml_text):
        shown = f"`{value}`" if value else ""
        lines.append(f"| `{path}` | {shown} | {comment.replace('|', '&#124;')} |")
    return "\n".join(lines)


def main() -> int:
    mode = sys.argv[1] if len(sys.argv) > 1 else "--check"
    readme = ROOT / "README.md"
    text = readme.read_text()
    if START not in text or END not in text:
        print("README.md has no configuration reference markers", file=sys.stderr)
        return 1
    generated = table((ROOT / "proxy.yaml").read_text())
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    updated = f"{head}{START}\n{generated}\n{END}{tail}"
    if mode == "--write":
        readme.write_text(updated)
        return 0
    if updated != text:
        print("README.md's configuration reference is out of date with proxy.yaml; "
              "run scripts/config_reference.py --write", file=sys.stderr)
        return 1
    print("configuration reference matches proxy.yaml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
