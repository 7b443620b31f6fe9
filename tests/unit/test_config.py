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


# --- LLM_BACKENDS ---------------------------------------------------------------------------

KEY = "sk-vllm-0f3c9a5ecret"


def test_llm_backends_is_a_json_object_of_urls_or_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(
        "LLM_BACKENDS",
        '{"ollama": "http://127.0.0.1:11434/v1/", '
        '"vllm": {"base_url": "http://localhost:8001/v1", "api_key": "' + KEY + '", '
        '"model": "Qwen/Qwen2.5-7B-Instruct"}}',
    )
    backends = load_settings(_env_file=None).llm_backends
    assert list(backends) == ["ollama", "vllm"]
    ollama, vllm = backends["ollama"], backends["vllm"]
    assert (ollama.base_url, ollama.api_key, ollama.model) == (
        "http://127.0.0.1:11434/v1",  # normalised as calls are built from it
        None,
        None,
    )
    assert vllm.api_key is not None and vllm.api_key.get_secret_value() == KEY
    assert vllm.model == "Qwen/Qwen2.5-7B-Instruct"
    assert KEY not in repr(backends)


def test_llm_backends_in_a_dotenv_file_single_quoted(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text(
        'LLM_BACKENDS=\'{"a": "http://127.0.0.1:1/v1", "b": {"base_url": "http://[::1]:2/v1"}}\'\n',
        encoding="utf-8",
    )
    backends = load_settings(_env_file=env).llm_backends
    assert {name: b.base_url for name, b in backends.items()} == {
        "a": "http://127.0.0.1:1/v1",
        "b": "http://[::1]:2/v1",
    }


@pytest.mark.parametrize("blank", ["", "  ", "{}"])
def test_llm_backends_empty_means_none(monkeypatch: pytest.MonkeyPatch, blank: str) -> None:
    monkeypatch.setenv("LLM_BACKENDS", blank)
    assert load_settings(_env_file=None).llm_backends == {}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('{"x": "http://llm.example.com/v1"}', "'llm.example.com' is not allowed"),
        ('{"x": "ftp://127.0.0.1/v1"}', "must use http or https"),
        ('{"x": {"base_url": "http://127.0.0.1:8/v1", "keys": 1}}', "LLM_BACKENDS.X.KEYS"),
        ('{"x": {"api_key": "' + KEY + '"}}', "LLM_BACKENDS.X.BASE_URL: Field required"),
        ('{"default": "http://127.0.0.1:8/v1"}', "reserved for the server's own backend"),
        ('{"two words": "http://127.0.0.1:8/v1"}', "letters, digits, - or _"),
        ('["http://127.0.0.1:8/v1"]', "must be a JSON object"),
        ('{"x": "http://127.0.0.1:8/v1", ' + KEY, "must be a JSON object (line 1"),
    ],
)
def test_llm_backends_mistakes_stop_the_start_without_showing_a_key(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: str
) -> None:
    monkeypatch.setenv("LLM_BACKENDS", value)
    with pytest.raises(ConfigError) as info:
        load_settings(_env_file=None)
    message = str(info.value)
    assert "LLM_BACKENDS" in message and expected in message
    assert KEY not in message


def test_llm_backends_hosts_follow_allowed_llm_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_BACKENDS", '{"far": "https://LLM.example.com/v1"}')
    monkeypatch.setenv("ALLOWED_LLM_HOSTS", "127.0.0.1,llm.example.com")
    assert load_settings(_env_file=None).llm_backends["far"].base_url == (
        "https://LLM.example.com/v1"
    )


def test_a_redis_url_alone_is_reported_and_both_urls_make_a_cluster_node() -> None:
    from engine.config import load_settings, planned_settings

    assert planned_settings(load_settings(_env_file=None)) == []
    with_redis = load_settings(_env_file=None, redis_url="redis://:hunter2@127.0.0.1:6379/0")
    assert not with_redis.cluster_mode
    [warning] = planned_settings(with_redis)
    assert "REDIS_URL" in warning and "DATABASE_URL" in warning
    assert "hunter2" not in warning
    both = load_settings(
        _env_file=None,
        redis_url="redis://127.0.0.1:6379/0",
        database_url="postgresql://127.0.0.1/test",
    )
    assert both.cluster_mode and planned_settings(both) == []
