"""`maxllm_gate check-config`: the keys masked, and each problem with its fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from maxllm_gate.cli import main
from maxllm_gate.cli.check_config import mask

SECRET = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("API_KEYS_CONFIG", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env


def _keys(**entries: dict[str, object]) -> str:
    return json.dumps(entries)


def _key(api_key: str = SECRET, rpm: object = 500, **extra: object) -> dict[str, object]:
    return {
        "api_key": api_key,
        "provider": "openai",
        "models": {"gpt-4o-mini": {"tpm_limit": 90000, "rpm_limit": rpm}},
        **extra,
    }


def test_a_good_config_lists_each_key_masked(capsys: pytest.CaptureFixture[str]) -> None:
    keys = _keys(main=_key(), spare=_key("sk-other-key-000000000000"))
    assert main(["check-config", "--keys-config", keys]) == 0
    out = capsys.readouterr().out
    assert SECRET not in out and "abcdefgh" not in out
    assert "sk-proj-…#" in out
    assert "gpt-4o-mini" in out and "90000" in out
    assert out.splitlines()[-1] == "ok: 2 keys, 2 (key, model) limits"


@pytest.mark.parametrize(
    ("api_key", "shown"),
    [
        ("sk-proj-abcdefghijklmnop", "sk-proj-"),
        ("sk-ant-api03-abcdefghijkl", "sk-ant-"),
        ("gsk_abcdefghijklmnopqrstu", "gsk_"),
        ("ab-cdefg_hijklmnopqrstuv", "ab-"),  # not "ab-cdefg_": that is the key itself
    ],
)
def test_a_masked_key_shows_only_a_known_prefix(api_key: str, shown: str) -> None:
    assert mask(api_key).split("…")[0] == shown


def test_each_problem_comes_with_a_fix(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("API_KEYS_CONFIG", _keys(bad=_key(rpm=-5)))
    assert main(["check-config", "--json"]) == 2
    report = json.loads(capsys.readouterr().out)
    assert not report["ok"]
    [problem] = report["problems"]
    assert problem["where"] == "API_KEYS_CONFIG['bad'].models['gpt-4o-mini'].rpm_limit"
    assert "positive integer" in problem["problem"]
    assert problem["fix"] == "use a whole number above 0"


def test_the_same_key_twice_is_a_problem(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--keys-config", _keys(a=_key(), b=_key())]) == 2
    out = capsys.readouterr().out
    assert "the same API key as 'a': its limits would be counted twice" in out
    assert "fix: keep one entry per API key, with all its models" in out
    assert SECRET not in out


def test_a_key_with_no_endpoint_is_a_problem(capsys: pytest.CaptureFixture[str]) -> None:
    keys = _keys(a=_key(), c=_key("gsk-x-1", transport="openai_compat", provider="nowhere"))
    assert main(["check-config", "--keys-config", keys]) == 2
    out = capsys.readouterr().out
    assert "provider 'nowhere' has no known OpenAI-compatible endpoint" in out
    assert "fix: set the key's api_base, or its transport to litellm" in out
    assert SECRET not in out


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, "no keys are configured"), ("{not json", "invalid JSON")],
)
def test_missing_or_broken_keys(
    value: str | None, expected: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    args = ["check-config"]
    if value is not None:
        (tmp_path / "keys.json").write_text(value)
        args += ["--keys-config", str(tmp_path / "keys.json")]
    assert main(args) == 2
    out = capsys.readouterr().out
    assert expected in out and "fix:" in out


def test_an_unreadable_keys_file_is_named_once(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--keys-config", "nowhere.json"]) == 2
    out = capsys.readouterr().out
    assert "problem: --keys-config: cannot read nowhere.json: No such file" in out


def test_an_env_file_named_but_missing_is_a_problem(capsys: pytest.CaptureFixture[str]) -> None:
    # It was ignored: the settings the user meant to give were lost unseen.
    assert main(["check-config", "--env-file", "nope.env"]) == 2
    out = capsys.readouterr().out
    assert "problem: --env-file: no such file: nope.env" in out
    assert "fix: pass an existing file" in out


def test_a_misspelled_setting_in_the_env_file_is_a_problem(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Ignored, it would leave the default in force unseen; other programs' names are fine.
    keys = _keys(main=_key())
    text = f"API_KEYS_CONFIG='{keys}'\nSTRATEGY=round_robin\nMAX_RETRY=5\nDATABASE_URL=x\n"
    (tmp_path / ".env").write_text(text)
    assert main(["check-config", "--json"]) == 2
    problems = json.loads(capsys.readouterr().out)["problems"]
    assert [(p["where"], p["fix"]) for p in problems] == [
        (".env line 2", "did you mean DEFAULT_STRATEGY?"),
        (".env line 3", "did you mean MAX_RETRIES?"),
    ]


def test_a_line_of_the_env_file_that_cannot_be_read_is_a_problem(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # dotenv skips such a line with a warning: a setting there would be lost unseen.
    keys = _keys(main=_key())
    (tmp_path / ".env").write_text(f"API_KEYS_CONFIG='{keys}'\n{SECRET} pasted alone\n")
    assert main(["check-config"]) == 2
    out = capsys.readouterr().out
    assert "problem: .env line 2: cannot be read as NAME=value" in out
    assert SECRET not in out and "abcdefgh" not in out


def test_the_env_file_is_read_once(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dotenv

    keys = _keys(main=_key(), broken=_key(rpm="many"))
    (tmp_path / ".env").write_text(f"API_KEYS_CONFIG='{keys}'\nLOG_LEVEL=INFO\n")
    reads = []
    real = dotenv.dotenv_values
    monkeypatch.setattr(dotenv, "dotenv_values", lambda *a, **k: reads.append(a) or real(*a, **k))
    assert main(["check-config", "--json"]) == 2
    assert len(reads) == 1
    # The entry that is fine is still listed, from that one read.
    assert [row["key_id"] for row in json.loads(capsys.readouterr().out)["keys"]] == ["main"]


def test_limits_in_the_providers_terms_and_a_warning_for_each_mismatch(
    capsys: pytest.CaptureFixture[str],
) -> None:
    claude = {"rpm_limit": 50, "itpm_limit": 40000, "otpm_limit": 8000}
    groq = {"rpm_limit": 30, "tpm_limit": 6000}
    keys = _keys(
        ant={
            "api_key": "sk-ant-0000000000000",
            "provider": "anthropic",
            "transport": "litellm",
            "models": {"claude-sonnet-4-5": claude},
        },
        groq={
            "api_key": "gsk_000000000000000000",
            "provider": "groq",
            "models": {"llama-3.1-8b-instant": groq},
        },
        oa={
            "api_key": SECRET,
            "provider": "openai",
            "models": {"gpt-4o-mini": {**groq, "itpm_limit": 6000}},
        },
    )
    assert main(["check-config", "--keys-config", keys]) == 0  # warnings do not fail it
    out = capsys.readouterr().out
    assert "50 RPM, 40000 ITPM, 8000 OTPM" in out
    assert "30 RPM, 6000 TPM" in out
    assert "warning: groq, llama-3.1-8b-instant: rpd_limit is missing: Groq caps" in out
    assert "warning: oa, gpt-4o-mini: itpm_limit is set, but openai has no ITPM limit" in out
    assert "warning: ant" not in out
    assert main(["check-config", "--json", "--keys-config", keys]) == 0
    rows = {row["key_id"]: row for row in json.loads(capsys.readouterr().out)["keys"]}
    assert rows["ant"]["itpm_limit"] == 40000 and rows["ant"]["warnings"] == []
    assert len(rows["groq"]["warnings"]) == 1
