"""Execution backends behind one narrow seam, :class:`Provider`."""

from maxllm_gate.providers.base import (
    Provider,
    ProviderCall,
    ProviderEmbedding,
    ProviderResponse,
    ProviderStream,
    StreamChunk,
)

__all__ = [
    "Provider",
    "ProviderCall",
    "ProviderEmbedding",
    "ProviderResponse",
    "ProviderStream",
    "StreamChunk",
]
