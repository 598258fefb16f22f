"""What a member's home remembers between `tally` commands, and how the CLI ends.

- The home pins the ledger it met at each node URL: a node there that later serves another
  ledger (a fresh `node init`, another collective) is refused by every command until the
  member accepts the new ledger with `--accept-ledger`; switching back is caught the same
  way; a node that claims the pinned ledger's id under another log key is refused outright.
  Homes written before this (only `node` and `handle` in client.json, pins under logs/) keep
  their pins.
- `--node` is remembered only once a command succeeded, and "not admitted" names the URL.
- A closed output pipe ends a command quietly (status 141), not with a traceback.

Nodes here are in-process (aiohttp's test server), restarted on one port to stand for "the
node behind the URL was replaced"; the CLI runs in a thread (it runs its own event loop).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from crypto.keys import SecretKey, read_key_file
from node.api import info_document, make_app
from node.client import NodeInfo, TallyClient, transfer_body
from node.config import ApiSettings, Config, LogSettings
from node.service import Node, init_data_dir
from tests.node.test_verify_audit import cli

CONFIG = Config(
    log=LogSettings(checkpoint_delay_ms=100),
    api=ApiSettings(rate_per_key_per_second=1e6, rate_burst=1_000_000),
)
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Served:
    server: TestServer
    node: Node
    url: str
    ledger_id: str

    def node_client(self) -> TallyClient:
        return TallyClient(self.url, retries=0)


async def serve(data: Path, port: int = 0, name: str = "Hilltop",
                members: dict[str, SecretKey] | None = None) -> Served:
    """Serve the collective in ``data`` on ``port`` (made, with ``members`` admitted, if new)."""
    fresh = not data.exists()
    if fresh:
        await init_data_dir(data, name=name)
    node = Node(data, CONFIG)
    server = TestServer(make_app(node), host="127.0.0.1", port=port)
    await server.start_server()
    url = str(server.make_url("")).rstrip("/")
    if fresh:
        steward = read_key_file(data / "steward.key")[1]
        async with TallyClient(url, retries=0) as client:
            for handle, key in (members or {}).items():
                await client.admit(handle, key.public, [steward], 1000, 1000)
    return Served(server, node, url, node.ledger.ledger_id)


async def pay(served: Served, payer: str, payee: str, amount: int, key: SecretKey) -> None:
    async with TallyClient(served.url, retries=0) as client:
        body = transfer_body(key, served.ledger_id, payer, payee, amount)
        assert (await client.submit_transfer(body))["result"] == "ok"


async def covered(served: Served) -> None:
    """Wait until a signed checkpoint covers the whole log (what an audit checks against)."""
    cp = served.node.checkpointer
    assert cp is not None
    for _ in range(1000):
        if cp.latest is not None and cp.latest.checkpoint.size >= served.node.ledger.size:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("no checkpoint covers the log")


def client_json(home: Path) -> dict[str, object]:
    doc: dict[str, object] = json.loads((home / "client.json").read_text())
    return doc


@pytest.fixture
async def members(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                  ) -> AsyncIterator[tuple[Path, dict[str, SecretKey]]]:
    """cy's home, made with `tally key new`, and the keys of cy and dee."""
    home = tmp_path / "cy"
    code, _, err = await cli(capsys, "key", "new", "--home", str(home))
    assert code == 0, err
    yield home, {"cy": read_key_file(home / "member.key")[1], "dee": SecretKey(os.urandom(32))}


# --- 1. the ledger at a URL is pinned ---------------------------------------------------------


async def test_a_replaced_ledger_at_the_same_url_is_refused_until_accepted_and_so_is_going_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
    members: tuple[Path, dict[str, SecretKey]],
) -> None:
    home, keys = members
    first = await serve(tmp_path / "hill", members=keys)
    port, url = first.server.port, first.url
    await pay(first, "dee", "cy", 240, keys["dee"])
    code, out, err = await cli(capsys, "balance", "--home", str(home), "--node", url)
    assert code == 0, err
    assert "4" in out and "log verified" in out

    # The node behind the URL is replaced by a fresh ledger of the same name, cy admitted.
    await first.server.close()
    second = await serve(tmp_path / "hill2", port, members=keys)
    assert second.url == url and second.ledger_id != first.ledger_id
    size = second.node.ledger.size
    for argv in (["balance"], ["verify"], ["history"], ["pay", "dee", "1"]):
        code, out, err = await cli(capsys, *argv, "--home", str(home))
        assert code == 1, (argv, out)
        assert "checks out" not in out and "No transfers" not in out
        assert f"the node at {url} now serves another ledger" in err, err
        assert second.ledger_id[:16] in err and first.ledger_id[:16] in err
        assert f"--accept-ledger {second.ledger_id[:16]}" in err
    assert second.node.ledger.size == size  # the payment was never sent

    # Accepting needs the new id's start, and that it is the ledger served.
    code, _, err = await cli(capsys, "balance", "--home", str(home),
                             "--accept-ledger", first.ledger_id[:16])
    assert code == 1 and "does not start so" in err
    code, _, err = await cli(capsys, "balance", "--home", str(home), "--accept-ledger", "ab")
    assert code == 1 and "too short: give at least 16 characters" in err
    code, out, err = await cli(capsys, "balance", "--home", str(home),
                               "--accept-ledger", second.ledger_id[:16])
    assert code == 0, err
    assert f"this home now uses ledger {second.ledger_id[:16]}" in err
    code, out, err = await cli(capsys, "verify", "--home", str(home))
    assert code == 0, err
    assert "The node's log checks out for cy." in out

    # Going back to the first ledger is caught the same way, naming both.
    await second.server.close()
    again = await serve(tmp_path / "hill", port)
    try:
        code, out, err = await cli(capsys, "history", "--home", str(home))
        assert code == 1, out
        assert f"now serves another ledger: {first.ledger_id[:16]}" in err
        assert "this home used that ledger before" in err
        assert f"not {second.ledger_id[:16]}" in err
        # The old pins are intact: accepting it back continues where verification stopped.
        code, out, err = await cli(capsys, "verify", "--home", str(home),
                                   "--accept-ledger", first.ledger_id)
        assert code == 0, err
        assert "consistent with the checkpoint you saw before" in out
    finally:
        await again.server.close()


async def test_a_node_claiming_the_pinned_ledger_under_another_log_key_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
    members: tuple[Path, dict[str, SecretKey]],
) -> None:
    home, keys = members
    real = await serve(tmp_path / "hill", members=keys)
    port, url = real.server.port, real.url
    code, _, err = await cli(capsys, "balance", "--home", str(home), "--node", url)
    assert code == 0, err
    forged = info_document(real.node)
    forged["node_key"] = SecretKey(os.urandom(32)).public.text
    await real.server.close()

    async def info(request: web.Request) -> web.Response:
        return web.json_response(forged)

    app = web.Application()
    app.router.add_get("/v1/info", info)
    impostor = TestServer(app, host="127.0.0.1", port=port)
    await impostor.start_server()
    try:
        for extra in ([], ["--accept-ledger", real.ledger_id]):
            code, out, err = await cli(capsys, "balance", "--home", str(home), *extra)
            assert code == 1, out
            assert f"the node at {url} serves ledger {real.ledger_id[:16]}" in err, err
            assert "signed with another key" in err and "not the same log" in err
    finally:
        await impostor.close()


async def test_a_home_from_before_keeps_its_pins_and_still_catches_a_replaced_ledger(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
    members: tuple[Path, dict[str, SecretKey]],
) -> None:
    home, keys = members
    first = await serve(tmp_path / "hill", members=keys)
    port, url = first.server.port, first.url
    await pay(first, "dee", "cy", 60, keys["dee"])
    code, _, err = await cli(capsys, "verify", "--home", str(home), "--node", url)
    assert code == 0, err
    # What the client wrote before URLs had their ledger recorded.
    (home / "client.json").write_text(json.dumps({"node": url, "handle": "cy"}))
    old = tmp_path / "cy-old"
    shutil.copytree(home, old)

    code, out, err = await cli(capsys, "verify", "--home", str(home))
    assert code == 0, err
    assert "consistent with the checkpoint you saw before" in out  # the pins were kept
    record = client_json(home)["ledgers"]
    assert isinstance(record, dict)
    assert record[url]["ledger_id"] == first.ledger_id and record[url]["handle"] == "cy"

    await first.server.close()
    second = await serve(tmp_path / "hill2", port, members=keys)
    try:
        for who in (home, old):  # recorded now, or only pinned under logs/ by the old client
            code, out, err = await cli(capsys, "verify", "--home", str(who))
            assert code == 1, out
            assert f"the node at {url} now serves another ledger" in err, err
            assert first.ledger_id[:16] in err
    finally:
        await second.server.close()


async def test_a_home_used_with_two_collectives_on_purpose_keeps_both(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
    members: tuple[Path, dict[str, SecretKey]],
) -> None:
    home, keys = members
    hill = await serve(tmp_path / "hill", members=keys)
    dale = await serve(tmp_path / "dale", name="Dale", members={"cyd": keys["cy"]})
    try:
        for argv in (["--node", hill.url], ["--node", dale.url], [], ["--node", hill.url], []):
            code, out, err = await cli(capsys, "balance", "--home", str(home), *argv)
            assert code == 0, (argv, err)
        assert out.startswith("cy ")  # the handle at each node, remembered for each
        doc = client_json(home)
        assert doc["node"] == hill.url
        assert doc["ledgers"] == {
            hill.url: {"ledger_id": hill.ledger_id, "name": "Hilltop", "handle": "cy",
                       "log_key": (await node_info(hill)).log_key},
            dale.url: {"ledger_id": dale.ledger_id, "name": "Dale", "handle": "cyd",
                       "log_key": (await node_info(dale)).log_key},
        }
    finally:
        await hill.server.close()
        await dale.server.close()


async def node_info(served: Served) -> NodeInfo:
    async with TallyClient(served.url, retries=0) as client:
        return await client.info()


# --- 2. --node is remembered only after success -------------------------------------------------


async def test_a_node_that_refuses_is_not_remembered_and_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
    members: tuple[Path, dict[str, SecretKey]],
) -> None:
    home, keys = members
    ours = await serve(tmp_path / "hill", members=keys)
    theirs = await serve(tmp_path / "green", name="Greenway", members={"bea": keys["dee"]})
    try:
        code, _, err = await cli(capsys, "balance", "--home", str(home), "--node", ours.url)
        assert code == 0, err
        code, _, err = await cli(capsys, "verify", "--home", str(home), "--node", theirs.url)
        assert code == 1
        assert f"This key is not admitted at {theirs.url}." in err, err
        assert client_json(home)["node"] == ours.url
        code, out, err = await cli(capsys, "balance", "--home", str(home))
        assert code == 0, err
        assert out.startswith("cy ")

        # An audit takes --node for this time only, as its help says.
        code, out, _ = await cli(capsys, "audit", "--help")
        assert "not remembered by this command" in " ".join(out.split())
        steward = read_key_file(tmp_path / "green" / "steward.key")[1]
        async with theirs.node_client() as client:
            await client.admit("cyg", keys["cy"].public, [steward], 10, 10)
        await covered(theirs)
        code, out, err = await cli(capsys, "audit", "--home", str(home), "--node", theirs.url)
        assert code == 0, out + err
        assert "AUDIT PASSED" in out
        assert client_json(home)["node"] == ours.url
    finally:
        await ours.server.close()
        await theirs.server.close()


# --- 3. a closed output pipe --------------------------------------------------------------------


async def run_into_closed_pipe(*argv: str) -> tuple[int, str]:
    """Run `tally ARGV` in its own process with stdout a pipe whose reader is already gone."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "node", *argv, stdout=write_end,
            stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL, env=env)
    finally:
        os.close(write_end)
    _, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def test_a_closed_output_pipe_ends_quietly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
    members: tuple[Path, dict[str, SecretKey]],
) -> None:
    home, keys = members
    hill = await serve(tmp_path / "hill", members=keys)
    try:
        for n in range(3):
            await pay(hill, "dee", "cy", 1 + n, keys["dee"])
        for argv in (["history", "--csv"], ["history"], ["balance", "--json"],
                     ["key", "show"]):
            code, err = await run_into_closed_pipe(*argv, "--home", str(home),
                                                   *(["--node", hill.url] if argv[0] != "key"
                                                     else []))
            assert (code, err) == (141, ""), argv
    finally:
        await hill.server.close()
