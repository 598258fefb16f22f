"""Transfers through the HTTP API: batches, concurrent devices, retries, memos.

Balances are checked against a model of the books computed from what the node answered,
so a transfer applied twice, lost, or applied against a stale balance shows up as a
wrong number.
"""

from __future__ import annotations

import asyncio
import os
import random
from typing import Any

import pytest

from node.client import TallyClient, TallyError, transfer_body
from tests.node.conftest import Collective


async def balances(coop: Collective) -> dict[str, int]:
    async with coop.as_member(coop.steward) as steward:
        return {a["handle"]: a["balance"] for a in await steward.accounts()}


async def log_size(coop: Collective) -> int:
    return int((await coop.client.health())["log_size"])


async def test_batch_answers_each_transfer_in_order(coop: Collective) -> None:
    carol = await coop.add_member("carol")
    keys = {"alice": coop.alice, "bob": coop.bob, "carol": carol}
    ledger = coop.node.ledger.ledger_id
    rng = random.Random(7)
    size_before = await log_size(coop)

    bodies: list[dict[str, Any]] = []
    expected: list[str] = []
    retry_of: dict[int, int] = {}  # position of an in-batch retry -> position of its original
    model = {h: 0 for h in keys}
    valid: list[int] = []
    for i in range(200):
        payer, payee = rng.sample(sorted(keys), 2)
        kind = i % 10
        if kind == 1:
            body, code = (
                transfer_body(keys[payer], ledger, payer, payee, 0),
                "amount_must_be_positive",
            )
        elif kind == 3:
            body, code = transfer_body(keys[payer], ledger, payer, "nobody", 5), "account_not_found"
        elif kind == 4:
            body, code = (
                transfer_body(keys[payer], ledger, payer, payee, 2001),
                "exceeds_debit_limit",
            )
        elif kind == 5:
            body, code = transfer_body(keys[payee], ledger, payer, payee, 5), "bad_signature"
        elif kind == 6:
            body = transfer_body(keys[payer], ledger, payer, payee, 5)
            del body["transfer"]["msg"]["amount"]
            code = "missing_field"
        elif kind == 7 and valid:
            original = rng.choice(valid)
            body, code = bodies[original], "exists"
            retry_of[i] = original
        elif kind == 8 and valid:
            original = rng.choice(valid)
            msg = bodies[original]["transfer"]["msg"]
            body = transfer_body(
                keys[msg["payer"]],
                ledger,
                msg["payer"],
                msg["payee"],
                msg["amount"] + 1,
                transfer_id=msg["id"],
            )
            code = "exists_with_different_fields"
        elif kind == 9:
            body, code = (
                transfer_body(keys[payer], ledger, payer, payee, 5, valid_for_ms=-1000),
                "expired",
            )
        else:
            amount = rng.randint(1, 40)
            body, code = (
                transfer_body(keys[payer], ledger, payer, payee, amount, memo=f"#{i}"),
                "ok",
            )
            model[payer] -= amount
            model[payee] += amount
            valid.append(i)
        bodies.append(body)
        expected.append(code)

    result = await coop.client.submit_batch(bodies)

    results = result["results"]
    assert [r["result"] for r in results] == expected
    assert result["accepted"] == sum(code in ("ok", "exists") for code in expected)
    ok_indexes = [r["index"] for r in results if r["result"] == "ok"]
    assert ok_indexes == list(range(size_before, size_before + len(valid)))  # applied in order
    for i, r in enumerate(results):
        if r["result"] == "ok":
            msg = bodies[i]["transfer"]["msg"]
            assert (r["id"], r["payer"], r["payee"], r["amount"]) == (
                msg["id"],
                msg["payer"],
                msg["payee"],
                msg["amount"],
            )
        elif r["result"] == "exists":
            assert r["index"] == results[retry_of[i]]["index"]
        else:
            assert r["detail"], r
    assert await balances(coop) == model
    assert await log_size(coop) == size_before + len(valid)


async def test_two_devices_of_one_member_pay_at_once(coop: Collective) -> None:
    amounts = [1 + i % 25 for i in range(50)]
    total = sum(amounts)
    assert total <= 1000  # within alice's debit limit: every one must be accepted
    phone = TallyClient(coop.url, coop.alice, retries=0)
    laptop = TallyClient(coop.url, coop.alice, retries=0)
    try:
        jobs = [
            (phone if i % 2 else laptop).pay("alice", "bob", amount, memo=f"device pay {i}")
            for i, amount in enumerate(amounts)
        ]
        receipts = await asyncio.gather(*jobs)
    finally:
        await phone.close()
        await laptop.close()
    assert {r["result"] for r in receipts} == {"ok"}
    assert len({r["index"] for r in receipts}) == 50
    assert await balances(coop) == {"alice": -total, "bob": total}
    async with coop.as_member(coop.bob) as bob:
        history = await bob.history("bob")
    assert sorted(p["amount"] for p in history) == sorted(amounts)
    assert sorted(p["memo"] for p in history) == sorted(f"device pay {i}" for i in range(50))


async def test_concurrent_spending_never_passes_the_debit_limit(coop: Collective) -> None:
    phone = TallyClient(coop.url, coop.alice, retries=0)
    laptop = TallyClient(coop.url, coop.alice, retries=0)

    async def pay(client: TallyClient) -> str:
        try:
            return str((await client.pay("alice", "bob", 30))["result"])
        except TallyError as exc:
            return exc.code

    try:
        outcomes = await asyncio.gather(*(pay(phone if i % 2 else laptop) for i in range(50)))
    finally:
        await phone.close()
        await laptop.close()
    # 1000 // 30 = 33 payments fit under alice's debit limit of 1000; whichever 33 come first.
    assert sorted(outcomes) == ["exceeds_debit_limit"] * 17 + ["ok"] * 33
    assert await balances(coop) == {"alice": -990, "bob": 990}


async def test_retry_of_applied_transfer_moves_nothing(coop: Collective) -> None:
    body = transfer_body(coop.alice, coop.node.ledger.ledger_id, "alice", "bob", 40, memo="rent")
    first = await coop.client.submit_transfer(body)
    assert first["result"] == "ok"
    again = await coop.client.submit_transfer(body)
    in_batch = (await coop.client.submit_batch([body]))["results"][0]
    assert (again["result"], again["index"]) == ("exists", first["index"])
    assert (in_batch["result"], in_batch["index"]) == ("exists", first["index"])
    assert await balances(coop) == {"alice": -40, "bob": 40}
    async with coop.as_member(coop.alice) as alice:
        assert [(p["amount"], p["memo"]) for p in await alice.history("alice")] == [(-40, "rent")]


@pytest.mark.parametrize("change", ["text", "salt", "missing_hash"])
async def test_memo_that_does_not_match_its_hash_is_refused(coop: Collective, change: str) -> None:
    ledger = coop.node.ledger.ledger_id
    if change == "missing_hash":  # a memo sent with a transfer that signed no memo hash
        body = transfer_body(coop.alice, ledger, "alice", "bob", 5)
        body["memo"] = {"text": "added later", "salt": os.urandom(16).hex()}
    else:
        body = transfer_body(coop.alice, ledger, "alice", "bob", 5, memo="for the garden")
        if change == "text":
            body["memo"]["text"] = "for the casino"
        else:
            body["memo"]["salt"] = os.urandom(16).hex()
    before = await coop.dump_unprompted()
    with pytest.raises(TallyError) as err:
        await coop.client.submit_transfer(body)
    assert (err.value.status, err.value.code) == (400, "invalid_field")
    assert err.value.problem["field"] == "body.memo"
    assert await coop.dump_unprompted() == before
    assert await balances(coop) == {"alice": 0, "bob": 0}


async def test_memo_in_batch_that_does_not_match_is_refused_alone(coop: Collective) -> None:
    ledger = coop.node.ledger.ledger_id
    good = transfer_body(coop.alice, ledger, "alice", "bob", 5, memo="tea")
    bad = transfer_body(coop.alice, ledger, "alice", "bob", 6, memo="coffee")
    bad["memo"]["text"] = "whisky"
    results = (await coop.client.submit_batch([bad, good]))["results"]
    assert [r["result"] for r in results] == ["invalid_field", "ok"]
    assert "memo" in results[0]["detail"]
    assert await balances(coop) == {"alice": -5, "bob": 5}


async def test_closing_needs_a_zero_balance_and_then_stops_payments(coop: Collective) -> None:
    """A member is closed only once settled to zero; then they can be neither payer nor payee."""
    carol = await coop.add_member("carol")
    ledger = coop.node.ledger.ledger_id
    await coop.client.submit_transfer(transfer_body(coop.alice, ledger, "alice", "carol", 9))
    with pytest.raises(TallyError) as err:
        await coop.client.act("close", [coop.steward], handle="carol")
    assert err.value.code == "balance_not_zero"
    await coop.client.submit_transfer(transfer_body(carol, ledger, "carol", "alice", 9))
    await coop.client.act("close", [coop.steward], handle="carol")
    for body in (
        transfer_body(coop.alice, ledger, "alice", "carol", 1),
        transfer_body(carol, ledger, "carol", "alice", 1),
    ):
        with pytest.raises(TallyError) as err:
            await coop.client.submit_transfer(body)
        assert (err.value.status, err.value.code) == (422, "account_closed")
    assert await balances(coop) == {"alice": 0, "bob": 0, "carol": 0}
