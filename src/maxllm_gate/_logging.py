"""Structured logging: structlog, with every configured API key scrubbed from every event.

If the application has configured structlog itself, our events go through its
configuration. Otherwise they go to stderr at ``LOG_LEVEL`` (WARNING until
:func:`configure_logging` is called), so importing the library stays quiet.
Keys are registered as secrets when a client learns them; any event value that
contains one is rewritten before it leaves this module, whoever renders it.

structlog is imported by the first event that is written, not by this module:
importing it costs a tenth of a second or more (it imports ``rich`` when installed).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

__all__ = [
    "configure_logging",
    "get_logger",
    "redact",
    "register_secret",
    "scrub_exception",
]

_secrets: set[str] = set()
_MASK = "<redacted>"
_level = logging.WARNING
_debug = False


def register_secret(secret: str) -> None:
    """Never let ``secret`` reach a log line."""
    if secret:
        _secrets.add(secret)


def redact(text: str, *secrets: str) -> str:
    """``text`` with ``secrets`` (and every registered secret) masked."""
    for secret in (*secrets, *_secrets):
        if secret and secret in text:
            text = text.replace(secret, _MASK)
    return text


def scrub_exception(exc: BaseException, *secrets: str) -> BaseException:
    """Mask secrets in the string arguments of ``exc`` and of its causes, in place."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        current.args = tuple(
            redact(arg, *secrets) if isinstance(arg, str) else arg for arg in current.args
        )
        current = current.__cause__ or current.__context__
    return exc


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, BaseException):
        return redact(f"{type(value).__name__}: {value}")
    if isinstance(value, dict | list | tuple):
        return redact(repr(value))
    return value


def configure_logging(level: str | int = "INFO", *, debug: bool = False) -> None:
    """Set the level (and, with ``debug``, a readable console format) of our own output.

    Has no effect on an application that configured structlog itself, beyond
    the scrubbing of keys, which always applies.
    """
    global _level, _debug
    if isinstance(level, str):
        named = logging.getLevelName(level.upper())
        if not isinstance(named, int):
            raise ValueError(f"unknown log level {level!r}")
        level = named
    _level = level
    _debug = debug


class _Logger:
    """Resolves the real logger on each call, so configuration may come later."""

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def _emit(self, level: int, method: str, event: str, **fields: Any) -> None:
        configured = _structlog_configured()
        if not configured and level < _level:
            return
        scrubbed = {name: _scrub(value) for name, value in fields.items()}
        if configured:
            import structlog

            bound = structlog.get_logger(self._name).bind()
        else:
            bound = _default_logger(self._name, _level, _debug)
        getattr(bound, method)(redact(event), **scrubbed)

    def debug(self, event: str, **fields: Any) -> None:
        self._emit(logging.DEBUG, "debug", event, **fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit(logging.INFO, "info", event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit(logging.WARNING, "warning", event, **fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit(logging.ERROR, "error", event, **fields)


class _Stderr:
    """Writes each rendered event to whatever ``sys.stderr`` is at that moment."""

    def msg(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    debug = info = warning = error = critical = msg


def _structlog_configured() -> bool:
    # An application that configured structlog has imported it: if it isn't loaded,
    # it isn't configured, and a filtered-out event need not load it.
    module = sys.modules.get("structlog")
    return module is not None and bool(module.is_configured())


_cache: dict[tuple[str, int, bool], Any] = {}


def _default_logger(name: str, level: int, debug: bool) -> Any:
    cached = _cache.get((name, level, debug))
    if cached is None:
        import structlog

        renderer: Any = (
            structlog.dev.ConsoleRenderer(colors=False)
            if debug
            else structlog.processors.JSONRenderer()
        )
        cached = structlog.wrap_logger(
            _Stderr(),
            wrapper_class=structlog.make_filtering_bound_logger(level),
            processors=[
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                renderer,
            ],
            logger_name=name,
        )
        _cache[name, level, debug] = cached
    return cached


def get_logger(name: str) -> _Logger:
    """The library's logger for ``name``; cheap when the level filters the event out."""
    return _Logger(name)
