"""Each provider's shape of limits, in its own terms (docs/providers.md).

What ``check-config`` shows and warns about: which of a model's limit fields
the provider has, what it calls them, and which it has that a configuration
should set. A provider not listed here is taken to have OpenAI's shape.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

__all__ = ["LimitShape", "describe_limits", "limit_warnings", "shape_of"]

# Config field -> the words a provider's console uses, and the unit.
_TERMS = {
    "rpm_limit": "RPM",
    "tpm_limit": "TPM",
    "itpm_limit": "ITPM",
    "otpm_limit": "OTPM",
    "rpd_limit": "RPD",
    "tpd_limit": "TPD",
}


@attrs.frozen
class LimitShape:
    """The limit fields a provider has (``has``), and those a configuration of
    its keys should set (``expects``), with why."""

    has: frozenset[str]
    expects: Mapping[str, str] = attrs.field(factory=dict)


_OPENAI = LimitShape(frozenset({"rpm_limit", "tpm_limit", "rpd_limit", "tpd_limit"}))
_SHAPES = {
    "openai": _OPENAI,
    "azure": LimitShape(frozenset({"rpm_limit", "tpm_limit"})),
    "anthropic": LimitShape(
        frozenset({"rpm_limit", "itpm_limit", "otpm_limit"}),
        {
            "itpm_limit": "Anthropic limits input tokens per minute (ITPM)",
            "otpm_limit": "Anthropic limits output tokens per minute apart (OTPM)",
        },
    ),
    "groq": LimitShape(
        frozenset({"rpm_limit", "tpm_limit", "rpd_limit", "tpd_limit"}),
        {"rpd_limit": "Groq caps requests per day, and its request headers count per day"},
    ),
    "gemini": LimitShape(
        frozenset({"rpm_limit", "tpm_limit", "rpd_limit"}),
        {"rpd_limit": "Gemini caps requests per day"},
    ),
}
_SHAPES["azure_ai"] = _SHAPES["azure"]
_SHAPES["vertex_ai"] = _SHAPES["gemini"]


def shape_of(provider: str) -> LimitShape:
    """The shape of ``provider``'s limits (OpenAI's for one not listed)."""
    return _SHAPES.get(provider.lower(), _OPENAI)


def _set_fields(limits: object) -> dict[str, int]:
    fields = {name: getattr(limits, name, None) for name in _TERMS}
    # With itpm_limit, tpm_limit is the same bucket: not a limit of its own.
    if fields["itpm_limit"] is not None:
        fields["tpm_limit"] = None
    return {name: value for name, value in fields.items() if value is not None}


def describe_limits(limits: object) -> str:
    """A model's limits in providers' terms: ``"50 RPM, 40000 ITPM, 8000 OTPM"``."""
    return ", ".join(f"{value} {_TERMS[name]}" for name, value in _set_fields(limits).items())


def limit_warnings(provider: str, limits: object) -> list[str]:
    """What does not match ``provider``'s shape: a limit it does not have, or one it
    has that is missing."""
    shape = shape_of(provider)
    fields = _set_fields(limits)
    warnings = [
        f"{name} is set, but {provider} has no {_TERMS[name]} limit"
        for name in fields
        if name not in shape.has
    ]
    warnings += [
        f"{name} is missing: {why}" for name, why in shape.expects.items() if name not in fields
    ]
    return warnings
