"""A TCP proxy on loopback that misbehaves on purpose, for the fault harness.

One ``FaultProxy`` carries one direction of one pair of peers (A's requests to B, say): it
listens on 127.0.0.1, and every connection it accepts it joins to its target port, unless its
seeded ``FaultPolicy`` decides otherwise. It may

- **drop** a new connection: close it at once, nothing forwarded (refused or reset);
- **cut** a connection a random number of bytes into a request or into its answer (so the
  request is lost, or it arrives and only its answer is lost);
- **delay** each chunk it forwards (so answers on different connections arrive reordered);
- **duplicate** a request: replay its bytes on a second connection to the target a moment
  later and throw the answer away (a retransmitted or replayed request).

Cuts and duplicates are drawn per exchange (a request, up to the first byte of its answer),
not per connection, since HTTP keep-alive carries many exchanges on one connection.

``partition(seconds)`` cuts every open connection and drops every new one until it ends.
Everything the proxy did is counted in ``counts``. The proxy outlives the node behind it:
while that node is down, connections fail as they would to a dead host.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

CHUNK = 65536
REPLAY_READ_S = 2.0  # how long a replayed request's answer is read before giving up on it


@dataclass(frozen=True)
class FaultPolicy:
    drop: float = 0.0  # chance a new connection is closed at once
    cut: float = 0.0  # chance a connection is cut after a random number of bytes
    cut_within: int = 4000  # ... that number: 1 to this many bytes, in one direction
    delay: float = 0.0  # chance each chunk waits before it is forwarded
    max_delay_s: float = 0.3
    duplicate: float = 0.0  # chance the client's bytes are replayed on a second connection

    @staticmethod
    def calm() -> FaultPolicy:
        return FaultPolicy()


@dataclass
class _Exchange:
    """One connection's current request and the fate drawn for it."""

    rng: random.Random
    request: bytearray = field(default_factory=bytearray)
    cut_request: int | None = None  # cut after this many more bytes of the request
    cut_answer: int | None = None  # ... or of its answer
    duplicate: bool = False


class FaultProxy:
    def __init__(self, name: str, rng: random.Random, policy: FaultPolicy | None = None) -> None:
        self.name = name
        self.rng = rng
        self.policy = policy or FaultPolicy.calm()
        self.target_port = 0  # set once the node behind it has a port
        self.counts: Counter[str] = Counter()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._partitioned_until = 0.0
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.url

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._open):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def partitioned(self) -> bool:
        return asyncio.get_running_loop().time() < self._partitioned_until

    def partition(self, seconds: float) -> None:
        """Cut every open connection and refuse new ones for ``seconds``."""
        self._partitioned_until = asyncio.get_running_loop().time() + seconds
        self.counts["partitions"] += 1
        for writer in list(self._open):
            self.counts["cut_by_partition"] += 1
            writer.transport.abort()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.counts["connections"] += 1
        policy, rng = self.policy, self.rng
        if self.partitioned():
            self.counts["dropped_by_partition"] += 1
            writer.transport.abort()
            return
        if rng.random() < policy.drop:
            self.counts["dropped"] += 1
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            self.counts["target_down"] += 1
            writer.transport.abort()
            return
        self._open.update((writer, up_writer))
        exchange = _Exchange(random.Random(rng.random()))
        tasks = [asyncio.ensure_future(self._pipe(reader, up_writer, exchange, "up")),
                 asyncio.ensure_future(self._pipe(up_reader, writer, exchange, "down"))]
        try:
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            if any(t.exception() is not None for t in done):
                for t in pending:
                    t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for w in (writer, up_writer):
                self._open.discard(w)
                w.transport.abort()

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                    exchange: _Exchange, way: str) -> None:
        """Copy one direction of a connection, applying the policy to each exchange (a
        request and its answer: what the client sends until the target answers)."""
        policy, rng = self.policy, exchange.rng
        while data := await src.read(CHUNK):
            if way == "up" and not exchange.request:  # a new request begins: draw its fate
                exchange.cut_request = exchange.cut_answer = None
                if rng.random() < policy.cut:
                    where = rng.randint(1, policy.cut_within)
                    if rng.random() < 0.5:
                        exchange.cut_request = where
                    else:
                        exchange.cut_answer = where
                exchange.duplicate = rng.random() < policy.duplicate
            if way == "down" and exchange.request:  # the answer begins: the request is whole
                if exchange.duplicate:
                    self._spawn(self._replay_later(bytes(exchange.request),
                                                   rng.uniform(0.05, 0.8)))
                exchange.request.clear()
            if way == "up":
                exchange.request += data
            if policy.delay and rng.random() < policy.delay:
                self.counts["delayed"] += 1
                await asyncio.sleep(rng.uniform(0, policy.max_delay_s))
            attr = "cut_request" if way == "up" else "cut_answer"
            left = getattr(exchange, attr)
            if left is not None and len(data) >= left:
                dst.write(data[:left])
                await dst.drain()
                self.counts["cut"] += 1
                raise ConnectionAbortedError("cut by the proxy")
            if left is not None:
                setattr(exchange, attr, left - len(data))
            dst.write(data)
            await dst.drain()
        if dst.can_write_eof():
            dst.write_eof()

    async def _replay_later(self, data: bytes, after: float) -> None:
        """Send a request again on a new connection; read and drop the answer."""
        await asyncio.sleep(after)
        if self.partitioned():
            return
        try:
            r, w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            return
        self.counts["duplicated"] += 1
        try:
            w.write(data)
            await w.drain()
            async with asyncio.timeout(REPLAY_READ_S):
                while await r.read(CHUNK):
                    pass
        except (OSError, TimeoutError):
            pass
        finally:
            w.transport.abort()
