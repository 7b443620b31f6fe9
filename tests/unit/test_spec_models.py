"""Session spec models: field rules, the memory syntax, secrets kept out, schema coverage."""

from __future__ import annotations

from typing import Any

import jsonschema_rs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from engine.spec.models import (
    BOT_NAME_MAX_CHARS,
    BotSpec,
    LLMOverride,
    SessionOptions,
    SessionSpec,
    parse_memory,
)
from engine.spec.schema import SCHEMA_DIALECT, session_spec_schema

SECRET_KEY = "sk-do-not-leak-0123456789"
SECRET_TOKEN = "fsk_inherited_session_token_abcdef0123456789"


def spec(**extra: Any) -> SessionSpec:
    return SessionSpec.model_validate({"bots": [{"name": "Alice"}], **extra})


def error_types(exc: ValidationError) -> dict[tuple[object, ...], str]:
    return {tuple(err["loc"]): err["type"] for err in exc.errors()}


def test_options_default_to_the_documented_values() -> None:
    options = spec().options
    assert options.participation == "autonomous"
    assert options.turn_order == "round_robin"
    assert options.max_talkers == 1
    assert options.rectify_history is True
    assert options.summarize_context is False
    assert options.context == "shared"
    assert options.memory == "none"
    assert options.replies_per_message == 1
    assert options.turn_delay == 0
    assert options.max_turns is None and options.ttl is None


def test_bot_name_is_trimmed() -> None:
    assert BotSpec(name="  Alice \t").name == "Alice"


@pytest.mark.parametrize("name", ["", "   ", "x" * 65, "Al\nice", "Bo\tb"])
def test_bad_bot_names_are_refused(name: str) -> None:
    with pytest.raises(ValidationError):
        BotSpec(name=name)


def test_bot_name_of_64_chars_is_accepted() -> None:
    assert len(BotSpec(name="x" * 64).name) == 64


@pytest.mark.parametrize("value", [-0.1, 2.01, "hot", True, float("nan"), float("inf")])
def test_temperature_outside_zero_to_two_or_not_a_number_is_refused(value: object) -> None:
    with pytest.raises(ValidationError) as caught:
        BotSpec(name="A", temperature=value)
    assert ("temperature",) in error_types(caught.value)


def test_true_is_not_read_as_one_turn() -> None:
    with pytest.raises(ValidationError) as caught:
        SessionOptions(max_turns=True)
    assert error_types(caught.value) == {("max_turns",): "number_type"}


@pytest.mark.parametrize(
    ("value", "mode", "token"),
    [
        ("none", "none", None),
        ("new", "new", None),
        ("inherit:abc", "inherit", "abc"),
        ("  inherit:  abc  ", "inherit", "abc"),
    ],
)
def test_memory_forms_are_parsed(value: str, mode: str, token: str | None) -> None:
    options = SessionOptions(memory=value)
    assert (options.memory_mode, options.memory_token) == (mode, token)


@pytest.mark.parametrize("value", ["inherit:", "inherit:   ", "keep", "NEW", "", "inherit"])
def test_bad_memory_values_are_refused(value: str) -> None:
    with pytest.raises(ValidationError) as caught:
        SessionOptions(memory=value)
    assert error_types(caught.value) == {("memory",): "memory"}


def test_parse_memory_rejects_an_empty_token() -> None:
    with pytest.raises(ValueError, match="token"):
        parse_memory("inherit:")


def test_blank_optional_texts_count_as_unset() -> None:
    loaded = spec(
        name="  ",
        options={"goal": ""},
        llm={"model": " ", "orchestrator_model": ""},
        bots=[{"name": "A", "role": "", "model": "  "}],
    )
    assert loaded.name is None and loaded.options.goal is None
    assert loaded.bots[0].role is None and loaded.bots[0].model is None
    assert loaded.llm is not None and loaded.llm.model is None


@pytest.mark.parametrize("url", ["ftp://host/v1", "127.0.0.1:8080", "http://", "not a url"])
def test_llm_base_url_must_be_an_http_url(url: str) -> None:
    with pytest.raises(ValidationError):
        LLMOverride(base_url=url)


def secret_spec() -> SessionSpec:
    return spec(
        llm={"base_url": "http://127.0.0.1:8080/v1", "api_key": SECRET_KEY},
        options={"memory": f"inherit:{SECRET_TOKEN}"},
    )


def test_public_dict_drops_the_api_key_and_masks_the_inherited_token() -> None:
    public = secret_spec().public_dict()
    assert public["llm"]["api_key"] is None
    assert public["options"]["memory"] == "inherit:***"
    assert SECRET_KEY not in str(public) and SECRET_TOKEN not in str(public)
    assert public["llm"]["base_url"] == "http://127.0.0.1:8080/v1"


def test_public_copy_leaves_the_original_untouched() -> None:
    original = secret_spec()
    original.public_copy()
    assert original.options.memory_token == SECRET_TOKEN
    assert original.llm is not None and original.llm.api_key is not None


def test_repr_shows_neither_secret() -> None:
    text = repr(secret_spec()) + str(secret_spec())
    assert SECRET_KEY not in text and SECRET_TOKEN not in text


def test_storage_dict_keeps_secrets_and_reads_back_equal() -> None:
    original = secret_spec()
    stored = original.storage_dict()
    assert stored["llm"]["api_key"] == SECRET_KEY
    assert SessionSpec.model_validate(stored) == original


def walk_properties(node: object, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        for name, prop in node.get("properties", {}).items():
            found.append((f"{path}.{name}", prop))
        for key, value in node.items():
            # `if`/`then` restate properties described elsewhere, as conditions.
            if key not in ("if", "then"):
                found.extend(walk_properties(value, f"{path}/{key}"))
    return found


def test_every_schema_property_has_a_description() -> None:
    properties = walk_properties(session_spec_schema())
    assert len(properties) >= 30
    assert [path for path, prop in properties if not prop.get("description")] == []


def test_schema_is_draft_2020_12_with_a_title_and_numeric_bounds() -> None:
    schema = session_spec_schema()
    assert schema["$schema"] == SCHEMA_DIALECT
    assert schema["title"]
    temperature = schema["$defs"]["BotSpec"]["properties"]["temperature"]["anyOf"][0]
    assert (temperature["minimum"], temperature["maximum"]) == (0, 2)
    assert "ge" not in temperature  # pydantic's spelling must not leak into the schema


def model_accepts_name(name: str) -> bool:
    try:
        BotSpec(name=name)
    except ValidationError:
        return False
    return True


def schema_accepts_name(name: str) -> bool:
    pattern = session_spec_schema()["$defs"]["BotSpec"]["properties"]["name"]["pattern"]
    return bool(jsonschema_rs.validator_for({"pattern": pattern}).is_valid(name))


@settings(max_examples=500, derandomize=True, database=None)
@given(name=st.text(max_size=BOT_NAME_MAX_CHARS + 8))
def test_schema_bot_name_pattern_accepts_exactly_the_names_the_model_accepts(name: str) -> None:
    assert schema_accepts_name(name) == model_accepts_name(name)


@pytest.mark.parametrize(
    ("name", "accepted"),
    [
        (" Alice ", True),
        ("\tAlice\n", True),  # surrounding blanks are trimmed, line breaks too
        ("A" * BOT_NAME_MAX_CHARS, True),
        (" " + "A" * BOT_NAME_MAX_CHARS + " ", True),  # the limit counts after trimming
        ("A" * (BOT_NAME_MAX_CHARS + 1), False),
        ("   ", False),
        ("Al\nice", False),
        ("\x1cAlice", False),  # a control character that is not trimmed
    ],
)
def test_schema_bot_name_pattern_on_the_edges(name: str, accepted: bool) -> None:
    assert schema_accepts_name(name) is accepted
    assert model_accepts_name(name) is accepted


def test_schema_needs_three_bots_for_orchestrated_turns() -> None:
    validator = jsonschema_rs.validator_for(session_spec_schema())
    two = [{"name": "Alice"}, {"name": "Bob"}]
    orchestrated = {"turn_order": "orchestrated"}
    assert not validator.is_valid({"bots": two, "options": orchestrated})
    assert validator.is_valid({"bots": [*two, {"name": "Carol"}], "options": orchestrated})
    assert validator.is_valid({"bots": two, "options": {"turn_order": "round_robin"}})
    assert validator.is_valid({"bots": two})
