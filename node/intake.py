"""Reading transfer submissions: a body's transfers parsed and their signatures checked in one
step, which runs in a signature worker (``node.sigworker``) rather than on the event loop.

Layer: node, without asyncio or aiohttp (a worker process imports it). ``POST /v1/transfers``
and ``POST /v1/transfers/batch`` hand their raw body to ``read_transfers`` (in a worker), which
answers with a compact description of every item; ``rebuild`` turns that back into the
values the handlers and the writer use. A refusal of the whole body (not JSON, the wrong
shape, too many transfers) is carried back and raised on the loop as the same
``CanonicalError`` or ``MessageError`` parsing there would raise, so clients see exactly the
same problems as before.

Why: parsing a transfer strictly (RFC 8785 subset, every field checked) costs about a third of
the event loop's work per transfer in a batch; done beside the signature check, in the worker
that already holds the transfer's bytes, it runs on another core. The answer is ``marshal``
data (plain tuples of str, int, bytes), which the loop reads back in a few microseconds an item.
The worker and the node are the same interpreter (``sys.executable``), so ``marshal``'s format
agrees; nothing from outside is ever unmarshalled.
"""

from __future__ import annotations

import marshal
import traceback
from dataclasses import dataclass
from typing import Any, NamedTuple

from crypto.canonical import CanonicalError, canonical_json, parse_json
from node.sigworker import open_signed
from protocol.codes import ResultCode
from protocol.ledger import SigCheck, memo_hash
from protocol.messages import (
    HEX32_RE,
    MAX_MEMO_BYTES,
    MessageError,
    Signed,
    Transfer,
    check_fields,
    parse_signed,
    signed_transfer,
    text,
)

TRANSFER_TYPES = frozenset({"transfer"})


@dataclass
class Memo:
    text: str
    salt: bytes


class TransferItem(NamedTuple):  # (a tuple: made for every transfer, and cheaply)
    signed: Signed
    memo: Memo | None


MEMO_SPEC = {
    "text": text(None, MAX_MEMO_BYTES),
    "salt": text(HEX32_RE, 32, "must be 32 lowercase hex digits (16 random bytes)"),
}


def parse_transfer_item(obj: Any, where: str) -> TransferItem:
    """One ``{"transfer": Signed transfer, "memo"?: {"text", "salt"}}``, checked strictly."""
    if type(obj) is dict and len(obj) == 1 and "transfer" in obj:  # no memo: the usual case
        signed = parse_signed(obj["transfer"], TRANSFER_TYPES, f"{where}.transfer")
        assert isinstance(signed.msg, Transfer)
        return TransferItem(signed, None)
    fields = check_fields(
        obj,
        {"transfer": lambda f, v: v, "memo": lambda f, v: v},
        where,
        optional_fields=frozenset({"memo"}),
    )
    signed = parse_signed(fields["transfer"], TRANSFER_TYPES, f"{where}.transfer")
    msg = signed.msg
    assert isinstance(msg, Transfer)
    memo = None
    if fields["memo"] is not None:
        memo = parse_memo(fields["memo"], f"{where}.memo")
        if msg.memo_hash != memo_hash(memo.salt, memo.text):
            raise MessageError(
                ResultCode.invalid_field,
                f"{where}.memo does not match the memo_hash the payer signed",
                f"{where}.memo",
            )
    return TransferItem(signed, memo)


def parse_memo(obj: Any, where: str) -> Memo:
    """A memo ``{"text", "salt"}``, checked strictly (as a transfer's, or a payment's)."""
    m = check_fields(obj, MEMO_SPEC, where)
    if len(m["text"].encode("utf-8")) > MAX_MEMO_BYTES:
        raise MessageError(
            ResultCode.invalid_field, f"memo may be at most {MAX_MEMO_BYTES} bytes", where
        )
    return Memo(m["text"], bytes.fromhex(m["salt"]))


def parse_batch(body: bytes, max_batch: int) -> list[TransferItem | MessageError]:
    """The items of a ``POST /v1/transfers/batch`` body, in order: each parsed, or the
    ``MessageError`` refusing it alone. Raises for a body refused whole."""
    fields = check_fields(parse_json(body), {"transfers": lambda f, v: v}, "body")
    raw = fields["transfers"]
    if not isinstance(raw, list) or not raw:
        raise MessageError(ResultCode.invalid_field, "body.transfers must be a non-empty list")
    if len(raw) > max_batch:
        raise MessageError(
            ResultCode.batch_too_large, f"a batch may hold at most {max_batch} transfers"
        )
    items: list[TransferItem | MessageError] = []
    for i, obj in enumerate(raw):
        try:
            items.append(parse_transfer_item(obj, f"transfers[{i}]"))
        except MessageError as exc:
            items.append(exc)
    return items


# --- the worker's answer ------------------------------------------------------------------
#
# ("refused", kind, code, message, field): the whole body is refused; kind is "canonical"
#     (a CanonicalError) or "message" (a MessageError).
# ("failed", description): parsing raised something else (a bug): the request fails.
# ("items", [item, ...]): one per transfer, in order, each one of
#     (code, message, field)                  refused alone (a MessageError)
#     (ledger, id, payer, payee, amount, memo_hash, valid_until, key, sig, signed bytes,
#      canonical bytes, verifies, memo text or None, memo salt or None)
#                                             a transfer with one signature
#     (canonical item JSON,)                  anything else (several signatures): parsed and
#                                             checked again on the loop, the general way


def read_transfers(body: bytes, max_batch: int) -> bytes:
    """Parse ``body`` and check each transfer's signature: the answer ``rebuild`` reads.
    ``max_batch`` 0 means a single transfer (``POST /v1/transfers``), else a batch body."""
    try:
        if max_batch:
            parsed = parse_batch(body, max_batch)
        else:
            parsed = [parse_transfer_item(parse_json(body), "body")]
    except CanonicalError as exc:
        return marshal.dumps(("refused", "canonical", exc.code, exc.message, None))
    except MessageError as exc:
        return marshal.dumps(("refused", "message", exc.code.value, exc.message, exc.field))
    except Exception as exc:  # a bug, not a refusal: the node answers 500, the worker lives on
        traceback.print_exc()
        return marshal.dumps(("failed", f"{exc.__class__.__name__}: {exc}"))
    singles = [p.signed for p in parsed if not isinstance(p, MessageError)
               and len(p.signed.sigs) == 1]
    verdicts = iter(open_signed([(s.sigs[0].sig, s.sigs[0].key.raw, s.signed_bytes)
                                 for s in singles]))
    items: list[tuple[Any, ...]] = []
    for p in parsed:
        if isinstance(p, MessageError):
            items.append((p.code.value, p.message, p.field))
            continue
        signed, memo = p.signed, p.memo
        if len(signed.sigs) != 1:
            item: dict[str, Any] = {"transfer": signed.to_json()}
            if memo is not None:
                item["memo"] = {"text": memo.text, "salt": memo.salt.hex()}
            items.append((canonical_json(item),))
            continue
        t = signed.msg
        assert isinstance(t, Transfer)
        sig = signed.sigs[0]
        items.append((
            t.ledger, t.id, t.payer, t.payee, t.amount, t.memo_hash, t.valid_until,
            sig.key.text, sig.sig, signed.signed_bytes, signed.canonical, next(verdicts),
            None if memo is None else memo.text, None if memo is None else memo.salt,
        ))
    return marshal.dumps(("items", items))


Slow = bytes  # an item's canonical JSON, to parse and check on the loop
Read = tuple[TransferItem, SigCheck] | MessageError | Slow

_BAD: SigCheck = (frozenset(), False)


def rebuild(answer: bytes) -> list[Read]:
    """The items ``read_transfers`` described: (item, its signature check), the
    ``MessageError`` refusing it, or (rarely) its JSON to parse again. Raises the error
    that refused the whole body."""
    data = marshal.loads(answer)
    if data[0] == "failed":
        raise RuntimeError(f"reading the transfers failed: {data[1]}")
    if data[0] == "refused":
        _, kind, code, message, field = data
        if kind == "canonical":
            raise CanonicalError(code, message)
        raise MessageError(ResultCode(code), message, field)
    out: list[Read] = []
    checks: dict[str, SigCheck] = {}  # one check per signer: a batch's keys repeat
    for item in data[1]:
        if len(item) == 14:
            signed = signed_transfer(*item[:11])
            if item[11]:
                check = checks.get(item[7])
                if check is None:
                    check = checks[item[7]] = (frozenset((signed.sigs[0].key,)), True)
            else:
                check = _BAD
            memo = None if item[12] is None else Memo(item[12], item[13])
            out.append((TransferItem(signed, memo), check))
        elif len(item) == 3:
            out.append(MessageError(ResultCode(item[0]), item[1], item[2]))
        else:
            out.append(item[0])
    return out
