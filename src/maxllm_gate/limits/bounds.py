"""The shortest possible makespan of a workload under a set of limits.

No scheduler can finish sooner: after the buckets' initial burst is spent,
work only flows at the sum of the keys' refill rates. Benchmarks and the demo
report efficiency as this bound divided by the makespan achieved.
"""

from __future__ import annotations

from collections.abc import Iterable

from maxllm_gate.limits.buckets import LimitSpec

__all__ = ["makespan_bound"]


def makespan_bound(requests: int, tokens: float, limits: Iterable[LimitSpec]) -> float:
    """Seconds needed to admit ``requests`` requests costing ``tokens`` in all.

    Takes the tighter of the two dimensions: ``(work - burst) / refill rate``
    for requests and for tokens, summed over every (key, model) in ``limits``.
    Latency is not included.
    """
    specs = list(limits)
    rpm = sum(s.rpm_limit for s in specs) / 60.0
    tpm = sum(s.tpm_limit for s in specs) / 60.0
    by_requests = max(0.0, requests - sum(s.rpm_capacity for s in specs)) / rpm
    by_tokens = max(0.0, tokens - sum(s.tpm_capacity for s in specs)) / tpm
    return max(by_requests, by_tokens)
