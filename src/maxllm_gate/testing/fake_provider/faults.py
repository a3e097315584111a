"""The fake provider's fault injection: chosen answers, silent or broken connections, and
failures drawn at random."""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Mapping
from typing import Any, TypeVar

import anyio
import attrs

from maxllm_gate.testing._http import Connection
from maxllm_gate.testing.fake_provider.wire import DEFAULT_ERRORS, JSON, Headers, error_body


@attrs.define
class Injection:
    """An answer to give the next ``times`` calls (with ``api_key``, or any key)."""

    status: int
    times: int
    api_key: str | None
    body: bytes
    headers: Mapping[str, str]


@attrs.define
class Cut:
    """A call to leave unanswered ("hang") or to cut with a TCP reset ("reset")."""

    kind: str
    times: int
    api_key: str | None
    after_chunks: int = 0


class Faults:
    """The faults still to inject, and the draws of ``error_rate`` and ``hang_rate``.

    Args are `FakeProvider`'s of the same names.
    """

    def __init__(self, *, error_rate: float, hang_rate: float, seed: int) -> None:
        self.error_rate = error_rate
        self.hang_rate = hang_rate
        self._rng = random.Random(seed)
        self._injections: list[Injection] = []
        self._cuts: list[Cut] = []
        self._statuses = itertools.cycle((500, 503))

    def inject(
        self,
        status: int,
        times: int,
        api_key: str | None,
        body: Mapping[str, Any] | None,
        headers: Mapping[str, str] | None,
    ) -> None:
        if body is None:
            type_, code = DEFAULT_ERRORS.get(status, ("api_error", None))
            raw = error_body(f"Injected error {status}", type_, code)
        else:
            raw = json.dumps(body).encode()
        lowered = {name.lower(): value for name, value in (headers or {}).items()}
        self._injections.append(Injection(status, times, api_key, raw, lowered))

    def cut(self, kind: str, times: int, api_key: str | None, after_chunks: int = 0) -> None:
        self._cuts.append(Cut(kind, times, api_key, after_chunks))

    def take_injection(self, api_key: str) -> Injection | None:
        return _take(self._injections, api_key)

    def take_cut(self, api_key: str) -> Cut | None:
        return _take(self._cuts, api_key)

    def draw(self) -> float:
        """A draw for `fails`; taken for every answered call, so a seed repeats a run."""
        return self._rng.random()

    def fails(self, draw: float) -> bool:
        return draw < self.error_rate + self.hang_rate

    async def fail(self, http: Connection, draw: float, latency: float, headers: Headers) -> None:
        """An ``error_rate`` fault (a 500 or a 503, in turn) or a ``hang_rate`` one, by ``draw``."""
        await anyio.sleep(latency)
        if draw >= self.error_rate:
            await anyio.sleep_forever()  # a hang: only the client giving up ends it
        kind = "The server had an error while processing your request."
        await http.respond(
            next(self._statuses), [JSON, *headers], error_body(kind, "server_error", None)
        )


_Fault = TypeVar("_Fault", Injection, Cut)


def _take(faults: list[_Fault], api_key: str) -> _Fault | None:
    """The first of ``faults`` for ``api_key`` (or any key), used once more."""
    for fault in faults:
        if fault.api_key in (None, api_key):
            fault.times -= 1
            if fault.times <= 0:
                faults.remove(fault)
            return fault
    return None
