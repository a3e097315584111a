"""The ``maxllm_gate`` command.

``demo`` shows the product offline in a moment; ``run`` pushes a JSONL file of
requests through your keys, resumably; ``simulate`` predicts a workload's
makespan on virtual time; ``check-config`` checks your keys and settings.

Exit codes: 0 success, 1 some requests failed (or were not done), 2 bad usage
or configuration.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from maxllm_gate.cli._common import EXIT_FAILED, describe

__all__ = ["main"]

# Each module's add_parser() adds its command. Only the command being run is
# imported: the others' imports (the batch runner, the progress display) would
# double the start-up of a short command.
_COMMANDS = {
    "demo": "maxllm_gate.cli.demo",
    "run": "maxllm_gate.cli.run",
    "simulate": "maxllm_gate.cli.simulate",
    "check-config": "maxllm_gate.cli.check_config",
}


def _parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maxllm_gate",
        description=describe(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = next((arg for arg in argv if not arg.startswith("-")), None)
    for name in [chosen] if chosen in _COMMANDS else list(_COMMANDS):
        importlib.import_module(_COMMANDS[name]).add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (argparse exits with 2 on bad usage)."""
    argv = sys.argv[1:] if argv is None else argv
    args = _parser(argv).parse_args(argv)
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
