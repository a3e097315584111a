"""The ``maxllm_gate`` command.

``demo`` shows the product offline in a moment; ``run`` pushes a JSONL file of
requests through your keys, resumably; ``simulate`` predicts a workload's
makespan on virtual time; ``check-config`` checks your keys and settings.

Exit codes: 0 success, 1 some requests failed (or were not done), 2 bad usage
or configuration.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from maxllm_gate.cli._common import EXIT_FAILED, describe
from maxllm_gate.cli.check_config import add_parser as add_check_config
from maxllm_gate.cli.demo import add_parser as add_demo
from maxllm_gate.cli.run import add_parser as add_run
from maxllm_gate.cli.simulate import add_parser as add_simulate

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maxllm_gate",
        description=describe(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_parser in (add_demo, add_run, add_simulate, add_check_config):
        add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (argparse exits with 2 on bad usage)."""
    args = _parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        print("maxllm_gate: interrupted", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:  # stdout closed early (`| head`): not an error worth a traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    return code


if __name__ == "__main__":
    sys.exit(main())
