"""Tests for maxllm_gate.config: parsing, the environment, and the errors it raises."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import traceback
from pathlib import Path
from typing import Any

import attrs
import pytest

from maxllm_gate.config import (
    ENV_VARS,
    PRIORITIES,
    STRATEGY_NAMES,
    TOKEN_ACCOUNTING,
    TRANSPORTS,
    KeyConfig,
    ModelLimits,
    config_from_env,
    dotenv_path_from_option,
    maxllm_gate_config,
    parse_keys_config,
    url_secrets,
)
from maxllm_gate.errors import ConfigError, GateError

SECRET = "sk-SUPERSECRET-0123456789abcdef"

# The API_KEYS_CONFIG example from the reference description, verbatim.
REFERENCE_KEYS = """{
  "groq-1": {
    "api_key": "gsk_your_groq_key",
    "provider": "groq",
    "models": {
      "llama-3.1-70b-versatile": {"tpm_limit": 30000, "rpm_limit": 30},
      "mixtral-8x7b-32768": {"tpm_limit": 15000, "rpm_limit": 20}
    }
  },
  "openai-1": {
    "api_key": "sk-your_openai_key",
    "provider": "openai",
    "models": {
      "gpt-4o-mini": {"tpm_limit": 90000, "rpm_limit": 500},
      "gpt-4o": {"tpm_limit": 30000, "rpm_limit": 200}
    }
  }
}"""


def keys_json(**entries: dict[str, Any]) -> str:
    return json.dumps(entries)


def good_entry(**changes: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "api_key": SECRET,
        "provider": "groq",
        "models": {"llama-3.1-70b": {"tpm_limit": 30000, "rpm_limit": 30}},
    }
    entry.update(changes)
    return entry


def from_env(**variables: str) -> maxllm_gate_config:
    return config_from_env(variables, dotenv_path=None)


def config_error(call: Any, *args: Any, **kwargs: Any) -> str:
    """Call, expect a ConfigError, check it holds no secret anywhere, return its message."""
    with pytest.raises(ConfigError) as info:
        call(*args, **kwargs)
    exc = info.value
    assert isinstance(exc, ValueError) and isinstance(exc, GateError)
    assert exc.__cause__ is None and exc.__context__ is None
    assert SECRET not in "".join(traceback.format_exception(exc))
    message = str(exc)
    assert message.startswith("invalid configuration:\n")
    return message


# --- parsing API_KEYS_CONFIG ---


def test_parses_reference_example() -> None:
    groq, openai = parse_keys_config(REFERENCE_KEYS)
    assert (groq.key_id, groq.provider, groq.api_key) == ("groq-1", "groq", "gsk_your_groq_key")
    assert groq.models["llama-3.1-70b-versatile"] == ModelLimits(tpm_limit=30000, rpm_limit=30)
    assert groq.models["mixtral-8x7b-32768"] == ModelLimits(tpm_limit=15000, rpm_limit=20)
    assert (openai.key_id, openai.provider) == ("openai-1", "openai")
    assert set(openai.models) == {"gpt-4o-mini", "gpt-4o"}
    assert openai.models["gpt-4o"].rpm_limit == 200
    limits = openai.models["gpt-4o-mini"]
    assert limits.burst_seconds is None and limits.max_concurrency is None
    assert limits.token_accounting == "admission"
    assert groq.api_base is None and groq.transport is None


def test_reference_example_via_env() -> None:
    config = from_env(API_KEYS_CONFIG=REFERENCE_KEYS, DEFAULT_STRATEGY="least_utilized")
    assert [key.key_id for key in config.keys] == ["groq-1", "openai-1"]
    assert config.strategy == "least_utilized"


def test_key_id_comes_from_the_dict_key() -> None:
    (key,) = parse_keys_config({"my-key": good_entry()})
    assert key.key_id == "my-key"
    (key,) = parse_keys_config({"my-key": good_entry(key_id="my-key")})
    assert key.key_id == "my-key"


def test_key_id_inside_entry_must_match() -> None:
    message = config_error(parse_keys_config, {"my-key": good_entry(key_id="other")})
    assert "API_KEYS_CONFIG['my-key'].key_id" in message


def test_optional_key_and_model_fields() -> None:
    entry = good_entry(
        api_base="http://localhost:8001/v1",
        transport="openai_compat",
        models={
            "m": {
                "tpm_limit": 1000,
                "rpm_limit": 10,
                "burst_seconds": 5,
                "max_concurrency": 4,
                "token_accounting": "usage",
            }
        },
    )
    (key,) = parse_keys_config(keys_json(local=entry))
    assert key.api_base == "http://localhost:8001/v1" and key.transport == "openai_compat"
    assert key.models["m"] == ModelLimits(1000, 10, 5.0, 4, "usage")
    assert isinstance(key.models["m"].burst_seconds, float)


def test_empty_keys_config_means_no_keys() -> None:
    assert parse_keys_config("") == ()
    assert parse_keys_config("{}") == ()
    assert from_env().keys == ()
    assert from_env(API_KEYS_CONFIG="").keys == ()


# --- KeyConfig and ModelLimits built by hand ---


def test_default_key_id_is_stable_and_reveals_nothing() -> None:
    models = {"gpt-4o-mini": {"tpm_limit": 90000, "rpm_limit": 500}}
    key = KeyConfig(api_key=SECRET, provider="openai", models=models)
    expected = "openai-" + hashlib.sha256(SECRET.encode()).hexdigest()[:8]
    assert key.key_id == expected
    assert KeyConfig(api_key=SECRET, provider="openai", models=models).key_id == expected
    assert KeyConfig(api_key=SECRET + "x", provider="openai", models=models).key_id != expected
    for start in range(len(SECRET) - 3):
        assert SECRET[start : start + 4] not in key.key_id.removeprefix("openai-")


def test_model_limits_from_dicts_and_instances() -> None:
    key = KeyConfig(
        api_key=SECRET,
        provider="openai",
        models={"a": {"tpm_limit": 10, "rpm_limit": 2}, "b": ModelLimits(20, 3)},
    )
    assert key.models == {"a": ModelLimits(10, 2), "b": ModelLimits(20, 3)}
    assert all(type(limits) is ModelLimits for limits in key.models.values())


def test_key_and_config_are_hashable_and_comparable() -> None:
    a = KeyConfig(api_key=SECRET, provider="openai", models={"m": {"tpm_limit": 1, "rpm_limit": 1}})
    b = KeyConfig(api_key=SECRET, provider="openai", models={"m": ModelLimits(1, 1)})
    assert a == b and hash(a) == hash(b)
    assert hash(maxllm_gate_config(keys=[a])) == hash(maxllm_gate_config(keys=(b,)))


def test_repr_masks_the_api_key() -> None:
    key = KeyConfig(
        api_key=SECRET, provider="openai", models={"m": {"tpm_limit": 1, "rpm_limit": 1}}
    )
    assert "api_key='<redacted>'" in repr(key)
    assert SECRET not in repr(key) and SECRET not in str(key)
    config = maxllm_gate_config(keys=[key])
    assert SECRET not in repr(config)
    assert "<redacted>" in repr(config)


def test_a_key_pasted_into_the_wrong_field_is_not_echoed() -> None:
    keys = {"k1": {"api_key": "sk-x", "provider": "openai", "models": {"m": {"rpm_limit": SECRET}}}}
    with pytest.raises(ConfigError) as caught:
        config_from_env({"API_KEYS_CONFIG": json.dumps(keys)}, dotenv_path=None)
    assert SECRET not in str(caught.value) and SECRET[:12] not in str(caught.value)
    assert f"got a string of {len(SECRET)} characters" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        config_from_env({"DEFAULT_TRANSPORT": SECRET}, dotenv_path=None)
    assert SECRET[:12] not in str(caught.value)
    with pytest.raises(ConfigError, match="got '5OO'"):  # a short one is shown, as typed
        config_from_env({"MAX_RETRIES": "5OO"}, dotenv_path=None)


def test_an_env_file_option_must_name_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert dotenv_path_from_option(None) is None  # no .env here
    (tmp_path / ".env").write_text("MAX_RETRIES=2\n")
    assert dotenv_path_from_option(None) == ".env"
    assert dotenv_path_from_option("") is None
    assert dotenv_path_from_option(".env") == ".env"
    with pytest.raises(ConfigError, match=r"--env-file: no such file: nope\.env"):
        dotenv_path_from_option("nope.env")


def test_repr_masks_url_passwords() -> None:
    config = maxllm_gate_config(redis_url="redis://user:hunter2@redis:6379/0")
    assert "hunter2" not in repr(config)
    assert "redis://user:***@redis:6379/0" in repr(config)
    assert config.redis_url == "redis://user:hunter2@redis:6379/0"


MODELS = {"gpt-4o-mini": {"rpm_limit": 60, "tpm_limit": 10_000}}


def test_a_credential_in_an_api_base_query_is_masked_and_kept_out_of_logs() -> None:
    base = "https://example.test/v1?api-version=2024-06-01&key=AIzaSecretValue123"
    key = KeyConfig(api_key="sk-1", provider="gemini", models=MODELS, api_base=base)
    config = maxllm_gate_config(keys=[key])
    for shown in (repr(key), repr(config), str(config)):
        assert "AIzaSecretValue123" not in shown and "2024-06-01" not in shown
    assert "https://example.test/v1?api-version=***&key=***" in repr(key)
    assert key.api_base == base  # only shown masked
    assert url_secrets(base) == ["AIzaSecretValue123"]  # registered, so no log holds it
    assert url_secrets("redis://:pw@host:6379") == ["pw"]


def test_the_same_api_key_under_two_key_ids_is_a_config_error() -> None:
    def key(key_id: str, api_base: str | None = None) -> KeyConfig:
        return KeyConfig(
            api_key="sk-shared", provider="openai", key_id=key_id, models=MODELS, api_base=api_base
        )

    with pytest.raises(ConfigError) as caught:
        maxllm_gate_config(keys=[key("a"), key("b")])
    message = str(caught.value)
    assert "keys[1].api_key:" in message
    assert "the same API key as 'a': its limits would be counted twice" in message
    assert "sk-shared" not in message
    # One placeholder key at two servers is two budgets.
    maxllm_gate_config(keys=[key("a", "http://one:8000/v1"), key("b", "http://two:8000/v1")])


def test_config_accepts_dict_keys() -> None:
    config = maxllm_gate_config(
        keys=[
            {
                "api_key": SECRET,
                "provider": "groq",
                "key_id": "g",
                "models": {"m": {"tpm_limit": 5, "rpm_limit": 1}},
            }
        ]
    )
    assert config.keys[0].key_id == "g"
    assert isinstance(config.keys, tuple)


def test_defaults() -> None:
    config = maxllm_gate_config()
    assert config.keys == ()
    assert config.strategy == "least_utilized"
    assert config.default_temperature == 0.7
    assert config.burst_seconds == 1.0
    assert config.request_timeout is None
    assert (config.host, config.port, config.debug, config.log_level) == (
        "0.0.0.0",
        8000,
        False,
        "INFO",
    )
    assert "token_aware" in STRATEGY_NAMES and PRIORITIES == ("high", "medium", "low")
    assert TRANSPORTS == ("litellm", "openai_compat")
    assert TOKEN_ACCOUNTING == ("admission", "usage")


# --- the environment ---

ENV_SAMPLES: dict[str, tuple[str, Any]] = {
    "API_KEYS_CONFIG": (REFERENCE_KEYS, parse_keys_config(REFERENCE_KEYS)),
    "DEFAULT_STRATEGY": ("balanced", "balanced"),
    "DEFAULT_MAX_TOKENS": ("256", 256),
    "DEFAULT_TEMPERATURE": ("1.5", 1.5),
    "TOKEN_ESTIMATION_BUFFER": ("1.25", 1.25),
    "MAX_RETRIES": ("5", 5),
    "RETRY_BASE_DELAY": ("0.5", 0.5),
    "RETRY_MAX_DELAY": ("30", 30.0),
    "MAX_QUEUE_SIZE": ("50", 50),
    "DEFAULT_PRIORITY": ("high", "high"),
    "REDIS_URL": ("redis://localhost:6379", "redis://localhost:6379"),
    "BURST_SECONDS": ("2.5", 2.5),
    "ADMISSION_MARGIN": ("0.02", 0.02),
    "PRIORITY_AGING_SECONDS": ("10", 10.0),
    "REQUEST_TIMEOUT": ("45", 45.0),
    "CALL_TIMEOUT": ("120", 120.0),
    "MAX_COOLDOWN": ("300", 300.0),
    "MAX_RATE_LIMIT_RETRIES": ("2", 2),
    "SHUTDOWN_TIMEOUT": ("5", 5.0),
    "RESTART_BASE_DELAY": ("0.5", 0.5),
    "RESTART_MAX_DELAY": ("120", 120.0),
    "DEFAULT_TRANSPORT": ("openai_compat", "openai_compat"),
    "HOST": ("127.0.0.1", "127.0.0.1"),
    "PORT": ("9000", 9000),
    "DEBUG": ("true", True),
    "LOG_LEVEL": ("warning", "WARNING"),
    "BASE_URL": ("http://localhost:9000", "http://localhost:9000"),
}


def test_every_env_var_has_a_sample() -> None:
    assert set(ENV_SAMPLES) == set(ENV_VARS)
    fields = {field.name for field in attrs.fields(maxllm_gate_config)}
    assert set(ENV_VARS.values()) <= fields


@pytest.mark.parametrize("name", list(ENV_VARS))
def test_each_env_var_sets_its_field(name: str) -> None:
    text, expected = ENV_SAMPLES[name]
    field = ENV_VARS[name]
    assert getattr(maxllm_gate_config(), field) != expected  # the sample is not the default
    value = getattr(from_env(**{name: text}), field)
    assert value == expected
    assert type(value) is type(expected)


def test_temperature_zero_is_kept() -> None:
    config = from_env(DEFAULT_TEMPERATURE="0")
    assert config.default_temperature == 0.0
    assert type(config.default_temperature) is float
    assert maxllm_gate_config(default_temperature=0).default_temperature == 0.0


BOOL_SPELLINGS = {"true": True, "TRUE": True, "1": True, "Yes": True}
BOOL_SPELLINGS |= {"false": False, "False": False, "0": False, "NO": False}


@pytest.mark.parametrize(("text", "expected"), list(BOOL_SPELLINGS.items()))
def test_boolean_spellings(text: str, expected: bool) -> None:
    assert from_env(DEBUG=text).debug is expected


def test_empty_value_counts_as_unset() -> None:
    assert from_env(MAX_RETRIES="", PORT="  ").max_retries == 3


def test_dotenv_file_is_read_and_environment_wins(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text(
        "DEFAULT_STRATEGY=round_robin\n"
        "MAX_RETRIES=7\n"
        "PORT=9001\n"
        f"API_KEYS_CONFIG='{REFERENCE_KEYS}'\n"
    )
    before = dict(os.environ)
    config = config_from_env({"MAX_RETRIES": "2", "PORT": ""}, dotenv_path=dotenv)
    assert config.strategy == "round_robin"  # only in .env
    assert config.max_retries == 2  # the environment wins
    assert config.port == 9001  # an empty environment value doesn't hide .env's
    assert [key.key_id for key in config.keys] == ["groq-1", "openai-1"]  # multi-line value
    assert dict(os.environ) == before  # .env never touches os.environ


def test_missing_dotenv_file_is_fine(tmp_path: Path) -> None:
    config = config_from_env({"MAX_RETRIES": "4"}, dotenv_path=tmp_path / "nope.env")
    assert config.max_retries == 4


def test_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_VARS:  # generic names like HOST or DEBUG may be set on the test machine
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DEFAULT_PRIORITY", "low")
    assert config_from_env(dotenv_path=None).default_priority == "low"


# --- errors ---


def test_negative_limit_names_key_model_and_field() -> None:
    entry = good_entry(models={"llama-3.1-70b": {"tpm_limit": -5, "rpm_limit": 30}})
    message = config_error(from_env, API_KEYS_CONFIG=keys_json(**{"groq-1": entry}))
    assert (
        "  - API_KEYS_CONFIG['groq-1'].models['llama-3.1-70b'].tpm_limit: "
        "must be a positive integer, got -5"
    ) in message


def test_daily_caps_become_day_long_cells_and_are_checked() -> None:
    limits = ModelLimits(tpm_limit=6000, rpm_limit=30, rpd_limit=14_400, tpd_limit=500_000)
    spec = limits.limit_spec(burst_seconds=1.0)
    assert [(c.name, c.limit, c.window, c.capacity) for c in spec.extra] == [
        ("rpd_limit", 14_400, 86_400.0, 14_400.0),
        ("tpd_limit", 500_000, 86_400.0, 500_000.0),
    ]
    assert ModelLimits(tpm_limit=6000, rpm_limit=30).limit_spec(1.0).extra == ()
    entry = good_entry(models={"m": {"tpm_limit": 5, "rpm_limit": 3, "rpd_limit": 0}})
    message = config_error(from_env, API_KEYS_CONFIG=keys_json(k=entry))
    assert "API_KEYS_CONFIG['k'].models['m'].rpd_limit: must be a positive integer, got 0" in (
        message
    )


def test_anthropic_limits_input_and_output_apart() -> None:
    entry = good_entry(
        models={"claude": {"rpm_limit": 50, "itpm_limit": 40_000, "otpm_limit": 8_000}}
    )
    (key,) = parse_keys_config(keys_json(k=entry))
    limits = key.models["claude"]
    assert limits.tpm_limit == 40_000 and limits.output_apart
    (otpm,) = limits.limit_spec(burst_seconds=1.0).extra
    assert (otpm.name, otpm.limit, otpm.window, otpm.output_tokens) == ("otpm_limit", 8000, 60, 1)
    entry = good_entry(models={"claude": {"rpm_limit": 50, "tpm_limit": 9, "itpm_limit": 40_000}})
    message = config_error(from_env, API_KEYS_CONFIG=keys_json(k=entry))
    assert "models['claude'].itpm_limit: is 40000 but tpm_limit is 9" in message
    entry = good_entry(models={"m": {"rpm_limit": 5, "tpm_limit": 9, "otpm_limit": 8}})
    message = config_error(from_env, API_KEYS_CONFIG=keys_json(k=entry))
    assert "models['m'].otpm_limit: needs itpm_limit" in message


def test_an_azure_deployment_gets_6_rpm_per_1000_tpm_unless_it_names_its_rpm() -> None:
    entry = good_entry(
        provider="azure",
        models={
            "gpt-4o": {"tpm_limit": 30_000},
            "gpt-4o-mini": {"tpm_limit": 1_000, "rpm_limit": 9},
        },
    )
    (key,) = parse_keys_config(keys_json(k=entry))
    assert key.models["gpt-4o"].rpm_limit == 180
    assert key.models["gpt-4o-mini"].rpm_limit == 9  # named: kept
    entry = good_entry(models={"m": {"tpm_limit": 30_000}})  # not Azure: still required
    message = config_error(from_env, API_KEYS_CONFIG=keys_json(k=entry))
    assert "missing required field 'rpm_limit'" in message


def test_an_azure_deployment_bursts_over_azures_window_whatever_the_clients() -> None:
    entry = good_entry(
        provider="azure",
        models={
            "gpt-4o": {"tpm_limit": 60_000},
            "gpt-4o-mini": {"tpm_limit": 60_000, "burst_seconds": 10},
        },
    )
    (key,) = parse_keys_config(keys_json(k=entry))
    # A client-wide BURST_SECONDS=60 does not give Azure a minute of burst.
    spec = key.models["gpt-4o"].limit_spec(60.0)
    assert (spec.rpm_capacity, spec.tpm_capacity) == (6, 1_000)  # 1 s of 360 RPM, 60k TPM
    assert key.models["gpt-4o-mini"].limit_spec(60.0).tpm_capacity == 10_000  # named: kept
    (groq,) = parse_keys_config(keys_json(k=good_entry()))
    assert groq.models["llama-3.1-70b"].burst_seconds is None  # others: the client's


def test_missing_required_field() -> None:
    entry = good_entry()
    del entry["provider"]
    message = config_error(from_env, API_KEYS_CONFIG=keys_json(**{"groq-1": entry}))
    assert "  - API_KEYS_CONFIG['groq-1']: missing required field 'provider'" in message


def test_invalid_json_gives_line_and_column() -> None:
    text = '{\n  "groq-1": {\n    "api_key": "' + SECRET + '",\n    "provider" "groq"\n  }\n}'
    message = config_error(from_env, API_KEYS_CONFIG=text)
    assert "API_KEYS_CONFIG: invalid JSON" in message
    assert "line 4, column 16" in message


def test_duplicate_key_ids_in_json_are_an_error() -> None:
    text = '{"a": {}, "a": {}}'
    assert "duplicate name 'a'" in config_error(parse_keys_config, text)


def test_keys_config_must_be_an_object() -> None:
    assert "must be a JSON object" in config_error(parse_keys_config, "[1, 2]")
    message = config_error(parse_keys_config, '{"k": "sk-x"}')
    assert "API_KEYS_CONFIG['k']: must be an object" in message


def test_wrong_type_names_the_field() -> None:
    entry = good_entry(models={"m": {"tpm_limit": "lots", "rpm_limit": 30}})
    message = config_error(parse_keys_config, keys_json(k=entry))
    assert (
        "API_KEYS_CONFIG['k'].models['m'].tpm_limit: must be a positive integer, got 'lots'"
        in message
    )


def test_bool_and_float_are_not_integers() -> None:
    entry = good_entry(models={"m": {"tpm_limit": True, "rpm_limit": 2.5}})
    message = config_error(parse_keys_config, keys_json(k=entry))
    assert "models['m'].tpm_limit: must be a positive integer, got True" in message
    assert "models['m'].rpm_limit: must be a positive integer, got 2.5" in message


def test_unknown_field_is_named() -> None:
    entry = good_entry(models={"m": {"tpm_limit": 100, "rpm_limit": 5, "rpm_limt": 5}}, colour=1)
    message = config_error(parse_keys_config, keys_json(k=entry))
    assert "API_KEYS_CONFIG['k'].models['m']: unknown field 'rpm_limt'" in message
    assert "did you mean 'rpm_limit'?" in message
    assert "API_KEYS_CONFIG['k']: unknown field 'colour'" in message


def test_api_key_of_wrong_type_is_not_echoed() -> None:
    message = config_error(parse_keys_config, keys_json(k=good_entry(api_key=987654321)))
    assert "API_KEYS_CONFIG['k'].api_key: must be a non-empty string, got int" in message
    assert "987654321" not in message
    message = config_error(
        KeyConfig, api_key=["sk-inlist"], provider="p", models={"m": ModelLimits(1, 1)}
    )
    assert "sk-inlist" not in message and "api_key: must be a non-empty string" in message


def test_bad_env_values_name_the_variable() -> None:
    assert "  - MAX_RETRIES: must be an integer, got 'abc'" in config_error(
        from_env, MAX_RETRIES="abc"
    )
    assert "  - DEBUG: must be one of true/false/1/0/yes/no" in config_error(
        from_env, DEBUG="maybe"
    )
    assert "  - CALL_TIMEOUT: must be a number" in config_error(from_env, CALL_TIMEOUT="soon")
    assert "  - PORT: must be an integer from 1 to 65535, got 70000" in config_error(
        from_env, PORT="70000"
    )
    assert "  - DEFAULT_PRIORITY: unknown priority 'urgent'" in config_error(
        from_env, DEFAULT_PRIORITY="urgent"
    )
    assert "  - BURST_SECONDS:" in config_error(from_env, BURST_SECONDS="61")
    assert "  - LOG_LEVEL: unknown log level 'VERBOSE'" in config_error(
        from_env, LOG_LEVEL="verbose"
    )


def test_unknown_strategy_is_an_error_listing_valid_names() -> None:
    expected = (
        "unknown strategy 'fastest'; expected one of "
        "least_utilized, round_robin, latency_aware, balanced, token_aware"
    )
    assert f"  - DEFAULT_STRATEGY: {expected}" in config_error(from_env, DEFAULT_STRATEGY="fastest")
    assert f"  - strategy: {expected}" in config_error(maxllm_gate_config, strategy="fastest")


def test_all_problems_reported_in_one_error() -> None:
    bad_model = good_entry(models={"llama-3.1-70b": {"tpm_limit": -5, "rpm_limit": 30}})
    no_provider = good_entry()
    del no_provider["provider"]
    message = config_error(
        from_env,
        API_KEYS_CONFIG=keys_json(**{"groq-1": bad_model, "groq-2": no_provider}),
        DEFAULT_STRATEGY="fastest",
        MAX_RETRIES="abc",
        PORT="0",
    )
    lines = message.splitlines()[1:]
    assert len(lines) == 5, message
    assert "API_KEYS_CONFIG['groq-1'].models['llama-3.1-70b'].tpm_limit" in lines[0]
    assert "API_KEYS_CONFIG['groq-2']: missing required field 'provider'" in lines[1]
    assert any(line.startswith("  - DEFAULT_STRATEGY:") for line in lines)
    assert any(line.startswith("  - MAX_RETRIES:") for line in lines)
    assert any(line.startswith("  - PORT:") for line in lines)


def test_several_problems_in_one_key_are_all_reported() -> None:
    entry = {"api_key": "", "provider": "", "models": {}, "transport": "carrier-pigeon"}
    message = config_error(parse_keys_config, keys_json(k=entry))
    assert "API_KEYS_CONFIG['k'].api_key: must be a non-empty string" in message
    assert "API_KEYS_CONFIG['k'].provider: must be a non-empty string" in message
    assert "API_KEYS_CONFIG['k'].models: must name at least one model" in message
    assert "API_KEYS_CONFIG['k'].transport: unknown transport 'carrier-pigeon'" in message


def test_direct_construction_raises_config_error() -> None:
    message = config_error(
        KeyConfig,
        api_key=SECRET,
        provider="openai",
        models={"m": {"tpm_limit": -1, "rpm_limit": 5}},
    )
    assert "models['m'].tpm_limit: must be a positive integer, got -1" in message
    message = config_error(ModelLimits, tpm_limit=0, rpm_limit=0, burst_seconds=90)
    assert "tpm_limit" in message and "rpm_limit" in message and "burst_seconds" in message
    message = config_error(maxllm_gate_config, port=0, debug="yes", max_retries=-1)
    assert "  - port:" in message and "  - debug:" in message and "  - max_retries:" in message
    assert "token accounting" in config_error(ModelLimits, 1, 1, token_accounting="later")


def test_direct_construction_of_bad_dict_keys() -> None:
    entry = {"api_key": SECRET, "provider": "groq", "models": {"m": {"tpm_limit": 1}}}
    message = config_error(maxllm_gate_config, keys=[entry])
    assert "keys[0].models['m']: missing required field 'rpm_limit'" in message
    assert "keys: must be a list" in config_error(maxllm_gate_config, keys={"k": entry})


def test_key_ids_must_be_unique() -> None:
    key = KeyConfig(api_key=SECRET, provider="groq", models={"m": ModelLimits(1, 1)}, key_id="g")
    message = config_error(maxllm_gate_config, keys=[key, key])
    assert "keys[1].key_id: duplicate key_id 'g'" in message


def test_retry_max_delay_at_least_base_delay() -> None:
    message = config_error(from_env, RETRY_BASE_DELAY="10", RETRY_MAX_DELAY="5")
    assert "RETRY_MAX_DELAY: must be >= retry_base_delay" in message


def test_evolve_revalidates() -> None:
    config = maxllm_gate_config()
    assert config.evolve(strategy="balanced", max_retries=0).strategy == "balanced"
    assert config.evolve(default_temperature=0).default_temperature == 0.0
    assert config.evolve(log_level="debug").log_level == "DEBUG"
    assert "  - strategy: unknown strategy 'nope'" in config_error(config.evolve, strategy="nope")
    assert "burst_seconds" in config_error(config.evolve, burst_seconds=0)


def test_evolve_rejects_unknown_names() -> None:
    message = config_error(maxllm_gate_config().evolve, stratgy="balanced")
    assert "unknown field 'stratgy'" in message
    assert "did you mean 'strategy'?" in message
    assert "valid fields: keys, strategy, default_max_tokens" in message


def test_config_error_pickles_with_its_problems() -> None:
    with pytest.raises(ConfigError) as info:
        ModelLimits(0, 1)
    copy = pickle.loads(pickle.dumps(info.value))
    assert isinstance(copy, ConfigError)
    assert str(copy) == str(info.value)
