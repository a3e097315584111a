"""A scripted OpenAI-compatible upstream, in a thread of the test process.

The fake provider models a well-behaved provider; this one answers what a
test tells it to (a hostile error, a plain completion) and keeps every body it
received, so a test can see exactly what the gateway sent.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

#: (status, JSON body, extra headers) for a chat call's body and the key it came with.
Answer = tuple[int, dict[str, Any], dict[str, str]]


def completion(body: dict[str, Any], text: str = "hello there") -> Answer:
    """A plain, successful ``chat.completion`` for ``body``."""
    return (
        200,
        {
            "id": "chatcmpl-upstream",
            "object": "chat.completion",
            "created": 0,
            "model": body.get("model", "?"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
        },
        {},
    )


def _as_events(completion: dict[str, Any]) -> bytes:
    """A completion as server-sent events: one chunk with all of its text, its usage, [DONE]."""
    choice = completion["choices"][0]
    chunk = {
        **completion,
        "object": "chat.completion.chunk",
        "choices": [
            {"index": 0, "delta": choice["message"], "finish_reason": choice["finish_reason"]}
        ],
        "usage": None,
    }
    usage = {**completion, "object": "chat.completion.chunk", "choices": []}
    events = [json.dumps(chunk).encode(), json.dumps(usage).encode(), b"[DONE]"]
    return b"".join(b"data: " + event + b"\n\n" for event in events)


class ScriptedUpstream:
    """Serves ``POST /v1/chat/completions`` with ``answer(body, api_key)`` (a 200 to a
    stream as server-sent events).

    ``bodies`` holds each request body received, in order.
    """

    def __init__(self, answer: Callable[[dict[str, Any], str], Answer]) -> None:
        self.answer = answer
        self.bodies: list[dict[str, Any]] = []
        upstream = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length))
                upstream.bodies.append(body)
                key = (self.headers.get("authorization") or "").removeprefix("Bearer ")
                status, data, headers = upstream.answer(body, key)
                if body.get("stream") and status == 200:  # the completion, as one chunk
                    payload = _as_events(data)
                    kind = "text/event-stream"
                else:
                    payload = json.dumps(data).encode()
                    kind = "application/json"
                self.send_response(status)
                self.send_header("content-type", kind)
                self.send_header("content-length", str(len(payload)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    @contextlib.contextmanager
    def running(self) -> Iterator[ScriptedUpstream]:
        thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()
            thread.join()
