"""The writer applies the next batch in memory while the previous one is still being written.

These tests hold a batch's write in the database thread (or make it fail) while more batches
queue behind it, and check what the pipelining must keep: answers only after COMMIT, retries
and reused ids recognised across batches in flight, and after a failed write nothing applied,
neither by it nor by the batches applied on top of it, with the in-memory state reloaded.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from crypto.keys import SecretKey
from node import writer as writer_module
from node.writer import Writer
from protocol.ledger import Outcome
from protocol.messages import Signed, Transfer, sign_message
from tests.node.conftest import Collective


def transfer(coop: Collective, key: SecretKey, payer: str, payee: str, amount: int,
             transfer_id: str | None = None) -> Signed:
    msg = Transfer(coop.node.ledger.ledger_id, transfer_id or os.urandom(16).hex(), payer,
                   payee, amount, None, coop.node.clock_ms() + 600_000)
    return sign_message(msg, key)


def event(signed: Signed) -> tuple[Signed, Any, None]:
    return signed, (frozenset({signed.sigs[0].key}), True), None


def the_writer(coop: Collective) -> Writer:
    assert coop.node.writer is not None
    return coop.node.writer


class HeldWrites:
    """Makes the database thread wait before each write until released; can fail one."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.release = threading.Event()
        self.started = threading.Event()
        self.fail_next = False
        original = writer_module._write

        def write(conn: Any, statements: Any, commit: bool, gate: Any) -> None:
            self.started.set()
            self.release.wait(10)
            if self.fail_next and not gate.failed:
                self.fail_next = False
                gate.failed = True
                raise OSError("disk on fire")
            original(conn, statements, commit, gate)

        monkeypatch.setattr(writer_module, "_write", write)

    async def wait_started(self) -> None:
        for _ in range(500):
            if self.started.is_set():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("no write started")


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> Iterator[HeldWrites]:
    h = HeldWrites(monkeypatch)
    yield h
    h.release.set()


async def balances(coop: Collective) -> dict[str, int]:
    return {h: a.balance for h, a in coop.node.ledger.accounts.items()}


async def test_answers_wait_for_commit_and_retries_across_batches_in_flight(
    coop: Collective, held: HeldWrites
) -> None:
    w = the_writer(coop)
    first = transfer(coop, coop.alice, "alice", "bob", 5)
    other_content = transfer(coop, coop.alice, "alice", "bob", 6, first.msg.id)  # type: ignore[union-attr]
    a = asyncio.ensure_future(w.submit_batch([event(first)]))
    await held.wait_started()
    # While the first write is held: an identical retry, the same id with other content, and
    # a fresh transfer, applied on top of the batch being written.
    b = asyncio.ensure_future(w.submit_batch(
        [event(first), event(other_content), event(transfer(coop, coop.bob, "bob", "alice", 2))]
    ))
    await asyncio.sleep(0.2)
    assert not a.done() and not b.done()  # nothing answered before its COMMIT
    held.release.set()
    (done_a,) = await a
    retry, reused, fresh = await b
    assert done_a.code.value == "ok"
    assert retry.code.value == "exists" and retry.index == done_a.index
    assert reused.code.value == "exists_with_different_fields"
    assert fresh.code.value == "ok" and fresh.index == done_a.index + 1  # type: ignore[operator]
    assert await balances(coop) == {"alice": -3, "bob": 3}


async def test_a_failed_write_fails_the_batches_applied_on_top_and_writes_nothing(
    coop: Collective, held: HeldWrites
) -> None:
    w = the_writer(coop)
    before = await coop.dump_unprompted()
    size = coop.node.ledger.size
    held.fail_next = True
    t1 = transfer(coop, coop.alice, "alice", "bob", 7)
    t2 = transfer(coop, coop.bob, "bob", "alice", 3)
    a = asyncio.ensure_future(w.submit_batch([event(t1)]))
    await held.wait_started()
    b = asyncio.ensure_future(w.submit(*event(t2)))
    await asyncio.sleep(0.2)
    held.release.set()
    for pending in (a, b):
        with pytest.raises(RuntimeError, match="storage failure"):
            await pending
    assert coop.node.ledger.size == size
    assert await balances(coop) == {"alice": 0, "bob": 0}
    assert await coop.dump_unprompted() == before
    # The writer goes on: the same transfers are new again, at the same indexes.
    outcomes: list[Outcome] = await w.submit_batch([event(t1), event(t2)])
    assert [o.code.value for o in outcomes] == ["ok", "ok"]
    assert [o.index for o in outcomes] == [size, size + 1]
    assert await balances(coop) == {"alice": -4, "bob": 4}
    await coop.dump_unprompted()  # readable, consistent


async def test_many_batches_in_flight_keep_order_and_limits(coop: Collective) -> None:
    """Concurrent batches spending from one account never pass its debit limit, and the log
    indexes are dense and in order of the answers."""
    w = the_writer(coop)
    batches = [[event(transfer(coop, coop.alice, "alice", "bob", 30)) for _ in range(10)]
               for _ in range(8)]
    started = time.monotonic()
    results = await asyncio.gather(*(w.submit_batch(b) for b in batches))
    assert time.monotonic() - started < 60
    oks = [o for r in results for o in r if o.code.value == "ok"]
    refused = [o for r in results for o in r if o.code.value != "ok"]
    assert len(oks) == 1000 // 30  # limit 1000
    assert {o.code.value for o in refused} == {"exceeds_debit_limit"}
    assert sorted(o.index for o in oks) == list(range(oks[0].index or 0, (oks[0].index or 0) + len(oks)))  # type: ignore[operator]
    assert (await balances(coop))["alice"] == -30 * len(oks)
