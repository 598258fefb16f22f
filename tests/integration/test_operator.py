"""What an operator meets starting a node: one node per data directory, a directory the node
cannot write, a broken config.toml. Each refusal is one line that says what to do, exit 1,
and nothing written; never a traceback, never a process left hanging."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import NodeProcess


def tally(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "node", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)


def refused(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr


async def test_a_second_node_on_one_data_directory_is_refused_and_the_first_serves_on(
    tmp_path: Path, node_process: NodeProcess,
) -> None:
    # Two nodes on one directory would each append to the same log under their own idea
    # of the ledger: members got 500s, and one node's books disagreed with the log.
    first = node_process
    await first.start()
    assert first.proc is not None
    second = tally("node", "run", "--data", str(first.data_dir), "--listen", "127.0.0.1:0",
                   cwd=tmp_path)
    assert (f"another Tally node (pid {first.proc.pid}) is running on {first.data_dir}"
            in refused(second))
    assert first.proc.poll() is None  # still serving, untouched
    assert await first.stop() == 0
    # Stopped, or killed (the kernel drops the lock with the process), the directory is
    # free again.
    await first.start()
    first.kill()
    await first.start()


def test_a_directory_the_node_cannot_write_is_refused_not_a_traceback_or_a_hang(
    tmp_path: Path,
) -> None:
    (tmp_path / "a-file").write_text("not a directory\n")
    for action in ("init", "run"):
        result = tally("node", action, "--data", str(tmp_path / "a-file" / "coop"),
                       "--listen", "127.0.0.1:0", cwd=tmp_path) if action == "run" else \
            tally("node", action, "--data", str(tmp_path / "a-file" / "coop"), cwd=tmp_path)
        assert "cannot write the node's keys in" in refused(result)
        assert "choose a directory you can write (--data)" in result.stderr
    # A node whose database cannot be opened (here its WAL file's name is taken by a
    # directory; on a read-only file system the same): before, a traceback, and the
    # process never exited (aiosqlite's thread kept it alive).
    data = tmp_path / "coop"
    assert tally("node", "init", "--data", str(data), cwd=tmp_path).returncode == 0
    (data / "tally.sqlite-wal").mkdir()
    result = tally("node", "run", "--data", str(data), "--listen", "127.0.0.1:0",
                   cwd=tmp_path, timeout=60)
    assert f"cannot open {data / 'tally.sqlite'}" in refused(result)


def test_a_broken_config_is_refused_before_a_first_run_makes_the_collective(
    tmp_path: Path,
) -> None:
    data = tmp_path / "coop"
    data.mkdir()
    (data / "config.toml").write_text('[node]\nlog_level = "loud"\n')
    result = tally("node", "run", "--data", str(data), "--listen", "127.0.0.1:0",
                   cwd=tmp_path)
    assert "configuration:" in refused(result) and "log_level" in result.stderr
    assert sorted(p.name for p in data.iterdir()) == ["config.toml"]  # nothing made
    # `node init` checks it too, before making anything.
    result = tally("node", "init", "--data", str(data), "--name", "My Coop", cwd=tmp_path)
    assert "log_level" in refused(result)
    assert sorted(p.name for p in data.iterdir()) == ["config.toml"]
    (data / "config.toml").write_text('[node]\nlog_level = "warning"\n')
    assert tally("node", "init", "--data", str(data), "--name", "My Coop",
                 cwd=tmp_path).returncode == 0


def test_node_info_says_the_unit_in_words(tmp_path: Path) -> None:
    data = tmp_path / "coop"
    assert tally("node", "init", "--data", str(data), "--name", "Riverside", "--unit", "HOUR",
                 "--unit-name", "hours", "--scale", "60", cwd=tmp_path).returncode == 0
    shown = tally("node", "info", "--data", str(data), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "unit         hours (HOUR, 60 smallest units each)" in shown.stdout  # not a dict


async def test_the_banner_tells_stewards_the_public_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    # Behind a reverse proxy, http://<listen> is not where members reach the node.
    from node import cli, server

    data = tmp_path / "coop"
    data.mkdir()
    (data / "config.toml").write_text('[node]\npublic_url = "https://tally.example.org"\n')

    async def stop_at_once() -> None:
        return None

    monkeypatch.setattr(server, "wait_for_stop_signal", stop_at_once)
    monkeypatch.setattr(server, "settle_collector", lambda: None)
    await cli._run_node(data, "127.0.0.1:0", False)
    out = capsys.readouterr().out
    assert "tally member admit HANDLE PUBLIC_KEY --node https://tally.example.org\n" in out
