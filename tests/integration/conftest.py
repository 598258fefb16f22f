"""Fixtures for end-to-end tests: real node processes on loopback.

``node_process`` gives a ``NodeProcess`` for a fresh data directory: ``start`` launches
``python -m node node run --data DIR --listen 127.0.0.1:PORT --json`` and waits for the JSON
line that says it is listening; ``kill`` sends SIGKILL; ``stop`` sends SIGTERM. The first
start takes a free port from the kernel and every restart binds that same port, so clients
keep one URL. Whatever the test does, teardown kills every process it started.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import aiohttp
import pytest

# Rate limits are per key; these tests stream and read far faster than a member would.
TEST_CONFIG = """\
[api]
rate_per_key_per_second = 1000000.0
rate_burst = 1000000
"""


class NodeProcess:
    def __init__(self, data_dir: Path, logs: Path) -> None:
        self.data_dir = data_dir
        self.logs = logs
        self.port = 0
        self.url = ""
        self.starts = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.env: dict[str, str] | None = None  # the process's environment (None: ours)
        self._files: list[IO[bytes]] = []

    def _log(self, kind: str) -> Path:
        return self.logs / f"node-{self.starts}.{kind}"

    def stderr_tail(self, chars: int = 3000) -> str:
        path = self._log("err")
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    async def start(self, timeout: float = 20.0) -> str:
        """Launch the node and return its URL once it is listening and answers health."""
        assert self.proc is None or self.proc.poll() is not None, "node already running"
        self._close_files()
        self.starts += 1
        out, err = open(self._log("out"), "wb"), open(self._log("err"), "wb")
        self._files = [out, err]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "node", "node", "run", "--data", str(self.data_dir),
             "--listen", f"127.0.0.1:{self.port}", "--json"],
            stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=self.logs, env=self.env,
        )
        deadline = time.monotonic() + timeout
        line = ""
        while not line:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"node exited with {self.proc.returncode} at start {self.starts}:\n"
                    + self.stderr_tail()
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    "node did not report listening in time:\n" + self.stderr_tail()
                )
            text = self._log("out").read_text()
            if text.endswith("\n"):
                line = text.splitlines()[0]
            else:
                await asyncio.sleep(0.02)
        url = str(json.loads(line)["url"])
        self.port = int(url.rsplit(":", 1)[1])
        self.url = url
        async with aiohttp.ClientSession() as session:
            async with session.get(url + "/v1/health") as resp:
                assert resp.status == 200, await resp.text()
        return url

    def kill(self) -> None:
        """SIGKILL: no chance to flush, close or answer anything in flight."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    async def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, as an operator stops it; returns the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError("node did not stop on SIGTERM:\n" + self.stderr_tail())
            await asyncio.sleep(0.02)
        return self.proc.returncode

    def _close_files(self) -> None:
        for f in self._files:
            f.close()
        self._files = []

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(timeout=10)
        self._close_files()


@pytest.fixture
def node_process(tmp_path: Path) -> Iterator[NodeProcess]:
    data = tmp_path / "node"
    data.mkdir(mode=0o700)
    (data / "config.toml").write_text(TEST_CONFIG)
    process = NodeProcess(data, tmp_path)
    try:
        yield process
    finally:
        process.cleanup()
