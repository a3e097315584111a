"""The gateway's own settings, read from the environment.

The client's settings (``API_KEYS_CONFIG``, ``HOST``, ``PORT``, ``DEBUG``,
``LOG_LEVEL`` ...) stay in `~maxllm_gate.config.maxllm_gate_config`; these are the
few that only the HTTP face needs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TypeVar

import attrs

from maxllm_gate.config import parse_bool, parse_int, parse_number, read_environment
from maxllm_gate.errors import ConfigError, show_value

__all__ = ["WORKER_CLASSES", "GatewaySettings"]

WORKER_CLASSES = ("asyncio", "trio")
_DEFAULT_MAX_BODY = 4 * 1024 * 1024  # room for a few base64 images
_DEFAULT_BODY_TIMEOUT = 60.0  # 4 MB at about half a megabit a second


@attrs.frozen(slots=True)
class GatewaySettings:
    """What the HTTP face needs beyond the client's config.

    Attributes:
      api_tokens: the bearer tokens clients may present (``GATEWAY_API_KEYS``,
        comma-separated). Never logged, never shown.
      allow_unauthenticated: serve without tokens (``GATEWAY_ALLOW_UNAUTHENTICATED``).
        Must be set explicitly when ``api_tokens`` is empty; a warning is logged.
      max_body_bytes: larger request bodies get a 413 (``GATEWAY_MAX_BODY_BYTES``).
      worker_class: the event loop, ``asyncio`` or ``trio`` (``GATEWAY_WORKER_CLASS``).
      retry_after: seconds a 503 (queue full, shutting down) asks clients to wait
        (``GATEWAY_RETRY_AFTER``).
      body_timeout: seconds a request body may take to arrive, else a 408 and the
        connection is closed (``GATEWAY_BODY_TIMEOUT``): a client trickling its body
        would otherwise hold a connection and its buffer forever.
    """

    api_tokens: tuple[str, ...] = attrs.field(default=(), repr=lambda t: f"<{len(t)} tokens>")
    allow_unauthenticated: bool = False
    max_body_bytes: int = _DEFAULT_MAX_BODY
    worker_class: str = "asyncio"
    retry_after: int = 1
    body_timeout: float = _DEFAULT_BODY_TIMEOUT

    def __attrs_post_init__(self) -> None:
        problems = []
        if not self.api_tokens and not self.allow_unauthenticated:
            problems.append(
                "GATEWAY_API_KEYS: set at least one client token, or set "
                "GATEWAY_ALLOW_UNAUTHENTICATED=true to serve without authentication"
            )
        if any(not token.strip() for token in self.api_tokens):
            problems.append("GATEWAY_API_KEYS: a token must not be empty")
        if self.max_body_bytes < 1024:
            problems.append(f"GATEWAY_MAX_BODY_BYTES: must be >= 1024, got {self.max_body_bytes}")
        if self.worker_class not in WORKER_CLASSES:
            problems.append(
                f"GATEWAY_WORKER_CLASS: must be one of {', '.join(WORKER_CLASSES)}, "
                f"got {show_value(self.worker_class)}"
            )
        if not self.body_timeout > 0:  # also NaN
            problems.append(f"GATEWAY_BODY_TIMEOUT: must be > 0, got {self.body_timeout}")
        if self.retry_after < 1:
            problems.append(f"GATEWAY_RETRY_AFTER: must be >= 1, got {self.retry_after}")
        if problems:
            raise ConfigError(
                "invalid gateway settings:\n" + "\n".join(f"  - {p}" for p in problems)
            )

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        dotenv_path: str | os.PathLike[str] | None = None,
    ) -> GatewaySettings:
        """Read the ``GATEWAY_*`` variables (default: `os.environ`).

        Values in the ``dotenv_path`` file, if it exists, fill in variables the
        environment does not set, as for the client's settings.

        Raises:
          ConfigError: a variable is invalid, or no token is set and running
            open was not asked for; the message names the variable.
        """
        env = read_environment(environ, dotenv_path=dotenv_path)
        tokens = tuple(t.strip() for t in env.get("GATEWAY_API_KEYS", "").split(",") if t.strip())
        return cls(
            api_tokens=tokens,
            allow_unauthenticated=_read(env, "GATEWAY_ALLOW_UNAUTHENTICATED", parse_bool, False),
            max_body_bytes=_read(env, "GATEWAY_MAX_BODY_BYTES", parse_int, _DEFAULT_MAX_BODY),
            worker_class=env.get("GATEWAY_WORKER_CLASS", "asyncio").lower(),
            retry_after=_read(env, "GATEWAY_RETRY_AFTER", parse_int, 1),
            body_timeout=_read(env, "GATEWAY_BODY_TIMEOUT", parse_number, _DEFAULT_BODY_TIMEOUT),
        )


_T = TypeVar("_T")


def _read(env: Mapping[str, str], name: str, parse: Callable[[str], _T], default: _T) -> _T:
    """``name``'s value parsed as the client's settings are, or ``default`` if unset."""
    text = env.get(name)
    if text is None:
        return default
    try:
        return parse(text)
    except ValueError as exc:
        raise ConfigError(f"{name}: must be {exc.args[0]}, got {show_value(text)}") from None
