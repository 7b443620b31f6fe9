"""Sampling settings in the spec: validation, and how a bot's values win over the session's."""

from __future__ import annotations

from typing import Any

import pytest

from engine.config import load_settings
from engine.spec.loader import validate_spec_data
from engine.spec.models import BotSpec, Sampling, SessionSpec, bot_sampling

SETTINGS = load_settings(_env_file=None)


def spec_data(bot: dict[str, Any] | None = None, **top: Any) -> dict[str, Any]:
    return {"bots": [{"name": "Alice", **(bot or {})}], **top}


def test_every_sampling_setting_is_accepted_per_bot_and_per_session() -> None:
    data = spec_data(
        {
            "temperature": 0.9,
            "top_p": 0.95,
            "frequency_penalty": 0.5,
            "presence_penalty": -0.5,
            "seed": 7,
            "backend_options": {"repeat_penalty": 1.2, "dry_multiplier": 0.8},
        },
        sampling={
            "temperature": 0.2,
            "top_p": 0.5,
            "seed": 1,
            "backend_options": {
                "repeat_penalty": 1.1,
                "repeat_last_n": 64,
                "top_k": 40,
                "min_p": 0.05,
                "dry_multiplier": 0.5,
                "dry_base": 1.75,
                "dry_allowed_length": 2,
                "dry_penalty_last_n": -1,
                "dry_sequence_breakers": ["\n", ":"],
            },
        },
    )
    result = validate_spec_data(data, settings=SETTINGS)
    assert result.ok and result.warnings == [], (result.errors, result.warnings)


@pytest.mark.parametrize(
    ("where", "value", "path", "message"),
    [
        ("top_p", 1.5, "bots[0].top_p", "must be at most 1.0"),
        ("frequency_penalty", 3, "bots[0].frequency_penalty", "must be at most 2.0"),
        ("presence_penalty", -2.5, "bots[0].presence_penalty", "must be at least -2.0"),
        ("seed", -1, "bots[0].seed", "must be at least 0"),
        ("seed", 1.5, "bots[0].seed", "must be a whole number"),
        ("top_p", True, "bots[0].top_p", "must be a number, not true/false"),
    ],
)
def test_out_of_range_values_are_refused_with_their_path(
    where: str, value: Any, path: str, message: str
) -> None:
    result = validate_spec_data(spec_data({where: value}), settings=SETTINGS)
    assert not result.ok
    assert [(e.path, e.message) for e in result.errors] == [(path, message)]


@pytest.mark.parametrize(
    ("options", "path"),
    [
        ({"repeat_penalty": -1}, "sampling.backend_options.repeat_penalty"),
        ({"dry_base": 0.5}, "sampling.backend_options.dry_base"),
        ({"min_p": 2}, "sampling.backend_options.min_p"),
        ({"top_k": -3}, "sampling.backend_options.top_k"),
        ({"dry_sequence_breakers": "x"}, "sampling.backend_options.dry_sequence_breakers"),
    ],
)
def test_backend_options_are_checked(options: dict[str, Any], path: str) -> None:
    result = validate_spec_data(spec_data(sampling={"backend_options": options}), settings=SETTINGS)
    assert [e.path for e in result.errors] == [path]


def test_an_unknown_backend_option_is_a_warning_not_an_error() -> None:
    result = validate_spec_data(spec_data({"backend_options": {"mirostat": 2}}), settings=SETTINGS)
    assert result.ok
    assert [w.path for w in result.warnings] == ["bots[0].backend_options.mirostat"]


def test_a_bots_values_win_key_by_key_over_the_sessions() -> None:
    bot = BotSpec.model_validate(
        {
            "name": "Alice",
            "temperature": 0.9,
            "seed": 3,
            "backend_options": {"repeat_penalty": 1.3},
        }
    )
    session = Sampling.model_validate(
        {
            "temperature": 0.1,
            "top_p": 0.8,
            "presence_penalty": 0.4,
            "backend_options": {"repeat_penalty": 1.1, "dry_multiplier": 0.8},
        }
    )

    merged = bot_sampling(bot, session)

    assert (merged.temperature, merged.top_p, merged.presence_penalty, merged.seed) == (
        0.9,
        0.8,
        0.4,
        3,
    )
    assert merged.frequency_penalty is None
    assert merged.backend_options is not None
    assert merged.backend_options.payload() == {"repeat_penalty": 1.3, "dry_multiplier": 0.8}


def test_without_any_sampling_nothing_is_set() -> None:
    merged = bot_sampling(BotSpec(name="Alice"), None)
    assert merged == Sampling()


def test_the_stored_spec_keeps_the_sampling_settings() -> None:
    spec = SessionSpec.model_validate(
        spec_data({"top_p": 0.9}, sampling={"seed": 5, "backend_options": {"top_k": 20}})
    )
    again = SessionSpec.model_validate(spec.storage_dict())
    assert again == spec
    assert spec.public_dict()["sampling"]["backend_options"]["top_k"] == 20
