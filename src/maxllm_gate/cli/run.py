"""``maxllm_gate run INPUT.jsonl -o OUTPUT.jsonl``: one large job through every key.

Each result is appended to OUTPUT as one whole line as soon as it is done; run
the same command again to resume (ids already in OUTPUT are skipped). The first
Ctrl-C or SIGTERM stops taking new requests, drops those still queued (nothing
was paid for them) and lets those sent to a provider finish (up to
``SHUTDOWN_TIMEOUT``); a second one cancels those too. Either way OUTPUT holds
only whole lines, and the requests not written are the ones a resume will do.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import stat
import sys
from typing import Any

import anyio

from maxllm_gate.batch import Batch, count_lines
from maxllm_gate.cli._common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    add_config_options,
    describe,
    load_config,
    print_error,
)
from maxllm_gate.cli.progress import show_progress
from maxllm_gate.cli.summary import build_summary, format_summary
from maxllm_gate.client import maxllm_gate
from maxllm_gate.config import maxllm_gate_config
from maxllm_gate.errors import ConfigError

__all__ = ["add_parser"]


def add_parser(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "run",
        help="run a JSONL file of requests through your keys, resumably",
        description=describe(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("input", metavar="INPUT.jsonl", help="OpenAI batch lines, or bare bodies")
    parser.add_argument(
        "-o", "--output", metavar="OUTPUT.jsonl", required=True, help="results are appended here"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=256,
        help="requests queued or in flight at once (default 256; at most MAX_QUEUE_SIZE)",
    )
    parser.add_argument(
        "--split",
        action="store_true",
        help="pack the inputs of embedding lines into requests of up to the provider's "
        "per-request limit; one output line per input line",
    )
    parser.add_argument(
        "--retry-failed",
        action="store_true",
        help="take the error lines out of OUTPUT and run their requests again",
    )
    add_config_options(parser)
    add_display_options(parser)
    parser.add_argument(
        "--backend", choices=["asyncio", "trio"], default="asyncio", help="the event loop"
    )
    parser.set_defaults(func=run_command)


def add_display_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--progress",
        choices=["auto", "rich", "plain", "off"],
        default="auto",
        help="live display on stderr: rich in a terminal, plain lines elsewhere (default auto)",
    )
    parser.add_argument(
        "--progress-interval",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="seconds between plain progress lines (default 10)",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def _seconds(text: str) -> float:
    """A positive, finite number of seconds (0 would print lines without pause)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, got {text!r}")
    return value


def run_command(args: argparse.Namespace) -> int:
    if args.concurrency < 1:
        print_error("--concurrency must be at least 1")
        return EXIT_USAGE
    try:
        config = load_config(args)
        if not config.keys:
            raise UsageError(
                "no keys: set API_KEYS_CONFIG or pass --keys-config FILE "
                "(maxllm_gate check-config shows what is wrong)"
            )
        total = _count(args.input)
        summary = anyio.run(_run, args, config, total, backend=args.backend)
    except (ConfigError, UsageError) as exc:
        print_error(str(exc))
        return EXIT_USAGE
    except OSError as exc:
        print_error(_describe(exc))
        return EXIT_USAGE
    except BaseException as exc:
        config_error = _config_error_in(exc)
        if config_error is None:
            raise
        print_error(str(config_error))
        return EXIT_USAGE
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    if summary["error"] is not None:
        print_error(summary["error"])
    r = summary["requests"]
    incomplete = r["failed"] or r["skipped_failed"] or r["unfinished"] or summary["stopped"]
    return EXIT_FAILED if incomplete else EXIT_OK


def _count(path: str) -> int | None:
    """The input's lines for the progress, or None for a pipe (it can be read only once)."""
    mode = 0
    with contextlib.suppress(OSError):  # count_lines raises it, with the file's name
        mode = os.stat(path).st_mode
    if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISSOCK(mode):
        return None
    return count_lines(path)


def _config_error_in(exc: BaseException) -> ConfigError | None:
    """The ConfigError a client's start raised, maybe inside an exception group."""
    if isinstance(exc, ConfigError):
        return exc
    for inner in getattr(exc, "exceptions", ()):
        found = _config_error_in(inner)
        if found is not None:
            return found
    return None


async def _run(
    args: argparse.Namespace, config: maxllm_gate_config, total: int | None
) -> dict[str, Any]:
    async with maxllm_gate(config) as client:
        batch = Batch(
            client,
            args.input,
            output=args.output,
            concurrency=args.concurrency,
            retry_failed=args.retry_failed,
            split=args.split,
        )
        error: OSError | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(_stop_on_signals, batch, config.shutdown_timeout)
            async with show_progress(
                batch, total, mode=args.progress, interval=args.progress_interval
            ):
                try:
                    await batch.run()
                except OSError as exc:
                    error = exc  # raised outside the group, so not wrapped in one
            tg.cancel_scope.cancel()
        if error is not None and batch.stats.started_at is None:
            raise error  # the files could not be opened: nothing was sent
        summary = build_summary(
            batch.stats, config, client.status(), output=args.output, total=total
        )
        # A write failed mid-run (a full disk): the batch stopped; say why after the summary.
        summary["error"] = None if error is None else _describe(error)
        return summary


def _describe(exc: OSError) -> str:
    return f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": ")


async def _stop_on_signals(batch: Batch, grace: float) -> None:
    """First SIGINT/SIGTERM: stop feeding, drop what is queued, let what was sent finish
    (for ``grace`` seconds at most). Second: cancel what was sent too."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as tg:
            async for signum in signals:
                name = signal.Signals(signum).name
                if not batch.stats.stopped:
                    batch.stop()
                    sent = batch.client.status()["in_flight"]
                    print(
                        f"\n{name}: stopping; queued requests dropped, waiting for the {sent} "
                        f"at a provider (at most {grace:g} s; {name} again cancels them)",
                        file=sys.stderr,
                    )
                    tg.start_soon(_cancel_after, batch, grace)
                else:
                    print(f"\n{name}: cancelling the requests in flight", file=sys.stderr)
                    batch.cancel()


async def _cancel_after(batch: Batch, grace: float) -> None:
    await anyio.sleep(grace)
    batch.cancel()
