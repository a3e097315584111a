"""Rate-limit arithmetic: GCRA cells and the (key, model) bucket pairs built on them,
what a provider charges for a request, and what each key learns about that charge.

Pure and synchronous; time is always passed in. Storage lives in
:mod:`maxllm_gate.state`.
"""

from maxllm_gate.limits.bounds import makespan_bound
from maxllm_gate.limits.buckets import (
    DAY,
    AdmissionMark,
    BucketPair,
    BucketSnapshot,
    CellSnapshot,
    CellSpec,
    Cost,
    LimitReport,
    LimitSpec,
)
from maxllm_gate.limits.calibration import ChargeCalibration
from maxllm_gate.limits.charge import CHARGE_RULES, PromptSize, default_charge_rule
from maxllm_gate.limits.gcra import GcraCell

__all__ = [
    "CHARGE_RULES",
    "DAY",
    "AdmissionMark",
    "BucketPair",
    "BucketSnapshot",
    "CellSnapshot",
    "CellSpec",
    "ChargeCalibration",
    "Cost",
    "GcraCell",
    "LimitReport",
    "LimitSpec",
    "PromptSize",
    "default_charge_rule",
    "makespan_bound",
]
