"""``maxllm_gate-server``: serve the gateway with hypercorn, under asyncio or trio.

On SIGTERM or SIGINT it shuts down gracefully: it stops accepting
connections and shuts the client down, which lets the requests queued and in
flight finish for up to ``SHUTDOWN_TIMEOUT`` seconds and fails the rest (a 503
each), then exits with status 0.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import anyio

from maxllm_gate._logging import configure_logging, get_logger
from maxllm_gate.config import config_from_env, dotenv_path_from_option
from maxllm_gate.errors import ConfigError
from maxllm_gate.gateway.settings import WORKER_CLASSES, GatewaySettings

if TYPE_CHECKING:
    from maxllm_gate.client import maxllm_gate

__all__ = ["main"]

log = get_logger("maxllm_gate.gateway.server")


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="maxllm_gate-server",
        description="Serve the OpenAI-compatible maxllm_gate gateway. Keys and limits come "
        "from API_KEYS_CONFIG and the other variables of the configuration reference; "
        "client tokens from GATEWAY_API_KEYS.",
    )
    parser.add_argument("--host", help="address to bind (default: HOST, else 0.0.0.0)")
    parser.add_argument("--port", type=int, help="port to bind (default: PORT, else 8000)")
    parser.add_argument(
        "--worker-class",
        choices=WORKER_CLASSES,
        help="event loop (default: GATEWAY_WORKER_CLASS, else asyncio)",
    )
    parser.add_argument(
        "--env-file", help="a .env file to read (default: .env, if it exists; '' for none)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the gateway until SIGTERM or SIGINT. Exits with status 2 on a bad configuration."""
    args = _arguments(sys.argv[1:] if argv is None else argv)
    try:
        env_file = dotenv_path_from_option(args.env_file)
        config = config_from_env(dotenv_path=env_file)
        settings = GatewaySettings.from_env(dotenv_path=env_file)
    except ConfigError as exc:
        print(f"maxllm_gate-server: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(config.log_level, debug=config.debug)
    worker_class = args.worker_class or settings.worker_class

    import prometheus_client
    from hypercorn.config import Config as HypercornConfig

    from maxllm_gate.client import maxllm_gate
    from maxllm_gate.gateway.app import create_app

    # One *_created series beside each counter is noise to most dashboards.
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    client = maxllm_gate(config)
    try:
        app = create_app(client, settings)
    except ConfigError as exc:
        print(f"maxllm_gate-server: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    hypercorn = HypercornConfig()
    hypercorn.bind = [f"{args.host or config.host}:{args.port or config.port}"]
    # The client fails what is left at SHUTDOWN_TIMEOUT; the connections then answer
    # those 503s, well before the server's own deadline cuts them off.
    hypercorn.graceful_timeout = 2 * config.shutdown_timeout
    hypercorn.accesslog = "-" if config.debug else None
    hypercorn.errorlog = "-"
    hypercorn.loglevel = config.log_level
    hypercorn.backlog = 1024  # bursts of new connections are what the gateway is for
    anyio.run(_serve, app, client, hypercorn, worker_class, backend=worker_class)


async def _serve(app: object, client: maxllm_gate, hypercorn: object, worker_class: str) -> None:
    if worker_class == "trio":
        from hypercorn.trio import serve
    else:
        from hypercorn.asyncio import serve  # type: ignore[assignment]

    async with anyio.create_task_group() as tg:

        async def until_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for received in signals:
                    log.warning("shutting down: draining requests in flight", signal=received.name)
                    # Now, not after the connections close: the server only waits for them,
                    # then cancels them (an empty 500); the client refuses new requests and
                    # fails those still waiting at its timeout, which then get a 503 each.
                    tg.start_soon(client.shutdown)
                    return

        await serve(app, hypercorn, shutdown_trigger=until_signal)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
