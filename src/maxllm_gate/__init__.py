"""maxllm_gate: the most throughput from rate-limited LLM API keys, and never a 429.

    from maxllm_gate import maxllm_gate

    async with maxllm_gate.from_env() as client:
        response = await client.chat("gpt-4o-mini", "Hello!")

Importing this package is cheap: LiteLLM and tiktoken load on first use.
"""

from maxllm_gate._version import __version__
from maxllm_gate.client import maxllm_gate
from maxllm_gate.config import KeyConfig, ModelLimits, maxllm_gate_config
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
    ShutdownError,
    TransientError,
    ValidationError,
)
from maxllm_gate.providers.simulated import SimulatedProvider
from maxllm_gate.responses import ChatResponse, Usage
from maxllm_gate.validation import validate_chat_request

__all__ = [
    "AuthenticationError",
    "BadRequestError",
    "ChatResponse",
    "ConfigError",
    "GateError",
    "KeyConfig",
    "ModelLimits",
    "NoKeyAvailableError",
    "ProviderError",
    "QueueFullError",
    "QuotaExceededError",
    "RateLimitError",
    "RequestTimeoutError",
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
