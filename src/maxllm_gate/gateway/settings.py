"""The gateway's own settings, read from the environment.

The client's settings (``API_KEYS_CONFIG``, ``HOST``, ``PORT``, ``DEBUG``,
``LOG_LEVEL`` ...) stay in `~maxllm_gate.config.maxllm_gate_config`; these are the
few that only the HTTP face needs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import attrs

from maxllm_gate.errors import ConfigError

__all__ = ["WORKER_CLASSES", "GatewaySettings"]

WORKER_CLASSES = ("asyncio", "trio")
_TRUE = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
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
                f"got {self.worker_class!r}"
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
        env: dict[str, str] = {}
        if dotenv_path is not None and os.path.isfile(dotenv_path):
            from dotenv import dotenv_values

            env.update({k: v for k, v in dotenv_values(dotenv_path).items() if v is not None})
        env.update(os.environ if environ is None else environ)
        tokens = tuple(t.strip() for t in env.get("GATEWAY_API_KEYS", "").split(",") if t.strip())
        open_text = env.get("GATEWAY_ALLOW_UNAUTHENTICATED", "false").strip().lower()
        if open_text not in _TRUE:
            raise ConfigError(
                "GATEWAY_ALLOW_UNAUTHENTICATED: must be one of true/false/1/0/yes/no, "
                f"got {open_text!r}"
            )
        return cls(
            api_tokens=tokens,
            allow_unauthenticated=_TRUE[open_text],
            max_body_bytes=_int(env, "GATEWAY_MAX_BODY_BYTES", _DEFAULT_MAX_BODY),
            worker_class=env.get("GATEWAY_WORKER_CLASS", "asyncio").strip().lower() or "asyncio",
            retry_after=_int(env, "GATEWAY_RETRY_AFTER", 1),
            body_timeout=_float(env, "GATEWAY_BODY_TIMEOUT", _DEFAULT_BODY_TIMEOUT),
        )


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{name}: must be an integer, got {text!r}") from None


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{name}: must be a number, got {text!r}") from None
