"""The spec library: shipped examples, listing, loading by name, merging overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine.config import Settings, load_settings
from engine.errors import NotFound
from engine.spec.library import (
    SpecNotFound,
    list_specs,
    load_named_spec,
    merge_overrides,
)
from engine.spec.loader import load_spec
from engine.spec.reference import render_reference

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "specs").glob("*.yaml"))
MODELINE = "# yaml-language-server: $schema=./session-spec.schema.json"

BASE = """\
# yaml-language-server: $schema=./session-spec.schema.json
# A small panel for tests.
name: Base panel
system_prompt: Be brief.
bots:
  - name: Alice
  - name: Bob
  - name: Carol
options:
  turn_order: orchestrated
  max_turns: 10
  goal: Decide.
llm:
  model: base-model
  orchestrator_model: base-orchestrator
"""


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    (tmp_path / "base.yaml").write_text(BASE, encoding="utf-8")
    return load_settings(specs_dir=tmp_path)


def test_there_are_at_least_six_examples_including_the_named_ones() -> None:
    names = {path.stem for path in EXAMPLES}
    assert {"debate", "panel", "tutor", "writers-room", "roleplay", "long-discussion"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.stem)
def test_every_example_validates_cleanly_and_names_the_schema_first(path: Path) -> None:
    data = path.read_bytes()
    assert data.decode("utf-8").splitlines()[0] == MODELINE
    result = load_spec(data, content_type="application/yaml", settings=load_settings())
    assert result.errors == [] and result.warnings == []
    assert result.spec is not None and result.spec.name


def test_examples_show_the_features_they_are_named_for() -> None:
    settings = load_settings(specs_dir=ROOT / "specs")

    def options(name: str) -> Any:
        spec = load_named_spec(name, settings=settings).raise_for_errors()
        return spec.options

    assert options("panel").turn_order == "orchestrated" and options("panel").goal
    assert options("tutor").participation == "reactive"
    assert options("writers-room").participation == "collaborative"
    assert options("writers-room").max_talkers == 3
    assert options("roleplay").context == "scoped"
    assert options("long-discussion").summarize_context is True


def test_reference_mentions_only_examples_that_exist() -> None:
    text = render_reference()
    for path in EXAMPLES:
        assert f"`{path.stem}`" in text


def test_listing_gives_name_title_and_description(settings: Settings) -> None:
    (settings.specs_dir / "broken.yaml").write_text("bots: [\n", encoding="utf-8")
    (settings.specs_dir / "notes.txt").write_text("not a spec", encoding="utf-8")
    entries = list_specs(settings)
    assert [entry.name for entry in entries] == ["base", "broken"]
    base = entries[0]
    assert base.title == "Base panel"
    assert base.description == "A small panel for tests."
    assert entries[1].title is None


def test_listing_the_shipped_library_covers_every_example() -> None:
    entries = list_specs(load_settings(specs_dir=ROOT / "specs"))
    assert [entry.name for entry in entries] == [path.stem for path in EXAMPLES]
    assert all(entry.description for entry in entries)


def test_missing_library_folder_lists_nothing(tmp_path: Path) -> None:
    assert list_specs(load_settings(specs_dir=tmp_path / "absent")) == []


def test_load_by_name_without_overrides_keeps_line_numbers(settings: Settings) -> None:
    (settings.specs_dir / "bad.yaml").write_text(
        "bots:\n  - name: A\n  - name: a\n", encoding="utf-8"
    )
    result = load_named_spec("bad", settings=settings)
    assert [(issue.path, issue.line) for issue in result.errors] == [("bots[1].name", 3)]


def test_options_overrides_merge_key_by_key(settings: Settings) -> None:
    result = load_named_spec(
        "base", settings=settings, overrides={"options": {"max_turns": 3, "debug": True}}
    )
    spec = result.raise_for_errors()
    assert spec.options.max_turns == 3 and spec.options.debug is True
    assert spec.options.turn_order == "orchestrated" and spec.options.goal == "Decide."


def test_llm_overrides_merge_key_by_key(settings: Settings) -> None:
    spec = load_named_spec(
        "base", settings=settings, overrides={"llm": {"model": "other"}}
    ).raise_for_errors()
    assert spec.llm is not None
    assert (spec.llm.model, spec.llm.orchestrator_model) == ("other", "base-orchestrator")


def test_bots_override_replaces_the_whole_list(settings: Settings) -> None:
    spec = load_named_spec(
        "base",
        settings=settings,
        overrides={"bots": [{"name": "X"}, {"name": "Y"}, {"name": "Z"}, {"name": "W"}]},
    ).raise_for_errors()
    assert [bot.name for bot in spec.bots] == ["X", "Y", "Z", "W"]


def test_top_level_scalars_are_replaced(settings: Settings) -> None:
    spec = load_named_spec(
        "base", settings=settings, overrides={"name": "Renamed", "system_prompt": "Be long."}
    ).raise_for_errors()
    assert (spec.name, spec.system_prompt) == ("Renamed", "Be long.")


def test_overrides_are_checked_like_any_spec(settings: Settings) -> None:
    result = load_named_spec(
        "base",
        settings=settings,
        overrides={"bots": [{"name": "A"}, {"name": "B"}], "options": {"colour": "red"}},
    )
    assert result.status_hint == "invalid"
    assert [issue.path for issue in result.errors] == ["options.turn_order"]
    assert result.errors[0].line is None  # lines would point into the file, not the overrides
    assert [warning.path for warning in result.warnings] == ["options.colour"]


def test_merge_leaves_both_inputs_untouched() -> None:
    base: dict[str, Any] = {"options": {"a": 1, "deep": {"x": 1}}, "bots": [1]}
    overrides: dict[str, Any] = {"options": {"deep": {"y": 2}}, "bots": [2]}
    merged = merge_overrides(base, overrides)
    assert merged == {"options": {"a": 1, "deep": {"x": 1, "y": 2}}, "bots": [2]}
    assert base == {"options": {"a": 1, "deep": {"x": 1}}, "bots": [1]}
    assert overrides == {"options": {"deep": {"y": 2}}, "bots": [2]}


def test_a_non_mapping_options_override_replaces_and_is_then_refused(
    settings: Settings,
) -> None:
    result = load_named_spec("base", settings=settings, overrides={"options": 5})
    assert [issue.path for issue in result.errors] == ["options"]


def test_unknown_name_is_a_typed_not_found(settings: Settings) -> None:
    with pytest.raises(SpecNotFound) as caught:
        load_named_spec("nope", settings=settings)
    assert isinstance(caught.value, NotFound)
    assert caught.value.code == "spec_not_found"


@pytest.mark.parametrize(
    "name",
    ["../base", "..", "/etc/passwd", "sub/base", "", ".base", "base.yaml", "base\x00", "a" * 5000],
)
def test_names_cannot_leave_the_library_folder(settings: Settings, name: str) -> None:
    (settings.specs_dir / "sub").mkdir()
    (settings.specs_dir / "sub" / "base.yaml").write_text(BASE, encoding="utf-8")
    with pytest.raises(SpecNotFound):
        load_named_spec(name, settings=settings)


def test_oversized_library_file_is_too_large(settings: Settings) -> None:
    big = BASE + "# " + "x" * settings.max_spec_bytes + "\n"
    (settings.specs_dir / "big.yaml").write_text(big, encoding="utf-8")
    result = load_named_spec("big", settings=settings)
    assert result.status_hint == "too_large"
