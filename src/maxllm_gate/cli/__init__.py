"""The ``maxllm_gate`` command."""

from maxllm_gate.cli.demo import main

__all__ = ["main"]
