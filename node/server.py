"""Serving a node over HTTP: bind, run until told to stop, shut down cleanly.

Layer: node. Used by ``tally node run`` (one node, until SIGINT/SIGTERM) and ``tally demo``
(several nodes in one process).
"""

from __future__ import annotations

import asyncio
import signal
import socket
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from node.api import make_app
from node.config import Config
from node.service import Node


@dataclass
class Served:
    node: Node
    runner: web.AppRunner
    url: str

    async def close(self) -> None:
        await self.runner.cleanup()


def connection_limits(config: Config) -> dict[str, Any]:
    """aiohttp's per-connection limits, for ``web.AppRunner``.

    A connection must send a whole request's headers within ``idle_timeout_seconds`` of
    connecting or of its last answer, else it is closed: aiohttp's keep-alive timer also
    runs from the moment a connection opens, so a client that trickles its headers byte by
    byte (slowloris) is cut off at the same bound. Request lines and header fields are
    capped at 8 KiB and 128 headers (aiohttp's parser limits, named here so they are
    visible); bodies are capped per route by ``node.api.read_body``.
    """
    return {
        "keepalive_timeout": float(config.api.idle_timeout_seconds),
        "max_line_size": 8190,
        "max_field_size": 8190,
        "max_headers": 128,
    }


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
