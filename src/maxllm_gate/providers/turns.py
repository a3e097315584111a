"""Turns to send, for a transport that spends CPU on each call before it sends it.

LiteLLM works ~9 ms on a call before the request leaves. Calls admitted
together would share that CPU and leave together, seconds after their
admission and in no order, with pauses in which a provider's bucket fills up
and wastes the refill our buckets counted on: the provider then refuses calls
we admitted. With turns, one call at a time does that work, so calls leave one
every few ms and each knows when it left.

Keys take turns in rotation, the one whose last turn is the oldest first, and
each key's calls go in their ``order``: a key's calls never pause for long
while another key's burst goes out, so its provider's bucket never fills up
behind our back.

A turn begins when `SendTurns.take` returns and ends at `SendTurns.give_back`:
when the transport reports the send (`ProviderCall.on_sent`), or when the call
ends first.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Hashable

import anyio

__all__ = ["SendTurns"]


class SendTurns:
    """One turn at a time, across keys in rotation and within a key by ``order``.

    Every `take` that returns must be followed by one `give_back`::

        await turns.take(key_id, order)
        try:
            ...  # until the request has left
        finally:
            turns.give_back()
    """

    def __init__(self) -> None:
        self._busy = False
        self._count = itertools.count()  # ties, and the clock of the rotation
        self._waiting: dict[Hashable, list[tuple[int, int, anyio.Event]]] = {}
        self._last_turn: dict[Hashable, int] = {}
        self._rotation: list[tuple[int, int, Hashable]] = []  # keys that have waiters

    async def take(self, key: Hashable, order: int) -> None:
        """Wait for a turn for ``key``'s call. If cancelled once it was handed
        over, pass it on."""
        if not self._busy:
            self._busy = True
            self._last_turn[key] = next(self._count)
            return
        handed = anyio.Event()
        queue = self._waiting.get(key)
        if queue is None:
            queue = self._waiting[key] = []
            last = self._last_turn.get(key, -1)
            heapq.heappush(self._rotation, (last, next(self._count), key))
        heapq.heappush(queue, (order, next(self._count), handed))
        try:
            await handed.wait()
        except BaseException:
            if handed.is_set():
                self.give_back()
            else:
                handed.set()  # marks the entry dead: give_back skips it
            raise

    def give_back(self) -> None:
        """End the turn: hand it to the next waiter, if any."""
        while self._rotation:
            _, _, key = heapq.heappop(self._rotation)
            queue = self._waiting[key]
            handed = None
            while queue:
                _, _, event = heapq.heappop(queue)
                if not event.is_set():
                    handed = event
                    break
            turn = next(self._count)
            if any(not event.is_set() for _, _, event in queue):
                heapq.heappush(self._rotation, (turn, next(self._count), key))
            else:
                del self._waiting[key]
            if handed is not None:
                self._last_turn[key] = turn
                handed.set()
                return
        self._busy = False
