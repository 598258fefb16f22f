"""Serving a node over HTTP: bind, run until told to stop, shut down cleanly.

Layer: node. Used by ``tally node run`` (one node, until SIGINT/SIGTERM) and ``tally demo``
(several nodes in one process).
"""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass

from aiohttp import web

from node.api import make_app
from node.service import Node


@dataclass
class Served:
    node: Node
    runner: web.AppRunner
    url: str

    async def close(self) -> None:
        await self.runner.cleanup()


async def serve(node: Node, host: str, port: int) -> Served:
    """Start serving ``node`` on host:port (port 0 picks a free one); returns its URL."""
    runner = web.AppRunner(make_app(node), access_log=None, handle_signals=False)
    try:
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    server = site._server
    assert isinstance(server, asyncio.base_events.Server)
    bound = server.sockets[0].getsockname()
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    return Served(node, runner, f"http://{shown}:{bound[1]}")


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
