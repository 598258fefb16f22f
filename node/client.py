"""The member's and steward's client library: sign locally, talk to a node over HTTP.

Layer: node (async, aiohttp). The ``tally`` CLI is built on this; other programs can use it
too::

    async with TallyClient("http://127.0.0.1:7300", key) as client:
        receipt = await client.pay("alice", "bob", 90, memo="gardening")

Secret keys never leave this process: transfers and acts are signed here, and reads carry an
HTTP message signature (``crypto.httpsig``). A transfer is retried after a network failure
or a 5xx with the *same signed bytes*, so it is applied at most once (the node answers
``exists`` to a retry of an applied transfer).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlencode

import aiohttp
import yarl

from crypto.canonical import canonical_json
from crypto.httpsig import sign_request
from crypto.keys import PublicKey, SecretKey, b64url
from crypto.note import format_verifier_key
from node.checkpoints import log_origin
from protocol import version as protocol_version
from protocol.federation import Line, LineSettlement, Party, PaymentOrder
from protocol.ledger import memo_hash
from protocol.messages import (
    Admit,
    Close,
    Message,
    Rekey,
    SetLimits,
    SetStewards,
    Signed,
    Transfer,
    Unit,
    parse_message,
    sign_message,
)


class TallyError(Exception):
    """The node refused a request (``code`` is its stable result code), or could not be reached."""

    def __init__(self, code: str, detail: str, status: int = 0,
                 problem: dict[str, Any] | None = None, url: str = "") -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.status = status
        self.problem = problem or {}
        self.url = url  # the node that refused, or could not be reached
        self.order_id: str | None = None  # set for payments across collectives


# For a request and its answer to cross the network between a client and its node, beyond
# the time the node itself says it may take to answer.
TRANSIT_SECONDS = 10.0


def new_id() -> str:
    """A random 128-bit id, as every transfer and act carries."""
    return os.urandom(16).hex()


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class NodeInfo:
    url: str
    name: str
    ledger_id: str
    node_key: PublicKey
    unit: Unit
    threshold: int
    stewards: tuple[PublicKey, ...]
    default_debit_limit: int
    default_credit_limit: int
    raw: dict[str, Any]

    @classmethod
    def from_json(cls, url: str, doc: dict[str, Any]) -> NodeInfo:
        return cls(
            url=url,
            name=doc["name"],
            ledger_id=doc["ledger_id"],
            node_key=PublicKey.parse(doc["node_key"]),
            unit=Unit(**doc["unit"]),
            threshold=doc["threshold"],
            stewards=tuple(PublicKey.parse(k) for k in doc["stewards"]),
            default_debit_limit=doc["defaults"]["debit_limit"],
            default_credit_limit=doc["defaults"]["credit_limit"],
            raw=doc,
        )

    @property
    def log_key(self) -> str:
        """The note verifier key the node's log is signed with (as ``/log/vkey`` serves it):
        fixed for the life of the ledger, by its id and the node key its genesis names."""
        return format_verifier_key(log_origin(self.ledger_id), 0x01, self.node_key.raw)


def transfer_body(
    key: SecretKey,
    ledger_id: str,
    payer: str,
    payee: str,
    amount: int,
    memo: str | None = None,
    valid_for_ms: int = 3600_000,
    transfer_id: str | None = None,
    now: int | None = None,
) -> dict[str, Any]:
    """A signed transfer request body, ready to POST (and to re-POST unchanged on retry)."""
    salt = os.urandom(16)
    msg = Transfer(
        ledger=ledger_id,
        id=transfer_id or new_id(),
        payer=payer,
        payee=payee,
        amount=amount,
        memo_hash=memo_hash(salt, memo) if memo else None,
        valid_until=(now if now is not None else now_ms()) + valid_for_ms,
    )
    body: dict[str, Any] = {"transfer": sign_message(msg, key).to_json()}
    if memo:
        body["memo"] = {"text": memo, "salt": salt.hex()}
    return body


class CanonicalBody(bytes):
    """A request body already in RFC 8785 form (spliced from signed messages' cached bytes):
    sent as it is, not encoded again."""


class TallyClient:
    def __init__(
        self,
        url: str,
        key: SecretKey | None = None,
        *,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        expect_key_id: str | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.key = key
        # A peer node's key id as a credit line pinned it: the node at the URL must have it,
        # else nothing is signed for it (the URL alone is never trusted).
        self.expect_key_id = expect_key_id
        self._session = session
        self._own_session = session is None
        self.timeout = timeout
        self.retries = retries
        self._info: NodeInfo | None = None

    async def __aenter__(self) -> TallyClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout)
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None and self._own_session:
            await self._session.close()
        self._session = None

    # --- transport ---------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        signed: bool = False,
        idempotent: bool = True,
        timeout: float | None = None,
    ) -> tuple[int, Any]:
        status, raw = await self._request_raw(method, path, body, signed=signed,
                                              idempotent=idempotent, timeout=timeout)
        try:
            doc = json.loads(raw) if raw else None
        except ValueError:
            doc = None
        return status, doc

    async def _request_raw(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        signed: bool = False,
        idempotent: bool = True,
        timeout: float | None = None,
    ) -> tuple[int, bytes]:
        """``timeout``, in seconds, for this request instead of the client's."""
        data = body if isinstance(body, CanonicalBody) else (
            canonical_json(body) if body is not None else b"")
        attempts = self.retries + 1 if idempotent else 1
        last: Exception | None = None
        for attempt in range(attempts):
            headers = {"Content-Type": "application/json"} if body is not None else {}
            if path.startswith("/v1/peer/"):  # node to node: in the version both speak
                headers[protocol_version.HEADER] = str(await self.protocol())
            if signed:
                headers.update(await self._sign_headers(method, path, data))
            try:
                async with self.session.request(
                    method, self.url + path, data=data if body is not None else None,
                    headers=headers,
                    # (Not ``timeout=None``: that would mean no timeout at all.)
                    timeout=aiohttp.ClientTimeout(total=timeout) if timeout
                    else self.session.timeout,
                ) as resp:
                    raw = await resp.read()
                    status = resp.status
                    retry_after = resp.headers.get("Retry-After")
            except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
                last = exc
                await asyncio.sleep(min(2.0, 0.2 * 2**attempt))
                continue
            if status in (429, 503) and attempt + 1 < attempts:
                await asyncio.sleep(min(5.0, float(retry_after or 1)))
                continue
            if status >= 500 and attempt + 1 < attempts:
                await asyncio.sleep(min(2.0, 0.2 * 2**attempt))
                continue
            if status >= 400:
                try:
                    doc = json.loads(raw)
                except ValueError:
                    doc = None
                if isinstance(doc, dict) and "code" in doc:
                    raise TallyError(doc["code"], doc.get("detail", ""), status, doc, self.url)
                raise TallyError("http_error", f"HTTP {status} from {self.url}{path}", status,
                                 url=self.url)
            return status, raw
        # A timeout has no message of its own: say how long we waited.
        reason = str(last) or (f"no answer within {timeout or self.timeout:g} s"
                               if isinstance(last, TimeoutError) else type(last).__name__)
        raise TallyError(
            "unreachable",
            f"could not reach the node at {self.url} ({reason}); "
            "check the URL and that the node is running", problem={"reason": reason},
            url=self.url,
        )

    async def protocol(self) -> int:
        """The node-to-node protocol version to speak with this node: the highest both speak
        (``protocol.version.choose``), from the ``protocols`` its info lists."""
        listed = (await self.info()).raw.get("protocols")
        theirs = [v for v in listed if type(v) is int] if isinstance(listed, list) else None
        version = protocol_version.choose(protocol_version.SUPPORTED, theirs)
        if version is None:
            raise TallyError(
                "unsupported_protocol",
                f"the node at {self.url} speaks node-to-node protocol version(s) {theirs}; "
                f"this one speaks {list(protocol_version.SUPPORTED)}: upgrade one of them",
            )
        return version

    async def _sign_headers(self, method: str, path: str, data: bytes) -> dict[str, str]:
        if self.key is None:
            raise TallyError("no_key", "this read must be signed: make a key with `tally key new`")
        info = await self.info()
        target = yarl.URL(self.url + path)  # what aiohttp will send, percent-encoded
        return sign_request(
            self.key,
            method=method,
            path=target.raw_path,
            query=target.raw_query_string,
            body=data,
            recipient_key_id=info.node_key.key_id,
            created=int(time.time()),
            nonce=b64url(os.urandom(16)),
        )

    # --- reads by path ------------------------------------------------------------------

    async def get_json(self, path: str, signed: bool = False) -> Any:
        return (await self._request("GET", path, signed=signed))[1]

    async def get_bytes(self, path: str, signed: bool = False) -> bytes:
        return (await self._request_raw("GET", path, signed=signed))[1]

    async def get_text(self, path: str, signed: bool = False) -> str:
        return (await self.get_bytes(path, signed)).decode("utf-8")

    # --- public reads ------------------------------------------------------------------

    async def info(self, refresh: bool = False) -> NodeInfo:
        if self._info is None or refresh:
            _, doc = await self._request("GET", "/v1/info")
            info = NodeInfo.from_json(self.url, doc)
            if self.expect_key_id is not None and info.node_key.key_id != self.expect_key_id:
                raise TallyError(
                    "wrong_node",
                    f"the node at {self.url} has key {info.node_key.key_id}, not "
                    f"{self.expect_key_id} as the credit line pinned it: check its address")
            self._info = info
        return self._info

    async def health(self) -> dict[str, Any]:
        return (await self._request("GET", "/v1/health"))[1]  # type: ignore[no-any-return]

    # --- members -----------------------------------------------------------------------

    async def submit_transfer(self, body: dict[str, Any]) -> dict[str, Any]:
        return (await self._request("POST", "/v1/transfers", body))[1]  # type: ignore[no-any-return]

    async def submit_batch(self, bodies: Sequence[dict[str, Any]]) -> dict[str, Any]:
        doc = (await self._request("POST", "/v1/transfers/batch", {"transfers": list(bodies)}))[1]
        return doc  # type: ignore[no-any-return]

    async def pay(
        self,
        payer: str,
        payee: str,
        amount: int,
        memo: str | None = None,
        valid_for_ms: int = 3600_000,
    ) -> dict[str, Any]:
        if self.key is None:
            raise TallyError("no_key", "paying needs the payer's key: `tally key new`")
        info = await self.info()
        body = transfer_body(self.key, info.ledger_id, payer, payee, amount, memo, valid_for_ms)
        return await self.submit_transfer(body)

    async def whoami(self) -> dict[str, Any]:
        return (await self._request("GET", "/v1/whoami", signed=True))[1]  # type: ignore[no-any-return]

    async def account(self, handle: str) -> dict[str, Any]:
        return (await self._request("GET", f"/v1/accounts/{handle}", signed=True))[1]  # type: ignore[no-any-return]

    async def accounts(self) -> list[dict[str, Any]]:
        return (await self._request("GET", "/v1/accounts", signed=True))[1]["accounts"]  # type: ignore[no-any-return]

    async def accounts_at(self) -> dict[str, Any]:
        """``{"accounts": [...], "log_size": n}``: every account, and the log size their
        balances reflect (``tally audit`` compares them with a replay of that many)."""
        _, doc = await self._request("GET", "/v1/accounts", signed=True)
        return doc  # type: ignore[no-any-return]

    async def history_page(
        self, handle: str, cursor: int | None = None, limit: int = 100
    ) -> dict[str, Any]:
        query = f"?limit={limit}" + (f"&cursor={cursor}" if cursor is not None else "")
        path = f"/v1/accounts/{handle}/history{query}"
        return (await self._request("GET", path, signed=True))[1]  # type: ignore[no-any-return]

    async def history(self, handle: str, limit: int | None = None) -> list[dict[str, Any]]:
        """Every posting of ``handle`` (newest first), following cursors page by page."""
        out: list[dict[str, Any]] = []
        cursor = None
        while True:
            page = await self.history_page(handle, cursor)
            out.extend(page["postings"])
            cursor = page["next"]
            if cursor is None or (limit is not None and len(out) >= limit):
                return out[:limit] if limit is not None else out

    async def event(self, event_id: str) -> dict[str, Any]:
        return (await self._request("GET", f"/v1/events/{event_id}", signed=True))[1]  # type: ignore[no-any-return]

    # --- other collectives --------------------------------------------------------------

    async def pay_remote(
        self,
        payer: str,
        payee: str,
        payee_node: PublicKey,
        amount: int,
        max_pay: int,
        valid_for_ms: int = 120_000,
        order_id: str | None = None,
        memo: str | None = None,
    ) -> dict[str, Any]:
        """Pay ``payee`` at the collective whose node key is ``payee_node``: ``amount`` in
        the payee's unit, spending at most ``max_pay`` of ours. Final: a receipt, or a
        TallyError with the refusal's code. Never retried here after a timeout: ask
        ``payment(order_id)`` instead (the order id is in the error's problem, if any).
        ``memo`` stays with the payer's node, beside its log (the order carries no memo)."""
        if self.key is None:
            raise TallyError("no_key", "paying needs the payer's key: `tally key new`")
        info = await self.info()
        order = PaymentOrder(info.ledger_id, order_id or new_id(), payer, payee, payee_node,
                             amount, max_pay, now_ms() + valid_for_ms)
        body: dict[str, Any] = sign_message(order, self.key).to_json()
        if memo:
            body = {"order": body, "memo": {"text": memo, "salt": os.urandom(16).hex()}}
        # The node answers within the time its info says (``payment_answer_seconds``): wait
        # that long, and a little more for the request to get there and back.
        answer = info.raw.get("payment_answer_seconds")
        wait = (answer if type(answer) is int and answer > 0 else valid_for_ms / 1000)
        try:
            _, receipt = await self._request("POST", "/v1/payments", body, idempotent=False,
                                             timeout=wait + TRANSIT_SECONDS)
            return receipt  # type: ignore[no-any-return]
        except TallyError as exc:
            exc.order_id = order.id  # so the caller can ask `payment(order_id)` later
            raise

    async def payment(self, order_id: str) -> dict[str, Any]:
        return (await self._request("GET", f"/v1/payments/{order_id}", signed=True))[1]  # type: ignore[no-any-return]

    async def routes(self, to: str, amount: int | None = None) -> dict[str, Any]:
        """Which collective ``to`` names (node key, key id, or the start of its name), and
        with ``amount`` (in its unit) the routes a payment to it would try, with their cost."""
        query = urlencode({"to": to, **({"amount": str(amount)} if amount is not None else {})})
        return (await self._request("GET", f"/v1/routes?{query}", signed=True))[1]  # type: ignore[no-any-return]

    async def lines_status(self) -> dict[str, Any]:
        """Reconcile every credit line now (see ``GET /v1/lines/status``)."""
        return (await self._request("GET", "/v1/lines/status", signed=True))[1]  # type: ignore[no-any-return]

    async def lines(self) -> dict[str, Any]:
        return (await self._request("GET", "/v1/lines", signed=True))[1]  # type: ignore[no-any-return]

    async def propose_line(
        self,
        peer_url: str,
        stewards: Sequence[SecretKey],
        our_limit: int,
        their_limit: int,
        rate_num: int = 1,
        rate_den: int = 1,
    ) -> dict[str, Any]:
        """Propose a credit line to the collective at ``peer_url``: we let them owe us up to
        ``our_limit`` (our unit); they let us owe them up to ``their_limit`` (theirs);
        ``rate_num/rate_den`` of their units per one of ours."""
        mine = await self.info()
        async with TallyClient(peer_url, retries=self.retries) as peer:
            theirs = await peer.info()
        line = Line(new_id(), 1, Party(mine.node_key, mine.ledger_id, mine.name, mine.unit),
                    Party(theirs.node_key, theirs.ledger_id, theirs.name, theirs.unit),
                    our_limit, their_limit, rate_num, rate_den, "active",
                    now_ms() + 7 * 24 * 3600_000)
        body = {"line": sign_message(line, *stewards).to_json(), "url": peer_url,
                "action": "propose"}
        return (await self._request("POST", "/v1/lines", body, idempotent=False))[1]  # type: ignore[no-any-return]

    async def change_line(
        self,
        line_id: str,
        stewards: Sequence[SecretKey],
        our_limit: int | None = None,
        their_limit: int | None = None,
        status: Literal["active", "suspended"] | None = None,
    ) -> dict[str, Any]:
        """Propose the next version of a line: new limits, or ``suspended``/``active``. It
        takes effect when the other collective's stewards accept it, like the first."""
        from protocol.messages import parse_message

        current = await self._current_line(line_id, stewards)
        line = parse_message(current["terms"], frozenset({"line"}))
        assert isinstance(line, Line)
        mine = await self.info()
        ours_is_a = line.a.node_key == mine.node_key
        a_limit, b_limit = line.a_limit, line.b_limit
        if our_limit is not None:
            a_limit, b_limit = (our_limit, b_limit) if ours_is_a else (a_limit, our_limit)
        if their_limit is not None:
            a_limit, b_limit = (a_limit, their_limit) if ours_is_a else (their_limit, b_limit)
        new = Line(line.id, line.version + 1, line.a, line.b, a_limit, b_limit, line.rate_num,
                   line.rate_den, status or line.status, now_ms() + 7 * 24 * 3600_000)
        body = {"line": sign_message(new, *stewards).to_json(), "url": current["peer_url"],
                "action": "propose"}
        return (await self._request("POST", "/v1/lines", body, idempotent=False))[1]  # type: ignore[no-any-return]

    async def accept_line(self, line_id: str, stewards: Sequence[SecretKey]) -> dict[str, Any]:
        """Accept a proposal this collective received, as its stewards."""
        listing = await self._lines_as(stewards)
        terms = next((p["terms"] for p in listing["proposals"] if p["id"] == line_id), None)
        if terms is None:
            raise TallyError("line_not_found", f"no proposal {line_id} here")
        from protocol.messages import parse_message

        line = parse_message(terms, frozenset({"line"}))
        body = {"line": sign_message(line, *stewards).to_json(), "url": "", "action": "accept"}
        return (await self._request("POST", "/v1/lines", body, idempotent=False))[1]  # type: ignore[no-any-return]

    async def _lines_as(self, stewards: Sequence[SecretKey]) -> dict[str, Any]:
        """``lines()`` read as the first of ``stewards`` (who may see the proposals)."""
        self_key = self.key
        self.key = stewards[0]
        try:
            return await self.lines()
        finally:
            self.key = self_key

    async def _current_line(self, line_id: str, stewards: Sequence[SecretKey]) -> dict[str, Any]:
        listing = await self._lines_as(stewards)
        current = next((x for x in listing["lines"] if x["id"] == line_id), None)
        if current is None:
            raise TallyError("line_not_found", f"no credit line {line_id} here")
        return current  # type: ignore[no-any-return]

    async def suspend_line(self, line_id: str, stewards: Sequence[SecretKey]) -> dict[str, Any]:
        """Suspend a line by this collective's stewards alone: no new payments either way.
        If it is suspended already, the node sends it to the peer again."""
        current = await self._current_line(line_id, stewards)
        line: Any = parse_message(current["terms"], frozenset({"line"}))
        assert isinstance(line, Line)
        if line.status == "active":
            line = Line(line.id, line.version + 1, line.a, line.b, line.a_limit, line.b_limit,
                        line.rate_num, line.rate_den, "suspended", now_ms() + 3600_000)
        body = {"line": sign_message(line, *stewards).to_json(), "url": "",
                "action": "suspend"}
        return (await self._request("POST", "/v1/lines", body, idempotent=False))[1]  # type: ignore[no-any-return]

    async def propose_settlement(self, line_id: str, stewards: Sequence[SecretKey],
                                 amount: int, reference: str = "") -> dict[str, Any]:
        """Propose a settlement out of band of ``amount`` (in our unit): whoever owes on the
        line now paid the other that much outside Tally. The peer's stewards accept it."""
        current = await self._current_line(line_id, stewards)
        line = parse_message(current["terms"], frozenset({"line"}))
        assert isinstance(line, Line)
        mine = await self.info()
        ours: Literal["a", "b"] = "a" if line.a.node_key == mine.node_key else "b"
        theirs: Literal["a", "b"] = "b" if ours == "a" else "a"
        balance = current["account"]["balance"] if current["account"] else 0
        if balance == 0:
            raise TallyError("exceeds_line_balance", "nothing is owed on this line: "
                             "there is nothing to settle")
        other_amount = line.convert(amount, ours)
        amount_a, amount_b = (amount, other_amount) if ours == "a" else (other_amount, amount)
        settlement = LineSettlement(new_id(), line.id, current["next_settlement"],
                                    ours if balance > 0 else theirs,
                                    amount_a, amount_b, reference, now_ms() + 7 * 24 * 3600_000)
        body = {"settlement": sign_message(settlement, *stewards).to_json(),
                "action": "propose"}
        return (await self._request("POST", "/v1/settlements", body, idempotent=False))[1]  # type: ignore[no-any-return]

    async def accept_settlement(self, settlement_id: str,
                                stewards: Sequence[SecretKey]) -> dict[str, Any]:
        """Accept a settlement the other collective proposed, as this collective's stewards."""
        listing = await self._lines_as(stewards)
        terms = next((x["terms"] for x in listing.get("settlements", [])
                      if x["id"] == settlement_id and x["by"] == "theirs"), None)
        if terms is None:
            raise TallyError("not_found", f"no settlement {settlement_id} proposed to us")
        settlement = parse_message(terms, frozenset({"line_settlement"}))
        body = {"settlement": sign_message(settlement, *stewards).to_json(), "action": "accept"}
        return (await self._request("POST", "/v1/settlements", body, idempotent=False))[1]  # type: ignore[no-any-return]

    async def disputes(self, include_resolved: bool = False) -> list[dict[str, Any]]:
        """The disputes with peers (a steward's signed read)."""
        path = "/v1/disputes" + ("?all=1" if include_resolved else "")
        return (await self.get_json(path, signed=True))["disputes"]  # type: ignore[no-any-return]

    async def resolve_dispute(self, dispute_id: str, note: str) -> dict[str, Any]:
        path = f"/v1/disputes/{dispute_id}/resolve"
        return (await self._request("POST", path, {"note": note}, signed=True,  # type: ignore[no-any-return]
                                    idempotent=False))[1]

    # --- stewards ----------------------------------------------------------------------

    async def erase_memos(self, handle: str) -> dict[str, Any]:
        """Erase the memos of every transfer ``handle`` took part in (a signed steward request)."""
        path = f"/v1/accounts/{handle}/erase-memos"
        return (await self._request("POST", path, {}, signed=True))[1]  # type: ignore[no-any-return]

    async def build_act(self, kind: str, valid_for_ms: int = 3600_000, **fields: Any) -> Message:
        info = await self.info()
        common = {"ledger": info.ledger_id, "id": new_id(), "valid_until": now_ms() + valid_for_ms}
        classes: dict[str, Any] = {
            "admit": Admit, "set_limits": SetLimits, "close": Close, "rekey": Rekey,
            "set_stewards": SetStewards,
        }
        return classes[kind](**common, **fields)  # type: ignore[no-any-return]

    async def submit_act(self, signed: Signed | dict[str, Any]) -> dict[str, Any]:
        body = signed.to_json() if isinstance(signed, Signed) else signed
        return (await self._request("POST", "/v1/acts", body))[1]  # type: ignore[no-any-return]

    async def act(self, kind: str, stewards: Sequence[SecretKey], **fields: Any) -> dict[str, Any]:
        msg = await self.build_act(kind, **fields)
        return await self.submit_act(sign_message(msg, *stewards))

    async def admit(
        self,
        handle: str,
        key: PublicKey,
        stewards: Sequence[SecretKey],
        debit_limit: int | None = None,
        credit_limit: int | None = None,
    ) -> dict[str, Any]:
        info = await self.info()
        return await self.act(
            "admit",
            stewards,
            handle=handle,
            key=key,
            debit_limit=info.default_debit_limit if debit_limit is None else debit_limit,
            credit_limit=info.default_credit_limit if credit_limit is None else credit_limit,
        )
