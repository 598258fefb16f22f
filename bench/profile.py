"""Summarise a py-spy profile in raw (collapsed-stack) form: where the node's time goes.

    python -m bench.profile FILE.collapsed [--top 25]

``python -m bench --profile DIR`` records ``fig1.collapsed`` and ``fig2.collapsed`` with
``py-spy record --format raw --threads --idle``. This prints, per thread group, the share of
samples, then the functions with the most samples on the stack (inclusive) and as the leaf
(self), each as a share of the thread group's non-idle samples. Profiles are never committed.
"""

from __future__ import annotations

import argparse
import linecache
import re
import sys
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
# Leaf frames of a thread that waits for work (a blocking call in C shows its Python caller).
IDLE_LEAVES = {
    "EpollSelector.select (selectors.py)",
    "Condition.wait (threading.py)",
    "Queue.get (queue.py)",
}
# Worker loops that wait in a C call (SimpleQueue.get) *and* run C calls (SQLite): idle only
# when the sampled line is the one that waits for work.
WORKER_LOOPS = {"_connection_worker_thread (aiosqlite/core.py)",
                "_worker (concurrent/futures/thread.py)"}


def source_line(short_file: str, line: int) -> str:
    for root in sys.path:
        text = linecache.getline(f"{root}/{short_file}", line)
        if text:
            return text
    return ""


def frame_name(frame: str) -> str:
    m = FRAME.match(frame.strip())
    return f"{m['func']} ({m['file']})" if m else frame.strip()


def thread_group(first: str) -> str:
    name = first.split(":", 1)[-1].strip()
    if name.startswith("MainThread"):
        return "event loop (MainThread)"
    if "verify" in name:
        return "signature threads (verify_*)"
    if "connection_worker" in name or "Thread-" in name:
        return "aiosqlite threads"
    return name


def is_idle(stack: list[str]) -> bool:
    if not stack:
        return True
    name = frame_name(stack[-1])
    if name in WORKER_LOOPS:
        m = FRAME.match(stack[-1].strip())
        if m is None or not m["line"]:
            return False
        return ".get(" in source_line(m["file"], int(m["line"]))
    return name in IDLE_LEAVES


def summarize(path: Path, top: int = 25) -> str:
    groups: Counter[str] = Counter()
    busy: Counter[str] = Counter()
    inclusive: dict[str, Counter[str]] = {}
    leaf: dict[str, Counter[str]] = {}
    for line in path.read_text().splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not stack_text or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack_text.split(";")
        group = thread_group(frames[0])
        stack = frames[1:]
        groups[group] += count
        if is_idle(stack):
            continue
        busy[group] += count
        names = [frame_name(f) for f in stack]
        inc = inclusive.setdefault(group, Counter())
        for name in set(names):
            inc[name] += count
        leaf.setdefault(group, Counter())[names[-1] if names else "?"] += count
    total = sum(groups.values())
    out = [f"{path.name}: {total} samples"]
    for group, n in groups.most_common():
        b = busy[group]
        out.append(f"\n== {group}: {n} samples, {b} busy ({b / max(n, 1):.0%})")
        if not b:
            continue
        out.append("  inclusive (on the stack):")
        for name, c in inclusive[group].most_common(top):
            out.append(f"    {c / b:6.1%}  {name}")
        out.append("  self (leaf):")
        for name, c in leaf[group].most_common(top // 2):
            out.append(f"    {c / b:6.1%}  {name}")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    for f in args.files:
        print(summarize(f, args.top))


if __name__ == "__main__":
    main()
