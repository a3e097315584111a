"""Logging through the standard library, with every configured API key scrubbed.

The library writes each event to a standard :mod:`logging` logger under
``maxllm_gate`` (``maxllm_gate.actors.key``, ``maxllm_gate.client``...), and never
prints on its own: the ``maxllm_gate`` logger has a `logging.NullHandler`, so the
application's configuration decides what is written and where, as for any library::

    logging.basicConfig()                                  # warnings reach the root handler
    logging.getLogger("maxllm_gate").setLevel(logging.CRITICAL)  # and now nothing does

Each event is one `logging.LogRecord`. Its message reads ``event key=value ...``
for plain handlers; the event name and its fields are also on the record, as
``record.event`` and ``record.fields`` (a dict), for structured handlers (for
structlog's ``ProcessorFormatter``, read them with a ``foreign_pre_chain`` step).

Keys are registered as secrets when a client learns them. Every field and message
is scrubbed before the record is made, so no handler can see a key.

The CLI and the gateway own their process: they call :func:`configure_logging`,
which writes our events to stderr as JSON lines (or, with ``debug``, readable
lines), rendered by structlog. structlog is imported then, not by the library.
"""

from __future__ import annotations

import datetime
import logging
import sys
import traceback
from typing import Any

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

__all__ = [
    "configure_logging",
    "get_logger",
    "redact",
    "register_secret",
    "root_causes",
    "scrub_exception",
]

ROOT = "maxllm_gate"
_secrets: set[str] = set()
_MASK = "<redacted>"

logging.getLogger(ROOT).addHandler(logging.NullHandler())


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


def _logfmt(value: Any) -> str:
    text = str(value)
    return repr(text) if not text or any(c in text for c in " ='\"") else text


class _Logger:
    """Scrubs an event's fields and writes it to the standard logger ``name``."""

    __slots__ = ("_logger",)

    def __init__(self, name: str) -> None:
        self._logger = logging.getLogger(name)

    def _emit(self, level: int, event: str, fields: dict[str, Any]) -> None:
        if not self._logger.isEnabledFor(level):
            return
        event = redact(event)
        scrubbed = {name: _scrub(value) for name, value in fields.items()}
        pairs = " ".join(f"{name}={_logfmt(value)}" for name, value in scrubbed.items())
        self._logger.log(
            level,
            "%s",
            f"{event} {pairs}" if pairs else event,
            extra={"event": event, "fields": scrubbed},
            stacklevel=3,
        )

    def debug(self, event: str, **fields: Any) -> None:
        self._emit(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit(logging.WARNING, event, fields)

    def error(self, event: str, *, exc: BaseException | None = None, **fields: Any) -> None:
        """With ``exc``: its root causes as the ``error`` field (the leaves of an
        exception group, not the group) and its whole ``traceback``."""
        if exc is not None and self._logger.isEnabledFor(logging.ERROR):
            fields["error"] = "; ".join(f"{type(e).__name__}: {e}" for e in root_causes(exc))
            fields["traceback"] = "".join(traceback.format_exception(exc)).rstrip()
        self._emit(logging.ERROR, event, fields)


def root_causes(exc: BaseException) -> list[BaseException]:
    """The exceptions ``exc`` stands for: itself, or the leaves of an exception group."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in root_causes(inner)]
    return [exc]


def get_logger(name: str) -> _Logger:
    """The library's logger for ``name`` (a child of ``maxllm_gate``)."""
    return _Logger(name)


# -- for the processes we own: the CLI and the gateway ----------------------------------


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at each event (pytest swaps it per test)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


class _StructlogFormatter(logging.Formatter):
    """Renders a record with structlog: one JSON object per line, or a readable line."""

    def __init__(self, *, debug: bool) -> None:
        super().__init__()
        import structlog

        self._render: Any = (
            structlog.dev.ConsoleRenderer(colors=False)
            if debug
            else structlog.processors.JSONRenderer()
        )

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        event_dict: dict[str, Any] = {
            "event": getattr(record, "event", None) or redact(record.getMessage()),
            **(fields if isinstance(fields, dict) else {}),
            "level": record.levelname.lower(),
            "logger": record.name,
            "timestamp": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
            .isoformat()
            .replace("+00:00", "Z"),
        }
        return str(self._render(None, record.levelname.lower(), event_dict))


def configure_logging(level: str | int = "INFO", *, debug: bool = False) -> None:
    """Write our events at ``level`` and above to stderr, for a process we own.

    JSON lines, or with ``debug`` readable lines. The events stop there (they do
    not also propagate to the root logger's handlers). Calling it again replaces
    the handler of the previous call. A library user never needs it: configure
    :mod:`logging` instead.

    Raises:
      ValueError: ``level`` is not a level name.
    """
    if isinstance(level, str):
        named = logging.getLevelName(level.upper())
        if not isinstance(named, int):
            raise ValueError(f"unknown log level {level!r}")
        level = named
    logger = logging.getLogger(ROOT)
    for handler in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
        logger.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(_StructlogFormatter(debug=debug))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
