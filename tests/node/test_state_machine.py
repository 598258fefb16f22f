"""The node against a model: Hypothesis drives random valid and invalid requests at a real node.

A ``RuleBasedStateMachine`` sends transfers (valid, over a limit, zero or negative, signed by
the wrong key, for another ledger, expired, too far ahead, to or from nobody, identical
retries, an id reused with other fields), batches mixing them, admissions, limit changes,
closes and rekeys to the node's HTTP API. A small in-memory model of the books says what
each answer must be. After every step the books read through the API must match the model,
sum to zero, stay within limits and agree with each account's postings; and the log read
from the database must replay from empty to the same balances, each id applied once.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from crypto.canonical import canonical_json, parse_json
from crypto.keys import PublicKey, SecretKey, read_key_file
from node.api import make_app
from node.client import TallyClient, transfer_body
from node.config import ApiSettings, Config, StorageSettings
from node.service import Node, init_data_dir
from protocol.codes import ResultCode
from protocol.ledger import Policy, apply, new_state
from protocol.messages import (
    Admit,
    Close,
    Rekey,
    SetLimits,
    parse_log_entry,
    sign_message,
)

HANDLES = ["alice", "bob", "carol", "dave", "erin"]
NOBODY = "nobody"  # never admitted
WINDOW_MS = 24 * 3600 * 1000
MAX = 2**53 - 1
DEFECTS = ["none"] * 8 + [
    "just over the payer's limit", "just over the payee's limit", "exactly to a limit",
    "far over the limit", "zero or negative", "wrong key", "wrong ledger", "expired",
    "too far ahead", "unknown payer", "unknown payee", "same account", "reused id",
    "identical retry", "any account",
]
LIMITS = st.sampled_from([0, 1, 50, 300, 600, 600, 600, -1, MAX])
RANK = list(ResultCode)  # when several rules are broken, the first in this order is answered

CONFIG = Config(
    api=ApiSettings(rate_per_key_per_second=1e6, rate_burst=10**6),
    # Each signed read records its nonce through the writer; skip the fsync per commit here
    # (durability across kills is tests/integration/test_kill.py's subject).
    storage=StorageSettings(synchronous="NORMAL"),
)


@dataclass
class Member:
    key: SecretKey
    debit_limit: int
    credit_limit: int
    balance: int = 0
    closed: bool = False
    postings: dict[str, int] = field(default_factory=dict)  # event id -> amount


@dataclass(frozen=True)
class Applied:
    canonical: bytes  # the signed message, RFC 8785: identical retries match it exactly
    index: int


class Books:
    """The model: what the node must answer, by the ledger rules in ``ResultCode`` rank order."""

    def __init__(self, ledger_id: str, steward: SecretKey, size: int) -> None:
        self.ledger_id = ledger_id
        self.steward = steward
        self.members: dict[str, Member] = {}
        self.applied: dict[str, Applied] = {}
        self.memos: dict[str, str | None] = {}
        self.size = size
        self.secrets: dict[str, SecretKey] = {}  # every key the test made, by public key

    def key_owner(self, key: PublicKey) -> str | None:
        for handle, m in self.members.items():
            if m.key.public == key and not m.closed:
                return handle
        return None

    def _refusal(
        self, msg: dict[str, Any], canonical: bytes, broken: set[ResultCode]
    ) -> str | None:
        """The answer to a request that breaks the rules in ``broken``, if any: an identical
        retry of an applied event is ``exists``, else the first broken rule in rank order."""
        seen = self.applied.get(msg["id"])
        if seen is not None and seen.canonical == canonical:
            return "exists"
        if msg["ledger"] != self.ledger_id:
            broken.add(ResultCode.ledger_mismatch)
        if seen is not None:
            broken.add(ResultCode.exists_with_different_fields)
        now = int(time.time() * 1000)
        if msg["valid_until"] < now:
            broken.add(ResultCode.expired)
        if msg["valid_until"] > now + WINDOW_MS:
            broken.add(ResultCode.valid_until_too_far)
        return min(broken, key=RANK.index).value if broken else None

    def _record(self, msg: dict[str, Any], canonical: bytes) -> str:
        self.applied[msg["id"]] = Applied(canonical, self.size)
        self.size += 1
        return "ok"

    def transfer(self, signed: dict[str, Any], memo: str | None) -> str:
        """Predict the answer to a transfer, and apply it to the model if it is accepted."""
        msg, amount = signed["msg"], signed["msg"]["amount"]
        payer, payee = self.members.get(msg["payer"]), self.members.get(msg["payee"])
        signers = [s["key"] for s in signed["sigs"]]
        rules = {
            ResultCode.account_not_found: payer is None or payee is None,
            ResultCode.bad_signature: payer is not None and signers != [payer.key.public.text],
            ResultCode.same_account: msg["payer"] == msg["payee"],
            ResultCode.amount_must_be_positive: amount <= 0,
            ResultCode.account_closed: any(m is not None and m.closed for m in (payer, payee)),
            ResultCode.exceeds_debit_limit:
                payer is not None and payer.balance - amount < -payer.debit_limit,
            ResultCode.exceeds_credit_limit:
                payee is not None and payee.balance + amount > payee.credit_limit,
        }
        refusal = self._refusal(msg, canonical_json(signed), {c for c, b in rules.items() if b})
        if refusal:
            return refusal
        assert payer is not None and payee is not None
        payer.balance -= amount
        payee.balance += amount
        payer.postings[msg["id"]] = -amount
        payee.postings[msg["id"]] = amount
        self.memos[msg["id"]] = memo
        return self._record(msg, canonical_json(signed))

    def act(self, signed: dict[str, Any]) -> str:
        """Predict the answer to a steward act, and apply it to the model if it is accepted."""
        msg, kind = signed["msg"], signed["msg"]["type"]
        target = self.members.get(msg["handle"])
        key = msg.get("key")
        owner = self.key_owner(PublicKey.parse(key)) if key is not None else None
        debit, credit = msg.get("debit_limit", 0), msg.get("credit_limit", 0)
        rules = {
            ResultCode.account_not_found: target is None and kind != "admit",
            ResultCode.not_enough_steward_signatures:
                self.steward.public.text not in [s["key"] for s in signed["sigs"]],
            ResultCode.account_closed: target is not None and target.closed and kind != "admit",
            ResultCode.account_exists: target is not None and kind == "admit",
            ResultCode.key_in_use: owner is not None,
            ResultCode.limit_must_not_be_negative: debit < 0 or credit < 0,
            ResultCode.limit_below_balance: kind == "set_limits" and target is not None
                and not -debit <= target.balance <= credit,
            ResultCode.balance_not_zero:
                kind == "close" and target is not None and target.balance != 0,
        }
        refusal = self._refusal(msg, canonical_json(signed), {c for c, b in rules.items() if b})
        if refusal:
            return refusal
        if kind == "admit":
            self.members[msg["handle"]] = Member(self.secrets[key], debit, credit)
        elif kind == "set_limits":
            assert target is not None
            target.debit_limit, target.credit_limit = debit, credit
        elif kind == "close":
            assert target is not None
            target.closed = True
        else:
            assert target is not None and kind == "rekey"
            target.key = self.secrets[key]
        return self._record(msg, canonical_json(signed))


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.tmp = Path(tempfile.mkdtemp(prefix="tally-sm-"))
        self.server: TestServer | None = None
        self.session: aiohttp.ClientSession | None = None
        self.reader: TallyClient | None = None
        self.sent: list[tuple[dict[str, Any], str | None]] = []  # every transfer body posted
        self.sent_acts: list[dict[str, Any]] = []
        self.counter = 0
        try:
            self.run(self._start())
        except BaseException:
            self.teardown()
            raise

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    async def _start(self) -> None:
        data = self.tmp / "node"
        await init_data_dir(data, name="Model Co-op")
        self.node = Node(data, CONFIG)
        self.server = TestServer(make_app(self.node), host="127.0.0.1")
        await self.server.start_server()
        self.url = str(self.server.make_url("")).rstrip("/")
        self.session = aiohttp.ClientSession()
        _, steward = read_key_file(data / "steward.key")
        self.books = Books(self.node.ledger.ledger_id, steward, self.node.ledger.size)
        self.keys: list[SecretKey] = [steward]
        self.books.secrets[steward.public.text] = steward
        self.reader = TallyClient(self.url, steward, retries=0)
        for handle in HANDLES[:2]:
            await self._act(self._admit_msg(handle, self._new_key(), 1000, 1000), steward)

    def teardown(self) -> None:
        async def close() -> None:
            if self.reader is not None:
                await self.reader.close()
            if self.session is not None:
                await self.session.close()
            if self.server is not None:
                await self.server.close()

        try:
            self.run(close())
            self.run(self.loop.shutdown_asyncgens())
        finally:
            self.loop.close()
            shutil.rmtree(self.tmp, ignore_errors=True)

    # --- helpers --------------------------------------------------------------------------

    def _new_id(self) -> str:
        # Ids and keys come from counters, not os.urandom: Hypothesis replays a failing run
        # by its choices, so nothing that steers the run may be random outside them.
        self.counter += 1
        return f"{self.counter:032x}"

    def _new_key(self) -> SecretKey:
        key = SecretKey(hashlib.sha256(self._new_id().encode()).digest())
        self.books.secrets[key.public.text] = key
        self.keys.append(key)
        return key

    def _common(self, ledger: bool = True, validity: str = "ok") -> dict[str, Any]:
        now = int(time.time() * 1000)
        valid_until = {
            "ok": now + 3600_000, "expired": now - 60_000, "too_far": now + WINDOW_MS + 3600_000,
        }[validity]
        return {
            "ledger": self.books.ledger_id if ledger else "e" * 64,
            "id": self._new_id(),
            "valid_until": valid_until,
        }

    def _admit_msg(self, handle: str, key: SecretKey, debit: int, credit: int) -> Admit:
        return Admit(**self._common(), handle=handle, key=key.public, debit_limit=debit,
                     credit_limit=credit)

    async def _post(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        assert self.session is not None
        async with self.session.post(
            self.url + path, data=canonical_json(body),
            headers={"Content-Type": "application/json"},
        ) as resp:
            return resp.status, await resp.json(content_type=None)

    def _check_receipt(
        self, code: str, status: int | None, doc: dict[str, Any], msg: dict[str, Any]
    ) -> None:
        """The answer the node gave (``doc``) is the one the model predicted (``code``)."""
        result = doc.get("result", doc.get("code"))
        assert result == code, f"model says {code}, node says {doc}"
        if code in ("ok", "exists"):
            if status is not None:
                assert status == (201 if code == "ok" else 200)
            assert doc["id"] == msg["id"]
            assert doc["index"] == self.books.applied[msg["id"]].index
        elif status is not None:
            assert 400 <= status < 500, (status, doc)

    async def _act(self, msg: Any, *signers: SecretKey) -> None:
        signed = sign_message(msg, *signers).to_json()
        expected = self.books.act(signed)
        status, doc = await self._post("/v1/acts", signed)
        self._check_receipt(expected, status, doc, signed["msg"])
        self.sent_acts.append(signed)

    def _transfer(self, data: st.DataObject) -> tuple[dict[str, Any], str | None]:
        """A transfer body: a valid one, or one with a defect (which the books may add to)."""
        books = self.books
        handles = list(books.members)
        defect = data.draw(st.sampled_from(DEFECTS), label="defect")
        if defect == "identical retry" and self.sent:
            retry: tuple[dict[str, Any], str | None] = data.draw(
                st.sampled_from(self.sent), label="retry of"
            )
            return retry
        open_ = [h for h in handles if not books.members[h].closed]
        pool = handles if defect == "any account" or len(open_) < 2 else open_
        payer, payee = data.draw(
            st.lists(st.sampled_from(pool), min_size=2, max_size=2, unique=True),
            label="payer, payee",
        )
        amount = data.draw(st.integers(1, 300), label="amount")
        memo = data.draw(st.sampled_from([None, "gardening", "bread ☕"]), label="memo")
        signer = books.members[payer].key
        ledger, tid, valid_for = books.ledger_id, self._new_id(), 3600_000

        def debit_room(h: str) -> int:
            return books.members[h].balance + books.members[h].debit_limit

        def credit_room(h: str) -> int:
            return books.members[h].credit_limit - books.members[h].balance

        if defect == "just over the payee's limit":  # the fullest payee, the emptiest payer
            payee = min(pool, key=credit_room)
            payer = max((h for h in pool if h != payee), key=debit_room)
            signer = books.members[payer].key
        if defect == "just over the payer's limit":
            amount = min(MAX, debit_room(payer) + data.draw(st.integers(1, 3), label="over by"))
        elif defect == "just over the payee's limit":
            amount = min(MAX, credit_room(payee) + data.draw(st.integers(1, 3), label="over by"))
        elif defect == "exactly to a limit":
            amount = max(1, min(MAX, debit_room(payer), credit_room(payee)))
        elif defect == "far over the limit":
            amount = data.draw(st.sampled_from([2000, 10**9, MAX]), label="amount")
        elif defect == "zero or negative":
            amount = data.draw(st.integers(-3, 0), label="amount")
        elif defect == "wrong key":
            signer = data.draw(st.sampled_from(self.keys), label="signer")
        elif defect == "wrong ledger":
            ledger = "e" * 64
        elif defect == "expired":
            valid_for = -60_000
        elif defect == "too far ahead":
            valid_for = WINDOW_MS + 3600_000
        elif defect == "unknown payer":
            payer = NOBODY
        elif defect == "unknown payee":
            payee = NOBODY
        elif defect == "same account":
            payee = payer
        elif defect == "reused id" and books.applied:
            tid = data.draw(st.sampled_from(list(books.applied)), label="id")
        body = transfer_body(signer, ledger, payer, payee, amount, memo, valid_for,
                             transfer_id=tid)
        self.sent.append((body, memo))
        return body, memo

    # --- rules ----------------------------------------------------------------------------

    @rule(data=st.data())
    def transfer(self, data: st.DataObject) -> None:
        body, memo = self._transfer(data)
        signed = body["transfer"]
        expected = self.books.transfer(signed, memo)
        status, doc = self.run(self._post("/v1/transfers", body))
        self._check_receipt(expected, status, doc, signed["msg"])

    @rule(data=st.data(), size=st.integers(1, 6), malformed=st.booleans())
    def batch(self, data: st.DataObject, size: int, malformed: bool) -> None:
        items = [self._transfer(data) for _ in range(size)]
        if size > 1 and data.draw(st.booleans(), label="repeat an item in the batch"):
            items.append(items[0])
        bodies: list[dict[str, Any]] = [body for body, _ in items]
        expected = [self.books.transfer(body["transfer"], memo) for body, memo in items]
        if malformed:
            # A memo that is not the one the payer signed: refused alone, before the ledger.
            at = data.draw(st.integers(0, len(bodies)), label="malformed at")
            bad = transfer_body(self.keys[-1], self.books.ledger_id, "alice", "bob", 1, "real",
                                transfer_id=self._new_id())
            bad["memo"]["text"] = "forged"
            bodies.insert(at, bad)
            expected.insert(at, "invalid_field")
        status, doc = self.run(self._post("/v1/transfers/batch", {"transfers": bodies}))
        assert status == 200, doc
        assert len(doc["results"]) == len(bodies)
        for code, body, result in zip(expected, bodies, doc["results"]):
            self._check_receipt(code, None, result, body["transfer"]["msg"])
        assert doc["accepted"] == sum(code in ("ok", "exists") for code in expected)

    @rule(data=st.data())
    def admit(self, data: st.DataObject) -> None:
        handle = data.draw(st.sampled_from(HANDLES + [f"m{self.counter}"]), label="handle")
        key = data.draw(st.sampled_from([None, None, None] + self.keys), label="key")
        debit = data.draw(LIMITS)
        credit = data.draw(LIMITS)
        key = key or self._new_key()
        self.run(self._act(self._admit_msg(handle, key, debit, credit), self._signer(data)))

    @rule(data=st.data())
    def set_limits(self, data: st.DataObject) -> None:
        handle = self._handle(data)
        debit = data.draw(LIMITS)
        credit = data.draw(LIMITS)
        msg = SetLimits(**self._act_common(data), handle=handle, debit_limit=debit,
                        credit_limit=credit)
        self.run(self._act(msg, self._signer(data)))

    @rule(data=st.data(), settle=st.booleans())
    def close(self, data: st.DataObject, settle: bool) -> None:
        handle = self._handle(data)
        member = self.books.members.get(handle)
        others = [h for h, m in self.books.members.items() if h != handle and not m.closed]
        if settle and member is not None and member.balance and others:
            # Bring the balance to zero first, as an operator would before closing.
            other = data.draw(st.sampled_from(others), label="settles with")
            payer, payee = (handle, other) if member.balance > 0 else (other, handle)
            key = self.books.members[payer].key
            body = transfer_body(key, self.books.ledger_id, payer, payee, abs(member.balance),
                                 transfer_id=self._new_id())
            self.sent.append((body, None))
            expected = self.books.transfer(body["transfer"], None)
            status, doc = self.run(self._post("/v1/transfers", body))
            self._check_receipt(expected, status, doc, body["transfer"]["msg"])
        msg = Close(**self._act_common(data), handle=handle)
        self.run(self._act(msg, self._signer(data)))

    @rule(data=st.data())
    def rekey(self, data: st.DataObject) -> None:
        handle = self._handle(data)
        key = data.draw(st.sampled_from([None, None] + self.keys), label="key") or self._new_key()
        msg = Rekey(**self._act_common(data), handle=handle, key=key.public)
        self.run(self._act(msg, self._signer(data)))

    @rule(data=st.data())
    def retry_act(self, data: st.DataObject) -> None:
        signed = data.draw(st.sampled_from(self.sent_acts), label="act")
        expected = self.books.act(signed)
        status, doc = self.run(self._post("/v1/acts", signed))
        self._check_receipt(expected, status, doc, signed["msg"])

    def _act_common(self, data: st.DataObject) -> dict[str, Any]:
        ledger = data.draw(st.sampled_from([True] * 9 + [False]), label="right ledger")
        validity = data.draw(st.sampled_from(["ok"] * 9 + ["expired", "too_far"]))
        common = self._common(ledger, validity)
        if self.books.applied and data.draw(st.integers(0, 9)) == 0:
            common["id"] = data.draw(st.sampled_from(list(self.books.applied)), label="reused id")
        return common

    def _handle(self, data: st.DataObject) -> str:
        """Mostly a member's handle; sometimes one never admitted."""
        return data.draw(st.sampled_from(list(self.books.members) * 3 + [NOBODY]), label="handle")

    def _signer(self, data: st.DataObject) -> SecretKey:
        return data.draw(st.sampled_from([self.books.steward] * 9 + self.keys[1:]), label="signer")

    # --- what a member or auditor would check ----------------------------------------------

    @invariant()
    def books_match_the_model(self) -> None:
        self.run(self._check_books())

    async def _check_books(self) -> None:
        assert self.reader is not None
        books = self.books
        accounts = {a["handle"]: a for a in await self.reader.accounts()}
        histories = await asyncio.gather(*(self.reader.history(h) for h in accounts))
        assert set(accounts) == set(books.members)
        assert sum(a["balance"] for a in accounts.values()) == 0
        for (handle, a), postings in zip(accounts.items(), histories):
            m = books.members[handle]
            assert (a["balance"], a["debit_limit"], a["credit_limit"]) == (
                m.balance, m.debit_limit, m.credit_limit,
            ), handle
            assert a["status"] == ("closed" if m.closed else "open")
            assert a["key"] == m.key.public.text
            assert -a["debit_limit"] <= a["balance"] <= a["credit_limit"], a
            ids = [p["id"] for p in postings]
            assert len(ids) == len(set(ids)), f"{handle}: an id posted twice"
            assert {p["id"]: p["amount"] for p in postings} == m.postings, handle
            assert sum(p["amount"] for p in postings) == a["balance"]
            for p in postings:
                assert p["index"] == books.applied[p["id"]].index
                assert p["memo"] == books.memos[p["id"]]

        # The log, read from the database, replays from empty to the same books.
        db = self.node.reader
        assert db is not None
        async with db.execute("SELECT idx, entry FROM log ORDER BY idx") as cur:
            rows = [(idx, bytes(entry)) for idx, entry in await cur.fetchall()]
        assert [idx for idx, _ in rows] == list(range(books.size))
        genesis = rows[0][1]
        state = new_state(parse_log_entry(parse_json(genesis)).payload, genesis)
        for idx, raw in rows[1:]:
            entry = parse_log_entry(parse_json(raw))
            outcome = apply(state, entry.payload, entry.node_time, Policy(max_valid_window_ms=None))
            assert (outcome.code.value, outcome.index) == ("ok", idx), (idx, outcome)
        assert {
            h: (a.balance, a.debit_limit, a.credit_limit, a.status, a.key)
            for h, a in state.accounts.items()
        } == {
            h: (m.balance, m.debit_limit, m.credit_limit, "closed" if m.closed else "open",
                m.key.public)
            for h, m in books.members.items()
        }
        assert {i: s.index for i, s in state.seen.items()} == {
            i: a.index for i, a in books.applied.items()
        }


LedgerMachine.TestCase.settings = settings(
    max_examples=30,
    stateful_step_count=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestLedgerMachine = LedgerMachine.TestCase
