"""Execution backends behind one narrow seam, :class:`Provider`."""

from maxllm_gate.providers.base import (
    Provider,
    ProviderCall,
    ProviderResponse,
    ProviderStream,
    StreamChunk,
)

__all__ = ["Provider", "ProviderCall", "ProviderResponse", "ProviderStream", "StreamChunk"]
