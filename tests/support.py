"""Small builders shared by the tests, and the record of what the library showed.

:func:`expose` keeps the text of anything the library showed a user (reprs,
status dicts, exceptions) for the session-wide secret audit in
``tests/test_secrets.py``; :func:`assert_no_secret_in_redis` checks every key
name and value in a Redis server.
"""

from __future__ import annotations

import socket
import urllib.parse
from collections.abc import Iterable
from typing import Any

from maxllm_gate import KeyConfig

MODEL = "sim-model"

#: The text of everything passed to `expose` in this session.
SHOWN: list[str] = []


def make_key(key_id: str, rpm: float, tpm: float, model: str = MODEL, **limits: Any) -> KeyConfig:
    return KeyConfig(
        api_key=f"sk-secret-{key_id}-0123456789",
        provider="openai",
        key_id=key_id,
        models={model: {"rpm_limit": rpm, "tpm_limit": tpm, **limits}},
    )


def expose(*objects: object) -> None:
    """Record what the library showed (``str`` and ``repr``; an exception's args
    and notes too), for the session's secret audit."""
    for obj in objects:
        SHOWN.append(f"{obj!s}\n{obj!r}")
        if isinstance(obj, BaseException):
            SHOWN.append(repr((obj.args, getattr(obj, "__notes__", None), vars(obj))))


def assert_no_secret_in_redis(url: str, secrets: Iterable[str]) -> int:
    """Scan every key of the Redis at ``url`` (its db 0 or the URL's db): fail if any
    key name or value holds one of ``secrets``. Returns how many keys were read.

    Synchronous, over a plain socket, so any test may call it under any backend.
    """
    secrets = [s for s in secrets if s]
    with _Resp(url) as redis:
        keys: list[bytes] = []
        cursor = b"0"
        while True:
            cursor, batch = redis.call("SCAN", cursor, "COUNT", "1000")
            keys += batch
            if cursor == b"0":
                break
        for name in keys:
            kind = redis.call("TYPE", name).decode()
            value = _read_value(redis, name, kind)
            blob = b"\n".join([name, *_flatten(value)]).decode("utf-8", "replace")
            for secret in secrets:
                assert secret not in blob, f"an API key is in Redis, in {name!r} ({kind})"
    return len(keys)


def _read_value(redis: _Resp, name: bytes, kind: str) -> Any:
    if kind == "string":
        return redis.call("GET", name)
    if kind == "hash":
        return redis.call("HGETALL", name)
    if kind == "set":
        return redis.call("SMEMBERS", name)
    if kind in ("list", "zset"):
        return redis.call("LRANGE" if kind == "list" else "ZRANGE", name, "0", "-1")
    return None  # a stream or a module's type: nothing of ours


def _flatten(value: Any) -> list[bytes]:
    if value is None:
        return []
    if isinstance(value, bytes):
        return [value]
    if isinstance(value, int):
        return [str(value).encode()]
    return [part for item in value for part in _flatten(item)]


class _Resp:
    """A minimal RESP2 client: enough to scan a server in a test."""

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        self._sock = socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or 6379), timeout=10
        )
        self._file = self._sock.makefile("rb")
        if parts.password:
            self.call("AUTH", *([parts.username] if parts.username else []), parts.password)
        db = parts.path.strip("/")
        if db:
            self.call("SELECT", db)

    def __enter__(self) -> _Resp:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()
        self._sock.close()

    def call(self, *args: str | bytes) -> Any:
        encoded = [a if isinstance(a, bytes) else a.encode() for a in args]
        out = b"*%d\r\n" % len(encoded) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in encoded)
        self._sock.sendall(out)
        return self._read()

    def _read(self) -> Any:
        line = self._file.readline().rstrip(b"\r\n")
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            return None if size < 0 else self._file.read(size + 2)[:-2]
        if kind == b"*":
            size = int(rest)
            return None if size < 0 else [self._read() for _ in range(size)]
        raise RuntimeError(f"unexpected reply from Redis: {line!r}")
