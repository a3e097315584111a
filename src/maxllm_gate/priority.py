"""The priority names a request may carry, and the levels the scheduler ranks them by."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

__all__ = ["PRIORITIES", "PRIORITY_LEVELS"]

#: The priority names, the most urgent first.
PRIORITIES: tuple[str, ...] = ("high", "medium", "low")

#: Priority names to levels; lower runs first.
PRIORITY_LEVELS: Mapping[str, int] = MappingProxyType(
    {name: level for level, name in enumerate(PRIORITIES)}
)
