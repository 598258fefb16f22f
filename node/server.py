"""Serving a node over HTTP: bind, run until told to stop, shut down cleanly.

Layer: node. Used by ``tally node run`` (one node, until SIGINT/SIGTERM) and ``tally demo``
(several nodes in one process).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from aiohttp import web

from node.api import make_app
from node.config import Config
from node.service import Node

log = logging.getLogger(__name__)

# CPython collects its youngest generation of objects after this many more container
# objects were made than freed (its default is 700). A batch of transfers keeps tens of
# thousands of objects alive for a few milliseconds, so at 700 the collector scans them
# again and again, and moves them to older generations that it scans again later. Under
# figure 2's load (docs/benchmarks.md, session 6) a node spent 2.1 s of its run in the
# collector at the defaults, 1.0 s at 10,000 and 0.1 s at these values. Garbage made of
# reference cycles is still collected, in larger rounds: a cycle holding a request would
# hold its body that much longer (node.problems drops the tracebacks that made one).
GC_YOUNG_THRESHOLD = 50_000
GC_MIDDLE_THRESHOLD = 20


def settle_collector() -> None:
    """Set up the cyclic garbage collector for a process that serves until it is stopped.

    Call once the node (or server) has started. What exists by then (modules, the ledger's
    state, the app) lives as long as the process: it is collected once and frozen, so the
    collector never scans it again, and young objects are collected in larger rounds
    (``GC_YOUNG_THRESHOLD``). Objects are still freed the moment nothing refers to them;
    only garbage made of reference cycles waits for the collector.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, GC_MIDDLE_THRESHOLD)


@dataclass
class Served:
    node: Node
    runner: web.AppRunner
    url: str
    cap: ConnectionCap

    async def close(self) -> None:
        await self.runner.cleanup()


def connection_limits(config: Config) -> dict[str, Any]:
    """aiohttp's per-connection limits, for ``web.AppRunner``.

    A connection must send a whole request's headers within ``idle_timeout_seconds`` of
    connecting or of its last answer, else it is closed: aiohttp's keep-alive timer also
    runs from the moment a connection opens, so a client that trickles its headers byte by
    byte (slowloris) is cut off at the same bound. Request lines and header fields are
    capped at 8 KiB and 128 headers (aiohttp's parser limits, named here so they are
    visible); bodies are capped per route, and must arrive within ``body_timeout_seconds``,
    by ``node.api.read_body``. Connections per client address are capped by ``ConnectionCap``.
    """
    return {
        "keepalive_timeout": float(config.api.idle_timeout_seconds),
        "max_line_size": 8190,
        "max_field_size": 8190,
        "max_headers": 128,
    }


class ConnectionCap:
    """At most ``limit`` connections open at once from one client address (0: no cap).

    A connection past the cap is closed as soon as it opens, before anything is read or
    parsed: answering it (a 429) would mean reading its request, the very work the cap
    spares. The client's other connections are untouched. Counts are kept only for
    addresses with a connection open, so memory is bounded by the connections themselves.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: dict[str, int] = {}
        self.refused = 0  # connections closed at once since start
        self._warned: set[str] = set()  # addresses at the cap, already logged

    def admit(self, address: str) -> bool:
        count = self.open.get(address, 0)
        if self.limit and count >= self.limit:
            self.refused += 1
            if address not in self._warned:
                self._warned.add(address)
                log.warning("%s holds %d connections, the most allowed ([api] "
                            "max_connections_per_client); closing its new ones", address, count)
            return False
        self.open[address] = count + 1
        return True

    def release(self, address: str) -> None:
        count = self.open.pop(address) - 1
        if count:
            self.open[address] = count
        if count < self.limit:
            self._warned.discard(address)

    def protocol_factory(
        self, make: Callable[[], asyncio.Protocol]
    ) -> Callable[[], asyncio.Protocol]:
        return lambda: _Counted(self, make)


class _Counted(asyncio.Protocol):
    """Admits a connection through the cap, then hands every event to aiohttp's protocol."""

    def __init__(self, cap: ConnectionCap, make: Callable[[], asyncio.Protocol]) -> None:
        self.cap = cap
        self.make = make
        self.inner: asyncio.Protocol | None = None
        self.address = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        if not self.cap.admit(address):
            # A server's connections are stream transports, which ``abort``.
            cast(asyncio.Transport, transport).abort()
            return
        self.address = address
        self.inner = self.make()
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.inner is not None:
            self.cap.release(self.address)
            self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()


class _CappedSite(web.BaseSite):
    """aiohttp's SockSite, with each connection admitted through a ``ConnectionCap``."""

    def __init__(self, runner: web.BaseRunner, sock: socket.socket, cap: ConnectionCap) -> None:
        super().__init__(runner)
        self._sock = sock
        self.cap = cap

    @property
    def name(self) -> str:
        host, port = self._sock.getsockname()[:2]
        return f"http://{host}:{port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self.cap.protocol_factory(server), sock=self._sock)


async def serve(node: Node, host: str, port: int) -> Served:
    """Start serving ``node`` on host:port (port 0 picks a free one); returns its URL."""
    # Bind first, so the node knows the URL peers reach it at before it starts.
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    bound = sock.getsockname()
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    url = f"http://{shown}:{bound[1]}"
    if not node.public_url:
        node.public_url = url
    runner = web.AppRunner(make_app(node), access_log=None, handle_signals=False,
                           **connection_limits(node.config))
    cap = ConnectionCap(node.config.api.max_connections_per_client)
    try:
        await runner.setup()
        site = _CappedSite(runner, sock, cap)
        await site.start()
    except BaseException:
        await runner.cleanup()
        sock.close()
        raise
    return Served(node, runner, url, cap)


async def wait_for_stop_signal() -> None:
    """Return on SIGINT or SIGTERM (the operator's Ctrl-C, or systemd stopping us)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
