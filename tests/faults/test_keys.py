"""Key files: a node refuses to start on a key others may read, and never logs a secret.

Real node processes (``python -m node``), as an operator runs them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from crypto.keys import SecretKey, read_key_file
from node.client import TallyClient
from tests.integration.conftest import TEST_CONFIG


def _tally(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "node", *args], capture_output=True,
                          text=True, timeout=60, cwd=cwd)


def test_node_refuses_to_start_when_its_key_file_is_readable_by_others(tmp_path: Path) -> None:
    data = tmp_path / "node"
    init = _tally("node", "init", "--data", str(data), cwd=tmp_path)
    assert init.returncode == 0, init.stderr
    key_file = data / "node.key"
    os.chmod(key_file, 0o644)

    run = _tally("node", "run", "--data", str(data), "--listen", "127.0.0.1:0", cwd=tmp_path)

    assert run.returncode == 1
    assert str(key_file) in run.stderr and f"chmod 600 {key_file}" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr
    assert run.stdout == ""  # it never said it was running


def _secret_spellings(key_file: Path) -> list[str]:
    """Every way the secret part of a key file might show up in a log."""
    line = key_file.read_text().strip()
    _, key = read_key_file(key_file)
    seed = key.seed
    spellings = [
        line,
        # base64(0x01 ‖ seed), the key file's secret part: the fifth field of
        # PRIVATE+KEY+name+hash+key (standard base64, which may itself hold a "+").
        line.split("+", 4)[4],
        seed.hex(),
        base64.b64encode(seed).decode().rstrip("="),
        base64.urlsafe_b64encode(seed).decode().rstrip("="),
        repr(seed)[2:-1],
    ]
    assert all(len(s) >= 32 for s in spellings), spellings  # no short piece logs hold anyway
    return spellings


async def test_a_running_node_logs_no_secret_key_material(tmp_path: Path) -> None:
    data = tmp_path / "node"
    data.mkdir(mode=0o700)
    (data / "config.toml").write_text(TEST_CONFIG)
    out, err = tmp_path / "node.out", tmp_path / "node.err"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        # -v: debug logging, the most a node ever says.
        proc = subprocess.Popen(
            [sys.executable, "-m", "node", "-v", "node", "run", "--data", str(data),
             "--listen", "127.0.0.1:0", "--json"],
            stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 30
        while not out.read_text().endswith("\n"):
            assert proc.poll() is None, err.read_text()
            assert time.monotonic() < deadline, err.read_text()
            await asyncio.sleep(0.05)
        url = json.loads(out.read_text().splitlines()[0])["url"]

        _, steward = read_key_file(data / "steward.key")
        alice = SecretKey(os.urandom(32))
        async with TallyClient(url, retries=0) as client:
            await client.admit("alice", alice.public, [steward], 100, 100)
            await client.admit("bob", SecretKey(os.urandom(32)).public,
                               [steward], 100, 100)
        async with TallyClient(url, alice, retries=0) as client:
            await client.pay("alice", "bob", 5, memo="for the tea")
            assert (await client.account("alice"))["balance"] == -5
        async with aiohttp.ClientSession() as session:
            # Refusals too: bad JSON, a bad signature, an unknown route.
            for path, body in (("/v1/transfers", b"{"), ("/v1/acts", b'{"msg":{},"sigs":[]}'),
                               ("/nowhere", b"")):
                async with session.post(url + path, data=body,
                                        headers={"Content-Type": "application/json"}) as resp:
                    assert 400 <= resp.status < 500
        proc.terminate()
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)

    logs = out.read_text(errors="replace") + err.read_text(errors="replace")
    assert "ledger" in logs  # the node did log: the search below is not of an empty file
    for key_file in (data / "node.key", data / "steward.key"):
        for secret in _secret_spellings(key_file):
            assert secret not in logs, f"{key_file.name}'s secret appears in the node's logs"
