"""Packing the inputs of many embedding lines into few requests (`Batch`'s ``split``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from maxllm_gate.batch.requests import BatchRequest

__all__ = ["EmbeddingPacks", "line_inputs"]


class EmbeddingPacks:
    """Embedding lines waiting to be packed, by what must be the same in one request
    (model, priority and every other parameter)."""

    def __init__(self, limit_of: Callable[[str], int]) -> None:
        self._limit_of = limit_of
        self._open: dict[str, tuple[list[BatchRequest], int]] = {}

    def add(self, request: BatchRequest) -> list[BatchRequest] | None:
        """Hold ``request``; returns a pack to send now, if one is full."""
        body = request.body
        size = len(line_inputs(body.get("input")))
        limit = self._limit_of(str(body.get("model")))
        rest = {k: v for k, v in body.items() if k != "input"}
        # Strings and token arrays cannot share a request.
        kind = (
            "text"
            if all(isinstance(item, str) for item in line_inputs(body.get("input")))
            else "tokens"
        )
        group = json.dumps([request.priority, kind, rest], sort_keys=True, default=str)
        pack, held = self._open.pop(group, ([], 0))
        if pack and held + size > limit:  # it does not fit: send the pack, start anew
            self._open[group] = ([request], size)
            return pack
        pack.append(request)
        if held + size >= limit:
            return pack
        self._open[group] = (pack, held + size)
        return None

    def drain(self) -> list[list[BatchRequest]]:
        """The packs not yet full; none is held after."""
        packs = [pack for pack, _ in self._open.values()]
        self._open.clear()
        return packs


def line_inputs(value: Any) -> list[Any]:
    """A line's inputs, as a list (a string or one token array is one input)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(t, int) for t in value):
        return [value]
    return list(value) if isinstance(value, list) else [value]
