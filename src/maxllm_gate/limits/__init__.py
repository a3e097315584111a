"""Rate-limit arithmetic: GCRA cells and the (key, model) bucket pairs built on them.

Pure and synchronous; time is always passed in. Storage lives in
:mod:`maxllm_gate.state`.
"""

from maxllm_gate.limits.bounds import makespan_bound
from maxllm_gate.limits.buckets import (
    AdmissionMark,
    BucketPair,
    BucketSnapshot,
    Cost,
    LimitSpec,
    RateLimitInfo,
)
from maxllm_gate.limits.gcra import GcraCell

__all__ = [
    "AdmissionMark",
    "BucketPair",
    "BucketSnapshot",
    "Cost",
    "GcraCell",
    "LimitSpec",
    "RateLimitInfo",
    "makespan_bound",
]
