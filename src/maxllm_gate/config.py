"""Configuration: the API keys, each model's limits on each key, and the client's settings.

Build a `maxllm_gate_config` by hand, or read one from the environment and a
``.env`` file with `config_from_env`. The checks are the same either way, and a
bad configuration raises one `~maxllm_gate.errors.ConfigError` that lists every
problem found, each with the path to the value, e.g.::

    invalid configuration:
      - API_KEYS_CONFIG['groq-1'].models['gpt-4o'].tpm_limit: must be a positive integer, got -5
      - DEFAULT_STRATEGY: unknown strategy 'fastest'; expected one of least_utilized, ...

No message, repr or exception ever holds an API key: keys are named by their ``key_id``.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any, TypeGuard, TypeVar
from urllib.parse import urlsplit

import attrs
import cattrs
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError
from cattrs.gen import make_dict_structure_fn, override

from maxllm_gate.errors import ConfigError, show_value
from maxllm_gate.limits.buckets import CellSpec, LimitSpec
from maxllm_gate.limits.charge import CHARGE_RULES
from maxllm_gate.priority import PRIORITIES

__all__ = [
    "ENV_VARS",
    "PRIORITIES",
    "STRATEGY_NAMES",
    "TOKEN_ACCOUNTING",
    "TRANSPORTS",
    "KeyConfig",
    "ModelLimits",
    "config_from_env",
    "dotenv_path_from_option",
    "maxllm_gate_config",
    "parse_bool",
    "parse_int",
    "parse_keys_config",
    "parse_number",
    "read_environment",
]

STRATEGY_NAMES: tuple[str, ...] = (
    "least_utilized",
    "round_robin",
    "latency_aware",
    "balanced",
    "token_aware",
)
TRANSPORTS: tuple[str, ...] = ("litellm", "openai_compat")
TOKEN_ACCOUNTING: tuple[str, ...] = ("admission", "usage")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

_T = TypeVar("_T")

# A problem is (path, what is wrong). A path is relative to the object being built
# ("" or starting with "." or "["), so whoever catches it can prefix where that object sits.
_Problem = tuple[str, str]
_Check = Callable[[Any], str | None]
_CHECK = "maxllm_gate.check"


class _ConfigProblems(ConfigError):
    """A `ConfigError` that keeps its problems apart, so callers can re-root their paths."""

    def __init__(self, problems: Iterable[_Problem]) -> None:
        self.problems = tuple(problems)
        lines = [f"  - {p.removeprefix('.')}: {m}" if p else f"  - {m}" for p, m in self.problems]
        super().__init__("invalid configuration:\n" + "\n".join(lines))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.problems,))


def _prefixed(prefix: str, problems: Iterable[_Problem]) -> list[_Problem]:
    return [(prefix + path, message) for path, message in problems]


# --- checks: each returns None when the value is fine, else what is wrong with it ---


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _range(
    expected: str, ok: Callable[[Any], bool], *, ints: bool = False, optional: bool = False
) -> _Check:
    def check(value: object) -> str | None:
        if (value is None and optional) or ((_is_int if ints else _is_number)(value) and ok(value)):
            return None
        return f"must be {expected}, got {show_value(value)}"

    return check


def _one_of(names: tuple[str, ...], what: str, *, optional: bool = False) -> _Check:
    def check(value: object) -> str | None:
        if (value is None and optional) or (isinstance(value, str) and value in names):
            return None
        shown = show_value(value) if isinstance(value, str) else f"({type(value).__name__})"
        return f"unknown {what} {shown}; expected one of {', '.join(names)}"

    return check


def _text_check(*, optional: bool = False) -> _Check:
    # Never echoes the value: this check guards api_key too.
    def check(value: object) -> str | None:
        if (value is None and optional) or (isinstance(value, str) and value.strip()):
            return None
        got = "an empty string" if isinstance(value, str) else type(value).__name__
        return f"must be a non-empty string, got {got}"

    return check


def _bool_check(value: object) -> str | None:
    return None if isinstance(value, bool) else f"must be true or false, got {show_value(value)}"


def _check(check: _Check) -> dict[str, _Check]:
    return {_CHECK: check}


def _field_problems(instance: attrs.AttrsInstance) -> list[_Problem]:
    problems = []
    for field in attrs.fields(type(instance)):
        check = field.metadata.get(_CHECK)
        if check is not None and (message := check(getattr(instance, field.name))) is not None:
            problems.append((f".{field.name}", message))
    return problems


def _raise_if(problems: list[_Problem]) -> None:
    if problems:
        raise _ConfigProblems(problems)


# --- converters: lenient about the input's shape, strict checks come after ---


def _to_float(value: object) -> object:
    return float(value) if _is_int(value) else value


def _to_upper(value: str) -> str:
    return value.strip().upper() if isinstance(value, str) else value


_CREDENTIAL_PARAMETER = re.compile(r"key|token|secret|sig|password|auth|^code$", re.IGNORECASE)


def masked_url(value: str) -> str:
    """``value`` with its password and every query value masked, for display.

    Connection URLs may carry a password (``redis://:secret@host``), and
    endpoints a credential in the query (``?key=...``, Azure's ``?code=...``).
    """
    try:
        parts = urlsplit(value)
        netloc = parts.netloc
        if parts.password is not None:
            netloc = f"{parts.username or ''}:***@{netloc.rpartition('@')[2]}"
        query = "&".join(
            f"{name}=***" if sep else name
            for name, sep, _ in (item.partition("=") for item in parts.query.split("&") if item)
        )
        return parts._replace(netloc=netloc, query=query, fragment="").geturl()
    except ValueError:
        return "<redacted>"


def url_secrets(value: str | None) -> list[str]:
    """The credentials in URL ``value``: its password, and query values named like one."""
    if not value:
        return []
    try:
        parts = urlsplit(value)
        secrets = [parts.password] if parts.password else []
    except ValueError:
        return [value]  # unparseable: keep all of it out of the logs
    for item in parts.query.split("&"):
        name, _, secret = item.partition("=")
        if secret and _CREDENTIAL_PARAMETER.search(name):
            secrets.append(secret)
    return secrets


def _masked_url(value: str | None) -> str:
    return "None" if value is None else repr(masked_url(value))


def _setting(
    default: Any,
    check: _Check,
    *,
    converter: Callable[[Any], Any] | None = None,
    repr: Callable[[Any], str] | bool = True,  # attrs' own name for it
) -> Any:
    """A field with a default and a check (mypy's attrs plugin sees just the default)."""
    return attrs.field(default=default, converter=converter, repr=repr, metadata=_check(check))


def _number(
    default: float | None,
    expected: str = "a number of seconds > 0",
    ok: Callable[[float], bool] = lambda x: x > 0,
) -> Any:
    """A float field; a default of None makes None valid too. Ints are stored as floats."""
    check = _range(expected, ok, optional=default is None)
    return _setting(default, check, converter=_to_float)


_POSITIVE_INT = _range("a positive integer", lambda x: x > 0, ints=True)
_OPTIONAL_POSITIVE_INT = _range("a positive integer", lambda x: x > 0, ints=True, optional=True)
_BURST = ("a number of seconds > 0 and <= 60", lambda x: 0 < x <= 60)


@attrs.frozen(slots=True)
class ModelLimits:
    """The limits one API key has for one model.

    ``token_accounting`` says when the provider charges tokens: ``"admission"``
    (prompt plus ``max_tokens`` when it admits the call, like OpenAI) or ``"usage"``
    (what the call really used). ``burst_seconds`` of None means the config's.
    ``charge`` is how the provider's limiter counts a prompt (``"chars"``,
    ``"tokens"`` or ``"max"``; None: the provider's known rule, see
    :mod:`maxllm_gate.limits.charge`), and ``charge_factor`` multiplies it.
    ``max_embedding_inputs`` and ``max_embedding_input_tokens`` are the provider's
    limits on one embedding request (OpenAI's: 2048 inputs, 8192 tokens each);
    ``embed()`` refuses a request over them before queueing it.
    ``rpd_limit`` and ``tpd_limit`` are daily caps on requests and on tokens
    (input and output), as Groq, Gemini and free tiers have; None: no cap.
    ``itpm_limit`` and ``otpm_limit`` are Anthropic's input- and output-token
    limits. With ``itpm_limit`` the token bucket counts input only (in a config
    ``tpm_limit`` may then be left out: it is ``itpm_limit``); ``otpm_limit``
    (which needs ``itpm_limit``) makes output tokens a bucket of their own,
    reserved as ``max_tokens`` and corrected to the real output.

    Raises:
      ConfigError: if any value is out of range, naming each bad field.
    """

    tpm_limit: int = attrs.field(metadata=_check(_POSITIVE_INT))
    rpm_limit: int = attrs.field(metadata=_check(_POSITIVE_INT))
    burst_seconds: float | None = _number(None, *_BURST)
    max_concurrency: int | None = _setting(None, _OPTIONAL_POSITIVE_INT)
    token_accounting: str = _setting("admission", _one_of(TOKEN_ACCOUNTING, "token accounting"))
    charge: str | None = _setting(None, _one_of(CHARGE_RULES, "charge rule", optional=True))
    charge_factor: float = _number(1.0, "a number > 0 and <= 10", lambda x: 0 < x <= 10)
    max_embedding_inputs: int = _setting(2048, _POSITIVE_INT)
    max_embedding_input_tokens: int = _setting(8192, _POSITIVE_INT)
    rpd_limit: int | None = _setting(None, _OPTIONAL_POSITIVE_INT)
    tpd_limit: int | None = _setting(None, _OPTIONAL_POSITIVE_INT)
    itpm_limit: int | None = _setting(None, _OPTIONAL_POSITIVE_INT)
    otpm_limit: int | None = _setting(None, _OPTIONAL_POSITIVE_INT)

    def __attrs_post_init__(self) -> None:
        problems = _field_problems(self)
        if self.itpm_limit is not None and self.itpm_limit != self.tpm_limit:
            problems.append(
                (
                    ".itpm_limit",
                    f"is {self.itpm_limit} but tpm_limit is {self.tpm_limit}: with itpm_limit "
                    "the token bucket counts input only; leave tpm_limit out",
                )
            )
        if self.otpm_limit is not None and self.itpm_limit is None:
            problems.append(
                (
                    ".otpm_limit",
                    "needs itpm_limit: a provider that limits output tokens apart limits "
                    "input tokens apart too (Anthropic)",
                )
            )
        _raise_if(problems)

    @property
    def output_apart(self) -> bool:
        """Whether input and output tokens are limited apart (Anthropic): the token
        bucket then counts input only."""
        return self.itpm_limit is not None

    def limit_spec(self, burst_seconds: float) -> LimitSpec:
        """The buckets these limits make: ``burst_seconds`` of burst unless this
        model sets its own; a daily cap is a cell whose whole day may be spent at once."""
        burst = self.burst_seconds if self.burst_seconds is not None else burst_seconds
        extra: list[CellSpec] = []
        if self.rpd_limit is not None:
            extra.append(CellSpec.requests_per_day(self.rpd_limit))
        if self.otpm_limit is not None:
            extra.append(CellSpec.output_tokens_per_minute(self.otpm_limit, burst))
        if self.tpd_limit is not None:
            extra.append(CellSpec.tokens_per_day(self.tpd_limit))
        return LimitSpec.from_limits(self.rpm_limit, self.tpm_limit, burst, tuple(extra))


def _to_models(
    value: Mapping[str, ModelLimits | Mapping[str, Any]],
) -> dict[str, ModelLimits]:
    if not isinstance(value, Mapping):
        got = type(value).__name__
        raise _ConfigProblems([(".models", f"must map model names to limits, got {got}")])
    models: dict[str, ModelLimits] = {}
    problems: list[_Problem] = []
    for name, limits in value.items():
        where = f".models[{name!r}]"
        if not (isinstance(name, str) and name.strip()):
            problems.append((where, "a model name must be a non-empty string"))
        elif isinstance(limits, ModelLimits):
            models[name] = limits
        else:
            try:
                models[name] = _structure(limits, ModelLimits)
            except _ConfigProblems as exc:
                problems += _prefixed(where, exc.problems)
    _raise_if(problems)
    return models


def key_fingerprint(api_key: str) -> str:
    """The first 8 hex digits of sha256(api_key): names a key, never reveals it.

    Stable across processes and machines, and useless to an attacker: default key
    ids, masked keys, Redis's record of a disabled key and the fake provider's
    statistics all use it.
    """
    return hashlib.sha256(api_key.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def _default_key_id(key: KeyConfig) -> str:
    if not (isinstance(key.api_key, str) and isinstance(key.provider, str)):
        return "<invalid>"  # the field checks will say what is wrong
    return f"{key.provider}-{key_fingerprint(key.api_key)}"


@attrs.frozen(slots=True)
class KeyConfig:
    """One API key: its provider, and the models it may call with their limits.

    ``models`` accepts `ModelLimits` or plain dicts such as
    ``{"gpt-4o-mini": {"tpm_limit": 90000, "rpm_limit": 500}}``. ``key_id``
    defaults to ``"<provider>-<first 8 hex digits of sha256(api_key)>"``.
    ``transport`` of None means the config's. ``api_version`` is the API version
    the LiteLLM transport sends (Azure OpenAI's ``api-version``). The repr never
    shows ``api_key``.

    Raises:
      ConfigError: if any value is missing or wrong, naming each bad field.
    """

    api_key: str = attrs.field(repr=lambda _: "'<redacted>'", metadata=_check(_text_check()))
    provider: str = attrs.field(metadata=_check(_text_check()))
    models: Mapping[str, ModelLimits] = attrs.field(
        converter=_to_models,
        hash=False,  # a dict; leaving it out of the hash keeps KeyConfig hashable
        metadata=_check(lambda v: None if v else "must name at least one model"),
    )
    key_id: str = _setting(attrs.Factory(_default_key_id, takes_self=True), _text_check())
    api_base: str | None = _setting(None, _text_check(optional=True), repr=_masked_url)
    transport: str | None = _setting(None, _one_of(TRANSPORTS, "transport", optional=True))
    api_version: str | None = _setting(None, _text_check(optional=True))

    def __attrs_post_init__(self) -> None:
        _raise_if(_field_problems(self))


def _to_keys(value: Iterable[KeyConfig | Mapping[str, Any]]) -> tuple[KeyConfig, ...]:
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        got = type(value).__name__
        raise _ConfigProblems([(".keys", f"must be a list of KeyConfig or dicts, got {got}")])
    keys: list[KeyConfig] = []
    problems: list[_Problem] = []
    for index, key in enumerate(value):
        try:
            keys.append(key if isinstance(key, KeyConfig) else _structure(key, KeyConfig))
        except _ConfigProblems as exc:
            problems += _prefixed(f".keys[{index}]", exc.problems)
    _raise_if(problems)
    return tuple(keys)


@attrs.frozen(slots=True)
class maxllm_gate_config:  # the lower-case name is the public contract
    """Everything the client needs: the keys and how to schedule over them.

    ``keys`` accepts `KeyConfig` objects or dicts; their ``key_id``\\ s must be
    unique. ``log_level`` is stored upper-case. See the field list for defaults.

    Raises:
      ConfigError: if any value is wrong, naming each bad field and what it expects
        (an unknown ``strategy`` lists the valid names; it never falls back).
    """

    keys: tuple[KeyConfig, ...] = attrs.field(default=(), converter=_to_keys)
    strategy: str = _setting("least_utilized", _one_of(STRATEGY_NAMES, "strategy"))
    default_max_tokens: int = _setting(1024, _POSITIVE_INT)
    default_temperature: float = _number(0.7, "a number from 0 to 2", lambda x: 0 <= x <= 2)
    token_estimation_buffer: float = _number(1.1, "a number >= 1.0", lambda x: x >= 1)
    max_retries: int = _setting(3, _range("an integer >= 0", lambda x: x >= 0, ints=True))
    retry_base_delay: float = _number(1.0)
    retry_max_delay: float = _number(60.0)
    max_queue_size: int = _setting(10000, _POSITIVE_INT)
    default_priority: str = _setting("medium", _one_of(PRIORITIES, "priority"))
    redis_url: str | None = _setting(None, _text_check(optional=True), repr=_masked_url)
    burst_seconds: float = _number(1.0, *_BURST)
    admission_margin: float = _number(
        0.05, "a number of seconds from 0 to 5", lambda x: 0 <= x <= 5
    )
    priority_aging: float = _number(30.0)
    request_timeout: float | None = _number(None)
    call_timeout: float = _number(600.0)
    max_cooldown: float = _number(60.0)
    max_rate_limit_retries: int = _setting(
        10, _range("an integer >= 0", lambda x: x >= 0, ints=True)
    )
    shutdown_timeout: float = _number(30.0, "a number of seconds >= 0", lambda x: x >= 0)
    restart_base: float = _number(0.1)
    restart_max: float = _number(30.0)
    transport: str = _setting("litellm", _one_of(TRANSPORTS, "transport"))
    host: str = _setting("0.0.0.0", _text_check())
    port: int = _setting(
        8000, _range("an integer from 1 to 65535", lambda x: 1 <= x <= 65535, ints=True)
    )
    debug: bool = _setting(False, _bool_check)
    log_level: str = _setting("INFO", _one_of(_LOG_LEVELS, "log level"), converter=_to_upper)
    base_url: str | None = _setting(None, _text_check(optional=True), repr=_masked_url)

    def __attrs_post_init__(self) -> None:
        problems = _field_problems(self)
        base, most = self.retry_base_delay, self.retry_max_delay
        if _is_number(base) and _is_number(most) and 0 < most < base:
            problems.append(
                (".retry_max_delay", f"must be >= retry_base_delay ({base}), got {most}")
            )
        base, most = self.restart_base, self.restart_max
        if _is_number(base) and _is_number(most) and 0 < most < base:
            problems.append((".restart_max", f"must be >= restart_base ({base}), got {most}"))
        seen: set[str] = set()
        # One key (at one endpoint: "EMPTY" at two local servers is two budgets) is one budget.
        first: dict[tuple[str, str, str | None], str] = {}
        for index, key in enumerate(self.keys):
            if key.key_id in seen:
                problems.append((f".keys[{index}].key_id", f"duplicate key_id {key.key_id!r}"))
            seen.add(key.key_id)
            other = first.setdefault((key.api_key, key.provider, key.api_base), key.key_id)
            if other != key.key_id:
                problems.append(
                    (
                        f".keys[{index}].api_key",
                        f"the same API key as {other!r}: its limits would be counted twice",
                    )
                )
        _raise_if(problems)

    def evolve(self, **changes: Any) -> maxllm_gate_config:
        """Return a copy with ``changes`` applied, checked like a new config.

        Raises:
          ConfigError: if a name is not a field (listing the valid ones), or a
            new value is wrong.
        """
        names = [field.name for field in attrs.fields(type(self))]
        _raise_if([("", _unknown_field(name, names)) for name in changes if name not in names])
        return attrs.evolve(self, **changes)


def _unknown_field(name: object, valid: list[str]) -> str:
    close = difflib.get_close_matches(str(name), valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown field {name!r}{hint}; valid fields: {', '.join(valid)}"


# --- structuring dicts (from JSON) with cattrs ---

_converter = cattrs.Converter(detailed_validation=True, forbid_extra_keys=True)


def _checked_hook(field: attrs.Attribute[Any]) -> Callable[[Any, Any], Any]:
    # Run each field's converter and check while structuring, not only in __init__,
    # so cattrs reports every bad field instead of stopping at the first.
    convert: Callable[[Any], Any] | None = field.converter  # type: ignore[assignment]
    check: _Check | None = field.metadata.get(_CHECK)

    def hook(value: Any, _type: Any) -> Any:
        if convert is not None:
            value = convert(value)
        if check is not None and (message := check(value)) is not None:
            raise _ConfigProblems([(f".{field.name}", message)])
        return value

    return hook


def _register(
    cls: type[Any], prepare: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None
) -> None:
    fields = attrs.fields(cls)
    overrides: dict[str, Any] = {f.name: override(struct_hook=_checked_hook(f)) for f in fields}
    structure = make_dict_structure_fn(cls, _converter, **overrides)
    names = ", ".join(field.name for field in fields)

    def hook(value: Any, _type: Any) -> Any:
        if not isinstance(value, Mapping):
            got = type(value).__name__
            raise _ConfigProblems([("", f"must be an object with fields {names}, got {got}")])
        return structure(value if prepare is None else prepare(value), cls)

    _converter.register_structure_hook(cls, hook)


def _input_limit_as_tpm(value: Mapping[str, Any]) -> Mapping[str, Any]:
    """Anthropic's limits name no tpm_limit: its token bucket is the input's."""
    if "tpm_limit" not in value and "itpm_limit" in value:
        return {**value, "tpm_limit": value["itpm_limit"]}
    return value


#: Azure OpenAI grants a deployment 6 requests a minute per 1,000 tokens a minute.
AZURE_RPM_PER_1000_TPM = 6
#: Azure checks those limits over 1 s or 10 s windows: the stricter is the default.
AZURE_BURST_SECONDS = 1.0


def _azure_defaults(value: Mapping[str, Any]) -> Mapping[str, Any]:
    """An Azure deployment's RPM is derived from its TPM quota, and checked over
    short windows: a model that names no ``rpm_limit`` gets Azure's, and one that
    names no ``burst_seconds`` gets `AZURE_BURST_SECONDS`, whatever the client's
    ``burst_seconds`` (a minute of burst would draw Azure's 429s)."""
    provider = value.get("provider")
    models = value.get("models")
    if not (isinstance(provider, str) and provider.lower() in {"azure", "azure_ai"}):
        return value
    if not isinstance(models, Mapping):
        return value
    derived = {}
    for name, limits in models.items():
        if not isinstance(limits, Mapping):
            continue  # its error comes from structuring
        defaults: dict[str, Any] = {}
        tpm = limits.get("tpm_limit", limits.get("itpm_limit"))
        if isinstance(tpm, int) and not isinstance(tpm, bool) and "rpm_limit" not in limits:
            defaults["rpm_limit"] = max(1, tpm * AZURE_RPM_PER_1000_TPM // 1000)
        if limits.get("burst_seconds") is None:
            defaults["burst_seconds"] = AZURE_BURST_SECONDS
        derived[name] = {**limits, **defaults}
    return {**value, "models": {**models, **derived}} if derived else value


_register(ModelLimits, _input_limit_as_tpm)
_register(KeyConfig, _azure_defaults)


def _flatten(exc: BaseException, path: str) -> list[_Problem]:
    if isinstance(exc, _ConfigProblems):
        return _prefixed(path, exc.problems)
    if isinstance(exc, ForbiddenExtraKeysError):
        valid = [field.name for field in attrs.fields(exc.cl)]
        return [(path, _unknown_field(name, valid)) for name in sorted(exc.extra_fields, key=str)]
    if isinstance(exc, ClassValidationError):
        noted, other = exc.group_exceptions()
        problems: list[_Problem] = []
        for sub, note in noted:
            if isinstance(sub, KeyError) and sub.args == (note.name,):  # cattrs: field missing
                problems.append((path, f"missing required field {note.name!r}"))
            elif isinstance(sub, ConfigError):  # our hooks' problems are rooted at the field
                problems += _flatten(sub, path)
            else:
                problems += _flatten(sub, f"{path}.{note.name}")
        for sub in other:
            problems += _flatten(sub, path)
        return problems
    # Name only the type: the text of an exception we don't know could echo a secret.
    return [(path, f"invalid value ({type(exc).__name__})")]


def _structure(data: object, cls: type[_T]) -> _T:
    try:
        return _converter.structure(data, cls)
    except (ConfigError, ClassValidationError) as exc:
        problems = _flatten(exc, "")
    # Raised outside the except block, so no __context__ drags cattrs' errors along.
    raise _ConfigProblems(problems)


_KEYS_ROOT = "API_KEYS_CONFIG"


def parse_keys_config(value: str | Mapping[str, Any]) -> tuple[KeyConfig, ...]:
    """Parse the ``API_KEYS_CONFIG`` format into `KeyConfig`\\ s.

    ``value`` is a JSON object (text, or already parsed) mapping each key id to
    ``{"api_key", "provider", "models"}`` and optionally ``"api_base"``,
    ``"api_version"`` and ``"transport"``. Empty text means no keys.

    Raises:
      ConfigError: listing every problem, e.g. invalid JSON (with its line and
        column), a missing or unknown field, or a limit out of range, each named
        like ``API_KEYS_CONFIG['groq-1'].models['gpt-4o'].rpm_limit``.
    """
    data: object = value
    if isinstance(value, str):
        if not value.strip():
            return ()
        duplicates: list[str] = []

        def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
            result: dict[str, Any] = {}
            for name, item in pairs:
                if name in result:
                    duplicates.append(name)  # json would silently keep the last one
                result[name] = item
            return result

        try:
            data = json.loads(value, object_pairs_hook=no_duplicates)
        except json.JSONDecodeError as exc:
            error = f"invalid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        else:
            error = "; ".join(f"duplicate name {name!r} in a JSON object" for name in duplicates)
        if error:
            raise _ConfigProblems([(_KEYS_ROOT, error)])
    if not isinstance(data, Mapping):
        got = type(data).__name__
        raise _ConfigProblems(
            [(_KEYS_ROOT, f"must be a JSON object mapping key ids to keys, got {got}")]
        )
    keys: list[KeyConfig] = []
    problems: list[_Problem] = []
    for key_id, entry in data.items():
        where = f"{_KEYS_ROOT}[{key_id!r}]"
        if not isinstance(entry, Mapping):
            got = type(entry).__name__
            problems.append(
                (where, f"must be an object with api_key, provider and models, got {got}")
            )
        elif "key_id" in entry and entry["key_id"] != key_id:
            problems.append((f"{where}.key_id", "must be left out or match the entry's name"))
        else:
            try:
                keys.append(_structure({**entry, "key_id": key_id}, KeyConfig))
            except _ConfigProblems as exc:
                problems += _prefixed(where, exc.problems)
    _raise_if(problems)
    return tuple(keys)


# --- the environment ---

ENV_VARS: Mapping[str, str] = MappingProxyType(
    {
        "API_KEYS_CONFIG": "keys",
        "DEFAULT_STRATEGY": "strategy",
        "DEFAULT_MAX_TOKENS": "default_max_tokens",
        "DEFAULT_TEMPERATURE": "default_temperature",
        "TOKEN_ESTIMATION_BUFFER": "token_estimation_buffer",
        "MAX_RETRIES": "max_retries",
        "RETRY_BASE_DELAY": "retry_base_delay",
        "RETRY_MAX_DELAY": "retry_max_delay",
        "MAX_QUEUE_SIZE": "max_queue_size",
        "DEFAULT_PRIORITY": "default_priority",
        "REDIS_URL": "redis_url",
        "BURST_SECONDS": "burst_seconds",
        "ADMISSION_MARGIN": "admission_margin",
        "PRIORITY_AGING_SECONDS": "priority_aging",
        "REQUEST_TIMEOUT": "request_timeout",
        "CALL_TIMEOUT": "call_timeout",
        "MAX_COOLDOWN": "max_cooldown",
        "MAX_RATE_LIMIT_RETRIES": "max_rate_limit_retries",
        "SHUTDOWN_TIMEOUT": "shutdown_timeout",
        "RESTART_BASE_DELAY": "restart_base",
        "RESTART_MAX_DELAY": "restart_max",
        "DEFAULT_TRANSPORT": "transport",
        "HOST": "host",
        "PORT": "port",
        "DEBUG": "debug",
        "LOG_LEVEL": "log_level",
        "BASE_URL": "base_url",
    }
)
_ENV_NAME = {field: name for name, field in ENV_VARS.items()}

_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def parse_bool(text: str) -> bool:
    """A variable's boolean: true/false/1/0/yes/no, in any case.

    Raises:
      ValueError: with what was expected as its one argument.
    """
    try:
        return _BOOLS[text.strip().lower()]
    except KeyError:
        raise ValueError("one of true/false/1/0/yes/no") from None


def parse_int(text: str) -> int:
    """A variable's integer. Raises ValueError(what was expected)."""
    try:
        return int(text)
    except ValueError:
        raise ValueError("an integer") from None


def parse_number(text: str) -> float:
    """A variable's number. Raises ValueError(what was expected)."""
    try:
        return float(text)
    except ValueError:
        raise ValueError("a number") from None


_INT_FIELDS = frozenset(
    {"default_max_tokens", "max_retries", "max_queue_size", "port", "max_rate_limit_retries"}
)
_FLOAT_FIELDS = frozenset(
    {"default_temperature", "token_estimation_buffer", "retry_base_delay", "retry_max_delay"}
    | {
        "burst_seconds",
        "admission_margin",
        "priority_aging",
        "request_timeout",
        "call_timeout",
        "max_cooldown",
        "shutdown_timeout",
        "restart_base",
        "restart_max",
    }
)


def _parse_env(field: str, text: str) -> object:
    """Turn one variable's text into its field's type; raise ValueError(expected) if not."""
    if field == "debug":
        return parse_bool(text)
    if field in _INT_FIELDS:
        return parse_int(text)
    if field in _FLOAT_FIELDS:
        return parse_number(text)
    return text


def _env_path(path: str) -> str:
    # ".strategy" -> "DEFAULT_STRATEGY": name the variable the user actually set.
    match = re.match(r"\.(\w+)(.*)", path)
    if match and match[1] in _ENV_NAME:
        return _ENV_NAME[match[1]] + match[2]
    return path


def dotenv_path_from_option(option: str | None) -> str | None:
    """The ``.env`` file a command reads, given its ``--env-file`` (``None`` if not given).

    Not given: ``.env``, if it exists. Given empty: none. Given: that file, which
    must exist (a mistyped name would otherwise drop its settings unseen).

    Raises:
      ConfigError: ``option`` names no file.
    """
    if option is None:
        return ".env" if os.path.isfile(".env") else None
    if not option:
        return None
    if not os.path.isfile(option):
        raise ConfigError(f"--env-file: no such file: {option} (use --env-file '' to read none)")
    return option


def read_environment(
    environ: Mapping[str, str] | None = None,
    *,
    dotenv_path: str | os.PathLike[str] | None = ".env",
) -> dict[str, str]:
    """The variables in force: ``environ`` (default `os.environ`), with the values of
    the ``dotenv_path`` file, if it exists, for those it does not set.

    Reads the file once and never changes `os.environ`. Values are stripped, and an
    empty one counts as unset.
    """
    sources: list[Mapping[str, str | None]] = []
    if dotenv_path is not None and os.path.isfile(dotenv_path):
        from dotenv import dotenv_values  # only needed when there is a file to read

        sources.append(dotenv_values(dotenv_path))
    sources.append(os.environ if environ is None else environ)
    variables: dict[str, str] = {}
    for source in sources:  # later sources win: the real environment beats .env
        for name, text in source.items():
            if text is not None and text.strip():
                variables[name] = text.strip()
    return variables


def config_from_env(
    environ: Mapping[str, str] | None = None,
    *,
    dotenv_path: str | os.PathLike[str] | None = ".env",
) -> maxllm_gate_config:
    """Build a config from the `ENV_VARS` in ``environ`` (default `os.environ`).

    Values in the ``dotenv_path`` file, if it exists, fill in variables the
    environment doesn't set; the file never changes `os.environ`. An empty value
    counts as unset. Without ``API_KEYS_CONFIG`` the config has no keys (they can
    be added at runtime). Booleans accept true/false/1/0/yes/no, in any case.

    Raises:
      ConfigError: listing every bad variable, by its name, e.g. ``MAX_RETRIES``
        or ``API_KEYS_CONFIG['groq-1'].models['gpt-4o'].tpm_limit``.
    """
    texts = read_environment(environ, dotenv_path=dotenv_path)
    values: dict[str, Any] = {}
    problems: list[_Problem] = []
    for name, field in ENV_VARS.items():
        if (text := texts.get(name)) is None:
            continue
        if field == "keys":
            try:
                values["keys"] = parse_keys_config(text)
            except _ConfigProblems as exc:
                problems += exc.problems
        else:
            try:
                values[field] = _parse_env(field, text)
            except ValueError as exc:
                problems.append((name, f"must be {exc.args[0]}, got {show_value(text)}"))
    try:
        # Built even if some variables were bad, to report the others' problems too.
        config = maxllm_gate_config(**values)
    except _ConfigProblems as exc:
        problems += [(_env_path(path), message) for path, message in exc.problems]
    else:
        if not problems:
            return config
    raise _ConfigProblems(problems)
