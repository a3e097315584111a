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

Outside pytest (the ``simulate`` and ``demo`` commands): `run_virtual`.

Under trio it uses two of trio's private names, both read in `_trio_private`
alone; tests/testing/test_virtual_time.py checks them for the trio that
constraints.txt pins, within the range pyproject.toml declares.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import selectors
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

if TYPE_CHECKING:
    from trio.testing import MockClock

__all__ = ["VirtualTimeEventLoop", "run_virtual", "seeded_trio_scheduler", "virtual_time_backend"]

_T = TypeVar("_T")


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
        mock_clock, _ = _trio_private()
        return ("trio", {"clock": mock_clock(autojump_threshold=0)})
    raise ValueError(f"unknown backend {name!r}; expected 'asyncio' or 'trio'")


def run_virtual(
    func: Callable[..., Awaitable[_T]], *args: Any, backend: str = "trio", seed: int | None = None
) -> _T:
    """Run ``func(*args)`` with `anyio.run` on virtual time: the clock jumps over every wait.

    Under trio, on its ``MockClock``; under asyncio, on `VirtualTimeEventLoop`
    (a third less CPU than trio). ``seed`` makes a trio run repeatable (see
    `seeded_trio_scheduler`); asyncio runs tasks woken together in the order they
    were woken, so its runs repeat.
    """
    name, options = virtual_time_backend(backend)
    if name == "asyncio":
        return anyio.run(func, *args, backend=name, backend_options=options)
    with seeded_trio_scheduler(seed):
        return anyio.run(func, *args, backend=name, backend_options=options)


@contextlib.contextmanager
def seeded_trio_scheduler(seed: int | None) -> Iterator[None]:
    """Seed, for the block, the generator trio shuffles the tasks it wakes together with.

    trio runs the tasks woken in one scheduler batch in a random order (on
    purpose, to flush out order bugs); asyncio runs them in the order they were
    woken. With the same ``seed``, a trio run of the same program on virtual time
    repeats. It is the generator trio's Hypothesis plugin seeds, a private one:
    left alone if trio no longer has it, and restored after the block. ``None``
    does nothing. Enter it around ``trio.run`` (or ``anyio.run``), not inside the run.
    """
    _, rng = _trio_private()
    if seed is None or rng is None:
        yield
        return
    state = rng.getstate()
    rng.seed(seed)
    try:
        yield
    finally:
        rng.setstate(state)


def _trio_private() -> tuple[type[MockClock], random.Random | None]:
    """The two private names of trio this module uses; the only place it reaches in.

    - ``MockClock`` from trio's core, where ``trio.testing`` takes it from:
      ``trio.testing`` imports pytest when it is installed, which a command should
      not pay for. The public one if trio moved it.
    - ``trio._core._run._r``, the generator trio shuffles the tasks it wakes
      together with (the one trio's Hypothesis plugin seeds); None if it is gone.
    """
    import trio._core._run

    try:
        from trio._core._mock_clock import MockClock
    except ImportError:  # pragma: no cover - trio moved it
        from trio.testing import MockClock

    rng = getattr(trio._core._run, "_r", None)
    return MockClock, rng if isinstance(rng, random.Random) else None
