"""The seam between the actors and where limit state is stored.

Actors never touch buckets directly: they go through a :class:`StateBackend`,
so the same actors run on process memory or on Redis shared by many processes.
Times cross the seam as *delays in seconds*, never as absolute timestamps,
because a remote store's clock is not ours.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeAlias

import attrs

from maxllm_gate.limits import AdmissionMark, BucketSnapshot, Cost, LimitReport, LimitSpec

__all__ = ["Adjust", "CoolDown", "Correction", "Learn", "Release", "StateBackend"]


# What a finished call changes on its pair, as data: a call's corrections travel
# together, so a shared store applies them in one round trip (see StateBackend.settle).


@attrs.frozen
class Release:
    """Give back ``tokens`` over-reserved and never charged (:meth:`StateBackend.release`)."""

    tokens: float


@attrs.frozen
class Adjust:
    """Charge positive amounts, refund negative ones (:meth:`StateBackend.adjust`);
    ``output_tokens`` reach only the cells that count output (an OTPM limit)."""

    requests: float
    tokens: float
    output_tokens: float = 0.0


@attrs.frozen
class Learn:
    """A provider's rate-limit report about a call admitted ``since`` seconds ago
    (:meth:`StateBackend.learn`)."""

    info: LimitReport
    since: float
    charged_tokens: float
    charged_requests: float
    charged_output_tokens: float = 0.0


@attrs.frozen
class CoolDown:
    """Admit nothing for ``seconds`` (:meth:`StateBackend.cool_down`)."""

    seconds: float


Correction: TypeAlias = Release | Adjust | Learn | CoolDown


class StateBackend(Protocol):
    """Storage for the bucket pairs of every (key, model)."""

    @property
    def is_distributed(self) -> bool:
        """True when the state is shared with other processes."""
        ...

    def register(self, key_id: str, model: str, spec: LimitSpec) -> None:
        """Create (or keep) the buckets of ``(key_id, model)``."""

    def unregister(self, key_id: str) -> None:
        """Forget every bucket of ``key_id`` in this process."""

    async def reserve(self, key_id: str, model: str, cost: Cost) -> float:
        """Take ``cost`` atomically from every bucket of the pair, or nothing.

        Returns 0.0 when taken, else the seconds until it would fit (cooldowns
        included).
        """
        ...

    async def started(
        self,
        key_id: str,
        model: str,
        mark: AdmissionMark,
        admitted_at: float,
        at: float | None = None,
    ) -> None:
        """The call admitted with ``mark`` at ``admitted_at`` left for the provider
        at ``at`` (now if None; times on this process's ``anyio.current_time()``).

        Lets a charge start when the provider's does, where the call found the
        provider's bucket full (see :meth:`maxllm_gate.limits.BucketPair.start`).
        May be told again with a later ``at``, once the real send time is known.
        """

    async def adjust(self, key_id: str, model: str, requests: float, tokens: float) -> None:
        """Charge positive amounts; refund negative ones that the provider refunds too."""

    async def release(self, key_id: str, model: str, tokens: float) -> None:
        """Give back over-reserved tokens that the provider never charged, as far
        as is safe (see :mod:`maxllm_gate.limits.gcra`)."""

    def mark(self, key_id: str, model: str) -> AdmissionMark:
        """How much ``(key_id, model)`` has admitted in all, as known here."""
        ...

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
        """Fold in a provider's rate-limit report about a call admitted ``since``
        seconds ago, which took ``charged_*`` from the provider's buckets."""

    async def cool_down(self, key_id: str, model: str, seconds: float) -> None:
        """Admit nothing on ``(key_id, model)`` for ``seconds``."""

    async def settle(self, key_id: str, model: str, corrections: Sequence[Correction]) -> None:
        """Apply ``corrections`` to ``(key_id, model)`` in order, at once.

        How a finished call settles: what :meth:`release`, :meth:`adjust`,
        :meth:`learn` and :meth:`cool_down` would do one by one, in one atomic
        step (one round trip with Redis). The order matters: a refused call is
        refunded before the report that does not include it is folded in; an
        answered call's report (of its admission) comes before the refunds
        that mirror the provider's later ones.
        """

    def utilization(self, key_id: str, model: str, now: float) -> float:
        """The fuller bucket's used share of ``(key_id, model)`` at ``now``
        (``anyio.current_time()``), in [0, 1]."""
        ...

    def full_at(self, key_id: str, model: str) -> float:
        """When ``(key_id, model)``'s buckets are full again if nothing more is
        taken (``anyio.current_time()``'s clock), as last known here."""
        ...

    def snapshot(self, key_id: str, model: str) -> BucketSnapshot:
        """What ``(key_id, model)`` could take now, as last known here."""
        ...
