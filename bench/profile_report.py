"""Summarise a py-spy `--format raw` profile (collapsed stacks): where the CPU goes, by function.

    python -m bench.profile_report bench/results/profile-gateway.txt

Self time: samples whose innermost frame is the function. Inclusive time: samples with the function
anywhere on the stack (counted once per sample). Areas: self time grouped by the package of the
innermost Python frame (native code such as uvloop's or orjson's is charged to the Python frame that
called it). The raw file also opens in speedscope (https://www.speedscope.app) as is.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

STDLIB = {
    "asyncio",
    "logging",
    "contextlib",
    "threading",
    "json",
    "re",
    "datetime",
    "weakref",
    "email",
    "urllib",
    "http",
    "ssl",
    "socket",
    "selectors",
    "typing",
    "enum",
    "functools",
    "collections",
}


def parse(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text(errors="replace").splitlines():
        line = line.strip()
        if not line:
            continue
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        stacks.append((stack.split(";"), int(count)))
    return stacks


def short(frame: str) -> str:
    m = FRAME.match(frame)
    if not m:
        return frame
    file = m.group("file")
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    return f"{m.group('func')} ({file})"


def area(frame: str) -> str:
    """The package of a frame's file: `adapter`, `uvicorn`, `httpcore`, `asyncio (stdlib)`, ..."""
    m = FRAME.match(frame)
    file = (m.group("file") if m else frame) or "?"
    if file.startswith("<"):
        return "interpreter"
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/", "lib/python3/"):
        if marker in file:
            file = file.split(marker, 1)[1]
    head = file.split("/", 1)[0] if "/" in file else file.removesuffix(".py")
    return f"{head} (stdlib)" if head in STDLIB or file.count("/") == 0 else head


def report(path: Path, limit: int = 25) -> dict[str, Any]:
    stacks = parse(path)
    total = sum(c for _, c in stacks) or 1
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    for frames, count in stacks:
        # py-spy's raw stacks start with the thread name ("process 123:"python -m adapter"", ...)
        frames = [f for f in frames if "(" in f]
        if not frames:
            continue
        leaf = frames[-1]
        self_time[short(leaf)] += count
        areas[area(leaf)] += count
        for f in {short(f) for f in frames}:
            inclusive[f] += count

    def top(counter: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"function": k, "samples": v, "percent": round(100 * v / total, 2)} for k, v in counter.most_common(limit)
        ]

    return {"samples": total, "self": top(self_time), "inclusive": top(inclusive), "areas": top(areas)}


def format_report(rep: dict[str, Any]) -> str:
    lines = [f"\nprofile: {rep['samples']} samples (CPU only)", "", "by area (innermost frame):"]
    lines += [f"  {x['percent']:6.2f}%  {x['function']}" for x in rep["areas"]]
    lines += ["", "self time, top functions:"]
    lines += [f"  {x['percent']:6.2f}%  {x['function']}" for x in rep["self"]]
    lines += ["", "inclusive time, top functions:"]
    lines += [f"  {x['percent']:6.2f}%  {x['function']}" for x in rep["inclusive"]]
    return "\n".join(lines)


if __name__ == "__main__":
    print(format_report(report(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 30)))
