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

**Over-reservation.** Admission charges an estimate that may exceed what the
provider charges (the prompt is estimated with a safety buffer). That excess,
the ``phantom``, keeps our bucket behind the provider's. Giving it back is safe
only while the provider's bucket has not already overflowed: if ours holds
less debt than the phantom, the provider's bucket was full and the refill it
wasted cannot be given back. So every operation first caps the phantom at our
current debt, and :meth:`GcraCell.release` returns at most what is left.
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

    __slots__ = ("capacity", "interval", "phantom", "shifted", "tat")

    def __init__(self, limit_per_minute: float, capacity: float, tat: float = float("-inf")):
        if limit_per_minute <= 0 or capacity <= 0:
            raise ValueError("limit_per_minute and capacity must be positive")
        self.interval = 60.0 / limit_per_minute
        self.capacity = float(capacity)
        self.tat = tat
        self.phantom = 0.0
        #: Seconds `arrived_late` has moved the cell's charges on, in all.
        self.shifted = 0.0

    @property
    def limit_per_minute(self) -> float:
        return 60.0 / self.interval

    def fit_time(self, cost: float) -> float:
        """The earliest time at which ``cost`` units fit (may be long past)."""
        if cost > self.capacity:
            return self.tat
        return self.tat + (cost - self.capacity) * self.interval

    def fits_at(self, now: float, cost: float) -> float:
        """The earliest time, not before ``now``, at which ``cost`` units fit."""
        return max(now, self.fit_time(cost))

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

    def charge(self, now: float, cost: float, phantom: float = 0.0) -> None:
        """Take ``cost`` units unconditionally, going into debt if need be.

        ``phantom`` of them may be over-reserved, to :meth:`release` later.
        """
        self._cap_phantom(now)
        self.tat = max(self.tat, now) + cost * self.interval
        self.phantom += phantom

    def arrived_late(self, lead: float, shifted: float, late: float) -> None:
        """A charge made ``lead`` seconds behind full (``tat - now`` before it, or
        0), when `shifted` read ``shifted``, reached the provider ``late``
        seconds after it was made.

        The provider's bucket refills until the request arrives: if ours was
        full, or less behind than the request was late, the provider's charge
        began later than ours, by the difference, and so does everything we
        charged after it. Moves such later charges count against it: a charge
        is never moved twice for the same lateness.
        """
        moved = late - lead - (self.shifted - shifted)
        if moved > 0:
            self.tat += moved
            self.shifted += moved

    def refund(self, now: float, amount: float) -> None:
        """Give back ``amount`` units the provider gives back too (unused output).

        A bucket never holds more than its capacity.
        """
        if self.tat > now:
            self.tat = max(now, self.tat - amount * self.interval)
        self._cap_phantom(now)

    def release(self, now: float, amount: float) -> float:
        """Give back up to ``amount`` over-reserved units; returns how many came back."""
        self._cap_phantom(now)
        released = min(amount, self.phantom)
        if released > 0:
            self.phantom -= released
            self.tat -= released * self.interval
        return max(0.0, released)

    def _cap_phantom(self, now: float) -> None:
        debt = (self.tat - now) / self.interval
        if self.phantom > debt:
            self.phantom = max(0.0, debt)

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
        if target > self.tat:
            lowered = (target - max(self.tat, now)) / self.interval
            self.tat = target
            # The correction used up that much of the cushion we thought we had.
            self.phantom = max(0.0, self.phantom - lowered)

    def learn(
        self,
        now: float,
        *,
        remaining: float,
        measured_at: float,
        capacity_floor: float,
        limit_per_minute: float | None = None,
        window: float = 60.0,
    ) -> None:
        """Fold in a provider's report of its own bucket, which refills its limit
        every ``window`` seconds (a minute, or a day for a daily cap).

        ``remaining`` units were left when the provider admitted a call we
        admitted at ``measured_at``.
        The provider's bucket holds at least ``capacity_floor`` (what was left
        plus what that call took), so a larger burst than ours is learned; a
        lower ``limit_per_minute`` than ours is adopted.

        We may have admitted more calls since, and calls may reach the provider
        in another order than we sent them, so any of those may or may not be
        in ``remaining``: the truth now lies between ``remaining + refill - what
        we admitted since`` and ``remaining + refill``. Availability here is
        lowered only above that upper end, which the report proves too
        generous; it is never raised.
        """
        if limit_per_minute is not None and 0 < limit_per_minute < self.limit_per_minute:
            debt = max(0.0, self.tat - now) / self.interval
            scale = limit_per_minute / self.limit_per_minute
            self.interval = 60.0 / limit_per_minute
            if debt > 0:
                self.tat = now + debt * self.interval
            self.capacity = max(1.0, self.capacity * scale)  # the same seconds of burst
        # With nothing left the provider may be in debt (an oversize call admitted
        # into a full bucket), so what it took says nothing of its size.
        # No bucket holds more than one window of its limit.
        ceiling = self.limit_per_minute * window / 60.0
        if remaining >= 1 and capacity_floor > self.capacity:
            self.capacity = min(capacity_floor, ceiling)
        refilled = max(0.0, now - measured_at) / self.interval
        self.limit_remaining(now, remaining + refilled)

    def __repr__(self) -> str:
        return (
            f"GcraCell(limit_per_minute={self.limit_per_minute:g}, "
            f"capacity={self.capacity:g}, tat={self.tat:g})"
        )
