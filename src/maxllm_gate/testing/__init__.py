"""Helpers for testing code that uses maxllm_gate: virtual time and simulated providers."""

from maxllm_gate.providers.simulated import SimulatedProvider
from maxllm_gate.testing.virtual_time import VirtualTimeEventLoop, virtual_time_backend

__all__ = ["SimulatedProvider", "VirtualTimeEventLoop", "virtual_time_backend"]
