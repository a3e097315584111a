"""Limit state in this process's memory: the default backend."""

from __future__ import annotations

from collections.abc import Sequence

import anyio

from maxllm_gate.limits import (
    AdmissionMark,
    BucketPair,
    BucketSnapshot,
    Cost,
    LimitReport,
    LimitSpec,
)
from maxllm_gate.state.base import Adjust, CoolDown, Correction, Learn, Release

__all__ = ["MemoryState"]

# Admit this long after the exact fit time, by default (``ADMISSION_MARGIN``). A
# call reaches the provider a little after we charge for it, and calls may even
# arrive in another order than we sent them, so the provider's bucket can run
# behind ours by the network's jitter. Where requests queue, this costs no
# throughput: each admission is only this late. Where one request empties the
# bucket, each admission drifts by it (5% at 60 RPM with a 1 s burst).
SAFETY_MARGIN = 0.05


class MemoryState:
    """Bucket pairs in a dict, on the event loop's clock.

    ``margin``: seconds after the exact fit time at which a request is admitted.

    Every method runs without yielding, so each is atomic within the event loop.
    """

    is_distributed = False

    def __init__(self, *, margin: float = SAFETY_MARGIN) -> None:
        self.margin = margin
        self._pairs: dict[tuple[str, str], BucketPair] = {}

    def register(self, key_id: str, model: str, spec: LimitSpec) -> None:
        pair = self._pairs.get((key_id, model))
        if pair is None or pair.spec != spec:
            self._pairs[key_id, model] = BucketPair(spec)

    def unregister(self, key_id: str) -> None:
        for pair_key in [k for k in self._pairs if k[0] == key_id]:
            del self._pairs[pair_key]

    async def reserve(self, key_id: str, model: str, cost: Cost) -> float:
        now = anyio.current_time()
        at = self._pairs[key_id, model].reserve(now, cost, self.margin)
        # Never a wait so short that the clock would not move.
        return 0.0 if at <= now else max(at - now, 1e-6)

    async def started(
        self,
        key_id: str,
        model: str,
        mark: AdmissionMark,
        admitted_at: float,
        at: float | None = None,
    ) -> None:
        pair = self._pairs.get((key_id, model))
        if pair is not None:
            sent = anyio.current_time() if at is None else at
            pair.start(mark, sent - admitted_at)

    async def adjust(self, key_id: str, model: str, requests: float, tokens: float) -> None:
        await self.settle(key_id, model, [Adjust(requests, tokens)])

    async def release(self, key_id: str, model: str, tokens: float) -> None:
        await self.settle(key_id, model, [Release(tokens)])

    def mark(self, key_id: str, model: str) -> AdmissionMark:
        return self._pairs[key_id, model].admitted

    async def learn(
        self,
        key_id: str,
        model: str,
        info: LimitReport,
        *,
        since: float,
        charged_tokens: float,
        charged_requests: float,
    ) -> None:
        await self.settle(key_id, model, [Learn(info, since, charged_tokens, charged_requests)])

    async def cool_down(self, key_id: str, model: str, seconds: float) -> None:
        await self.settle(key_id, model, [CoolDown(seconds)])

    async def settle(self, key_id: str, model: str, corrections: Sequence[Correction]) -> None:
        pair = self._pairs.get((key_id, model))
        if pair is None:
            return
        now = anyio.current_time()
        for correction in corrections:
            if isinstance(correction, Release):
                pair.release(now, correction.tokens)
            elif isinstance(correction, Adjust):
                pair.adjust(now, correction.requests, correction.tokens, correction.output_tokens)
            elif isinstance(correction, Learn):
                pair.learn(
                    now,
                    correction.info,
                    measured_at=now - correction.since,
                    charged_tokens=correction.charged_tokens,
                    charged_requests=correction.charged_requests,
                    charged_output_tokens=correction.charged_output_tokens,
                )
            else:
                pair.cool_down(now + correction.seconds)

    def utilization(self, key_id: str, model: str, now: float) -> float:
        return self._pairs[key_id, model].utilization(now)

    def full_at(self, key_id: str, model: str) -> float:
        return self._pairs[key_id, model].full_at()

    def snapshot(self, key_id: str, model: str) -> BucketSnapshot:
        return self._pairs[key_id, model].snapshot(anyio.current_time())

    def pair(self, key_id: str, model: str) -> BucketPair:
        """The live pair, for tests and header sync."""
        return self._pairs[key_id, model]

    def pairs(self) -> list[tuple[str, str, BucketPair]]:
        """``(key_id, model, pair)`` for every registered pair."""
        return [(key_id, model, pair) for (key_id, model), pair in self._pairs.items()]
