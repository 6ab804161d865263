"""The fastest any aiohttp server can answer workload (b): a fixed 2,880-byte 206 response.

No cache, no policy, no logging: only aiohttp's request parsing and response writing on one
event loop. proxyd is an aiohttp application, so this bounds what it can reach on (b);
``bench_proxy.py`` measures it in the same run as proxyd and nginx, with the same wrk
workload, so the ratio says how much of the gap to nginx is the framework's own.

Usage: python bench/aiohttp_ceiling.py PORT
"""

from __future__ import annotations

import sys

from aiohttp import web

BODY = b"\0" * 2880


async def answer(request: web.Request) -> web.Response:
    headers = {"Content-Range": "bytes 0-2879/1073741824", "Accept-Ranges": "bytes"}
    return web.Response(status=206, body=BODY, headers=headers)


def main() -> None:
    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
