"""Processes the benchmark starts (a Tally node, the bare aiohttp server) and what it reads
about them from /proc: CPU time (user+sys, every thread) and resident memory.

Everything listens on 127.0.0.1 only, and every process started here is stopped by its own
handle (SIGTERM, then SIGKILL), never by name.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

CLK_TCK = os.sysconf("SC_CLK_TCK")
REPO = Path(__file__).resolve().parent.parent


def child_env() -> dict[str, str]:
    """The environment for child processes: ``bench`` importable from any working directory."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _stat(pid: int) -> list[bytes]:
    return _stat_path(f"/proc/{pid}/stat")


def _stat_path(path: str) -> list[bytes]:
    with open(path, "rb") as f:
        raw = f.read()
    # Fields after "(comm)": fields[0] is field 3 (state), [1] the parent's pid.
    return raw[raw.rindex(b")") + 2 :].split()


def cpu_seconds(pid: int) -> float:
    """user+sys CPU time of a process (all its threads) and of its live descendants (worker
    processes a node may start), from /proc/<pid>/stat."""
    fields = _stat(pid)
    total = int(fields[11]) + int(fields[12])  # utime is field 14, stime field 15
    children: dict[int, list[tuple[int, int]]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            f = _stat(int(entry))
        except OSError:
            continue  # gone meanwhile
        children.setdefault(int(f[1]), []).append((int(entry), int(f[11]) + int(f[12])))
    todo = [pid]
    while todo:
        for child, ticks in children.get(todo.pop(), []):
            total += ticks
            todo.append(child)
    return total / CLK_TCK


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """user+sys CPU time of each thread of a process, from /proc/<pid>/task: "main" for the
    main thread (the event loop), "t<tid>" for the others."""
    out: dict[str, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = _stat_path(f"/proc/{pid}/task/{tid}/stat")
        except OSError:
            continue
        name = "main" if int(tid) == pid else f"t{tid}"
        out[name] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def wait_idle(pids: list[int], busy: float = 0.05, window: float = 0.2,
              timeout: float = 5.0) -> float:
    """Wait until the processes together use under ``busy`` of a core over ``window`` seconds
    (a run's tail — the last commit, a checkpoint — must not fall into the next run).
    Returns the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        before = sum(cpu_seconds(p) for p in pids)
        time.sleep(window)
        if sum(cpu_seconds(p) for p in pids) - before < busy * window:
            break
    return time.monotonic() - started


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (resident now) and VmHWM (peak resident) in KiB, from /proc/<pid>/status."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(rest.split()[0])
    return out


def disk_bytes(directory: Path) -> int:
    """Bytes the files in a directory occupy on disk (allocated blocks, not apparent size)."""
    return sum(p.stat().st_blocks * 512 for p in directory.iterdir() if p.is_file())


class Server:
    """A server process that prints one JSON line with its ``url`` once it is listening."""

    def __init__(self, name: str, argv: list[str], logs: Path) -> None:
        self.name = name
        self.argv = argv
        self.logs = logs
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.start_seconds = 0.0
        self.starts = 0
        self._files: list[IO[bytes]] = []

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _log(self, kind: str) -> Path:
        return self.logs / f"{self.name}-{self.starts}.{kind}"

    def stderr_tail(self, chars: int = 3000) -> str:
        path = self._log("err")
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def start(self, timeout: float = 60.0) -> str:
        """Launch; return the URL once the process says it listens. ``start_seconds`` is the
        wall time from launch to that line (interpreter start, imports, opening the ledger)."""
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} already running"
        self._close_files()
        self.starts += 1
        out, err = open(self._log("out"), "wb"), open(self._log("err"), "wb")
        self._files = [out, err]
        started = time.monotonic()
        self.proc = subprocess.Popen(
            self.argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=self.logs,
            env=child_env(),
        )
        deadline = started + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}:\n{self.stderr_tail()}"
                )
            text = self._log("out").read_text()
            if text.endswith("\n"):
                break
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"{self.name} did not start in time:\n{self.stderr_tail()}")
            time.sleep(0.005)
        self.start_seconds = time.monotonic() - started
        self.url = json.loads(text.splitlines()[0])["url"]
        if not self.url.startswith("http://127.0.0.1:"):
            self.kill()
            raise RuntimeError(f"{self.name} listens on {self.url}, not on 127.0.0.1")
        return self.url

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self._close_files()
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self._close_files()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._close_files()

    def _close_files(self) -> None:
        for f in self._files:
            f.close()
        self._files = []


def node_server(name: str, data: Path, logs: Path) -> Server:
    return Server(
        name,
        [sys.executable, "-m", "node", "node", "run", "--data", str(data),
         "--listen", "127.0.0.1:0", "--json"],
        logs,
    )


def bare_server(logs: Path) -> Server:
    return Server("bare", [sys.executable, "-m", "bench.bare"], logs)
