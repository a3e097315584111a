"""Virtual time for asyncio, like trio's ``MockClock(autojump_threshold=0)``.

When every task is waiting on a timer, the loop's clock jumps straight to the
next timer instead of sleeping, so a test of minutes of rate-limited traffic
runs in milliseconds and runs the same way every time. Real I/O and threads
still work: when nothing is scheduled the loop blocks on them as usual (and,
as with trio's autojump, a wait on a thread lets pending timers jump ahead).

With anyio's pytest plugin, in ``conftest.py``::

    @pytest.fixture(params=["asyncio", "trio"])
    def anyio_backend(request):
        return virtual_time_backend(request.param)
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import selectors
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["VirtualTimeEventLoop", "seeded_trio_scheduler", "virtual_time_backend"]


class _JumpingSelector(selectors.BaseSelector):
    """Wraps a real selector; a wait with a timeout and no I/O ready advances the clock."""

    def __init__(self, real: selectors.BaseSelector) -> None:
        self._real = real
        self.now = 0.0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = self._real.select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            return self._real.select(None)  # nothing scheduled: wait for I/O or a thread
        self.now += timeout
        return []

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.get_key(fileobj)

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._real.get_map()

    def close(self) -> None:
        self._real.close()


class VirtualTimeEventLoop(asyncio.SelectorEventLoop):
    """An asyncio event loop whose clock starts at 0 and jumps to the next timer."""

    def __init__(self) -> None:
        self._jumping = _JumpingSelector(selectors.DefaultSelector())
        super().__init__(self._jumping)

    def time(self) -> float:
        return self._jumping.now


def virtual_time_backend(name: str) -> tuple[str, dict[str, Any]]:
    """The ``anyio_backend`` value that runs ``name`` ("asyncio" or "trio") on virtual time.

    Call it once per test: trio's ``MockClock`` keeps its time, so each test
    gets a new one.
    """
    if name == "asyncio":
        return ("asyncio", {"loop_factory": VirtualTimeEventLoop})
    if name == "trio":
        import trio.testing

        return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})
    raise ValueError(f"unknown backend {name!r}; expected 'asyncio' or 'trio'")


@contextlib.contextmanager
def seeded_trio_scheduler(seed: int | None) -> Iterator[None]:
    """Seed, for the block, the generator trio shuffles the tasks it wakes together with.

    trio runs the tasks woken in one scheduler batch in a random order (on
    purpose, to flush out order bugs); asyncio runs them in the order they were
    woken. With the same ``seed``, a trio run of the same program on virtual time
    repeats. It is the generator trio's Hypothesis plugin seeds, a private one
    (``trio._core._run._r``): left alone if trio no longer has it, and restored
    after the block. ``None`` does nothing. Enter it around ``trio.run`` (or
    ``anyio.run``), not inside the run.
    """
    import trio._core._run

    rng = getattr(trio._core._run, "_r", None)
    if seed is None or not isinstance(rng, random.Random):
        yield
        return
    state = rng.getstate()
    rng.seed(seed)
    try:
        yield
    finally:
        rng.setstate(state)
