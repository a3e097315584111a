"""The live progress of a batch: a rich display in a terminal, plain periodic lines elsewhere.

Both read the same `Snapshot`, taken in the event loop (never from rich's
thread, which would race the scheduler). rich is imported only when a terminal
shows the display.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol, TextIO

import anyio
import attrs

from maxllm_gate.batch import Batch

__all__ = ["Snapshot", "show_progress", "snapshot"]

_RICH_TICK = 0.25  # seconds of the run's clock between snapshots
_RICH_FRAME = 0.1  # wall seconds between redraws, so virtual time does not flood the terminal


@attrs.frozen(slots=True)
class KeyUse:
    key_id: str
    requests: int
    in_flight: int
    utilization: float  # of the key's buckets now, 0..1


@attrs.frozen(slots=True)
class Snapshot:
    """The state of a run at one moment. ``total`` is None when the input's size is unknown."""

    total: int | None
    succeeded: int
    failed: int
    skipped: int
    in_flight: int  # calls at the provider
    deferred: int  # queued, waiting for capacity
    tokens: int
    elapsed: float
    keys: tuple[KeyUse, ...]

    @property
    def done(self) -> int:
        return self.succeeded + self.failed

    @property
    def todo(self) -> int | None:
        return None if self.total is None else max(self.total - self.skipped, self.done)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        if self.todo is None or self.done == 0 or self.elapsed <= 0:
            return None
        return (self.todo - self.done) * self.elapsed / self.done

    def line(self) -> str:
        """One plain line, for logs and pipes."""
        count = f"{self.done}/{self.todo}" if self.todo is not None else f"{self.done}"
        eta = f" eta {_clock(self.eta)}" if self.eta is not None else ""
        keys = " ".join(f"{k.key_id}={k.requests}" for k in self.keys)
        return (
            f"[{_clock(self.elapsed)}] done {count} ({self.failed} failed), "
            f"in flight {self.in_flight}, deferred {self.deferred}, "
            f"{self.tokens_per_second:,.0f} tokens/s{eta} | {keys}"
        )


def snapshot(batch: Batch, total: int | None) -> Snapshot:
    stats = batch.stats
    status = batch.client.status()
    capacity = batch.client.capacity()["keys"]
    keys = []
    for key_id, info in status["keys"].items():
        models = capacity.get(key_id, {}).get("models", {})
        use = max((m["utilization"] for m in models.values()), default=0.0)
        keys.append(KeyUse(key_id, info["successes"], info["in_flight"], use))
    return Snapshot(
        total=total,
        succeeded=stats.succeeded,
        failed=stats.failed,
        skipped=stats.skipped,
        in_flight=status["in_flight"],
        deferred=status["queued"],
        tokens=stats.prompt_tokens + stats.completion_tokens,
        elapsed=stats.elapsed,
        keys=tuple(keys),
    )


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class _View(Protocol):
    tick: float

    def show(self, snap: Snapshot) -> None: ...
    def close(self, snap: Snapshot) -> None: ...


class PlainView:
    """A line every ``interval`` seconds of the run, and one at the end."""

    def __init__(self, stream: TextIO, interval: float) -> None:
        self.stream = stream
        self.tick = interval

    def show(self, snap: Snapshot) -> None:
        if snap.elapsed > 0:
            print(snap.line(), file=self.stream, flush=True)

    def close(self, snap: Snapshot) -> None:
        if snap.elapsed > 0:  # else the batch never started (its output could not be opened)
            print(snap.line(), file=self.stream, flush=True)


class RichView:
    """A live bar with the counts and each key's use, redrawn in place."""

    tick = _RICH_TICK

    def __init__(self, stream: TextIO) -> None:
        from rich.console import Console
        from rich.live import Live

        self._live = Live(console=Console(file=stream), auto_refresh=False, transient=False)
        self._live.start()
        self._drawn = 0.0

    def show(self, snap: Snapshot) -> None:
        now = time.monotonic()
        if now - self._drawn >= _RICH_FRAME:
            self._drawn = now
            self._live.update(self._render(snap), refresh=True)

    def close(self, snap: Snapshot) -> None:
        self._live.update(self._render(snap), refresh=True)
        self._live.stop()

    @staticmethod
    def _render(snap: Snapshot) -> Any:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table

        bar = Table.grid(padding=(0, 1))
        todo = snap.todo
        percent = f"{100 * snap.done / todo:3.0f}%" if todo else ""
        bar.add_row(
            ProgressBar(total=todo, completed=snap.done, width=40),
            f"{snap.done}/{todo if todo is not None else '?'}",
            percent,
            f"elapsed {_clock(snap.elapsed)}",
            f"ETA {_clock(snap.eta)}",
        )
        counts = (
            f"[green]done {snap.succeeded}[/]  [red]failed {snap.failed}[/]  "
            f"in flight {snap.in_flight}  deferred {snap.deferred}  "
            f"{snap.tokens_per_second:,.0f} tokens/s"
        )
        keys = Table("key", "requests", "in flight", "use", box=None, padding=(0, 2))
        for key in snap.keys:
            keys.add_row(key.key_id, str(key.requests), str(key.in_flight), _meter(key.utilization))
        return Group(bar, counts, keys)


def _meter(fraction: float, width: int = 10) -> str:
    filled = round(max(0.0, min(1.0, fraction)) * width)
    return "█" * filled + "·" * (width - filled) + f" {100 * fraction:3.0f}%"


def make_view(mode: str, stream: TextIO, interval: float) -> _View | None:
    """``mode``: "auto" (rich in a terminal, else plain), "rich", "plain" or "off"."""
    if mode == "off":
        return None
    if mode == "rich" or (mode == "auto" and stream.isatty()):
        return RichView(stream)
    return PlainView(stream, interval)


@contextlib.asynccontextmanager
async def show_progress(
    batch: Batch,
    total: int | None,
    *,
    mode: str = "auto",
    stream: TextIO | None = None,
    interval: float = 10.0,
) -> AsyncIterator[None]:
    """Show ``batch``'s progress while the block runs, then its last state."""
    view = make_view(mode, stream or sys.stderr, interval)
    if view is None:
        yield
        return

    async def refresh() -> None:
        while True:
            await anyio.sleep(view.tick)
            view.show(snapshot(batch, total))

    error: Exception | None = None
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(refresh)
            try:
                yield
            except Exception as exc:
                error = exc  # raised below, outside the group, so not wrapped in one
            finally:
                tg.cancel_scope.cancel()
    finally:
        view.close(snapshot(batch, total))
    if error is not None:
        raise error
