"""Does the client count what the provider counts? The accounting issue's checks, measured.

    python bench/accounting.py [--scenarios strict,lenient] [--transports openai_compat]
                               [--backends asyncio,trio]
                               [--quick] [--no-gateway] [--no-oversize]

Each scenario runs maxllm_gate with its default configuration (only the keys and
their limits) against the fake provider in its own process
(``maxllm_gate.testing.fake_provider``). The provider counts the way OpenAI's
limiter does, by its own code and never the client's: a prompt costs its
characters / 4 (``--charge-factor`` scales that; ``--charge tokens`` counts with its
own tokenizer), plus ``max_tokens``, charged at admission. Each request is a
1,200-character English prompt with ``max_tokens=200``.

A row gives the 429s the provider answered, the caller's failures, and the
efficiency: the bound (``makespan_bound`` of what the provider itself debited,
under its real limits, plus one call's latency) over the makespan.

Then the gateway: a burst of 150 requests through the official ``openai`` client
against a gateway in front of a strict provider. And oversized requests:
``max_tokens=10**9`` and a prompt over every key's TPM, each timed from the call
to its error, in memory and with Redis (a ``redis-server`` on a free port),
followed by an ordinary request that must be served on schedule.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx

ROOT = Path(__file__).resolve().parent.parent
RUNNER = ROOT / "bench" / "peers" / "runner.py"
MODEL = "gpt-4o-mini"
LATENCY = 0.2
MAX_TOKENS = 200
PROMPT = ("The quick brown fox jumps over the lazy dog while the cat watches. " * 20)[:1200]


@attrs.frozen
class Scenario:
    name: str
    keys: tuple[tuple[int, int], ...]  # (rpm, tpm) the client is configured with
    burst_window: float
    requests: int
    charge_factor: float = 1.0
    charge: str = "chars"
    real: float = 1.0  # the provider's real limits, as a share of the configured ones
    headers: bool = True
    # The acceptance: most 429s per key, and the efficiency to reach.
    max_429s_per_key: float = 0
    max_429s: float = 0
    min_efficiency: float = 0.95


STRICT = ((600, 60_000),) * 3
SCENARIOS = {
    s.name: s
    for s in [
        Scenario("strict", STRICT, 1.0, 160),
        Scenario("lenient", STRICT, 60.0, 480),
        Scenario("heterogeneous", ((1_200, 120_000), (120, 12_000), (120, 12_000)), 60.0, 384),
        Scenario(
            "strict-1.3x",
            STRICT,
            1.0,
            160,
            charge_factor=1.3,
            max_429s_per_key=2,
            max_429s=6,
            min_efficiency=0.93,
        ),
        Scenario(
            "half-no-headers",
            STRICT,
            1.0,
            600,
            real=0.5,
            headers=False,
            max_429s=10,
            min_efficiency=0.85,
        ),
        Scenario(
            "own-tokenizer", STRICT, 1.0, 160, charge="tokens", max_429s=3, min_efficiency=0.93
        ),
    ]
}


def api_key(index: int) -> str:
    return f"sk-accounting-{index:03d}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def fake_provider(scenario: Scenario) -> Iterator[str]:
    from maxllm_gate.testing.fake_provider import fake_provider_process

    limits = {
        api_key(i): {MODEL: [rpm * scenario.real, tpm * scenario.real]}
        for i, (rpm, tpm) in enumerate(scenario.keys)
    }
    args = ["--limits", json.dumps(limits), "--burst-window", str(scenario.burst_window)]
    args += ["--latency", str(LATENCY), "--completion-tokens", "20"]
    args += ["--charge", scenario.charge, "--charge-factor", str(scenario.charge_factor)]
    if not scenario.headers:
        args.append("--no-rate-limit-headers")
    with fake_provider_process(*args) as url:
        yield url


def provider_stats(url: str) -> dict[str, dict[str, int]]:
    stats: dict[str, dict[str, int]] = httpx.get(url.removesuffix("/v1") + "/stats").json()
    return stats


def run_scenario(scenario: Scenario, transport: str, backend: str = "asyncio") -> dict[str, Any]:
    from maxllm_gate.limits import LimitSpec, makespan_bound

    work = [{"at": 0.0, "prompt": PROMPT, "max_tokens": MAX_TOKENS}] * scenario.requests
    with fake_provider(scenario) as url:
        spec = {
            "model": MODEL,
            "url": url,
            "keys": [
                {"id": f"key-{i}", "api_key": api_key(i), "rpm": rpm, "tpm": tpm}
                for i, (rpm, tpm) in enumerate(scenario.keys)
            ],
            "requests": work,
            "options": {"transport": transport},
            "deadline": 600,
            "backend": backend,
        }
        env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LOG_LEVEL": "WARNING"}
        proc = subprocess.run(
            [sys.executable, str(RUNNER), "gate"],
            input=json.dumps(spec),
            capture_output=True,
            text=True,
            cwd=RUNNER.parent,
            env=env,
            timeout=900,
        )
        stats = provider_stats(url)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{scenario.name} failed (rc={proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(lines[-1].removeprefix("RESULT "))
    debited = sum(s["charged_tokens"] for s in stats.values())
    real = [
        LimitSpec.from_limits(rpm * scenario.real, tpm * scenario.real, scenario.burst_window)
        for rpm, tpm in scenario.keys
    ]
    done = sum(1 for x in result["latencies"] if x is not None)
    bound = makespan_bound(done, debited, real) + LATENCY
    per_key = [s["rate_limited"] for s in stats.values()]
    row = {
        "scenario": scenario.name,
        "transport": transport,
        "backend": backend,
        "requests": scenario.requests,
        "failed": sum(result["failures"].values()),
        "provider_429s": sum(per_key),
        "most_429s_on_a_key": max(per_key, default=0),
        "makespan": round(result["makespan"], 2),
        "bound": round(bound, 2),
        "efficiency": round(bound / result["makespan"], 3),
    }
    row["met"] = (
        row["failed"] == 0
        and row["provider_429s"] <= scenario.max_429s
        and row["most_429s_on_a_key"] <= max(scenario.max_429s_per_key, scenario.max_429s)
        and row["efficiency"] >= scenario.min_efficiency
    )
    return row


# -- the gateway --------------------------------------------------------------------------


@contextlib.contextmanager
def gateway(fake_url: str, keys: tuple[tuple[int, int], ...]) -> Iterator[str]:
    from gateway import gateway_process  # bench/gateway.py, beside this file

    config = {
        f"key-{i}": {
            "api_key": api_key(i),
            "provider": "openai",
            "api_base": fake_url,
            "transport": "openai_compat",
            "models": {MODEL: {"rpm_limit": rpm, "tpm_limit": tpm}},
        }
        for i, (rpm, tpm) in enumerate(keys)
    }
    port = free_port()
    with gateway_process(config, port):
        yield f"http://127.0.0.1:{port}/v1"


def run_gateway_burst(requests: int = 150) -> dict[str, Any]:
    import openai

    from gateway import TOKEN

    scenario = Scenario("gateway", STRICT, 1.0, requests)
    with fake_provider(scenario) as fake_url, gateway(fake_url, scenario.keys) as url:

        async def burst() -> list[str | None]:
            client = openai.AsyncOpenAI(base_url=url, api_key=TOKEN, max_retries=0, timeout=600)
            messages: Any = [{"role": "user", "content": PROMPT}]

            async def one() -> str | None:
                try:
                    await client.chat.completions.create(
                        model=MODEL, messages=messages, max_tokens=MAX_TOKENS
                    )
                except openai.APIError as exc:
                    return type(exc).__name__
                return None

            try:
                return await asyncio.gather(*(one() for _ in range(requests)))
            finally:
                await client.close()

        started = time.monotonic()
        outcomes = asyncio.run(burst())
        makespan = time.monotonic() - started
        stats = provider_stats(fake_url)
    failed = [o for o in outcomes if o is not None]
    return {
        "scenario": "gateway burst (openai client)",
        "requests": requests,
        "failed": len(failed),
        "provider_429s": sum(s["rate_limited"] for s in stats.values()),
        "makespan": round(makespan, 2),
        "met": not failed and sum(s["rate_limited"] for s in stats.values()) == 0,
    }


# -- requests no key can admit -----------------------------------------------------------


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed")
    port = free_port()
    folder = tempfile.mkdtemp()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", folder],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


def run_oversize(redis_url: str | None) -> list[dict[str, Any]]:
    from maxllm_gate import KeyConfig, RequestTooLargeError, maxllm_gate

    scenario = Scenario("oversize", ((600, 10_000),), 1.0, 0)
    rows: list[dict[str, Any]] = []
    with fake_provider(scenario) as url:
        keys = [
            KeyConfig(
                api_key=api_key(0),
                provider="openai",
                key_id="key-0",
                api_base=url,
                transport="openai_compat",
                models={MODEL: {"rpm_limit": 600, "tpm_limit": 10_000}},
            )
        ]

        async def run() -> None:
            async with maxllm_gate(keys=keys, redis_url=redis_url) as client:
                await client.chat(MODEL, "warm up", max_tokens=5)
                for name, prompt, max_tokens in [
                    ("max_tokens=10**9", "hi", 10**9),
                    ("a prompt over every key's TPM", "x" * 4 * 20_000, 10),
                ]:
                    started = time.perf_counter()
                    try:
                        await client.chat(MODEL, prompt, max_tokens=max_tokens)
                        error = "none"
                    except RequestTooLargeError as exc:
                        error = type(exc).__name__
                    refused_ms = (time.perf_counter() - started) * 1000
                    started = time.perf_counter()
                    await client.chat(MODEL, "and the next one", max_tokens=5)
                    next_ms = (time.perf_counter() - started) * 1000
                    rows.append(
                        {
                            "scenario": f"{name} ({'Redis' if redis_url else 'memory'})",
                            "error": error,
                            "error_ms": round(refused_ms, 2),
                            "next_request_ms": round(next_ms, 1),
                            "met": error == "RequestTooLargeError" and refused_ms < 10,
                        }
                    )

        asyncio.run(run())
        rows[-1]["provider_429s"] = sum(s["rate_limited"] for s in provider_stats(url).values())
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--transports", default="openai_compat,litellm")
    parser.add_argument("--backends", default="asyncio", help="asyncio, trio or both")
    parser.add_argument("--no-gateway", action="store_true")
    parser.add_argument("--no-oversize", action="store_true")
    parser.add_argument("--no-redis", action="store_true", help="oversize in memory only")
    parser.add_argument(
        "--quick", action="store_true", help="strict only, native transport (a smoke run)"
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a run of seconds that checks the script works (tests/bench runs it)",
    )
    args = parser.parse_args()
    names = ["strict"] if args.quick or args.smoke else args.scenarios.split(",")
    transports = ["openai_compat"] if args.quick or args.smoke else args.transports.split(",")
    rows: list[dict[str, Any]] = []
    for name in names:
        scenario = SCENARIOS[name]
        if args.smoke:  # twice what the bursts hold: too few for the efficiency to mean much
            scenario = attrs.evolve(scenario, requests=12, min_efficiency=0.0)
        for transport in transports:
            for backend in args.backends.split(","):
                rows.append(run_scenario(scenario, transport, backend))
                print(json.dumps(rows[-1]), flush=True)
    if not args.no_gateway and not args.quick:
        rows.append(run_gateway_burst(12 if args.smoke else 150))
        print(json.dumps(rows[-1]), flush=True)
    if not args.no_oversize:
        oversize = run_oversize(None)
        if not args.no_redis and not args.quick:
            with redis_server() as url:
                oversize += run_oversize(url)
        for row in oversize:
            print(json.dumps(row), flush=True)
        rows += oversize
    unmet = [row["scenario"] for row in rows if not row["met"]]
    print(
        f"{len(rows) - len(unmet)} of {len(rows)} checks met" + (f"; not: {unmet}" if unmet else "")
    )
    sys.exit(1 if unmet else 0)


if __name__ == "__main__":
    main()
