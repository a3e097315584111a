"""maxllm_gate: the most throughput from rate-limited LLM API keys, and never a 429.

    from maxllm_gate import maxllm_gate

    async with maxllm_gate.from_env() as client:
        response = await client.chat("gpt-4o-mini", "Hello!")

Importing this package is cheap: the client and the rest of the API load on
first use (``from maxllm_gate import maxllm_gate``), LiteLLM and tiktoken when a
request needs them.
"""

from typing import TYPE_CHECKING, Any

from maxllm_gate._version import __version__
from maxllm_gate.errors import (
    AuthenticationError,
    BadRequestError,
    ConfigError,
    GateError,
    NoKeyAvailableError,
    ProviderError,
    QueueFullError,
    QuotaExceededError,
    RateLimitError,
    RequestTimeoutError,
    RequestTooLargeError,
    ShutdownError,
    TransientError,
    ValidationError,
)

if TYPE_CHECKING:
    from maxllm_gate.client import maxllm_gate
    from maxllm_gate.config import KeyConfig, ModelLimits, maxllm_gate_config
    from maxllm_gate.providers.simulated import SimulatedProvider
    from maxllm_gate.responses import ChatResponse, EmbeddingResponse, Usage
    from maxllm_gate.validation import validate_chat_request

# Imported when first asked for (PEP 562): the client brings attrs, cattrs, anyio's
# streams and the scheduler, a good part of the package's import time.
_LAZY = {
    "maxllm_gate": "maxllm_gate.client",
    "KeyConfig": "maxllm_gate.config",
    "ModelLimits": "maxllm_gate.config",
    "maxllm_gate_config": "maxllm_gate.config",
    "SimulatedProvider": "maxllm_gate.providers.simulated",
    "ChatResponse": "maxllm_gate.responses",
    "EmbeddingResponse": "maxllm_gate.responses",
    "Usage": "maxllm_gate.responses",
    "validate_chat_request": "maxllm_gate.validation",
}

__all__ = [
    "AuthenticationError",
    "BadRequestError",
    "ChatResponse",
    "ConfigError",
    "EmbeddingResponse",
    "GateError",
    "KeyConfig",
    "ModelLimits",
    "NoKeyAvailableError",
    "ProviderError",
    "QueueFullError",
    "QuotaExceededError",
    "RateLimitError",
    "RequestTimeoutError",
    "RequestTooLargeError",
    "ShutdownError",
    "SimulatedProvider",
    "TransientError",
    "Usage",
    "ValidationError",
    "__version__",
    "maxllm_gate",
    "maxllm_gate_config",
    "validate_chat_request",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
