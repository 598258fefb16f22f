"""Shared Hypothesis strategies, and the small builders they need, for tests of crypto/ and protocol/.

Keys come from 32-byte seeds that Hypothesis draws (or from a fixed label, for unit tests), so a
failing example shrinks to a readable seed and replays exactly: nothing here reads the clock
or ``os.urandom``.
"""

from __future__ import annotations

import hashlib
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from hypothesis import strategies as st

from crypto.canonical import MAX_SAFE_INTEGER, JSONValue
from crypto.keys import PublicKey, SecretKey
from protocol.ledger import LedgerState, new_state
from protocol.messages import (
    Admit,
    Close,
    Genesis,
    LogEntry,
    Rekey,
    SetLimits,
    SetStewards,
    Signed,
    Transfer,
    Unit,
    sign_message,
)

# --- keys ----------------------------------------------------------------------------------

seeds = st.binary(min_size=32, max_size=32)
secret_keys = seeds.map(SecretKey)


def key_for(label: str) -> SecretKey:
    """A fixed key named by ``label``, the same in every run."""
    return SecretKey(hashlib.sha256(b"tally test key " + label.encode()).digest())


# --- fields of messages ----------------------------------------------------------------------

_HANDLE_FIRST = string.ascii_lowercase + string.digits
handles = st.builds(
    lambda first, rest: first + rest,
    st.sampled_from(_HANDLE_FIRST),
    st.text(alphabet=_HANDLE_FIRST + "_.-", max_size=31),
)
event_ids = st.binary(min_size=16, max_size=16).map(bytes.hex)  # a client's random 128-bit id
safe_integers = st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER)
amounts = safe_integers  # what a transfer may say; the ledger decides which are acceptable
small_amounts = st.integers(-5, 2_000)  # around typical limits: zero, negative, over the limit

# --- JSON in Tally's subset --------------------------------------------------------------------

_json_chars = st.one_of(
    st.characters(max_codepoint=0x1F),  # control characters: each needs an escape
    st.sampled_from('"\\/\x7f\u2028\u2029'),  # escaped, and look-alikes that are not escaped
    st.characters(min_codepoint=0x1F300, max_codepoint=0x1FAFF),  # emoji: surrogate pairs in UTF-16
    st.characters(codec="utf-8"),  # any Unicode scalar value: no lone surrogates
)
json_strings = st.text(alphabet=_json_chars, max_size=20)
json_keys = st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=8)
json_scalars = st.one_of(st.none(), st.booleans(), safe_integers, json_strings)
json_values: st.SearchStrategy[JSONValue] = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5), st.dictionaries(json_keys, children, max_size=5)
    ),
    max_leaves=25,
)
json_objects: st.SearchStrategy[dict[str, JSONValue]] = st.dictionaries(
    json_keys, json_values, min_size=1, max_size=5
)

# --- a collective's ledger ---------------------------------------------------------------------

T0 = 1_700_000_000_000  # node time, ms since the epoch
DAY_MS = 24 * 3600 * 1000
HOURS = Unit("HOUR", "hours", 60)


@dataclass
class Collective:
    """A ledger in memory with the keys that act on it."""

    state: LedgerState
    genesis: LogEntry
    node_key: SecretKey
    stewards: tuple[SecretKey, ...]
    members: dict[str, SecretKey] = field(default_factory=dict)
    _counter: int = 0

    @property
    def ledger(self) -> str:
        return self.state.ledger_id

    def fresh_id(self) -> str:
        """A new event id (deterministic, unlike a client's, so failures replay)."""
        self._counter += 1
        return hashlib.sha256(f"{self.ledger} event {self._counter}".encode()).hexdigest()[:32]


def new_collective(
    stewards: Sequence[SecretKey] = (), threshold: int = 1, now: int = T0
) -> Collective:
    """A new ledger whose signed genesis names ``stewards`` (default: one) and ``threshold``."""
    node_key = key_for("node")
    stewards = tuple(stewards) or (key_for("steward"),)
    genesis = Genesis(
        name="Test Co-op",
        unit=HOURS,
        node_key=node_key.public,
        stewards=tuple(k.public for k in stewards),
        threshold=threshold,
        created=now,
    )
    entry = LogEntry(now, sign_message(genesis, node_key, *stewards[:threshold]))
    state = new_state(entry.payload, entry.encode())
    return Collective(state, entry, node_key, stewards)


def transfer(
    c: Collective,
    payer: str,
    payee: str,
    amount: int,
    *,
    key: SecretKey | None = None,
    id: str | None = None,
    valid_until: int = T0 + 3600_000,
    ledger: str | None = None,
) -> Signed:
    """A transfer signed by ``key`` (default: the payer's key in ``c.members``)."""
    msg = Transfer(
        ledger=ledger or c.ledger,
        id=id or c.fresh_id(),
        payer=payer,
        payee=payee,
        amount=amount,
        memo_hash=None,
        valid_until=valid_until,
    )
    return sign_message(msg, key or c.members[payer])


def _by_stewards(c: Collective, msg: Admit | SetLimits | Close | Rekey | SetStewards,
                 signers: Sequence[SecretKey] | None) -> Signed:
    """Sign a steward act; by default with the first steward alone."""
    return sign_message(msg, *(c.stewards[:1] if signers is None else signers))


def admit(
    c: Collective,
    handle: str,
    key: PublicKey,
    debit_limit: int = 100,
    credit_limit: int = 100,
    *,
    signers: Sequence[SecretKey] | None = None,
    id: str | None = None,
    valid_until: int = T0 + 3600_000,
    ledger: str | None = None,
) -> Signed:
    msg = Admit(ledger or c.ledger, id or c.fresh_id(), valid_until, handle, key,
                debit_limit, credit_limit)
    return _by_stewards(c, msg, signers)


def set_limits(
    c: Collective,
    handle: str,
    debit_limit: int,
    credit_limit: int,
    *,
    signers: Sequence[SecretKey] | None = None,
    id: str | None = None,
    valid_until: int = T0 + 3600_000,
) -> Signed:
    msg = SetLimits(c.ledger, id or c.fresh_id(), valid_until, handle, debit_limit, credit_limit)
    return _by_stewards(c, msg, signers)


def close(
    c: Collective,
    handle: str,
    *,
    signers: Sequence[SecretKey] | None = None,
    id: str | None = None,
    valid_until: int = T0 + 3600_000,
) -> Signed:
    return _by_stewards(c, Close(c.ledger, id or c.fresh_id(), valid_until, handle), signers)


def rekey(
    c: Collective,
    handle: str,
    key: PublicKey,
    *,
    signers: Sequence[SecretKey] | None = None,
    id: str | None = None,
    valid_until: int = T0 + 3600_000,
) -> Signed:
    return _by_stewards(c, Rekey(c.ledger, id or c.fresh_id(), valid_until, handle, key), signers)


def set_stewards(
    c: Collective,
    stewards: Sequence[PublicKey],
    threshold: int,
    *,
    signers: Sequence[SecretKey] | None = None,
    id: str | None = None,
    valid_until: int = T0 + 3600_000,
) -> Signed:
    msg = SetStewards(c.ledger, id or c.fresh_id(), valid_until, tuple(stewards), threshold)
    return _by_stewards(c, msg, signers)


@st.composite
def signed_transfers(
    draw: st.DrawFn,
    state: LedgerState,
    keys: Mapping[str, SecretKey],
    now: int,
    amounts: st.SearchStrategy[int] = small_amounts,
    window_ms: int = DAY_MS,
) -> Signed:
    """Transfers between the members of ``state`` whose keys are in ``keys``, signed by the payer,
    for this ledger, within the validity window. Payer and payee may coincide and the amount
    may be anything ``amounts`` gives: whether the ledger accepts it is for the test to say."""
    handles_with_keys = sorted(h for h in state.accounts if h in keys)
    payer = draw(st.sampled_from(handles_with_keys))
    payee = draw(st.sampled_from(sorted(state.accounts)))
    msg = Transfer(
        ledger=state.ledger_id,
        id=draw(event_ids),
        payer=payer,
        payee=payee,
        amount=draw(amounts),
        memo_hash=draw(st.none() | st.binary(min_size=32, max_size=32).map(bytes.hex)),
        valid_until=draw(st.integers(now, now + window_ms)),
    )
    return sign_message(msg, keys[payer])
