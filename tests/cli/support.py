"""The fake provider in its own process, keys pointing at it, and `maxllm_gate run` as a process."""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from maxllm_gate.testing import fake_provider_process

MODEL = "fake-model"
LATENCY = 0.2


@contextlib.contextmanager
def fake_keys(tmp_path: Path, limits: dict[str, tuple[int, int]]) -> Iterator[Path]:
    """Run the fake provider with ``{key_id: (rpm, tpm)}``; yield a --keys-config file."""
    secrets = {key_id: f"sk-fake-{key_id}-0000" for key_id in limits}
    served = {secrets[k]: {MODEL: list(rates)} for k, rates in limits.items()}
    with fake_provider_process(
        "--limits", json.dumps(served), "--latency", str(LATENCY), "--completion-tokens", "10"
    ) as url:
        keys = {
            key_id: {
                "api_key": secrets[key_id],
                "provider": "openai",
                "api_base": url,
                "transport": "openai_compat",
                "models": {MODEL: {"rpm_limit": rpm, "tpm_limit": tpm}},
            }
            for key_id, (rpm, tpm) in limits.items()
        }
        path = tmp_path / "keys.json"
        path.write_text(json.dumps(keys))
        yield path


def write_input(path: Path, count: int, *, seed: int = 1, max_tokens: int = 30) -> list[str]:
    """``count`` requests in OpenAI's batch format; returns their ids."""
    rng = random.Random(seed)
    ids = [f"req-{i:03d}" for i in range(count)]
    with path.open("w") as file:
        for custom_id in ids:
            words = " ".join(["word"] * rng.randint(5, 40))
            body = {
                "model": MODEL,
                "messages": [{"role": "user", "content": words}],
                "max_tokens": max_tokens,
            }
            line = {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions"}
            file.write(json.dumps({**line, "body": body}) + "\n")
    return ids


def run_command(
    *args: str,
    cwd: Path,
    preexec_fn: Callable[[], object] | None = None,
    stdin: int | None = None,
) -> subprocess.Popen[str]:
    """``maxllm_gate ARGS`` in a process of its own, with no key in its environment;
    ``preexec_fn`` runs in the child first (e.g. to set a resource limit)."""
    env = {k: v for k, v in os.environ.items() if k not in ("API_KEYS_CONFIG", "LOG_LEVEL")}
    return subprocess.Popen(
        [sys.executable, "-m", "maxllm_gate.cli", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=stdin,
        text=True,
        preexec_fn=preexec_fn,
    )


def read_output(path: Path) -> tuple[list[dict[str, Any]], str]:
    """The whole lines of an output file, and what follows the last newline (a torn line)."""
    text = path.read_text() if path.exists() else ""
    whole, _, torn = text.rpartition("\n")
    return [json.loads(line) for line in whole.splitlines() if line], torn
