"""Loading specs: every bad input gets a clear, located error and nothing ever raises."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.config import Settings, load_settings
from engine.errors import BadRequest, PayloadTooLarge
from engine.spec import checking
from engine.spec.loader import (
    InvalidSpec,
    MalformedSpec,
    SpecIssue,
    SpecResult,
    SpecTooLarge,
    load_spec,
    validate_spec_data,
)
from engine.spec.models import SessionOptions

SETTINGS = load_settings()

GOOD_YAML = """\
name: Coffee debate
bots:
  - name: Alice
    system_prompt: You love espresso.
  - name: Bob
    system_prompt: You drink tea.
  - name: Carol
options:
  turn_order: orchestrated
  goal: Agree on a kitchen plan.
"""

BILLION_LAUGHS = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
bots: *i
"""


def load(
    body: str | bytes, content_type: str | None = None, settings: Settings = SETTINGS
) -> SpecResult:
    data = body.encode() if isinstance(body, str) else body
    return load_spec(data, content_type=content_type, settings=settings)


def bots(count: int, **fields: Any) -> list[dict[str, Any]]:
    return [{"name": f"bot{i}", **fields} for i in range(count)]


def only_error(result: SpecResult) -> SpecIssue:
    assert result.spec is None
    assert len(result.errors) == 1, result.errors
    return result.errors[0]


def errors_by_path(result: SpecResult) -> dict[str, str]:
    assert result.spec is None
    return {issue.path: issue.message for issue in result.errors}


# --- good input --------------------------------------------------------------------


def test_good_yaml_loads_into_a_spec() -> None:
    result = load(GOOD_YAML, "application/yaml")
    assert result.ok and result.errors == [] and result.warnings == []
    assert result.spec is not None
    assert [bot.name for bot in result.spec.bots] == ["Alice", "Bob", "Carol"]
    assert result.spec.options.turn_order == "orchestrated"


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8", None, "text/plain"]
)
def test_json_loads_by_content_type_or_by_sniffing(content_type: str | None) -> None:
    body = json.dumps({"bots": [{"name": "Alice"}]})
    result = load(body, content_type)
    assert result.spec is not None and result.spec.bots[0].name == "Alice"


def test_flow_style_yaml_that_looks_like_json_still_loads() -> None:
    result = load("{bots: [{name: Alice}]}")
    assert result.spec is not None and result.spec.bots[0].name == "Alice"


def test_utf8_byte_order_mark_is_accepted() -> None:
    assert load(b"\xef\xbb\xbf" + GOOD_YAML.encode()).ok


# --- each bad input of the brief -------------------------------------------------


def test_empty_body_is_malformed() -> None:
    for body in (b"", b"   \n\t\n"):
        result = load(body)
        assert result.status_hint == "malformed"
        assert "empty" in only_error(result).message


def test_comment_only_yaml_is_malformed_as_empty() -> None:
    result = load("# nothing here\n", "application/yaml")
    assert result.status_hint == "malformed"
    assert "empty" in only_error(result).message


def test_non_utf8_bytes_are_malformed_with_their_line() -> None:
    result = load(b"bots:\n  - name: Al\xffce\n")
    issue = only_error(result)
    assert result.status_hint == "malformed"
    assert "UTF-8" in issue.message
    assert (issue.line, issue.column) == (2, 13)


def test_spec_of_300_kib_is_too_large() -> None:
    body = "bots:\n  - name: A\n    system_prompt: " + "x" * (300 * 1024) + "\n"
    result = load(body)
    issue = only_error(result)
    assert result.status_hint == "too_large"
    assert "MAX_SPEC_BYTES" in issue.message and str(SETTINGS.max_spec_bytes) in issue.message


def test_alias_bomb_is_refused_at_its_first_anchor() -> None:
    result = load(BILLION_LAUGHS, "application/yaml")
    issue = only_error(result)
    assert result.status_hint == "malformed"
    assert "aliases" in issue.message
    assert (issue.line, issue.column) == (1, 4)


def test_a_lone_alias_is_refused_too() -> None:
    body = "bots:\n  - &alice {name: Alice}\n  - *alice\n"
    assert load(body).status_hint == "malformed"


def test_second_yaml_document_is_refused_with_its_line() -> None:
    body = "bots:\n  - name: Alice\n---\nbots:\n  - name: Bob\n"
    result = load(body)
    issue = only_error(result)
    assert result.status_hint == "malformed"
    assert "one YAML document" in issue.message
    assert issue.line == 3


def test_json_array_instead_of_an_object_is_invalid() -> None:
    result = load('[{"bots": [{"name": "Alice"}]}]', "application/json")
    issue = only_error(result)
    assert result.status_hint == "invalid"
    assert issue.path == ""
    assert "mapping" in issue.message and "a list" in issue.message


def test_bot_names_differing_only_in_case_clash_at_the_second() -> None:
    body = "bots:\n  - name: Alice\n  - name: Bob\n  - name: ALICE\n"
    result = load(body)
    issue = only_error(result)
    assert issue.path == "bots[2].name"
    assert "unique" in issue.message and "bots[0]" in issue.message
    assert issue.line == 4
    assert str(issue) == f"bots[2].name (line 4): {issue.message}"


def test_names_that_clash_after_trimming_are_duplicates() -> None:
    data = {"bots": [{"name": "Alice"}, {"name": " alice "}]}
    result = validate_spec_data(data, settings=SETTINGS)
    assert list(errors_by_path(result)) == ["bots[1].name"]


def test_zero_bots_is_invalid() -> None:
    result = load('{"bots": []}')
    issue = only_error(result)
    assert result.status_hint == "invalid"
    assert (issue.path, issue.message) == ("bots", "at least one bot is required")


def test_missing_bots_is_invalid() -> None:
    result = load("name: Nobody\n")
    assert errors_by_path(result) == {"bots": "is required"}


def test_ten_thousand_bots_exceed_the_configured_limit() -> None:
    result = load(json.dumps({"bots": bots(10_000)}))
    issue = only_error(result)
    assert result.status_hint == "invalid"
    assert issue.path == "bots"
    assert "10000" in issue.message and str(SETTINGS.max_bots_per_session) in issue.message


def test_bot_limit_follows_the_setting() -> None:
    tight = load_settings(max_bots_per_session=2)
    assert load(json.dumps({"bots": bots(2)}), settings=tight).ok
    assert errors_by_path(load(json.dumps({"bots": bots(3)}), settings=tight)).keys() == {"bots"}


def test_orchestrated_with_two_bots_says_it_needs_three() -> None:
    body = json.dumps({"bots": bots(2), "options": {"turn_order": "orchestrated"}})
    issue = only_error(load(body))
    assert issue.path == "options.turn_order"
    assert "at least 3 bots" in issue.message and "has 2" in issue.message


def test_orchestrated_with_three_bots_is_fine() -> None:
    body = json.dumps({"bots": bots(3), "options": {"turn_order": "orchestrated"}})
    assert load(body).ok


def test_negative_max_turns_is_invalid_with_its_line() -> None:
    body = "bots:\n  - name: A\noptions:\n  max_turns: -1\n"
    issue = only_error(load(body))
    assert (issue.path, issue.message, issue.line) == ("options.max_turns", "must be at least 1", 4)


def test_hot_temperature_is_not_a_number() -> None:
    body = 'bots:\n  - name: A\n    temperature: "hot"\n'
    issue = only_error(load(body))
    assert (issue.path, issue.message, issue.line) == ("bots[0].temperature", "must be a number", 3)


def test_inherit_with_an_empty_token_is_invalid() -> None:
    body = 'bots:\n  - name: A\noptions:\n  memory: "inherit:"\n'
    issue = only_error(load(body))
    assert issue.path == "options.memory"
    assert "token" in issue.message


def test_ten_megabyte_string_is_too_large_as_a_body() -> None:
    body = json.dumps({"bots": [{"name": "A", "system_prompt": "x" * 10_000_000}]})
    assert load(body).status_hint == "too_large"


def test_ten_megabyte_string_field_is_refused_at_its_path() -> None:
    data = {"bots": [{"name": "A", "system_prompt": "x" * 10_000_000}]}
    result = validate_spec_data(data, settings=SETTINGS)
    issue = only_error(result)
    assert result.status_hint == "invalid"
    assert issue.path == "bots[0].system_prompt"
    assert "MAX_PROMPT_CHARS" in issue.message and "10000000" in issue.message


def test_ten_megabyte_bot_name_gets_one_error_not_two() -> None:
    result = validate_spec_data({"bots": [{"name": "n" * 10_000_000}]}, settings=SETTINGS)
    assert errors_by_path(result) == {"bots[0].name": "must be at most 64 characters"}


@pytest.mark.parametrize(
    "data",
    [
        {"system_prompt": "x", "bots": [{"name": "A"}], "options": {"goal": "x"}},
        {"bots": [{"name": "A", "role": "x"}], "llm": {"model": "x"}},
    ],
)
def test_text_cap_covers_prompts_goal_and_labels(data: dict[str, Any]) -> None:
    tiny = load_settings(max_prompt_chars=64)
    within = validate_spec_data(data, settings=tiny)
    assert within.ok
    long_data = json.loads(json.dumps(data).replace('"x"', '"' + "x" * 65 + '"'))
    assert not validate_spec_data(long_data, settings=tiny).ok


# --- more malformed documents ---------------------------------------------------------


def test_yaml_syntax_error_names_line_and_column() -> None:
    body = "bots:\n  - name: Alice\n    system_prompt: a: b\n"
    result = load(body)
    issue = only_error(result)
    assert result.status_hint == "malformed"
    assert issue.message.startswith("YAML error")
    assert (issue.line, issue.column) == (3, 21)
    assert str(issue).startswith("line 3, column 21: ")


def test_json_syntax_error_names_line_and_column() -> None:
    result = load('{\n  "bots": [,]\n}', "application/json")
    issue = only_error(result)
    assert result.status_hint == "malformed"
    assert issue.message.startswith("JSON syntax error")
    assert (issue.line, issue.column) == (2, 12)


def test_broken_json_without_content_type_reports_the_json_error() -> None:
    issue = only_error(load('{"bots": [}'))
    assert issue.message.startswith("JSON syntax error")


def test_yaml_given_as_json_content_type_is_malformed() -> None:
    assert load(GOOD_YAML, "application/json").status_hint == "malformed"


@pytest.mark.parametrize(
    ("body", "line"),
    [("bots:\n  - name: A\nbots:\n  - name: B\n", 3), ('{"bots": [], "bots": []}', None)],
)
def test_duplicate_keys_are_refused(body: str, line: int | None) -> None:
    result = load(body)
    issue = only_error(result)
    assert result.status_hint == "malformed"
    assert "duplicate key 'bots'" in issue.message
    assert issue.line == line


@pytest.mark.parametrize(
    "body",
    [
        "a: " + "[" * 100_000 + "]" * 100_000,
        "- " * 100_000 + "x",
        '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}",
        '{"a": ' + "[" * 500 + "]" * 500 + "}",
        "{" * 200_000,
    ],
)
def test_deep_nesting_is_malformed_without_crashing(body: str) -> None:
    result = load(body)
    assert result.status_hint == "malformed"
    assert result.errors


def test_nesting_within_the_limit_is_fine_even_under_unknown_keys() -> None:
    body = json.dumps({"bots": [{"name": "A"}], "extra": [[[[["deep"]]]]]})
    result = load(body)
    assert result.ok and [w.path for w in result.warnings] == ["extra"]


def test_python_object_tags_are_refused() -> None:
    result = load("bots: !!python/object/apply:os.system ['echo hi']\n")
    assert result.status_hint == "malformed"
    assert only_error(result).line == 1


def test_integer_beyond_pythons_digit_limit_is_malformed() -> None:
    for body in ("bots: 1" + "0" * 5000, '{"bots": 1' + "0" * 5000 + "}"):
        assert load(body).status_hint == "malformed"


def test_control_character_in_yaml_is_malformed_with_position() -> None:
    issue = only_error(load("bots:\n  - name: A\x07\n"))
    assert "U+0007" in issue.message
    assert issue.line == 2


# --- several errors, unknown keys, warnings ------------------------------------------

MANY_FAULTS = """\
version: 2
bots:
  - name: Alice
    temperature: 3
  - name: alice
  - system_prompt: no name
options:
  participation: chatty
  max_turns: 0
  max_time: -5
  memory: forget
llm:
  base_url: ftp://example
"""


def test_all_errors_are_reported_together_in_document_order() -> None:
    result = load(MANY_FAULTS)
    assert result.status_hint == "invalid"
    located = [(issue.path, issue.line) for issue in result.errors]
    assert located == [
        ("version", 1),
        ("bots[0].temperature", 4),
        ("bots[1].name", 5),
        ("bots[2].name", 6),
        ("options.participation", 8),
        ("options.max_turns", 9),
        ("options.max_time", 10),
        ("options.memory", 11),
        ("llm.base_url", 13),
    ]
    messages = errors_by_path(result)
    assert messages["bots[2].name"] == "is required"
    assert messages["options.participation"] == (
        "must be one of 'autonomous', 'reactive' or 'collaborative'"
    )
    assert messages["version"] == "must be 1"
    assert not any("Input should" in message for message in messages.values())


def test_number_given_as_a_name_asks_for_quotes() -> None:
    issue = only_error(load("bots:\n  - name: 1984\n"))
    assert issue.message == "must be text; put the value in quotes"


UNKNOWN_KEYS = """\
colour: blue
bots:
  - name: Alice
    mood: cheerful
  - name: Bob
options:
  max_turns: 4
  colour: red
  future:
    nested: true
llm:
  timeout: 5
"""


def test_unknown_keys_at_every_depth_are_warnings_with_paths_and_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="engine.spec"):
        result = load(UNKNOWN_KEYS)
    assert result.spec is not None and result.spec.options.max_turns == 4
    assert [(w.path, w.line) for w in result.warnings] == [
        ("colour", 1),
        ("bots[0].mood", 4),
        ("options.colour", 8),
        ("options.future", 9),
        ("llm.timeout", 12),
    ]
    messages = {w.path: w.message for w in result.warnings}
    assert messages["options.colour"] == "unknown option, ignored"
    assert messages["colour"] == "unknown key, ignored"
    assert str(result.warnings[2]) == "options.colour (line 8): unknown option, ignored"
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("options.colour" in line for line in logged)
    assert len(logged) == 5


def test_warnings_are_kept_when_the_spec_is_invalid() -> None:
    result = load("bots: []\ncolour: red\n")
    assert not result.ok
    assert [w.path for w in result.warnings] == ["colour"]


def test_non_string_yaml_keys_are_unknown_keys() -> None:
    result = load("bots:\n  - name: A\n2: two\nno: false\n")
    assert result.ok
    assert sorted(w.path for w in result.warnings) == ["2", "False"]


def test_not_implemented_option_yields_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checking, "NOT_IMPLEMENTED_OPTIONS", frozenset({"stream_tokens"}))
    result = load("bots:\n  - name: A\noptions:\n  stream_tokens: true\n")
    assert result.spec is not None and result.spec.options.stream_tokens is True
    assert [(w.path, w.line) for w in result.warnings] == [("options.stream_tokens", 4)]
    assert "not implemented yet" in result.warnings[0].message


def test_unset_not_implemented_option_is_not_mentioned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checking, "NOT_IMPLEMENTED_OPTIONS", frozenset({"stream_tokens"}))
    assert load("bots:\n  - name: A\n").warnings == []


def test_problems_never_echo_secrets(caplog: pytest.LogCaptureFixture) -> None:
    key, token = "sk-very-secret-key-123456", "fsk_secret_session_token_0123456789abcdef"
    body = json.dumps(
        {
            "bots": [{"name": "A", "temperature": "hot"}],
            "options": {"memory": f"inherit:{token}", "max_turns": 0},
            "llm": {"api_key": key, "base_url": "ftp://nope", "secret_field": key},
        }
    )
    with caplog.at_level(logging.DEBUG):
        result = load(body)
    shown = result.model_dump_json() + caplog.text + str(result.errors)
    assert key not in shown and token not in shown


# --- the result and its typed errors -----------------------------------------------


def test_raise_for_errors_returns_the_spec_when_valid() -> None:
    result = load(GOOD_YAML)
    assert result.raise_for_errors() is result.spec


@pytest.mark.parametrize(
    ("body", "error", "base", "code"),
    [
        ("", MalformedSpec, BadRequest, "malformed_spec"),
        ("x: " + "y" * 300_000, SpecTooLarge, PayloadTooLarge, "spec_too_large"),
        ("bots: []", InvalidSpec, InvalidSpec, "invalid_spec"),
    ],
)
def test_raise_for_errors_raises_the_typed_error(
    body: str, error: type[Exception], base: type[Exception], code: str
) -> None:
    result = load(body)
    with pytest.raises(error) as caught:
        result.raise_for_errors()
    assert isinstance(caught.value, base)
    assert caught.value.code == code  # type: ignore[attr-defined]
    assert caught.value.issues == result.errors  # type: ignore[attr-defined]
    assert str(caught.value) == str(result.errors[0])


def test_validate_spec_data_refuses_a_non_mapping() -> None:
    result = validate_spec_data(["bots"], settings=SETTINGS)
    assert result.status_hint == "invalid"
    assert "mapping" in only_error(result).message


# --- nothing ever raises --------------------------------------------------------------


@given(st.binary(max_size=512))
def test_random_bytes_never_raise(data: bytes) -> None:
    result = load_spec(data, content_type=None, settings=SETTINGS)
    assert result.ok or (result.errors and result.status_hint is not None)


@given(st.text(max_size=300), st.sampled_from([None, "application/json", "text/yaml"]))
def test_random_text_never_raises(text: str, content_type: str | None) -> None:
    result = load_spec(
        text.encode("utf-8", "surrogatepass"), content_type=content_type, settings=SETTINGS
    )
    assert result.ok or result.errors


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=30,
)
spec_like = st.fixed_dictionaries(
    {},
    optional={
        "bots": st.lists(
            st.dictionaries(
                st.sampled_from(["name", "temperature", "role", "model", "max_tokens", "x"]),
                json_values,
            ),
            max_size=5,
        )
        | json_values,
        "options": st.dictionaries(
            st.sampled_from([*sorted(SessionOptions.model_fields), "x"]), json_values
        )
        | json_values,
        "llm": json_values,
        "name": json_values,
        "version": json_values,
    },
)


@given(spec_like)
def test_random_spec_shaped_data_never_raises(data: dict[str, Any]) -> None:
    result = validate_spec_data(data, settings=SETTINGS)
    if result.ok:
        assert result.errors == []
    else:
        assert result.errors and all(issue.message for issue in result.errors)


def test_an_internal_bug_becomes_an_error_result_not_a_crash(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(clean: dict[str, Any]) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(checking, "_validate_models", broken)
    with caplog.at_level(logging.ERROR, logger="engine.spec"):
        result = load(GOOD_YAML)
    assert result.status_hint == "malformed"
    assert only_error(result).message == "the spec could not be read"
    assert any(record.levelno == logging.ERROR for record in caplog.records)


# --- backend names ----------------------------------------------------------------------

NAMED = load_settings(
    _env_file=None,
    llm_backends='{"ollama": "http://127.0.0.1:11434/v1", "vllm": "http://127.0.0.1:8001/v1"}',
)

BACKENDS_YAML = """\
bots:
  - name: Alice
    backend: " ollama "
  - name: Bob
    backend: qwen
  - name: Carol
    backend: ""
llm:
  summarizer_backend: VLLM
"""


def test_backend_names_must_be_the_servers_and_are_refused_with_path_and_line() -> None:
    result = load(BACKENDS_YAML, settings=NAMED)
    assert result.spec is None
    known = "this server has: ollama, vllm (LLM_BACKENDS)"
    assert [(e.path, e.line, e.message) for e in result.errors] == [
        ("bots[1].backend", 5, f"unknown backend 'qwen'; {known}"),
        ("llm.summarizer_backend", 9, f"unknown backend 'VLLM'; {known}"),  # names are exact
    ]


def test_known_backend_names_are_trimmed_and_blank_means_unset() -> None:
    text = BACKENDS_YAML.replace("qwen", "vllm").replace("VLLM", "vllm")
    spec = load(text, settings=NAMED).raise_for_errors()
    assert [bot.backend for bot in spec.bots] == ["ollama", "vllm", None]
    assert spec.named_backends() == [
        (("bots", 0, "backend"), "ollama"),
        (("bots", 1, "backend"), "vllm"),
        (("llm", "summarizer_backend"), "vllm"),
    ]


def test_llm_backend_is_instead_of_a_base_url_and_key_not_beside_them() -> None:
    body = {
        "bots": [{"name": "Alice"}],
        "llm": {"backend": "ollama", "base_url": "http://127.0.0.1:1/v1", "api_key": "sk-x"},
    }
    assert errors_by_path(load(json.dumps(body), settings=NAMED)) == {
        "llm.backend": "name a backend or give llm.base_url and llm.api_key, not both"
    }


@pytest.mark.parametrize(
    ("spec", "uses_default"),
    [
        ({"bots": [{"name": "A", "backend": "ollama"}, {"name": "B"}]}, True),
        ({"bots": [{"name": "A", "backend": "ollama"}]}, False),
        ({"bots": [{"name": "A"}], "llm": {"backend": "vllm"}}, False),
        ({"bots": [{"name": "A"}], "llm": {"base_url": "http://127.0.0.1:1/v1"}}, False),
        (
            {
                "bots": [{"name": n, "backend": "ollama"} for n in "ABC"],
                "options": {"turn_order": "orchestrated"},
            },
            True,
        ),
        (
            {
                "bots": [{"name": n, "backend": "ollama"} for n in "ABC"],
                "options": {"turn_order": "orchestrated"},
                "llm": {"orchestrator_backend": "vllm"},
            },
            False,
        ),
        ({"bots": [{"name": "A", "backend": "ollama"}], "options": {"memory": "new"}}, True),
        (
            {
                "bots": [{"name": "A", "backend": "ollama"}],
                "options": {"summarize_context": True},
                "llm": {"summarizer_backend": "ollama"},
            },
            False,
        ),
    ],
)
def test_whether_a_spec_needs_the_servers_own_backend(
    spec: dict[str, Any], uses_default: bool
) -> None:
    assert load(json.dumps(spec), settings=NAMED).raise_for_errors().uses_default_backend() is (
        uses_default
    )
