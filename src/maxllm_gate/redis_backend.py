"""The 0.8 home of `HybridRateLimiter`, kept for code that imports it from here.

It lives in `maxllm_gate.state.hybrid`, beside the other state backends.
"""

from maxllm_gate.state.hybrid import HybridRateLimiter

__all__ = ["HybridRateLimiter"]
