"""Small builders shared by the tests."""

from __future__ import annotations

from typing import Any

from maxllm_gate import KeyConfig

MODEL = "sim-model"


def make_key(key_id: str, rpm: float, tpm: float, model: str = MODEL, **limits: Any) -> KeyConfig:
    return KeyConfig(
        api_key=f"sk-secret-{key_id}-0123456789",
        provider="openai",
        key_id=key_id,
        models={model: {"rpm_limit": rpm, "tpm_limit": tpm, **limits}},
    )
