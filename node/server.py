"""Serving a node over HTTP: bind, run until told to stop, shut down cleanly.

Layer: node. Used by ``tally node run`` (one node, until SIGINT/SIGTERM) and ``tally demo``
(several nodes in one process).
"""

from __future__ import annotations

import asyncio
import signal
import socket
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
    runner = web.AppRunner(make_app(node), access_log=None, handle_signals=False)
    try:
        await runner.setup()
        site = web.SockSite(runner, sock)
        await site.start()
    except BaseException:
        await runner.cleanup()
        sock.close()
        raise
    return Served(node, runner, url)


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
