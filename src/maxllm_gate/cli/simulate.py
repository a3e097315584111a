"""``maxllm_gate simulate``: predict how a workload runs on your keys, in virtual time.

The real scheduler (your keys' limits, your strategy and settings) runs
against the simulated provider on virtual time (asyncio with a clock that jumps
to the next timer, or ``--backend trio`` with trio's ``MockClock``), so hours
of traffic take moments. It prints the predicted makespan, the throughput, each key's use
and the queue wait by priority; ``--plot FILE.png`` charts throughput and queue
depth over time.

The workload is ``--requests`` of random sizes, or the requests of a batch file
(``--input``), arriving all at once or at a rate. Sizes are distributions:
``200`` (always), ``100-400`` (uniform), ``normal:300,80`` or ``exp:300`` (mean).
The simulated provider answers each request with its ``max_tokens``, after
``--latency`` seconds.

Generated prompts are counted as the size drawn, with no tokenizer: each is
text that the chars/4 rule counts as that many tokens, sent under a model name
no tokenizer knows. The client reserves, and the provider charges, what they
would for a real prompt of that size. A batch file's prompts are counted with
the model's tokenizer, loaded before the clock starts.
"""

from __future__ import annotations

import argparse
import bisect
import functools
import itertools
import json
import math
import random
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import attrs

from maxllm_gate.cli._common import (
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    add_config_options,
    describe,
    load_config,
    print_error,
)
from maxllm_gate.client import Messages, maxllm_gate
from maxllm_gate.config import PRIORITIES, KeyConfig, maxllm_gate_config
from maxllm_gate.errors import ConfigError, GateError
from maxllm_gate.limits import makespan_bound
from maxllm_gate.providers.simulated import SimulatedProvider
from maxllm_gate.testing.virtual_time import run_virtual
from maxllm_gate.tokens import TokenEstimator

__all__ = ["Workload", "add_parser", "parse_distribution", "simulate"]

Distribution = Callable[[random.Random], float]

# Generated prompts: one token per four characters (`heuristic_tokens`), under a model
# name no tokenizer knows, so that nothing tokenizes them and every count is exact.
_TOKEN_TEXT = "tok "
_SIZED_MODEL = "simulated-model"


def parse_distribution(text: str) -> Distribution:
    """``"200"``, ``"100-400"``, ``"normal:300,80"`` or ``"exp:300"`` as a sampler.

    Raises:
      UsageError: the text is none of these.
    """
    spec = str(text).strip()
    try:
        if spec.startswith("normal:"):
            mean, sd = (float(x) for x in spec[7:].split(","))
            return lambda rng: rng.gauss(mean, sd)
        if spec.startswith("exp:"):
            mean = float(spec[4:])
            return lambda rng: rng.expovariate(1.0 / mean)
        low, sep, high = spec.partition("-")
        if sep and low:
            a, b = float(low), float(high)
            return lambda rng: rng.uniform(a, b)
        value = float(spec)
        return lambda rng: value
    except ValueError:
        raise UsageError(
            f"{spec!r} is not a distribution: use 200, 100-400, normal:300,80 or exp:300"
        ) from None


@attrs.frozen
class Workload:
    """What to simulate: each request's arrival (seconds from the start), prompt (text,
    or messages), ``max_tokens`` and priority.

    ``sized``: the prompts were generated to a size (see `sized_prompt`): they
    are counted by the chars/4 rule, whatever tokenizer ``model`` has.
    """

    model: str
    arrivals: tuple[float, ...]
    prompts: tuple[Messages, ...]
    max_tokens: tuple[int, ...]
    priorities: tuple[str, ...]
    sized: bool = False


def sized_prompt(tokens: int) -> str:
    """A prompt that the chars/4 rule counts as ``tokens`` tokens."""
    return _TOKEN_TEXT * tokens


def _priority_mix(text: str) -> tuple[list[str], list[float]]:
    names, weights = [], []
    for part in text.split(","):
        name, _, weight = part.partition("=")
        if name.strip() not in PRIORITIES:
            raise UsageError(
                f"--priority-mix: unknown priority {name.strip()!r} (high, medium, low)"
            )
        names.append(name.strip())
        try:
            weights.append(float(weight or 1))
        except ValueError:
            raise UsageError(f"--priority-mix: {part!r} is not NAME=WEIGHT") from None
    return names, weights


def _arrivals(pattern: str, count: int, rng: random.Random) -> list[float]:
    if pattern == "burst":
        return [0.0] * count
    kind, _, rate_text = pattern.partition(":")
    try:
        rate = float(rate_text)
    except ValueError:
        rate = 0.0
    if kind not in ("rate", "poisson") or rate <= 0:
        raise UsageError("--arrival: use burst, rate:R or poisson:R (R requests per second)")
    if kind == "rate":
        return [i / rate for i in range(count)]
    times, now = [], 0.0
    for _ in range(count):
        times.append(now)
        now += rng.expovariate(rate)
    return times


def _build_workload(args: argparse.Namespace, config: maxllm_gate_config) -> Workload:
    rng = random.Random(args.seed)
    served = [model for key in config.keys for model in key.models]
    model = args.model or (served[0] if served else "")
    if model not in served:
        raise UsageError(f"--model: no key serves {model!r}; keys serve {sorted(set(served))}")
    names, weights = _priority_mix(args.priority_mix)
    cumulative = list(itertools.accumulate(weights))  # the same draws as weights=, once
    if args.input:
        from maxllm_gate.batch import BatchRequest, read_requests

        requests = [r for r in read_requests(args.input) if isinstance(r, BatchRequest)]
        prompts = [r.body["messages"] for r in requests]
        limit = config.default_max_tokens
        sizes = [int(r.body.get("max_tokens") or limit) for r in requests]
        priorities = [r.priority or rng.choices(names, cum_weights=cumulative)[0] for r in requests]
    else:
        prompt_size = parse_distribution(args.prompt_tokens)
        max_tokens = parse_distribution(args.completion_tokens)
        texts: dict[int, str] = {}  # one string per size
        prompts, sizes, priorities = [], [], []
        for _ in range(args.requests):
            tokens = max(1, round(prompt_size(rng)))
            text = texts.get(tokens)
            if text is None:
                text = texts[tokens] = sized_prompt(tokens)
            prompts.append(text)
            sizes.append(max(1, round(max_tokens(rng))))
            priorities.append(rng.choices(names, cum_weights=cumulative)[0])
    return Workload(
        model=model,
        arrivals=tuple(_arrivals(args.arrival, len(prompts), rng)),
        prompts=tuple(prompts),
        max_tokens=tuple(sizes),
        priorities=tuple(priorities),
        sized=not args.input,
    )


def _serving_only(config: maxllm_gate_config, model: str, as_name: str) -> maxllm_gate_config:
    """``config`` with only the keys that serve ``model``, serving it as ``as_name``."""
    keys = [
        KeyConfig(
            api_key=key.api_key,
            provider=key.provider,
            models={as_name: key.models[model]},
            key_id=key.key_id,
            api_base=key.api_base,
            transport=key.transport,
        )
        for key in config.keys
        if model in key.models
    ]
    return config.evolve(keys=keys)


async def simulate(
    config: maxllm_gate_config,
    workload: Workload,
    *,
    latency: Distribution,
    burst_window: float = 1.0,
    concurrency: int = 256,
    seed: int = 0,
    sample_every: float | None = None,
) -> dict[str, Any]:
    """Run ``workload`` through a client with ``config`` against the simulated provider.

    Runs on the event loop's clock: on virtual time as the command runs it
    (``VirtualTimeEventLoop``, or trio's ``MockClock``). Returns the report as plain data, with
    ``"samples"``: (seconds, requests done, requests waiting) every
    ``sample_every`` seconds (by default the shortest of 1 s, 2 s, 5 s, 10 s, ...
    that takes at most 1,000 samples).
    """
    model = workload.model
    if workload.sized:
        client_config = _serving_only(config, model, _SIZED_MODEL)
        model = _SIZED_MODEL
    else:
        client_config = config
    # Load the tokenizer before the clock runs. Loaded at their first call, in a worker thread, it
    # would let the virtual clock jump ahead while the requests waited for it.
    estimator = TokenEstimator()
    await estimator.prepare(model)
    rng = random.Random(seed)
    provider = SimulatedProvider(
        latency=lambda call: max(0.0, latency(rng)),
        completion_tokens=lambda call: int(call.params["max_tokens"]),
        burst_window=burst_window,
    )
    # Everything may wait at once; the limiter below is what bounds it, as in `run`.
    count = len(workload.prompts)
    client_config = client_config.evolve(max_queue_size=max(client_config.max_queue_size, count))
    arrived = workload.arrivals
    called = [math.inf] * count  # when the call that succeeded started
    ended = [math.inf] * count  # when it ended (math.inf: failed)
    failed_at: list[float] = []
    # Each worker takes the next request to arrive, waits for its arrival and sends it:
    # at most `concurrency` requests are in the client, and one waiting for a worker
    # waits from its arrival, as behind a semaphore; with no task per request.
    next_request = iter(sorted(range(count), key=arrived.__getitem__))
    async with maxllm_gate(client_config, provider=provider, seed=seed) as client:
        start = anyio.current_time()

        async def worker() -> None:
            for index in next_request:
                wait = start + arrived[index] - anyio.current_time()
                if wait > 0:
                    await anyio.sleep(wait)
                try:
                    response = await client.chat(
                        model,
                        workload.prompts[index],
                        max_tokens=workload.max_tokens[index],
                        priority=workload.priorities[index],
                    )
                except GateError:
                    failed_at.append(anyio.current_time() - start)
                    continue
                now = anyio.current_time() - start
                ended[index] = now
                called[index] = now - response.llm_latency

        async with anyio.create_task_group() as workers:
            for _ in range(min(concurrency, count)):
                workers.start_soon(worker)
        status = client.status()
    finished = [t for t in ended if t != math.inf]
    makespan = max(finished, default=0.0)
    waits: dict[str, list[float]] = {name: [] for name in PRIORITIES}
    for index, priority in enumerate(workload.priorities):
        if ended[index] != math.inf:
            waits[priority].append(called[index] - arrived[index])
    every = _sample_interval(makespan) if sample_every is None else sample_every
    samples = _samples(arrived, called, ended, failed_at, makespan, every)
    return _report(config, workload, provider, status, makespan, len(failed_at), waits, samples)


def _sample_interval(span: float, most: int = 1000) -> float:
    """The shortest of 1, 2, 5, 10, 20, 50, ... seconds that samples ``span`` at most ``most``
    times: a day at 1 s would be 86,400 samples, for a chart 1,000 pixels wide."""
    step = 1.0
    while span / step > most:
        for factor in (2.0, 2.5, 2.0):  # 1 -> 2 -> 5 -> 10
            step *= factor
            if span / step <= most:
                break
    return step


def _samples(
    arrived: Sequence[float],
    called: Sequence[float],
    ended: Sequence[float],
    failed_at: Sequence[float],
    makespan: float,
    every: float,
) -> list[tuple[float, int, int]]:
    """(seconds, requests done, requests waiting) every ``every`` seconds, then at the end.

    Waiting: arrived, and neither failed nor in the call that succeeded.
    """
    arrived, called, ended, failed_at = (
        sorted(times) for times in (arrived, called, ended, failed_at)
    )
    samples: list[tuple[float, int, int]] = []
    for step in range(int(makespan / every) + 1 if every > 0 else 1):
        t = step * every
        done = bisect.bisect_right(ended, t)
        waiting = (
            bisect.bisect_right(arrived, t)
            - bisect.bisect_right(called, t)
            - bisect.bisect_right(failed_at, t)
        )
        samples.append((t, done, waiting))
    samples.append((makespan, bisect.bisect_left(ended, math.inf), 0))
    return samples


def _report(
    config: maxllm_gate_config,
    workload: Workload,
    provider: SimulatedProvider,
    status: dict[str, Any],
    makespan: float,
    failed: int,
    waits: dict[str, list[float]],
    samples: list[tuple[float, int, int]],
) -> dict[str, Any]:
    # The bound on what the provider itself debited: its accounting, not ours.
    admitted = sum(seen.charged_tokens for seen in provider.stats.values())
    keys = [key for key in config.keys if workload.model in key.models]
    specs = []
    for key in keys:
        specs.append(key.models[workload.model].limit_spec(config.burst_seconds))
    bound = makespan_bound(len(workload.prompts), admitted, specs)
    done = len(workload.prompts) - failed
    per_key = {}
    for key in keys:
        seen = provider.stats[key.key_id]
        tokens = seen.charged_tokens
        tpm = key.models[workload.model].tpm_limit
        per_key[key.key_id] = {
            "requests": status["keys"][key.key_id]["successes"],
            "share": round(status["keys"][key.key_id]["successes"] / done, 3) if done else 0.0,
            "tokens": tokens,
            "of_tpm": round(tokens / (tpm * makespan / 60), 3) if makespan > 0 else None,
        }
    return {
        "model": workload.model,
        "requests": len(workload.prompts),
        "failed": failed,
        "provider_429s": provider.rate_limited,
        "makespan": round(makespan, 3),
        "bound": round(bound, 3),
        "efficiency": round(bound / makespan, 3) if makespan > 0 and bound > 0 else None,
        "throughput": {
            "requests_per_second": round(done / makespan, 3) if makespan > 0 else None,
            "tokens_per_minute": round(admitted * 60 / makespan) if makespan > 0 else None,
        },
        "keys": per_key,
        "queue_wait": {name: _spread(values) for name, values in waits.items() if values},
        "samples": samples,
    }


def _spread(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)], 3)

    return {
        "count": len(ordered),
        "mean": round(sum(ordered) / len(ordered), 3),
        "p50": pick(0.5),
        "p95": pick(0.95),
        "max": round(ordered[-1], 3),
    }


def format_report(report: dict[str, Any]) -> str:
    t = report["throughput"]
    lines = [
        f"simulated {report['requests']} requests of {report['model']} "
        f"({report['failed']} failed, {report['provider_429s']} provider 429s)",
        f"makespan     {report['makespan']:.1f} s (predicted)",
        f"bound        {report['bound']:.1f} s (the limits allow no faster)"
        + (f"; efficiency {report['efficiency']:.3f}" if report["efficiency"] else ""),
        f"throughput   {t['requests_per_second'] or 0:.2f} requests/s, "
        f"{t['tokens_per_minute'] or 0:,} tokens/min",
        "keys",
    ]
    for key_id, info in report["keys"].items():
        use = f"{100 * info['of_tpm']:.0f}% of its TPM" if info["of_tpm"] is not None else ""
        lines.append(
            f"  {key_id:20s} {info['requests']:6d} requests ({100 * info['share']:.0f}%)  {use}"
        )
    lines.append("queue wait (s)   mean    p50    p95    max")
    for name, wait in report["queue_wait"].items():
        lines.append(
            f"  {name:8s} {wait['count']:6d} {wait['mean']:6.1f} {wait['p50']:6.1f} "
            f"{wait['p95']:6.1f} {wait['max']:6.1f}"
        )
    return "\n".join(lines)


def add_parser(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "simulate",
        help="predict a workload's makespan on your keys, in virtual time",
        description=describe(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_options(parser)
    add = parser.add_argument
    add("--requests", type=int, default=1000, help="how many (default 1000)")
    add("--input", metavar="FILE.jsonl", help="simulate this batch file's requests instead")
    add("--model", help="the model (default: the first the keys serve)")
    add("--prompt-tokens", default="200", metavar="DIST", help="prompt sizes (default 200)")
    add("--completion-tokens", default="100", metavar="DIST", help="max_tokens (default 100)")
    add("--arrival", default="burst", help="burst (default), rate:R or poisson:R per second")
    add("--priority-mix", default="medium=1", help="e.g. high=1,medium=3,low=6")
    add("--latency", default="1.0", metavar="DIST", help="seconds per call (default 1.0)")
    add("--burst-window", type=float, default=1.0, help="the provider's enforcement window (s)")
    add("--concurrency", type=int, default=256, help="requests in the client at once, as in run")
    add("--seed", type=int, default=0)
    add(
        "--backend",
        choices=["asyncio", "trio"],
        default="asyncio",
        help="the event loop, on virtual time (default asyncio, as in run)",
    )
    add("--json", action="store_true", help="print the report as JSON")
    add("--plot", metavar="FILE.png", help="chart throughput and queue depth over time")
    parser.set_defaults(func=simulate_command)


def simulate_command(args: argparse.Namespace) -> int:
    try:
        if args.plot:
            from maxllm_gate.cli.plot import require_matplotlib

            require_matplotlib()
        config = load_config(args)
        latency = parse_distribution(args.latency)
        if args.requests < 1 or args.concurrency < 1:
            raise UsageError("--requests and --concurrency must be at least 1")

        workload = _build_workload(args, config)
        run = functools.partial(
            simulate,
            config,
            workload,
            latency=latency,
            burst_window=args.burst_window,
            concurrency=args.concurrency,
            seed=args.seed,
        )
        report = run_virtual(run, backend=args.backend, seed=args.seed)
    except (ConfigError, UsageError, OSError) as exc:
        print_error(str(exc))
        return EXIT_USAGE
    if args.plot:
        from maxllm_gate.cli.plot import plot

        plot(report, args.plot)
    samples = report.pop("samples")
    if args.json:
        print(json.dumps({**report, "samples": samples}))
    else:
        print(format_report(report))
        if args.plot:
            print(f"plot         {args.plot}")
    return EXIT_OK
