"""An ASGI middleware for vLLM's OpenAI-compatible server (its `--middleware` option), used by
test_openai_server.py to make the real server misbehave on cue, as providers do:

- a chat request whose last message contains FLAKY is answered 503 the first time, then served;
- one containing FILTERED is answered 400 with a content-filter error (vLLM has no content
  filter of its own; this is the reply shape of providers that do);
- GET /provoke/stats returns {"max_inflight": ..., "calls": {marker: count}} (the most chat
  requests the server held at once, to show the client's concurrency).
Everything else goes to vLLM untouched.
"""

from __future__ import annotations

import json
from collections import Counter

STATE = {"inflight": 0, "max_inflight": 0, "calls": Counter()}
FILTERED = {"error": {"message": "The response was filtered due to the prompt triggering the content management "
                                 "policy.", "type": "invalid_request_error", "code": "content_filter"}}


async def _reply(send, status: int, payload: dict) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class Provoke:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["path"] == "/provoke/stats":
            return await _reply(send, 200, {"max_inflight": STATE["max_inflight"], "calls": STATE["calls"]})
        if scope["path"] != "/v1/chat/completions":
            return await self.app(scope, receive, send)
        chunks, more = [], True
        while more:
            msg = await receive()
            chunks.append(msg.get("body", b""))
            more = msg.get("more_body", False)
        body = b"".join(chunks)
        text = json.loads(body)["messages"][-1]["content"]
        marker = next((m for m in ("FLAKY", "FILTERED") if m in text), "plain")
        STATE["calls"][marker] += 1
        if marker == "FILTERED":
            return await _reply(send, 400, FILTERED)
        if marker == "FLAKY" and STATE["calls"][marker] == 1:
            return await _reply(send, 503, {"error": {"message": "overloaded, try again"}})

        replayed = False

        async def replay():  # the body once, then the client's own stream (e.g. its disconnect)
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        STATE["inflight"] += 1
        STATE["max_inflight"] = max(STATE["max_inflight"], STATE["inflight"])
        try:
            await self.app(scope, replay, send)
        finally:
            STATE["inflight"] -= 1
