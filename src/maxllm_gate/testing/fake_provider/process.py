"""The fake provider as a process of its own: its command line, and a launcher for tests
and benchmarks."""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence

import anyio

from maxllm_gate.testing.fake_provider.limits import ANY_MODEL
from maxllm_gate.testing.fake_provider.server import FakeProvider

__all__ = ["fake_provider_process", "main"]


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m maxllm_gate.testing.fake_provider",
        description="Serve a fake OpenAI-compatible provider on 127.0.0.1 until killed.",
    )
    add = parser.add_argument
    add("--port", type=int, default=0, help="0 picks a free port (default)")
    add("--rpm", type=float, help="requests per minute enforced per key and model")
    add("--tpm", type=float, help="tokens per minute enforced per key and model")
    add("--burst-window", type=float, default=1.0, help="seconds of each limit a bucket holds")
    add("--latency", type=float, default=0.0, help="seconds before the first byte")
    add("--seconds-per-token", type=float, default=0.0)
    add("--completion-tokens", type=int, default=16)
    add("--keys", default="", help="comma-separated API keys; others get a 401 (default: any)")
    add("--models", default="", help="comma-separated models listed by /v1/models (default: any)")
    add(
        "--limits",
        default="",
        help="JSON {api_key: {model: [rpm, tpm]}}, per key (overrides --keys/--rpm/--tpm)",
    )
    add("--token-accounting", choices=["admission", "usage"], default="admission")
    add(
        "--charge",
        choices=["chars", "tokens"],
        default="chars",
        help="how the limiter counts a prompt: a token per 4 characters (default) or its tokenizer",
    )
    add("--charge-factor", type=float, default=1.0, help="multiplies the prompt part of a charge")
    add("--error-rate", type=float, default=0.0)
    add("--hang-rate", type=float, default=0.0)
    add("--requests-per-day", type=float, help="a daily request cap per key and model")
    add("--requests-per-day-headers", action="store_true", help="Groq-style request headers")
    add("--no-rate-limit-headers", action="store_true")
    add("--seed", type=int, default=0)
    add("--backend", choices=["asyncio", "trio"], default="asyncio")
    args = parser.parse_args(argv)
    if (args.rpm is None) != (args.tpm is None):
        parser.error("give both --rpm and --tpm, or neither (unlimited)")
    return args


@contextlib.contextmanager
def fake_provider_process(
    *args: str, preexec_fn: Callable[[], object] | None = None
) -> Iterator[str]:
    """Run the fake provider in a process of its own, as a real provider is.

    ``args`` are this module's command-line options (``"--limits", "{...}"``);
    ``preexec_fn`` runs in the child before it starts (e.g. to raise its priority).
    Yields the base URL once it serves; terminates the process on exit.

    Raises:
      RuntimeError: the process did not start serving.
    """
    command = [sys.executable, "-m", "maxllm_gate.testing.fake_provider", *args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, preexec_fn=preexec_fn)
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        if not line.startswith("URL "):
            raise RuntimeError(f"the fake provider did not start: {line!r}")
        yield line.split(" ", 1)[1]
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main(argv: Sequence[str] | None = None) -> None:
    """Run the fake provider from the command line; prints ``URL <base url>`` when ready."""
    args = _arguments(argv)
    keys = [k for k in args.keys.split(",") if k]
    models = [m for m in args.models.split(",") if m] or [ANY_MODEL]
    rates: tuple[float, float] | None = None
    if args.rpm is not None:
        rates = (args.rpm, args.tpm)
    # Listed keys are the only ones accepted; an empty model table leaves a key unlimited.
    limits: dict[str, dict[str, tuple[float, float]]] = {
        key: dict.fromkeys(models, rates) if rates else {} for key in keys
    }
    if args.limits:
        limits = {
            key: {model: (float(rpm), float(tpm)) for model, (rpm, tpm) in table.items()}
            for key, table in json.loads(args.limits).items()
        }
    fake = FakeProvider(
        limits=limits or None,
        default_limits=rates if not limits else None,
        burst_window=args.burst_window,
        latency=args.latency,
        seconds_per_token=args.seconds_per_token,
        completion_tokens=args.completion_tokens,
        token_accounting=args.token_accounting,
        error_rate=args.error_rate,
        hang_rate=args.hang_rate,
        requests_per_day=args.requests_per_day,
        requests_per_day_headers=args.requests_per_day_headers,
        send_rate_limit_headers=not args.no_rate_limit_headers,
        seed=args.seed,
        charge=args.charge,
        charge_factor=args.charge_factor,
    )

    async def run() -> None:
        # SIGINT and SIGTERM stop the server cleanly (exit status 0) under both backends.
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with anyio.create_task_group() as tg:
                url = await tg.start(functools.partial(fake.serve, port=args.port))
                print(f"URL {url}", flush=True)
                async for _ in signals:
                    tg.cancel_scope.cancel()
                    break

    anyio.run(run, backend=args.backend)
