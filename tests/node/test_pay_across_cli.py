"""`tally pay` to other collectives as a member sees it: what the receipt says, what
history shows at both ends, the memo typed, and what to do when the outcome is not known.

Riverside (minutes) and Greenway (cents) have a line (``linked``); with Hilltop behind
Greenway, alice@Riverside pays cy@Hilltop through Greenway (``net``).
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest

from node.federation import Federation
from tests.node import test_federation as tf
from tests.node import test_multihop as tm
from tests.node.test_federation import Pair, Side, settled
from tests.node.test_multihop import Net
from tests.node.test_verify_audit import cli, make_home

# The collectives of the federation tests: two with a line, and three in a row.
pair, linked, net = tf.pair, tf.linked, tm.net


async def pay(capsys: pytest.CaptureFixture[str], home: Path, side: Side,
              *argv: str) -> tuple[int, str, str]:
    return await cli(capsys, "pay", *argv, "--home", str(home), "--node", side.url)


async def history(capsys: pytest.CaptureFixture[str], home: Path, side: Side,
                  *argv: str) -> str:
    code, out, err = await cli(capsys, "history", "--home", str(home), "--node", side.url,
                               *argv)
    assert code == 0, err
    return out


async def test_history_names_the_far_member_and_collective_and_keeps_the_payers_memo(
        net: Net, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, c = net.a, net.c
    alice = make_home(tmp_path / "alice", a.members["alice"])
    cy = make_home(tmp_path / "cy", c.members["cy"])
    code, out, err = await pay(capsys, alice, a, "cy@hill", "3", "--memo", "veg box")
    assert code == 0, err
    assert "cy@Hilltop via Greenway" in out
    await settled(*net.sides)

    # The payer's history: the member paid and their collective, the one in between, the memo.
    line = (await history(capsys, alice, a)).splitlines()[0]
    assert "to   cy@Hilltop (via Greenway)  veg box" in line, line
    (posting,) = json.loads(await history(capsys, alice, a, "--json"))
    assert posting["counterparty"] == "cy@Greenway"  # the adjacent collective, as before
    assert posting["across"] == {"member": "cy", "collective": "Hilltop", "via": ["Greenway"]}
    assert posting["memo"] == "veg box"
    rows = list(csv.DictReader(io.StringIO(await history(capsys, alice, a, "--csv"))))
    assert [(r["counterparty"], r["via"], r["memo"]) for r in rows] == [
        ("cy@Hilltop", "Greenway", "veg box")]

    # The payee's: who paid, from which collective, through which. The memo stayed with
    # the payer's node (the order carries none).
    line = (await history(capsys, cy, c)).splitlines()[0]
    # Until Hilltop hears of Riverside (the lines its peers know, asked every
    # graph_refresh_ms), it cannot name the payer's ledger: it says so.
    assert "from alice@another collective (via Greenway)" in line, line
    await c.fed.refresh_graph()
    line = (await history(capsys, cy, c)).splitlines()[0]
    assert "from alice@Riverside (via Greenway)" in line, line
    (posting,) = json.loads(await history(capsys, cy, c, "--json"))
    assert posting["across"] == {"member": "alice", "collective": "Riverside",
                                 "via": ["Greenway"]}
    assert posting["memo"] is None

    # Erasing the payer's memos erases this one too.
    code, out, err = await cli(capsys, "member", "erase-memos", "alice", "--node", a.url,
                               "--home", str(alice), "--steward-key",
                               str(tmp_path / "Riverside" / "steward.key"))
    assert code == 0, err
    (posting,) = json.loads(await history(capsys, alice, a, "--json"))
    assert posting["memo"] is None


async def test_a_direct_payment_names_no_collective_in_between(
        linked: Pair, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = linked.a, linked.b
    alice = make_home(tmp_path / "alice", a.members["alice"])
    bob = make_home(tmp_path / "bob", b.members["bob"])
    code, _, err = await pay(capsys, alice, a, "bob@green", "3", "--memo", "bread")
    assert code == 0, err
    await settled(a, b)
    (posting,) = json.loads(await history(capsys, bob, b, "--json"))
    assert posting["across"] == {"member": "alice", "collective": "Riverside", "via": []}
    assert "from alice@Riverside" in (await history(capsys, bob, b)) and "via" not in (
        await history(capsys, bob, b))
    (posting,) = json.loads(await history(capsys, alice, a, "--json"))
    assert (posting["across"]["collective"], posting["memo"]) == ("Greenway", "bread")


async def test_the_receipt_says_what_the_payee_receives_when_it_is_not_what_was_asked(
        linked: Pair, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = linked.a, linked.b
    alice = make_home(tmp_path / "alice", a.members["alice"])
    # 2 cents cost 2 minutes (4/3 rounded up to whole minutes), which are worth 3 cents.
    code, out, err = await pay(capsys, alice, a, "bob@green", "0.02")
    assert code == 0, err
    assert "bob@Greenway receives 0.03 credits (you asked for 0.02" in out, out
    assert "Paid 0.02" not in out
    await settled(a, b)
    assert b.account("bob")["balance"] == 3


async def test_a_payment_that_takes_longer_than_the_clients_own_timeout_gets_its_answer(
        linked: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    """The client waits for POST /v1/payments as long as the node says it may take, not its
    own 1 s: the answer is the node's (here: expired, nothing paid), never "unreachable"."""
    a, b = linked.a, linked.b
    original = a.fed._peer_post

    gate = asyncio.Event()  # opened at the end, so that nothing is left waiting

    async def b_never_answers_prepare(key_id: str, path: str, body: Any) -> Any:
        if path == "/v1/peer/prepare":
            await gate.wait()
        return await original(key_id, path, body)

    monkeypatch.setattr(a.fed, "_peer_post", b_never_answers_prepare)
    info = await a.client().info()
    assert info.raw["payment_answer_seconds"] * 1000 > tf.FEDERATION.payment_timeout_ms
    alice = a.client(a.members["alice"])
    alice.timeout = 1.0
    err = await tf.refused(alice.pay_remote("alice", "bob", b.node_key.public, 100, 100))
    gate.set()
    assert err.code == "expired"
    assert a.account("alice") == {"balance": 0, "pending_debit": 0, "pending_credit": 0}


async def test_an_unknown_outcome_says_not_to_pay_again_and_how_to_check(
        linked: Pair, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = linked.a, linked.b
    alice = make_home(tmp_path / "alice", a.members["alice"])
    original = a.fed._peer_post
    gate = asyncio.Event()

    async def b_answers_late(key_id: str, path: str, body: Any) -> Any:
        if path == "/v1/peer/prepare":
            await gate.wait()
        return await original(key_id, path, body)

    monkeypatch.setattr(a.fed, "_peer_post", b_answers_late)
    # The node stops waiting at once: it answers 202 pending, as it would after its bound.
    monkeypatch.setattr("node.federation.payment_answer_ms", lambda cfg: 0)
    code, out, err = await pay(capsys, alice, a, "bob@green", "1")
    assert code == 1
    assert "Paid" not in out
    assert "not known yet" in err and "Do NOT pay again" in err, err
    order = err.split("tally payment ")[1].split("`")[0]
    code, out, err = await cli(capsys, "payment", order, "--home", str(alice), "--node", a.url)
    assert (code, out.startswith("Still in flight")) == (0, True), (out, err)

    gate.set()
    await settled(a, b)
    code, out, err = await cli(capsys, "payment", order, "--home", str(alice), "--node", a.url)
    assert (code, out.startswith("Paid: bob was paid")) == (0, True), (out, err)
    assert b.account("bob")["balance"] == 100


async def test_a_payee_node_that_is_down_is_reported_as_not_answering(
        linked: Pair, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = linked.a, linked.b
    alice = make_home(tmp_path / "alice", a.members["alice"])
    await b.served.close()
    code, out, err = await pay(capsys, alice, a, "bob@green", "1")
    assert code == 1
    assert "Greenway's node is not answering" in err and "nothing was paid" in err, err
    assert "Try again later" in err
    assert "no credit line" not in err and "()" not in err
    assert a.account("alice") == {"balance": 0, "pending_debit": 0, "pending_credit": 0}


async def test_a_stalled_node_is_reported_with_how_long_we_waited(
        linked: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    """A timeout has no message of its own: the refusal says how long was waited."""
    a, b = linked.a, linked.b

    gate = asyncio.Event()  # opened at the end, so that nothing is left waiting
    quote = Federation.quote

    async def stalls(self: Federation, *args: Any, **kwargs: Any) -> Any:
        await gate.wait()
        return await quote(self, *args, **kwargs)

    monkeypatch.setattr(Federation, "quote", stalls)
    err = await tf.refused(a.member("alice").pay_remote("alice", "bob", b.node_key.public,
                                                        100, 100))
    gate.set()
    assert err.code == "no_route" and err.problem["unreachable"] == "Greenway"
    assert "no answer within 1 s" in err.detail, err.detail
