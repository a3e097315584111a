"""``maxllm_gate check-config``: check the keys and settings, from the environment or ``.env``.

Prints each key (masked: its prefix and a fingerprint, never the key), its
models and limits in the provider's own terms (RPM, ITPM, RPD, ...), the main
settings, a warning for each limit the provider does not have or has and the
configuration leaves out (docs/providers.md; warnings do not fail the check),
and every problem found with its fix.
Exits 2 if there is a problem, 0 otherwise. Nothing is sent to any provider.
"""

from __future__ import annotations

import argparse
import difflib
import importlib.util
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from maxllm_gate.cli._common import (
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    add_config_options,
    describe,
    load_config,
    read_variables,
)
from maxllm_gate.config import (
    ENV_VARS,
    KeyConfig,
    dotenv_path_from_option,
    key_fingerprint,
    masked_url,
    maxllm_gate_config,
    parse_keys_config,
)
from maxllm_gate.errors import ConfigError
from maxllm_gate.providers.shapes import describe_limits, limit_warnings

__all__ = ["add_parser", "mask"]

_Problem = tuple[str, str, str]  # where, what is wrong, how to fix it

_FIXES = (
    ("invalid JSON", "fix the JSON: `python -m json.tool FILE` shows where it breaks"),
    ("missing required field", "add the field"),
    ("unknown field", "remove it, or fix its spelling"),
    ("positive integer", "use a whole number above 0"),
    ("duplicate", "give each entry its own name"),
    ("counted twice", "keep one entry per API key, with all its models"),
    ("unknown ", "use one of the names listed"),
    ("no known OpenAI-compatible endpoint", "set the key's api_base, or its transport to litellm"),
    ("must be", "change the value as the message says"),
)


def add_parser(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "check-config",
        help="check the keys and settings (environment or .env); exit 2 on a problem",
        description=describe(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_options(parser)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=check_command)


def mask(api_key: str) -> str:
    """``sk-…#1a2b3c4d``: the key's non-secret prefix and its sha256 fingerprint."""
    # Only known second segments (sk-proj-, sk-ant-, sk-or-, ...): any other is key material.
    prefix = re.match(r"[A-Za-z]{1,4}[-_](?:(?:proj|svcacct|admin|ant|or)[-_])?", api_key)
    return f"{prefix[0] if prefix else ''}…#{key_fingerprint(api_key)}"


def _fix(message: str) -> str:
    for fragment, fix in _FIXES:
        if fragment in message:
            return fix
    return "see docs/configuration.md"


def _problems_of(error: ConfigError) -> list[_Problem]:
    found = getattr(error, "problems", None)
    pairs: list[tuple[str, str]] = list(found) if found else [("", str(error))]
    return [(where.removeprefix("."), message, _fix(message)) for where, message in pairs]


def _check(config: maxllm_gate_config) -> list[_Problem]:
    problems: list[_Problem] = []
    if not config.keys:
        problems.append(
            (
                "API_KEYS_CONFIG",
                "no keys are configured",
                "set API_KEYS_CONFIG (or pass --keys-config FILE) to "
                '{"my-key": {"api_key": "sk-...", "provider": "openai", '
                '"models": {"gpt-4o-mini": {"tpm_limit": 90000, "rpm_limit": 500}}}}',
            )
        )
    for key in config.keys:
        problems += _transport_problems(key, config)
    if config.redis_url and importlib.util.find_spec("coredis") is None:
        problems.append(
            ("REDIS_URL", "set, but coredis is not installed", "pip install 'maxllm_gate[redis]'")
        )
    return problems


def _transport_problems(key: KeyConfig, config: maxllm_gate_config) -> list[_Problem]:
    transport = key.transport or config.transport
    where = f"API_KEYS_CONFIG[{key.key_id!r}]"
    if transport == "litellm":
        if importlib.util.find_spec("litellm") is None:
            return [
                (where, "uses the litellm transport, which is not installed", "pip install litellm")
            ]
        return []
    from maxllm_gate.providers.openai_compat import OpenAICompatProvider

    if OpenAICompatProvider.supports(key):
        return []
    message = f"provider {key.provider!r} has no known OpenAI-compatible endpoint"
    return [(where, message, _fix(message))]


def _env_file_problems(args: argparse.Namespace) -> list[_Problem]:
    """The lines of the env file that dotenv skips (with only a warning): a setting
    there is lost unseen. The line is not shown: it may hold a key."""
    try:
        env_file = dotenv_path_from_option(args.env_file)
    except ConfigError:
        return []  # load_config reports it
    if env_file is None:
        return []
    from dotenv.parser import parse_stream

    with open(env_file, encoding="utf-8", errors="replace") as stream:
        bindings = list(parse_stream(stream))
    problems = [
        (
            f"{env_file} line {binding.original.line}",
            "cannot be read as NAME=value, so it is skipped",
            "write it as NAME=value (quote a value with spaces: NAME='a b'), "
            "or start it with # to keep it as a comment",
        )
        for binding in bindings
        if binding.error
    ]
    for binding in bindings:
        meant = _meant_setting(binding.key) if binding.key else None
        if meant is not None:
            problems.append(
                (
                    f"{env_file} line {binding.original.line}",
                    f"{binding.key} is no setting, so it is ignored",
                    f"did you mean {meant}?",
                )
            )
    return problems


# What the gateway reads besides ENV_VARS.
_GATEWAY_VARS = (
    "GATEWAY_API_KEYS",
    "GATEWAY_ALLOW_UNAUTHENTICATED",
    "GATEWAY_MAX_BODY_BYTES",
    "GATEWAY_WORKER_CLASS",
    "GATEWAY_RETRY_AFTER",
)


def _meant_setting(name: str) -> str | None:
    """The setting an unknown ``name`` is likely a misspelling or a shortening of.

    Only names that resemble one: the file may hold other programs' variables.
    """
    known = (*ENV_VARS, *_GATEWAY_VARS)
    if name in known:
        return None
    for setting in difflib.get_close_matches(name, known, n=3, cutoff=0.8):
        # Very close, or close with the same first word: DATABASE_URL is not BASE_URL.
        same_start = setting.split("_")[0] == name.split("_")[0]
        if same_start or difflib.SequenceMatcher(None, name, setting).ratio() >= 0.9:
            return setting
    longer = [setting for setting in known if setting.endswith("_" + name)]
    return longer[0] if len(longer) == 1 else None


def _valid_keys(variables: Mapping[str, str]) -> list[KeyConfig]:
    """The keys that are fine on their own, to list while another entry is broken."""
    try:
        data = json.loads(variables.get("API_KEYS_CONFIG", "{}"))
    except ValueError:
        return []
    keys: list[KeyConfig] = []
    if isinstance(data, dict):
        for key_id, entry in data.items():
            try:
                keys += parse_keys_config({key_id: entry})
            except ConfigError:
                continue  # reported already
    return keys


def _key_rows(keys: Iterable[KeyConfig], config: maxllm_gate_config) -> list[dict[str, Any]]:
    rows = []
    for key in keys:
        for model, limits in key.models.items():
            burst = (
                limits.burst_seconds if limits.burst_seconds is not None else config.burst_seconds
            )
            rows.append(
                {
                    "key_id": key.key_id,
                    "provider": key.provider,
                    "api_key": mask(key.api_key),
                    "transport": key.transport or config.transport,
                    "api_base": key.api_base and masked_url(key.api_base),
                    "model": model,
                    "rpm_limit": limits.rpm_limit,
                    "tpm_limit": limits.tpm_limit,
                    "itpm_limit": limits.itpm_limit,
                    "otpm_limit": limits.otpm_limit,
                    "rpd_limit": limits.rpd_limit,
                    "tpd_limit": limits.tpd_limit,
                    "limits": describe_limits(limits),
                    "burst_seconds": burst,
                    "warnings": limit_warnings(key.provider, limits),
                }
            )
    return rows


def _table(rows: list[dict[str, Any]]) -> str:
    columns = ["key_id", "provider", "api_key", "transport", "model", "limits"]
    titles = ["key", "provider", "api key", "transport", "model", "limits"]
    cells = [titles] + [[str(row[c]) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in cells
    )


def check_command(args: argparse.Namespace) -> int:
    config: maxllm_gate_config | None = None
    variables: dict[str, str] = {}
    try:
        variables = read_variables(args)
        config = load_config(args, variables)
        problems = _check(config)
    except UsageError as exc:
        message = str(exc).removeprefix("--keys-config: ")
        problems = [("--keys-config", message, "pass a readable file, or the JSON itself")]
    except ConfigError as exc:
        if str(exc).startswith("--env-file: "):
            message = str(exc).removeprefix("--env-file: ")
            problems = [("--env-file", message, "pass an existing file, or '' to read none")]
        else:
            problems = _problems_of(exc)
    problems = _env_file_problems(args) + problems
    keys = config.keys if config is not None else _valid_keys(variables)
    rows = _key_rows(keys, config or maxllm_gate_config())
    settings = {}
    if config is not None:
        settings = {
            "strategy": config.strategy,
            "transport": config.transport,
            "burst_seconds": config.burst_seconds,
            "max_queue_size": config.max_queue_size,
            "redis": "on" if config.redis_url else "off",
        }
    if args.json:
        report = {
            "ok": not problems,
            "keys": rows,
            "settings": settings,
            "problems": [{"where": w, "problem": p, "fix": f} for w, p, f in problems],
        }
        print(json.dumps(report, indent=2))
    else:
        if rows:
            print(_table(rows))
        if settings:
            print("settings: " + ", ".join(f"{name} {value}" for name, value in settings.items()))
        for row in rows:
            for warning in row["warnings"]:
                print(f"warning: {row['key_id']}, {row['model']}: {warning}")
        for where, problem, fix in problems:
            print(f"problem: {where + ': ' if where else ''}{problem}\n    fix: {fix}")
        if not problems:
            print(f"ok: {len(config.keys) if config else 0} keys, {len(rows)} (key, model) limits")
    return EXIT_USAGE if problems else EXIT_OK
