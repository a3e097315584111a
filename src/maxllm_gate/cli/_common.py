"""What the commands share: exit codes, reading the config."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping

from maxllm_gate._logging import configure_logging
from maxllm_gate.config import (
    config_from_env,
    dotenv_path_from_option,
    maxllm_gate_config,
    read_environment,
)

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "UsageError",
    "add_config_options",
    "describe",
    "keys_config_text",
    "load_config",
    "print_error",
    "read_variables",
]

EXIT_OK = 0
EXIT_FAILED = 1  # some requests failed (or were not done)
EXIT_USAGE = 2  # bad usage or configuration; nothing was sent


class UsageError(Exception):
    """A problem with the command line or the configuration: exit 2 with this message."""


def add_config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--keys-config",
        metavar="FILE",
        help="the keys, in the API_KEYS_CONFIG format (a JSON file, or the JSON itself); "
        "default: the API_KEYS_CONFIG variable",
    )
    parser.add_argument(
        "--env-file",
        metavar="FILE",
        help="read variables missing from the environment here (default: .env, if it "
        "exists; '' for none)",
    )


def keys_config_text(value: str) -> str:
    """``--keys-config``: a file's text, or the JSON given inline."""
    if value.lstrip().startswith("{"):
        return value
    try:
        with open(value, encoding="utf-8") as file:
            return file.read()
    except OSError as exc:
        raise UsageError(f"--keys-config: cannot read {value}: {exc.strerror}") from None


def read_variables(args: argparse.Namespace) -> dict[str, str]:
    """The variables in force (the environment over ``--env-file``, read once), with
    ``--keys-config`` in place of ``API_KEYS_CONFIG``.

    Raises:
      ConfigError: ``--env-file`` names no file.
      UsageError: ``--keys-config`` names a file that cannot be read.
    """
    variables = read_environment(dotenv_path=dotenv_path_from_option(args.env_file))
    if args.keys_config:
        variables["API_KEYS_CONFIG"] = keys_config_text(args.keys_config)
    return variables


def load_config(
    args: argparse.Namespace, variables: Mapping[str, str] | None = None
) -> maxllm_gate_config:
    """The config of ``variables`` (default: `read_variables`); logging set to
    ``LOG_LEVEL``, or WARNING if unset (so log lines do not run through the progress
    display).

    Raises:
      ConfigError: the config is invalid (the message names every problem), or
        ``--env-file`` names no file.
      UsageError: ``--keys-config`` names a file that cannot be read.
    """
    if variables is None:
        variables = read_variables(args)
    config = config_from_env(variables, dotenv_path=None)
    level = config.log_level if "LOG_LEVEL" in variables else "WARNING"
    configure_logging(level, debug=config.debug)
    return config


def describe(doc: str | None) -> str:
    """A module docstring as ``--help`` text: without the reST literal quotes."""
    return (doc or "").replace("``", "")


def print_error(message: str) -> None:
    print(f"maxllm_gate: {message}", file=sys.stderr)
