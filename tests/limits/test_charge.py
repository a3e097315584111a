"""The charge model: what a provider's limiter debits, apart from what the model uses."""

from __future__ import annotations

from typing import Any

import pytest

from maxllm_gate.limits import PromptSize, default_charge_rule
from maxllm_gate.limits.charge import cache_reads_count, prompt_characters
from maxllm_gate.tokens import IMAGE_TOKENS


def test_every_string_but_the_roles_counts_and_the_tools_json() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "abcd"},
        {"role": "user", "content": "x" * 1200, "name": "ann"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1"}]},
    ]
    tools = [{"type": "function"}]
    chars, images = prompt_characters(messages, tools)
    # Roles are left out: framing, as the JSON punctuation is.
    expected = 4 + 1200 + 3 + len('{"id":"c1"}') + len('[{"type":"function"}]')
    assert (chars, images) == (expected, 0)


def test_text_parts_count_their_text_and_images_a_fixed_charge() -> None:
    content = [
        {"type": "text", "text": "hello"},
        {"type": "image_url", "image_url": {"url": "data:..."}},
        "raw",
    ]
    chars, images = prompt_characters([{"role": "user", "content": content}])
    assert chars == len("hello") + len("raw")
    assert images == IMAGE_TOKENS


def test_a_1200_character_prompt_is_charged_by_its_characters_not_its_tokens() -> None:
    # What the accounting issue saw: tiktoken says 238, the provider's limiter 300.
    counted: list[int] = []

    def buffered() -> int:
        counted.append(262)
        return 262  # 238 x 1.1

    size = PromptSize(1200, 0)
    assert size.charge("chars", buffered) == 300
    assert counted == []  # a character rule never runs the tokenizer
    assert size.charge("tokens", buffered) == 262
    assert size.charge("max", buffered) == 300
    # Text whose tokens hold fewer than 4 characters (CJK): "max" stays safe.
    assert PromptSize(400, 0).charge("max", lambda: 418) == 418


@pytest.mark.parametrize(
    ("provider", "rule"),
    [("openai", "chars"), ("azure", "chars"), ("OpenAI", "chars"), ("groq", "max")],
)
def test_providers_that_document_a_character_rule_get_it_the_others_the_safe_one(
    provider: str, rule: str
) -> None:
    assert default_charge_rule(provider) == rule


@pytest.mark.parametrize(
    ("model", "counts"),
    [
        # The models Anthropic's rate-limits tables mark with a dagger.
        ("claude-3-5-sonnet-20241022", True),
        ("claude-3-5-sonnet-20240620", True),
        ("anthropic/claude-3-5-haiku-latest", True),
        ("claude-3-opus-20240229", True),
        ("claude-3-sonnet-20240229", True),
        ("claude-3-haiku-20240307", True),
        # And some it does not.
        ("claude-3-7-sonnet-20250219", False),
        ("claude-sonnet-4-5", False),
        ("anthropic/claude-opus-4-1-20250805", False),
        ("claude-haiku-4-5", False),
    ],
)
def test_cache_reads_count_toward_itpm_only_on_the_marked_models(model: str, counts: bool) -> None:
    assert cache_reads_count(model) is counts
