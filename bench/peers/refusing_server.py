"""The cheapest possible refusal: uvicorn and a bare ASGI app that answers every request 503.

The floor under eca-serve's refusal in the flood phase (bench/reliability_phases.py): what accepting a
connection, parsing its HTTP and sending a 503 costs on one uvicorn event loop, with no framework, no
admission, no metrics. Run: ``python bench/peers/refusing_server.py --port 8100``.
"""

from __future__ import annotations

import argparse

import uvicorn
from starlette.types import Receive, Scope, Send

BODY = b'{"error":"busy"}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode()), (b"retry-after", b"1")]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 503, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8100)
    args = parser.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)
