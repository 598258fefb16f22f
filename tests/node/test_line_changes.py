"""Disputes, a line suspended by one side alone, and settlements out of band, between two
real nodes in one process (the fixtures of ``test_federation``: A counts minutes, B cents,
3 cents per 2 minutes).

Asserts what stewards and members would see: what ``tally disputes`` lists and its signed
evidence, refusals with their codes, both ledgers' peer accounts, and a replay of each log.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from node.audit import audit_log, http_source
from node.client import TallyError
from node.problems import FederationError
from protocol import settlement as sm
from protocol.codes import ResultCode
from protocol.federation import SETTLEMENT_ACCOUNT, Decision, Fulfil, Prepare
from protocol.messages import Signed, parse_message, parse_signed, sign_message
from tests.node.test_federation import (  # noqa: F401  (fixtures)
    A_LIMIT,
    B_LIMIT,
    RATE,
    Pair,
    capture_order_ids,
    converted,
    cost,
    linked,
    pair,
    refused,
    restart,
    settled,
)
from tests.node.test_verify_audit import cli

# --- disputes -----------------------------------------------------------------------------


async def test_a_fulfilment_after_the_void_is_kept_as_a_dispute_and_moves_nothing(
    linked: Pair, monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b = linked.a, linked.b
    kept: list[Signed] = []
    real = b.fed.receive_prepare

    async def fulfil_but_hold_the_answer(signed: Signed, sender: Any) -> Signed:
        # B fulfils (its books hold bob's credit as pending), but its answer never reaches
        # A before the expiry.
        kept.append(await real(signed, sender))
        raise FederationError(ResultCode.overloaded, "busy")

    b.fed.receive_prepare = fulfil_but_hold_the_answer  # type: ignore[method-assign]
    order_ids = capture_order_ids(monkeypatch)
    err = await refused(a.member("alice").pay_remote("alice", "bob", b.node_key.public, 30,
                                                     30))
    assert err.code == "expired"
    (order_id,) = order_ids
    fulfil = kept[0]
    assert isinstance(fulfil.msg, Fulfil)
    attempt = fulfil.msg.id

    # Now the FULFIL arrives, valid but late.
    record = await a.fed._load_record(attempt)
    assert record is not None and record.payment.outbound == sm.Out.voided
    await a.fed._outbound_answer(record, {"fulfil": fulfil.to_json()})
    await a.fed._outbound_answer(record, {"fulfil": fulfil.to_json()})  # and again

    disputes = await a.client(a.steward).disputes()
    assert len(disputes) == 1
    d = disputes[0]
    assert (d["kind"], d["peer"], d["peer_name"], d["attempt"], d["resolved"]) == \
        ("late_fulfilment", b.node_key.public.key_id, "Greenway", attempt, False)
    assert linked.line is not None and d["line"] == linked.line.id
    # The evidence is the signed messages, each verifiable by anyone.
    evidence = {k: parse_signed(v) for k, v in d["evidence"].items()}
    assert isinstance(evidence["prepare"].msg, Prepare)
    assert evidence["prepare"].msg.id == attempt
    assert evidence["fulfil"] == fulfil
    assert isinstance(evidence["void"].msg, Decision)
    assert evidence["void"].msg.outcome == "void"
    for signed in evidence.values():
        assert signed.verified_signers()[1]
    # Never applied to the balances: alice paid nothing, and B follows A's void.
    await settled(a, b)
    assert a.account("alice") == {"balance": 0, "pending_debit": 0, "pending_credit": 0}
    assert a.account(linked.peer_at_a)["balance"] == 0
    assert b.account("bob") == {"balance": 0, "pending_debit": 0, "pending_credit": 0}
    status = await a.member("alice").payment(order_id)
    assert [x["result"]["result"] for x in status["attempts"]] == ["expired"]

    # Members may not read disputes; stewards resolve them.
    err = await refused(a.member("alice").disputes())
    assert (err.code, err.status) == ("forbidden", 403)
    done = await a.client(a.steward).resolve_dispute(d["id"], "agreed by phone: void stands")
    assert done["resolved"] is True
    assert await a.client(a.steward).disputes() == []
    (again,) = await a.client(a.steward).disputes(include_resolved=True)
    assert (again["resolved"], again["note"]) == (True, "agreed by phone: void stands")
    err = await refused(a.client(a.steward).resolve_dispute("0" * 32, "x"))
    assert (err.code, err.status) == ("not_found", 404)


async def test_record_dispute_is_idempotent_per_kind_and_attempt(linked: Pair) -> None:
    a = linked.a
    assert linked.line is not None
    first = await a.fed.record_dispute("intermediary_loss", linked.b.node_key.public,
                                       linked.line.id, "ab" * 16, {"x": 1})
    again = await a.fed.record_dispute("intermediary_loss", linked.b.node_key.public.key_id,
                                       linked.line.id, "ab" * 16, {"x": 2})
    other = await a.fed.record_dispute("statement_mismatch", linked.b.node_key.public,
                                       linked.line.id, "ab" * 16, {"x": 3})
    assert first == again != other
    listed = await a.client(a.steward).disputes()
    assert [(d["kind"], d["evidence"]) for d in listed] == [
        ("intermediary_loss", {"x": 1}), ("statement_mismatch", {"x": 3})]


# --- suspension by one side ---------------------------------------------------------------


async def test_one_side_suspends_alone_and_neither_side_pays_across_any_more(
    linked: Pair,
) -> None:
    a, b = linked.a, linked.b
    line = linked.line
    assert line is not None
    await a.member("alice").pay_remote("alice", "bob", b.node_key.public, 30, 30)
    await settled(a, b)
    # B's stewards alone: no acceptance by A's stewards.
    result = await b.client(b.steward).suspend_line(line.id, [b.steward])
    assert (result["version"], result["status"], result["delivered"]) == (2, "suspended", True)
    for side in (a, b):
        listed = (await side.client(side.steward).lines())["lines"]
        assert [(x["version"], x["status"]) for x in listed] == [(2, "suspended")]
    before = (a.balances(), b.balances())
    err = await refused(a.member("alice").pay_remote("alice", "bob", b.node_key.public, 30, 30))
    assert err.code == "line_suspended"
    err = await refused(b.member("bob").pay_remote("bob", "alice", a.node_key.public, 5, 50))
    assert err.code == "line_suspended"
    assert (a.balances(), b.balances()) == before
    # Suspending again resends the same version; it changes nothing.
    again = await b.client(b.steward).suspend_line(line.id, [b.steward])
    assert (again["version"], again["delivered"]) == (2, True)
    # Resuming needs both sides, as any change does.
    await a.client(a.steward).change_line(line.id, [a.steward], status="active")
    await b.client(b.steward).accept_line(line.id, [b.steward])
    receipt = await a.member("alice").pay_remote("alice", "bob", b.node_key.public, 30, 30)
    assert receipt["result"] == "ok"


async def test_a_suspension_needs_the_suspending_sides_stewards(linked: Pair) -> None:
    a, b = linked.a, linked.b
    assert linked.line is not None
    stop = replace(linked.line, version=2, status="suspended")
    # Signed by B's steward, who is no steward of A.
    body = {"line": sign_message(stop, b.steward).to_json(), "url": "", "action": "suspend"}
    err = await refused(a.client()._request("POST", "/v1/lines", body, idempotent=False))
    assert (err.code, err.status) == ("not_enough_steward_signatures", 422)
    # More than a suspension is not for one side alone.
    bigger = replace(stop, a_limit=1)
    body = {"line": sign_message(bigger, a.steward).to_json(), "url": "", "action": "suspend"}
    err = await refused(a.client()._request("POST", "/v1/lines", body, idempotent=False))
    assert err.code == "invalid_field"
    for side in (a, b):
        assert side.fed.line_with(
            (b if side is a else a).node_key.public).status == "active"  # type: ignore[union-attr]


async def test_a_suspension_the_peer_missed_is_resent(linked: Pair) -> None:
    a, b = linked.a, linked.b
    assert linked.line is not None
    original = a.fed._peer_post

    async def unreachable(key_id: str, path: str, body: dict[str, Any]) -> Any:
        raise TallyError("unreachable", "no route to host")

    a.fed._peer_post = unreachable  # type: ignore[method-assign]
    result = await a.client(a.steward).suspend_line(linked.line.id, [a.steward])
    assert (result["status"], result["delivered"]) == ("suspended", False)
    assert b.fed.line_with(a.node_key.public).status == "active"  # type: ignore[union-attr]
    a.fed._peer_post = original  # type: ignore[method-assign]
    result = await a.client(a.steward).suspend_line(linked.line.id, [a.steward])
    assert result["delivered"] is True
    assert b.fed.line_with(a.node_key.public).status == "suspended"  # type: ignore[union-attr]


# --- settlement out of band ----------------------------------------------------------------


async def test_a_settlement_moves_both_peer_accounts_toward_zero_and_they_still_mirror(
    linked: Pair,
) -> None:
    a, b = linked.a, linked.b
    for amount in (100, 50):
        await a.member("alice").pay_remote("alice", "bob", b.node_key.public, amount, amount)
    await settled(a, b)
    paid = cost(100) + cost(50)  # 67 + 34 = 101 minutes A owes B
    got = converted(cost(100)) + converted(cost(50))  # 100 + 51 cents
    assert (a.account(linked.peer_at_a)["balance"], b.account(linked.peer_at_b)["balance"]) \
        == (paid, -got)
    assert linked.line is not None
    # A's stewards: "we paid Greenway 60 minutes' worth outside Tally" (60 min = 90 cents).
    proposed = await a.client(a.steward).propose_settlement(linked.line.id, [a.steward], 60,
                                                            "bank ref 2024-0017")
    assert proposed["status"] == "proposed"
    assert a.account(linked.peer_at_a)["balance"] == paid  # nothing yet
    listing = await b.client(b.steward).lines()
    assert [(x["id"], x["by"], x["terms"]["amount_a"], x["terms"]["amount_b"])
            for x in listing["settlements"]] == [(proposed["settlement"], "theirs", 60, 90)]
    done = await b.client(b.steward).accept_settlement(proposed["settlement"], [b.steward])
    assert done["status"] == "settled"
    assert (a.account(linked.peer_at_a)["balance"], b.account(linked.peer_at_b)["balance"]) \
        == (paid - 60, -got + 90)
    assert a.node.ledger.accounts[SETTLEMENT_ACCOUNT].balance == 60
    assert b.node.ledger.accounts[SETTLEMENT_ACCOUNT].balance == -90
    assert (await a.client(a.steward).lines())["settlements"] == []
    # Members' balances do not move; each ledger still sums to zero.
    assert a.account("alice")["balance"] == -paid
    assert b.account("bob")["balance"] == got
    for side in (a, b):
        assert sum(x.balance for x in side.node.ledger.accounts.values()) == 0
    # Both logs replay, with the settlement, to the same books.
    for side in (a, b):
        checkpointer = side.node.checkpointer
        assert checkpointer is not None
        assert await checkpointer.wait_for(side.node.ledger.size, 10.0) is not None
        reader = side.client(side.steward)
        report = await audit_log(http_source(reader), vkey=None,
                                 served_accounts=reader.accounts)
        assert report.passed, report.checks
        assert report.size == side.node.ledger.size
    # The next settlement takes the next sequence number; past zero is refused.
    err = await refused(a.client(a.steward).propose_settlement(linked.line.id, [a.steward],
                                                               paid - 59))
    assert err.code == "exceeds_line_balance"
    listing = await a.client(a.steward).lines()
    assert listing["lines"][0]["next_settlement"] == 2


async def test_a_settlement_survives_a_restart_before_it_is_accepted(linked: Pair) -> None:
    a, b = linked.a, linked.b
    await b.member("bob").pay_remote("bob", "alice", a.node_key.public, 20, 100)
    await settled(a, b)
    assert linked.line is not None
    # B owes A; B's stewards propose in cents: 30 cents = 20 minutes.
    proposed = await b.client(b.steward).propose_settlement(linked.line.id, [b.steward], 30)
    assert b.account(linked.peer_at_b)["balance"] == 30  # B owes A 30 cents = 20 minutes
    await restart(a)
    await a.client(a.steward).accept_settlement(proposed["settlement"], [a.steward])
    assert a.account(linked.peer_at_a)["balance"] == 0  # was -20: B owed A 20 minutes
    assert b.account(linked.peer_at_b)["balance"] == 0


async def test_a_settlement_needs_the_accepting_sides_stewards(linked: Pair) -> None:
    a, b = linked.a, linked.b
    await a.member("alice").pay_remote("alice", "bob", b.node_key.public, 30, 30)
    await settled(a, b)
    assert linked.line is not None
    await a.client(a.steward).propose_settlement(linked.line.id, [a.steward], 10)
    (pending,) = (await b.client(b.steward).lines())["settlements"]
    terms = parse_message(pending["terms"], frozenset({"line_settlement"}))
    # Signed by A's steward, who is no steward of B.
    body = {"settlement": sign_message(terms, a.steward).to_json(), "action": "accept"}
    err = await refused(b.client()._request("POST", "/v1/settlements", body, idempotent=False))
    assert (err.code, err.status) == ("not_enough_steward_signatures", 422)
    assert SETTLEMENT_ACCOUNT not in b.node.ledger.accounts
    assert SETTLEMENT_ACCOUNT not in a.node.ledger.accounts
    # More than A owes B, proposed by B's stewards in cents: refused before it is sent.
    err = await refused(b.client(b.steward).propose_settlement(linked.line.id, [b.steward],
                                                               10_000))
    assert err.code == "exceeds_line_balance"
    assert [x["by"] for x in (await a.client(a.steward).lines())["settlements"]] == ["ours"]


# --- the commands ----------------------------------------------------------------------------


async def test_stewards_suspend_settle_and_read_disputes_with_the_tally_command(
    linked: Pair, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    a, b = linked.a, linked.b
    await a.member("alice").pay_remote("alice", "bob", b.node_key.public, 30, 30)
    await settled(a, b)  # A owes B 20 minutes (30 cents)

    def at(side: Side) -> list[str]:
        return ["--node", side.url, "--home", str(tmp_path / side.name),
                "--steward-key", str(side.node.data_dir / "steward.key")]

    code, out, err = await cli(capsys, "peer", "settle", "greenway", "0.5", *at(a))
    assert code == 1 and "settle at most" in err, err
    code, out, err = await cli(capsys, "peer", "settle", "greenway", "0.25", "--reference",
                               "ref 17", *at(a), "--json")
    assert code == 0, err
    settlement_id = json.loads(out)["settlement"]
    code, out, err = await cli(capsys, "peer", "list", *at(b))
    assert code == 0, err
    assert f"tally peer accept {settlement_id}" in out and "'ref 17'" in out
    code, out, err = await cli(capsys, "peer", "accept", settlement_id, *at(b))
    assert code == 0 and "logged on both ledgers" in out, err
    assert a.account(linked.peer_at_a)["balance"] == 20 - 15  # 0.25 hours = 15 minutes
    assert b.account(linked.peer_at_b)["balance"] == -30 + converted(15)

    code, out, err = await cli(capsys, "peer", "suspend", "greenway", *at(a))
    assert code == 0 and "suspended" in out and "they were told" in out, err
    assert b.fed.line_with(a.node_key.public).status == "suspended"  # type: ignore[union-attr]

    code, out, err = await cli(capsys, "disputes", *at(a))
    assert (code, out.strip()) == (0, "No open disputes (`--all` shows resolved ones).")
    code, out, err = await cli(capsys, "disputes", *at(a), "--json")
    assert (code, json.loads(out)) == (0, [])
    code, out, err = await cli(capsys, "disputes", "resolve", "0" * 32, "--note", "x", *at(a))
    assert code == 1 and "not_found" in err


async def test_peer_list_says_who_proposed_what_and_who_owes_whom(
    pair: Pair, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    # Found by a hostile test: a steward saw their own proposal as "from" the other side
    # with an instruction to accept it (which failed), no proposal's terms, and a balance
    # whose sign meant opposite things on the two sides.
    a, b = pair.a, pair.b

    def at(side: Any) -> list[str]:
        return ["--node", side.url, "--home", str(tmp_path / side.name),
                "--steward-key", str(side.node.data_dir / "steward.key")]

    proposed = (await a.client(a.steward).propose_line(b.url, [a.steward], A_LIMIT, B_LIMIT,
                                                       *RATE))["line"]
    code, out, err = await cli(capsys, "peer", "list", *at(a))
    assert code == 0, err
    assert f"proposal {proposed} to 'Greenway', waiting for their stewards" in out
    assert ("v1 active: they may owe us 50 hours, we may owe them 6 credits; "
            "1 hours = 0.9 credits") in out
    assert "tally peer accept" not in out
    code, out, err = await cli(capsys, "peer", "list", *at(b))
    assert code == 0, err
    assert f"proposal {proposed} from 'Riverside'" in out
    assert ("v1 active: they may owe us 6 credits, we may owe them 50 hours; "
            "1 credits = 1.11111 hours") in out
    assert f"accept with `tally peer accept {proposed}`" in out

    await b.client(b.steward).accept_line(proposed, [b.steward])
    await a.member("alice").pay_remote("alice", "bob", b.node_key.public, 30, 30)
    await settled(a, b)  # A owes B: 20 minutes on A's ledger, 30 cents on B's
    code, out, err = await cli(capsys, "peer", "list", *at(a))
    assert "we owe them 0.33 (20/60) hours (they may owe us 50 hours" in out, out
    code, out, err = await cli(capsys, "peer", "list", *at(b))
    assert "they owe us 0.3 credits (they may owe us 6 credits" in out, out


async def test_peer_status_exits_1_when_the_other_node_cannot_be_asked(
    linked: Pair, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A script or a monitor runs `tally peer status`: a line whose other node does not
    # answer (down, or no longer the node the line names) needs a steward, as a mismatch.
    a = linked.a
    at = ["--node", a.url, "--home", str(tmp_path / a.name),
          "--steward-key", str(a.node.data_dir / "steward.key")]
    code, out, err = await cli(capsys, "peer", "status", *at)
    assert code == 0 and "AGREE" in out, out + err

    async def down(*args: Any, **kwargs: Any) -> Any:
        raise TallyError("unreachable", "could not reach the node")

    monkeypatch.setattr(a.fed, "_peer_post", down)
    code, out, err = await cli(capsys, "peer", "status", *at)
    assert code == 1 and "UNREACHABLE" in out, out + err
