"""Reads deploy/Dockerfile into stages and instructions, the way Docker does: continuation
lines joined, comment lines dropped (also inside a continued RUN), exec-form arguments parsed
as JSON. Shared by test_dockerfile.py and test_container.py."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parent.parent.parent
DOCKERFILE = REPO_DIR / "deploy" / "Dockerfile"


@dataclasses.dataclass
class Instruction:
    keyword: str        # upper case: FROM, RUN, COPY, ...
    args: str           # the rest of the line, continuations joined
    line: int           # where it starts in the file

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form instruction (ENTRYPOINT ["a", "b"]), else None."""
        text = self.args.strip()
        if not text.startswith("["):
            return None
        value = json.loads(text)
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise ValueError(f"line {self.line}: exec form must be a JSON array of strings")
        return value


@dataclasses.dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None


def parse(path: Path = DOCKERFILE) -> tuple[list[Instruction], list[Stage]]:
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue  # comments vanish even in the middle of a continued instruction
        if not pending:
            start = number
        if raw.rstrip().endswith("\\"):
            pending.append(raw.rstrip()[:-1])
            continue
        pending.append(raw)
        text = " ".join(part.strip() for part in pending)
        pending = []
        keyword, _, args = text.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
    if pending:
        raise ValueError(f"{path}: the file ends inside a continued instruction")

    stages: list[Stage] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            words = [w for w in ins.args.split() if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name, []))
        elif stages:
            stages[-1].instructions.append(ins)
        elif ins.keyword not in ("ARG",):
            raise ValueError(f"line {ins.line}: {ins.keyword} before the first FROM")
    return instructions, stages


def healthcheck_command(stage: Stage) -> list[str]:
    """The HEALTHCHECK's CMD as an argv list (exec form)."""
    ins = stage.last("HEALTHCHECK")
    if ins is None:
        raise ValueError("no HEALTHCHECK")
    match = re.search(r"\bCMD\s+(.*)$", ins.args)
    if not match:
        raise ValueError(f"line {ins.line}: HEALTHCHECK without CMD")
    rest = match.group(1).strip()
    if rest.startswith("["):
        return json.loads(rest)
    return ["/bin/sh", "-c", rest]


def healthcheck_options(stage: Stage) -> dict[str, str]:
    ins = stage.last("HEALTHCHECK")
    assert ins is not None
    options = {}
    for word in shlex.split(ins.args.split(" CMD ")[0]):
        if word.startswith("--") and "=" in word:
            key, _, value = word[2:].partition("=")
            options[key] = value
    return options


def apt_packages(run: Instruction) -> list[str]:
    """The package names an `apt-get install` in a RUN instruction installs."""
    packages: list[str] = []
    for command in re.split(r"&&|;|\|\|", run.args):
        words = shlex.split(command)
        while words and re.match(r"[A-Za-z_][A-Za-z0-9_]*=", words[0]):
            words.pop(0)  # VAR=value prefixes
        if len(words) >= 2 and os.path.basename(words[0]) in ("apt-get", "apt") and "install" in words:
            after = words[words.index("install") + 1:]
            packages += [w.split("=")[0] for w in after if not w.startswith("-")]
    return packages
