"""Witnessing between two real nodes with a credit line (C2SP tlog-witness).

A and B (``tests.node.test_federation``'s pair) cosign each other's checkpoints once their
line is agreed; the tests check what a generic tlog client, a member running ``tally
verify --witnesses`` and a peer's steward would see. The hostile requests are made by hand:
checkpoints signed in the test with A's node key (a fork), with another key (a forgery), or
for a log B does not witness.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from crypto.checkpoint import format_checkpoint
from crypto.keys import SecretKey
from crypto.merkle import MerkleTree
from crypto.note import Cosigner, Ed25519Signer, open_note, parse_verifier_key, sign_note
from crypto.witness import format_add_checkpoint
from node.checkpoints import log_origin, log_signer
from node.verify import VerificationFailed, verify_member
from protocol.evidence import parse_evidence
from protocol.witness import valid_cosigners
from tests.node.test_federation import Pair, Side, linked, pair  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("linked")


async def eventually(check: Any, what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = await check()
        if got:
            return got
        assert time.monotonic() < deadline, f"never happened: {what}"
        await asyncio.sleep(0.05)


async def served(side: Side) -> bytes:
    async with aiohttp.ClientSession() as s, s.get(side.url + "/log/checkpoint") as resp:
        assert resp.status == 200
        return await resp.read()


async def doc(side: Side) -> dict[str, Any]:
    return await side.client().get_json("/v1/log/checkpoint")  # type: ignore[no-any-return]


async def cosigned_by(log: Side, witness: Side) -> bool:
    w = parse_verifier_key((await doc(witness))["witness_vkey"])
    return bool(valid_cosigners(await served(log), [w]))  # type: ignore[list-item]


async def add_checkpoint(witness: Side, body: bytes) -> tuple[int, str, bytes]:
    async with aiohttp.ClientSession() as s, s.post(witness.url + "/add-checkpoint",
                                                    data=body) as resp:
        return resp.status, resp.content_type, await resp.read()


def witnessed_size(witness: Side, log: Side) -> int:
    assert witness.node.witnessing is not None
    held = witness.node.witnessing.latest.get(log_origin(log.node.ledger.ledger_id))
    return held.checkpoint.size if held else 0


async def test_line_peers_cosign_each_others_checkpoints(pair: Pair) -> None:  # noqa: F811
    a, b = pair.a, pair.b
    await eventually(lambda: cosigned_by(a, b), "B cosigns A's checkpoint")
    await eventually(lambda: cosigned_by(b, a), "A cosigns B's checkpoint")
    # A generic client that knows only A's log key still reads a valid signed note.
    vkey = (await doc(a))["vkey"]
    assert open_note(await served(a), [parse_verifier_key(vkey)]).sigs
    # Each node reports the other as its witness, under the key the other serves.
    assert (await doc(a))["witnesses"] == [(await doc(b))["witness_vkey"]]


async def test_each_new_checkpoint_is_cosigned_from_the_size_last_cosigned(pair: Pair  # noqa: F811
                                                                          ) -> None:
    a, b = pair.a, pair.b
    await eventually(lambda: cosigned_by(a, b), "B cosigns A's checkpoint")
    before = witnessed_size(b, a)
    await a.client(a.steward).admit("carol", SecretKey(os.urandom(32)).public, [a.steward],
                                    10, 10)

    async def grown() -> bool:
        return witnessed_size(b, a) > before and await cosigned_by(a, b)

    await eventually(grown, "B cosigns A's next checkpoint")
    assert a.node.checkpointer is not None and a.node.checkpointer.latest is not None
    assert witnessed_size(b, a) == a.node.checkpointer.latest.checkpoint.size


async def test_verify_can_require_cosignatures(pair: Pair, tmp_path: Path) -> None:  # noqa: F811
    a, b = pair.a, pair.b
    await eventually(lambda: cosigned_by(a, b), "B cosigns A's checkpoint")
    alice = a.member("alice")
    report = await verify_member(alice, "alice", tmp_path / "home", witnesses=1)
    assert any("cosigned by 1 witness" in line for line in report.lines)
    with pytest.raises(VerificationFailed, match=r"1 valid cosignature.*at least 2"):
        await verify_member(alice, "alice", tmp_path / "home", witnesses=2, wait_seconds=0)
    # A key the member trusts that did not cosign counts for nothing.
    other = Cosigner("elsewhere.example/w", os.urandom(32)).verifier().vkey
    with pytest.raises(VerificationFailed, match="0 valid cosignature"):
        await verify_member(alice, "alice", tmp_path / "home", witnesses=1,
                            witness_keys=[other], wait_seconds=0)


# --- refusals -------------------------------------------------------------------------------


def a_signer(pair: Pair) -> Ed25519Signer:  # noqa: F811
    return log_signer(pair.a.node.ledger.ledger_id, pair.a.node_key)


async def test_a_forged_checkpoint_is_refused_403(pair: Pair) -> None:  # noqa: F811
    forger = Ed25519Signer(a_signer(pair).name, os.urandom(32))
    note = sign_note(format_checkpoint(forger.name, 1, os.urandom(32)), [forger])
    status, ctype, body = await add_checkpoint(pair.b, format_add_checkpoint(0, [], note))
    assert (status, ctype) == (403, "application/problem+json")
    assert b'"bad_signature"' in body


async def test_a_log_without_a_line_is_refused_404(pair: Pair) -> None:  # noqa: F811
    other = Ed25519Signer(log_origin("ee" * 32), os.urandom(32))
    note = sign_note(format_checkpoint(other.name, 1, os.urandom(32)), [other])
    status, _, body = await add_checkpoint(pair.b, format_add_checkpoint(0, [], note))
    assert status == 404 and b'"unknown_log"' in body


async def test_a_stale_old_size_gets_409_with_the_witness_size(pair: Pair) -> None:  # noqa: F811
    size = await eventually(lambda: asyncio.sleep(0, witnessed_size(pair.b, pair.a)),
                            "B cosigns A's checkpoint")
    assert pair.a.node.checkpointer is not None and pair.a.node.checkpointer.latest is not None
    note = pair.a.node.checkpointer.latest.note
    status, ctype, body = await add_checkpoint(pair.b, format_add_checkpoint(0, [], note))
    assert (status, ctype, body) == (409, "text/x.tlog.size", b"%d\n" % size)


async def test_a_malformed_body_is_refused_400(pair: Pair) -> None:  # noqa: F811
    status, _, body = await add_checkpoint(pair.b, b"old 01\n\nnot a checkpoint\n")
    assert status == 400 and b"leading zeroes" in body


async def test_a_bad_proof_is_refused_422_and_proves_nothing(pair: Pair) -> None:  # noqa: F811
    a, b = pair.a, pair.b
    size = await eventually(lambda: asyncio.sleep(0, witnessed_size(b, a)), "B cosigns A")
    note = sign_note(format_checkpoint(a_signer(pair).name, size + 5, os.urandom(32)),
                     [a_signer(pair)])
    garbage = [hashlib.sha256(b"%d" % i).digest() for i in range(5)]
    status, _, body = await add_checkpoint(b, format_add_checkpoint(size, garbage, note))
    assert status == 422 and b'"inconsistent_checkpoint"' in body
    assert b.node.gossip is not None and not b.node.gossip.state.evidence
    assert witnessed_size(b, a) == size


async def test_a_forked_log_gives_evidence_to_gossip_and_a_dispute(pair: Pair) -> None:  # noqa: F811
    a, b = pair.a, pair.b
    admin = a.client(a.steward)
    # B's last cosigned size must not be a power of two: the RFC proof from such a size
    # leaves out the old root, so a fork from it is refused but proves nothing.
    while True:
        size = await eventually(lambda: asyncio.sleep(0, witnessed_size(b, a)), "B cosigns A")
        latest = a.node.checkpointer.latest if a.node.checkpointer else None
        if size & (size - 1) and latest is not None and latest.checkpoint.size == size:
            break
        await admin.admit(f"m{size}", SecretKey(os.urandom(32)).public, [a.steward], 1, 1)
        await eventually(lambda seen=size: asyncio.sleep(0, witnessed_size(b, a) > seen),
                         "cosigned")
    # A signs (with its real key) a log of size+3 whose first entries differ from its own.
    forked = MerkleTree()
    for i in range(size + 3):
        forked.append(b"forged entry %d" % i)
    signer = a_signer(pair)
    note = sign_note(format_checkpoint(signer.name, size + 3, forked.root()), [signer])
    body = format_add_checkpoint(size, forked.consistency_proof(size, size + 3), note)
    status, _, answer = await add_checkpoint(b, body)
    assert status == 422 and b"two histories" in answer
    gossip = b.node.gossip
    assert gossip is not None
    [ev] = gossip.state.evidence.values()
    assert ev.offender == a.node_key.public and gossip.suspended(a.node_key.public)
    # Anyone can check it offline, as served to the other nodes by gossip.
    got = await b.client().get_json(f"/v1/gossip/evidence/{ev.id}")
    assert parse_evidence(got).offender == a.node_key.public
    # The on_evidence hook recorded a dispute on the line for B's stewards.
    disputes = await eventually(
        lambda: b.client(b.steward).get_json("/v1/disputes", signed=True), "a dispute")
    assert any(d["kind"] == "equivocation" for d in disputes["disputes"])
    assert [c.size for c in ev.checkpoints] == [size, size + 3]
    assert ev.checkpoints[1].root == forked.root()
