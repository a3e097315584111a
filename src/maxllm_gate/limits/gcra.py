"""The GCRA cell: one continuously refilling bucket, as pure arithmetic on one float.

A cell is the Generic Cell Rate Algorithm's "theoretical arrival time" (``tat``):
the moment the bucket would be full again if nothing more were spent. With a
limit of ``L`` units per minute, one unit refills every ``interval = 60 / L``
seconds, and a bucket of ``capacity`` units tolerates ``capacity * interval``
seconds of debt ahead of ``now``::

    available(now) = capacity - max(0, tat - now) / interval

Everything here is O(1), takes ``now`` as an argument (time is injected, so the
same math runs against a virtual clock, the event loop's clock or Redis's
``TIME``), and never sleeps. The Redis backend runs the same formulas in Lua.

A request larger than the whole capacity can never fit by the formula above, so
such a request is admitted only when the bucket is completely full, and goes
into debt: later requests wait for the debt to refill. A provider whose own
bucket is that small would refuse the request whatever we did.
"""

from __future__ import annotations

__all__ = ["GcraCell"]


class GcraCell:
    """One bucket of ``limit_per_minute`` units with room for ``capacity`` units.

    >>> cell = GcraCell(limit_per_minute=60, capacity=2)  # 1 unit/s, burst of 2
    >>> cell.reserve(now=0.0, cost=2)
    0.0
    >>> cell.reserve(now=0.0, cost=1)  # refused: it fits one second later
    1.0
    """

    __slots__ = ("capacity", "interval", "tat")

    def __init__(self, limit_per_minute: float, capacity: float, tat: float = float("-inf")):
        if limit_per_minute <= 0 or capacity <= 0:
            raise ValueError("limit_per_minute and capacity must be positive")
        self.interval = 60.0 / limit_per_minute
        self.capacity = float(capacity)
        self.tat = tat

    @property
    def limit_per_minute(self) -> float:
        return 60.0 / self.interval

    def fits_at(self, now: float, cost: float) -> float:
        """The earliest time, not before ``now``, at which ``cost`` units fit."""
        if cost > self.capacity:
            return max(now, self.tat)
        return max(now, self.tat + (cost - self.capacity) * self.interval)

    def reserve(self, now: float, cost: float) -> float:
        """Take ``cost`` units if they fit at ``now``.

        Returns ``now`` when they were taken; otherwise nothing changes and the
        earliest time they would fit is returned.
        """
        at = self.fits_at(now, cost)
        if at <= now:
            self.tat = max(self.tat, now) + cost * self.interval
            return now
        return at

    def charge(self, now: float, cost: float) -> None:
        """Take ``cost`` units unconditionally, going into debt if need be."""
        self.tat = max(self.tat, now) + cost * self.interval

    def refund(self, now: float, amount: float) -> None:
        """Give back ``amount`` units; a bucket never holds more than its capacity."""
        if self.tat > now:
            self.tat = max(now, self.tat - amount * self.interval)

    def available(self, now: float) -> float:
        """Units that could be taken at ``now`` (0 while in debt)."""
        debt = max(0.0, self.tat - now) / self.interval
        return max(0.0, self.capacity - debt)

    def full_at(self) -> float:
        """When the bucket will be full again."""
        return self.tat

    def limit_remaining(self, now: float, remaining: float) -> None:
        """Fold in a provider's report that only ``remaining`` units are left.

        Conservative: it can only lower what the cell thinks is available.
        """
        target = now + (self.capacity - max(0.0, remaining)) * self.interval
        self.tat = max(self.tat, target)

    def __repr__(self) -> str:
        return (
            f"GcraCell(limit_per_minute={self.limit_per_minute:g}, "
            f"capacity={self.capacity:g}, tat={self.tat:g})"
        )
