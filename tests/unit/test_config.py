"""Configuration: every setting documented in .env.example, clear errors at start-up."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from engine.config import ConfigError, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
SPEC_VARIABLES = [
    "LLM_BASE_URL",
    "LLM_API_KEY",
    "DEFAULT_BOT_MODEL",
    "DEFAULT_ORCHESTRATOR_MODEL",
    "MAX_BOTS_PER_SESSION",
    "SESSION_TTL_DEFAULT",
    "DEBUG",
    "HOST",
    "PORT",
    "DATABASE_PATH",
    "LOG_DIR",
    "SPECS_DIR",
    "LLM_TIMEOUT",
    "LLM_RETRIES",
    "LLM_RETRY_DELAY",
    "LLM_MAX_CONCURRENCY",
    "ALLOWED_LLM_HOSTS",
    "DEFAULT_CONTEXT_LIMIT",
    "TOKENIZER",
    "MAX_SPEC_BYTES",
    "MAX_MESSAGE_CHARS",
    "CORS_ORIGINS",
]


def example_variables() -> dict[str, str]:
    text = (ROOT / ".env.example").read_text(encoding="utf-8")
    return dict(re.findall(r"^([A-Z0-9_]+)=(.*)$", text, flags=re.MULTILINE))


def test_env_example_lists_exactly_the_settings() -> None:
    assert set(example_variables()) == {name.upper() for name in Settings.model_fields}


def test_every_variable_of_the_spec_exists() -> None:
    assert set(SPEC_VARIABLES) <= {name.upper() for name in Settings.model_fields}


def test_every_setting_has_a_description_and_a_comment_in_the_example() -> None:
    text = (ROOT / ".env.example").read_text(encoding="utf-8")
    for name, field in Settings.model_fields.items():
        assert field.description, name
        assert re.search(rf"^# .+\n{name.upper()}=", text, flags=re.MULTILINE), name


def test_example_values_are_valid_settings() -> None:
    values = {k.lower(): v for k, v in example_variables().items() if v != ""}
    load_settings(_env_file=None, **values)


def test_invalid_value_fails_with_one_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "not-a-port")
    monkeypatch.setenv("LLM_RETRIES", "-3")
    with pytest.raises(ConfigError) as info:
        load_settings(_env_file=None)
    message = str(info.value)
    assert "PORT" in message and "LLM_RETRIES" in message
    assert "Traceback" not in message


def test_comma_lists_are_split(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALLOWED_LLM_HOSTS", "a.local, b.local ,")
    assert load_settings(_env_file=None).allowed_llm_hosts == ["a.local", "b.local"]


def test_empty_paths_mean_the_default_not_the_current_folder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LOCAL_MODEL_PATH", "")
    monkeypatch.setenv("FELLOWSHIP_REAL_CACHE", " ")
    settings = load_settings(_env_file=None)
    assert settings.local_model_path is None
    assert settings.fellowship_real_cache is None
