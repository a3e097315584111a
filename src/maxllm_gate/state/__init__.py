"""Where limit state lives: process memory (default) or Redis (shared)."""

from maxllm_gate.state.base import StateBackend
from maxllm_gate.state.memory import MemoryState

__all__ = ["MemoryState", "StateBackend"]
