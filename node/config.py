"""Node configuration: embedded defaults, overridden by ``<data dir>/config.toml``.

Layer: node. A node starts with no configuration at all; every setting here has a default
that is safe for a small collective on one machine. ``config.example.toml`` documents every
setting and is checked against ``Config`` by a test, so the two cannot drift apart.

Nothing here decides who may act: stewards and their threshold live in the signed genesis
entry and steward acts, never in a file an operator can edit.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

CONFIG_FILE = "config.toml"


class ConfigError(ValueError):
    """A config file that cannot be used; the message says which setting and why."""


LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class NodeSettings:
    listen: str = "127.0.0.1:7300"  # HOST:PORT the HTTP API binds to
    public_url: str = ""  # the URL members and peers use, if not http://<listen>
    log_level: str = "info"
    # Processes that parse transfers and check signatures beside the event loop; 0: on the
    # loop itself.
    signature_workers: int = 2


@dataclass(frozen=True)
class LedgerSettings:
    default_debit_limit: int = 1200  # in the smallest unit: 20 hours of minutes
    default_credit_limit: int = 1200
    max_valid_window_seconds: int = 24 * 3600  # how far ahead valid_until may be
    books: str = "open"  # "open": members read all accounts; "private": only their own


@dataclass(frozen=True)
class ApiSettings:
    max_body_bytes: int = 64 * 1024  # one transfer or act
    max_batch_body_bytes: int = 2 * 1024 * 1024  # a batch of up to max_batch transfers
    max_batch: int = 1000
    request_skew_seconds: int = 300  # how far a signed read's time may be from ours
    history_page_max: int = 500
    rate_per_key_per_second: float = 100.0  # sustained requests per member key
    rate_burst: int = 400  # short bursts above that rate
    max_queue: int = 20000  # events waiting for the writer before we answer 503
    # A connection that has not sent a whole request's headers this long after connecting,
    # or after its last answer, is closed (slow clients holding connections open).
    idle_timeout_seconds: int = 15
    # A request's whole body must arrive within this long of the node starting to read it,
    # else 408 request_timeout and the connection is closed (slow bodies hold a handler).
    body_timeout_seconds: int = 10
    # Most connections open at once from one client address; past it a new connection is
    # closed at once, unread. Above aiohttp's default client pool (100), so one node's
    # TallyClient to another never meets it. 0: no cap (behind a reverse proxy, every
    # client is the proxy).
    max_connections_per_client: int = 128


@dataclass(frozen=True)
class StorageSettings:
    synchronous: str = "FULL"  # SQLite synchronous: FULL (default, survives power loss) or NORMAL
    max_group_commit: int = 2000  # most events committed in one transaction


@dataclass(frozen=True)
class LogSettings:
    checkpoint_delay_ms: int = 1000  # every entry is covered by a checkpoint within this
    public_entries: bool = False  # serve entry bundles to anyone (tally demo turns this on)


@dataclass(frozen=True)
class FederationSettings:
    # Each hop's expiry is at least this much shorter than the one before: a round trip, plus
    # twice the allowed clock skew, plus the time to commit. Peers whose clock is off by more
    # than a quarter of it are refused.
    margin_ms: int = 8000
    payment_timeout_ms: int = 30000  # how long a payment may stay in flight, end to end
    quote_ttl_ms: int = 60000  # how long a quote (and its fulfilment) stays valid
    peer_timeout_ms: int = 5000  # one HTTP request to a peer
    # Risk per line: most value (in our unit) and most payments held at once, longest hold.
    max_in_flight_value: int = 1_000_000
    max_in_flight_count: int = 100
    max_hold_ms: int = 120000
    # Payments through other collectives: at most this many lines on a path, this many
    # paths tried per payment; how often to ask peers which lines they know.
    max_hops: int = 4
    max_routes: int = 3
    graph_refresh_ms: int = 30000
    # How often to exchange signed statements of each line with its other collective.
    statement_interval_ms: int = 60000
    # Requests per second from one peer node's key, and the burst allowed above it.
    peer_rate_per_second: float = 50.0
    peer_rate_burst: int = 200


ANSWER_SLACK_MS = 5000  # for a payment's last answer to come back and be logged


def payment_answer_ms(fed: FederationSettings) -> int:
    """The longest ``POST /v1/payments`` waits before it answers (a receipt, a refusal, or
    202 pending; ``Federation.pay`` keeps to it): a quote (and the peer's info first), the
    longest hold it makes on a path of ``max_hops``, then one more peer request and
    ``ANSWER_SLACK_MS`` for the last answer to come back and be logged. A client waits
    for at least this long (``GET /v1/info`` says it as ``payment_answer_seconds``)."""
    hold = min(fed.max_hold_ms, fed.payment_timeout_ms + (fed.max_hops - 1) * fed.margin_ms)
    return 3 * fed.peer_timeout_ms + hold + ANSWER_SLACK_MS


@dataclass(frozen=True)
class GossipSettings:
    bootstrap: list[str] = field(default_factory=list)  # URLs of nodes to learn the others from
    period_ms: int = 3000  # one round of exchanges this often, give or take the jitter
    jitter_ms: int = 1000
    fanout: int = 3  # nodes exchanged with per round
    timeout_ms: int = 2000  # one exchange with one node, end to end
    refresh_seconds: int = 60  # sign a newer record of ourselves at least this often
    stale_after_seconds: int = 600  # a node unheard-of this long is stale (kept, not used)
    forget_after_seconds: int = 7 * 24 * 3600  # and dropped after this long
    max_message_bytes: int = 1024 * 1024  # largest gossip request body accepted
    max_update_bytes: int = 256 * 1024  # records, checkpoints and evidence sent per message
    max_digest_entries: int = 20000  # largest digest accepted (entries)


@dataclass(frozen=True)
class WitnessSettings:
    # Pushing each new checkpoint to the line peers' witnesses (C2SP tlog-witness): one
    # request to one witness, and how soon one that failed or is behind is tried again.
    timeout_ms: int = 5000
    retry_ms: int = 30000


@dataclass(frozen=True)
class Config:
    node: NodeSettings = field(default_factory=NodeSettings)
    ledger: LedgerSettings = field(default_factory=LedgerSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    log: LogSettings = field(default_factory=LogSettings)
    federation: FederationSettings = field(default_factory=FederationSettings)
    gossip: GossipSettings = field(default_factory=GossipSettings)
    witness: WitnessSettings = field(default_factory=WitnessSettings)

    def validate(self) -> None:
        if not 0 <= self.node.signature_workers <= 64:
            raise ConfigError("[node] signature_workers must be between 0 and 64")
        if self.node.log_level.lower() not in LOG_LEVELS:
            raise ConfigError(f"[node] log_level must be one of {', '.join(LOG_LEVELS)}, "
                              f"not {self.node.log_level!r}")
        url = self.node.public_url
        if url and not _is_http_url(url):
            raise ConfigError(f"[node] public_url must be an http:// or https:// URL with a "
                              f"host (e.g. https://tally.example.org), not {url!r}; leave it "
                              '"" to use http://<listen>')
        if self.ledger.books not in ("open", "private"):
            raise ConfigError('[ledger] books must be "open" or "private"')
        if self.storage.synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise ConfigError("[storage] synchronous must be FULL, EXTRA or NORMAL")
        if self.ledger.default_debit_limit < 0 or self.ledger.default_credit_limit < 0:
            raise ConfigError("[ledger] default limits must be zero or more")
        if self.api.idle_timeout_seconds < 1:
            raise ConfigError("[api] idle_timeout_seconds must be at least 1")
        if self.api.body_timeout_seconds < 1:
            raise ConfigError("[api] body_timeout_seconds must be at least 1")
        if self.api.max_connections_per_client < 0:
            raise ConfigError("[api] max_connections_per_client must be 0 (no cap) or more")
        if self.api.rate_per_key_per_second <= 0 or self.federation.peer_rate_per_second <= 0:
            raise ConfigError("rate limits ([api] rate_per_key_per_second, [federation] "
                              "peer_rate_per_second) must be more than zero")
        if not 1 <= self.api.max_batch <= 10000:
            raise ConfigError("[api] max_batch must be between 1 and 10000")
        if not 1 <= self.api.history_page_max <= 10000:
            raise ConfigError("[api] history_page_max must be between 1 and 10000")
        parse_listen(self.node.listen)
        fed = self.federation
        if fed.margin_ms < 1000:
            raise ConfigError("[federation] margin_ms must be at least 1000: a round trip, "
                              "twice the clock skew allowed and a commit must fit in it")
        if fed.payment_timeout_ms < 2 * fed.margin_ms:
            raise ConfigError("[federation] payment_timeout_ms must be at least twice margin_ms")
        if fed.max_hold_ms < fed.payment_timeout_ms:
            raise ConfigError("[federation] max_hold_ms must be at least payment_timeout_ms")
        if not 1 <= fed.max_hops <= 8 or fed.max_routes < 1 or fed.graph_refresh_ms < 1000 \
                or fed.statement_interval_ms < 1000:
            raise ConfigError("[federation] max_hops must be 1 to 8, max_routes at least 1, "
                              "graph_refresh_ms and statement_interval_ms at least 1000")
        g = self.gossip
        if not all(isinstance(u, str) and u.startswith(("http://", "https://"))
                   for u in g.bootstrap):
            raise ConfigError("[gossip] bootstrap must list http:// or https:// URLs")
        if g.period_ms < 100 or not 0 <= g.jitter_ms < g.period_ms:
            raise ConfigError("[gossip] period_ms must be at least 100 and jitter_ms below it")
        if not 0 <= g.fanout <= 20:
            raise ConfigError("[gossip] fanout must be between 0 and 20")
        if g.stale_after_seconds > g.forget_after_seconds:
            raise ConfigError("[gossip] stale_after_seconds must not exceed forget_after_seconds")
        if g.max_message_bytes > 2 * 1024 * 1024:
            raise ConfigError("[gossip] max_message_bytes may be at most 2 MiB")
        if self.witness.timeout_ms < 100 or self.witness.retry_ms < 100:
            raise ConfigError("[witness] timeout_ms and retry_ms must be at least 100")


def _is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises for a port that is not a number)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) \
        and not parts.query and not parts.fragment


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"listen address {listen!r} must be HOST:PORT, e.g. 127.0.0.1:7300")
    return host.strip("[]") or "127.0.0.1", int(port)


_SECTIONS = {f.name: f.type for f in fields(Config)}


_KINDS = {int: "a whole number", float: "a number", str: "a string", bool: "true or false",
          list: "a list"}


def _build(section: str, cls: Any, values: Any) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"[{section}] must be a table")
    known = {f.name: f for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"unknown setting [{section}] {key} (see config.example.toml)")
        default = getattr(cls(), key)
        expected = type(default)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not expected:
            raise ConfigError(
                f"[{section}] {key} must be {_KINDS.get(expected, expected.__name__)}, "
                f"got {value!r}"
            )
        kwargs[key] = value
    return cls(**kwargs)


def load_config(data_dir: Path | None) -> Config:
    """The embedded defaults, overridden by ``config.toml`` in the data directory if present."""
    path = data_dir / CONFIG_FILE if data_dir is not None else None
    raw: dict[str, Any] = {}
    if path is not None and path.exists():
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
    sections: dict[str, Any] = {}
    defaults = Config()
    for name, values in raw.items():
        if name not in _SECTIONS:
            raise ConfigError(f"unknown section [{name}] in {path} (see config.example.toml)")
        sections[name] = _build(name, type(getattr(defaults, name)), values)
    config = Config(**sections)
    config.validate()
    return config


def default_data_dir() -> Path:
    """Where ``tally node run`` keeps its data when not told: $TALLY_DATA or the XDG data dir."""
    if env := os.environ.get("TALLY_DATA"):
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "tally" / "node"
