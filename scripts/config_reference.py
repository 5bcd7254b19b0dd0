#!/usr/bin/env python3
"""Renders the shipped proxy.yaml into the README's configuration reference table, and its
commented routes example into the README's Routes section. An optional section shipped
commented out (between "# optional:start" and "# optional:end") is in the table too.

Both are generated from the file itself, so the README cannot drift from it:
  scripts/config_reference.py --write   # refresh README.md
  scripts/config_reference.py --check   # exit 1 if README.md is out of date (a ctest test)
"""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
START = "<!-- config-reference:start -->"
END = "<!-- config-reference:end -->"
EXAMPLE_START = "<!-- routes-example:start -->"
EXAMPLE_END = "<!-- routes-example:end -->"
YAML_EXAMPLE_START = "# routes-example:start"
YAML_EXAMPLE_END = "# routes-example:end"
OPTIONAL = re.compile(r"^# optional:start\n(.*?)^# optional:end\n", re.S | re.M)


def uncomment_optional(yaml_text: str) -> str:
    """The shipped file with its commented-out optional sections as live YAML."""
    return OPTIONAL.sub(
        lambda m: "".join(line[2:] if line.startswith("# ") else line.lstrip("#")
                          for line in m.group(1).splitlines(keepends=True)), yaml_text)
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


def routes_example(yaml_text: str) -> str:
    """The commented example between the markers in proxy.yaml, uncommented."""
    block = yaml_text.split(YAML_EXAMPLE_START, 1)[1].split(YAML_EXAMPLE_END, 1)[0]
    lines = [line[2:] if line.startswith("# ") else line.lstrip("#")
             for line in block.strip("\n").splitlines()]
    return "\n".join(lines)


def replace_between(text: str, start: str, end: str, content: str) -> str:
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{content}\n{end}{tail}"


def main() -> int:
    mode = sys.argv[1] if len(sys.argv) > 1 else "--check"
    readme = ROOT / "README.md"
    text = readme.read_text()
    if any(marker not in text for marker in (START, END, EXAMPLE_START, EXAMPLE_END)):
        print("README.md lacks the configuration reference or routes example markers",
              file=sys.stderr)
        return 1
    yaml_text = (ROOT / "proxy.yaml").read_text()
    updated = replace_between(text, START, END, table(uncomment_optional(yaml_text)))
    updated = replace_between(updated, EXAMPLE_START, EXAMPLE_END,
                              "```yaml\n" + routes_example(yaml_text) + "\n```")
    if mode == "--write":
        readme.write_text(updated)
        return 0
    if updated != text:
        print("README.md's configuration reference or routes example is out of date with "
              "proxy.yaml; "
              "run scripts/config_reference.py --write", file=sys.stderr)
        return 1
    print("configuration reference matches proxy.yaml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
