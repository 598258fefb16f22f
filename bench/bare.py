"""The bare-handler ceiling: an aiohttp server whose one handler reads the body and answers 200.

    python -m bench.bare [--listen 127.0.0.1:0]

Served exactly as the node is (``web.AppRunner``, no access log, one process, the default
event loop, the node's garbage-collector settings), so the load generator's requests/s
against it is the most an aiohttp node on this machine could answer with this client and
concurrency. Prints one JSON line with its URL once listening; stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json

from aiohttp import web

from node.server import settle_collector, wait_for_stop_signal

MAX_BODY = 2 * 1024 * 1024


async def handle(request: web.Request) -> web.Response:
    data = bytearray()
    while chunk := await request.content.read(65536):
        data += chunk
    return web.Response(status=200, body=b'{"result":"ok"}', content_type="application/json")


async def serve(host: str, port: int) -> None:
    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_post("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    server = site._server
    assert server is not None
    bound = server.sockets[0].getsockname()
    settle_collector()
    print(json.dumps({"url": f"http://{bound[0]}:{bound[1]}"}), flush=True)
    try:
        await wait_for_stop_signal()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:0")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    if host != "127.0.0.1":
        parser.error("the bare server listens on 127.0.0.1 only")
    asyncio.run(serve(host, int(port)))


if __name__ == "__main__":
    main()
