"""Three ways to configure several keys, and what a bad configuration says.

Run it with::

    python examples/multi_key_config.py

1. In code, with ``maxllm_gate_config(keys=[KeyConfig(...)], ...)``.
2. From the ``API_KEYS_CONFIG`` JSON format, with ``parse_keys_config``.
3. From environment variables, with ``config_from_env`` (this is what
   ``maxllm_gate.from_env()`` does, reading ``os.environ`` and ``.env``).

Every check runs whichever way you choose, and a bad configuration raises a
single ``ConfigError`` that lists every problem, each named by key id and field.
Nothing here touches the network; the keys are placeholders.
"""

import json

from maxllm_gate import ConfigError, KeyConfig, ModelLimits, maxllm_gate_config
from maxllm_gate.config import config_from_env, parse_keys_config

# 1. In code. Limits may be ModelLimits or plain dicts.
config = maxllm_gate_config(
    keys=[
        KeyConfig(
            api_key="gsk-placeholder-1",
            provider="groq",
            key_id="groq-1",
            models={
                "llama-3.1-70b-versatile": ModelLimits(tpm_limit=30_000, rpm_limit=30),
                "mixtral-8x7b-32768": {"tpm_limit": 15_000, "rpm_limit": 20},
            },
        ),
        KeyConfig(
            api_key="sk-placeholder-2",
            provider="openai",  # no key_id: it defaults to "openai-<8 hex digits>"
            models={"gpt-4o-mini": {"tpm_limit": 90_000, "rpm_limit": 500}},
        ),
    ],
    strategy="balanced",
    default_max_tokens=512,
)
print("in code:      ", [key.key_id for key in config.keys], config.strategy)
print("reprs never show a key:", "gsk-placeholder-1" not in repr(config))

# 2. The API_KEYS_CONFIG format: a JSON object mapping each key id to its key.
API_KEYS_CONFIG = json.dumps(
    {
        "groq-1": {
            "api_key": "gsk-placeholder-1",
            "provider": "groq",
            "models": {"llama-3.1-70b-versatile": {"tpm_limit": 30_000, "rpm_limit": 30}},
        },
        "openai-1": {
            "api_key": "sk-placeholder-2",
            "provider": "openai",
            "models": {
                "gpt-4o-mini": {"tpm_limit": 90_000, "rpm_limit": 500},
                # optional per-model settings:
                "gpt-4o": {
                    "tpm_limit": 30_000,
                    "rpm_limit": 200,
                    "burst_seconds": 2,
                    "max_concurrency": 8,
                    "token_accounting": "admission",
                },
            },
        },
    }
)
keys = parse_keys_config(API_KEYS_CONFIG)
print("from JSON:    ", {key.key_id: sorted(key.models) for key in keys})

# 3. The environment. Pass environ= to read a dict instead of os.environ, and
#    dotenv_path=None to ignore any .env file in the working directory.
config = config_from_env(
    environ={
        "API_KEYS_CONFIG": API_KEYS_CONFIG,
        "DEFAULT_STRATEGY": "least_utilized",
        "MAX_RETRIES": "5",
        "BURST_SECONDS": "1.5",
    },
    dotenv_path=None,
)
print("from env:     ", [key.key_id for key in config.keys], config.strategy, config.max_retries)

# A bad configuration: every problem in one ConfigError, named by key id and field.
BAD = json.dumps(
    {
        "groq-1": {
            "api_key": "gsk-placeholder-1",
            "provider": "groq",
            "models": {"llama-3.1-70b-versatile": {"tpm_limit": -5, "rpm_limit": 30}},
        },
        "openai-1": {"api_key": "sk-placeholder-2", "provider": "openai", "modles": {}},
    }
)
try:
    config_from_env(environ={"API_KEYS_CONFIG": BAD, "MAX_RETRIES": "many"}, dotenv_path=None)
except ConfigError as exc:
    print("\nConfigError:", exc)

# The same checks run in code; an unknown strategy lists the valid ones.
try:
    maxllm_gate_config(keys=config.keys, strategy="fastest")
except ConfigError as exc:
    print("\nConfigError:", exc)
