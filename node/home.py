"""The member's home directory: their key, and what the client remembers between runs.

Layer: node. ``~/.tally`` by default (or ``$TALLY_HOME``, or ``--home``)::

    member.key      the member's Ed25519 key (mode 0600), made by `tally key new`
    client.json     the node URL last used (so it need not be typed again), and for each node
                    URL the ledger met there: its id, name and log key, and the member's
                    handle in it
    logs/<ledger id>/   what `tally verify` keeps about that ledger's log (``node.verify``)

The ledger a URL serves is pinned on first contact, like the log key: a node at that URL
that later serves another ledger (a fresh one, or another collective's) or the same ledger
under another log key is refused until the member accepts the new ledger explicitly
(``check_ledger``). Homes written before URLs had their ledger recorded (only ``node`` and
``handle`` in client.json) are read as they are: the ledgers pinned under ``logs/`` stand for
the last-used node's until its first record is written.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crypto.keys import SecretKey, read_key_file, write_key_file

MEMBER_KEY = "member.key"
CLIENT_FILE = "client.json"
DEFAULT_NODE = "http://127.0.0.1:7300"
LEDGERS = "ledgers"  # client.json: {url: {"ledger_id", "name", "log_key", "handle"?}}
SHORT = 16  # how much of a ledger id messages show (and the least `--accept-ledger` needs)


def default_home() -> Path:
    if env := os.environ.get("TALLY_HOME"):
        return Path(env)
    return Path.home() / ".tally"


@dataclass(frozen=True)
class LedgerSeen:
    """A ledger as a node's ``/v1/info`` presents it: its id, name and log key."""

    ledger_id: str
    name: str
    log_key: str


class LedgerChanged(Exception):
    """The node at ``url`` serves a ledger other than the one this home used there.

    ``before`` is what the home expected (ledger ids, one unless an old home pinned several;
    the name if known); ``same_id`` means the ledger id is the one expected but the log key is
    not, which never happens to an honest ledger (its log key is fixed by its genesis)."""

    def __init__(self, url: str, served: LedgerSeen, before: tuple[str, ...],
                 before_name: str | None, pinned_key: str | None = None) -> None:
        super().__init__(f"the node at {url} serves ledger {served.ledger_id}, "
                         f"not {', '.join(before)}")
        self.url = url
        self.served = served
        self.before = before
        self.before_name = before_name
        self.pinned_key = pinned_key

    @property
    def same_id(self) -> bool:
        return self.before == (self.served.ledger_id,)


class AcceptMismatch(Exception):
    """``--accept-ledger`` named a ledger the node does not serve."""


class Home:
    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def key_path(self) -> Path:
        return self.path / MEMBER_KEY

    def has_key(self) -> bool:
        return self.key_path.exists()

    def new_key(self) -> SecretKey:
        key = SecretKey.from_random(os.urandom(32))
        self.path.mkdir(parents=True, exist_ok=True)
        os.chmod(self.path, 0o700)
        write_key_file(self.key_path, "tally-member", key)
        return key

    def key(self) -> SecretKey:
        return read_key_file(self.key_path)[1]

    def settings(self) -> dict[str, Any]:
        path = self.path / CLIENT_FILE
        if not path.exists():
            return {}
        try:
            doc = json.loads(path.read_text())
        except ValueError:
            return {}
        return doc if isinstance(doc, dict) else {}

    def _write(self, doc: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.path / (CLIENT_FILE + ".tmp")
        tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.path / CLIENT_FILE)

    def remember(self, **values: Any) -> None:
        doc = self.settings()
        changed = {k: v for k, v in values.items() if v is not None and doc.get(k) != v}
        if not changed:
            return
        doc.update(changed)
        self._write(doc)

    # --- the ledger met at each node URL -------------------------------------------------

    def _records(self, doc: dict[str, Any]) -> dict[str, Any]:
        records = doc.get(LEDGERS)
        return records if isinstance(records, dict) else {}

    def ledger_at(self, url: str) -> dict[str, Any] | None:
        """What this home recorded about the node at ``url``, if it met it before."""
        record = self._records(self.settings()).get(url)
        if not isinstance(record, dict) or not isinstance(record.get("ledger_id"), str):
            return None
        return record

    def pinned_log_key(self, ledger_id: str) -> str | None:
        """The log key `tally verify` pinned for ``ledger_id`` (``node.verify.LogState``)."""
        from node.verify import LogState

        pinned = LogState(self.path, ledger_id).read("vkey")
        return pinned.decode().strip() if pinned is not None else None

    def pinned_ledgers(self) -> list[str]:
        """Every ledger whose log key this home pinned, whichever URL served it."""
        from node.verify import LOGS_DIR

        logs = self.path / LOGS_DIR
        if not logs.is_dir():
            return []
        return sorted(d.name for d in logs.iterdir() if self.pinned_log_key(d.name))

    def handle_at(self, url: str) -> str | None:
        record = self.ledger_at(url)
        handle = record.get("handle") if record else None
        return handle if isinstance(handle, str) and handle else None

    def remember_handle(self, url: str, handle: str) -> None:
        doc = self.settings()
        record = self._records(doc).get(url)
        if not isinstance(record, dict) or record.get("handle") == handle:
            return
        record["handle"] = handle
        self._write(doc)

    def check_ledger(self, url: str, served: LedgerSeen, *, accept: str | None = None,
                     record: bool = True) -> str:
        """Check that the node at ``url`` serves the ledger this home used there, and record it
        on first contact (unless ``record`` is false). Return ``"first"``, ``"same"`` or
        ``"accepted"``.

        ``accept`` (the start of a ledger id, from ``--accept-ledger``) makes the ledger the
        node serves the one this home uses at ``url`` from now on, if its id starts so; a
        ledger whose id is the one expected but whose log key is not is never accepted.
        Raises ``LedgerChanged`` or ``AcceptMismatch``."""
        if accept is not None and not (
                len(accept) >= SHORT and served.ledger_id.startswith(accept.lower())):
            raise AcceptMismatch(accept)
        doc = self.settings()
        records = self._records(doc)
        known = self.ledger_at(url)
        legacy_handle = None
        if known is not None:
            before: tuple[str, ...] = (known["ledger_id"],)
            before_name, before_key = known.get("name"), known.get("log_key")
        elif (pinned := self.pinned_log_key(served.ledger_id)) is not None:
            before, before_name, before_key = (served.ledger_id,), served.name, pinned
        elif doc.get("node") == url and (old := self.pinned_ledgers()):
            # A home from before URLs had their ledger recorded, pointed at this URL, with
            # receipts from other ledgers only: the node here replaced the one it used.
            before, before_name, before_key = tuple(old), None, None
        else:
            before, before_name, before_key = (), None, None
        if doc.get("node") == url and isinstance(doc.get("handle"), str):
            legacy_handle = doc["handle"]  # the handle an old home cached for its node
        if before == (served.ledger_id,) and before_key == served.log_key:
            outcome = "same"
        elif not before:
            outcome = "first"
        elif before != (served.ledger_id,) and accept is not None:
            outcome, legacy_handle = "accepted", None
        else:
            raise LedgerChanged(url, served, before, before_name,
                                before_key if before == (served.ledger_id,) else None)
        if record and (known is None or outcome == "accepted"):
            entry: dict[str, Any] = {"ledger_id": served.ledger_id, "name": served.name,
                                     "log_key": served.log_key}
            if legacy_handle:
                entry["handle"] = legacy_handle
            records[url] = entry
            doc[LEDGERS] = records
            self._write(doc)
        return outcome
