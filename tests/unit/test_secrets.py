"""Secrets at rest: sealing, opening, rotation and the key setting, without a server."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path
from typing import Any

import pytest

from engine.config import ConfigError, load_settings
from engine.errors import SecretKeyMissing, SecretUnreadable
from engine.spec.models import SECRET_FIELDS
from engine.store.base import SessionRecord
from engine.store.in_memory import MemoryStore
from engine.store.secrets import (
    SealedSecret,
    SecretBox,
    generate_key,
    key_id,
    open_secrets,
    rotate_stored,
    seal_secrets,
    seal_stored,
)
from server.cli.secret_key import ensure_secret_key

API_KEY = "sk-plain-text-api-key-42"
OLD, NEW, STRANGER = generate_key(), generate_key(), generate_key()


def spec_data(api_key: Any = API_KEY) -> dict[str, Any]:
    return {"bots": [{"name": "Alice"}], "llm": {"base_url": None, "api_key": api_key}}


def sealed_value(data: dict[str, Any]) -> SealedSecret:
    return SealedSecret.model_validate(data["llm"]["api_key"])


# --- the box ----------


def test_a_sealed_secret_opens_to_its_text_and_does_not_contain_it() -> None:
    box = SecretBox([NEW])
    sealed = box.seal(API_KEY, "s1")
    assert API_KEY not in sealed.model_dump_json()
    assert sealed.key_id == key_id(base64.urlsafe_b64decode(NEW))
    assert box.open(sealed, "s1") == API_KEY


def test_sealing_twice_gives_different_ciphertexts() -> None:
    box = SecretBox([NEW])
    assert box.seal(API_KEY, "s1").data != box.seal(API_KEY, "s1").data


def test_the_first_key_seals_and_every_key_opens() -> None:
    sealed_by_old = SecretBox([OLD]).seal(API_KEY, "s1")
    both = SecretBox([NEW, OLD])
    assert both.open(sealed_by_old, "s1") == API_KEY
    assert both.seal(API_KEY, "s1").key_id == both.key_ids[0] != sealed_by_old.key_id


def test_a_secret_moved_to_another_session_does_not_open() -> None:
    box = SecretBox([NEW])
    with pytest.raises(SecretUnreadable, match="altered or damaged"):
        box.open(box.seal(API_KEY, "s1"), "s2")


def test_an_altered_ciphertext_does_not_open() -> None:
    box = SecretBox([NEW])
    sealed = box.seal(API_KEY, "s1")
    flipped = sealed.data[:-4] + ("AAAA" if not sealed.data.endswith("AAAA") else "BBBB")
    with pytest.raises(SecretUnreadable, match="altered or damaged"):
        box.open(sealed.model_copy(update={"data": flipped}), "s1")


def test_a_wrong_key_and_a_missing_key_are_told_apart_without_showing_a_key() -> None:
    sealed = SecretBox([OLD]).seal(API_KEY, "s1")
    with pytest.raises(SecretUnreadable) as wrong:
        SecretBox([STRANGER]).open(sealed, "s1")
    assert sealed.key_id in wrong.value.message and "does not hold" in wrong.value.message
    assert wrong.value.code == "secret_unreadable"
    with pytest.raises(SecretUnreadable, match="SECRET_KEY is not set"):
        SecretBox([]).open(sealed, "s1")
    assert OLD not in wrong.value.message and STRANGER not in wrong.value.message


def test_a_box_without_keys_refuses_to_seal() -> None:
    box = SecretBox([])
    assert not box.can_seal
    with pytest.raises(SecretKeyMissing, match="SECRET_KEY"):
        box.seal(API_KEY, "s1")


def test_a_generated_key_is_32_random_bytes_in_url_safe_base64() -> None:
    keys = {generate_key() for _ in range(8)}
    assert len(keys) == 8
    for key in keys:
        assert len(base64.urlsafe_b64decode(key)) == 32
    assert all(key_id(k.encode()) not in k for k in keys)


# --- documents ----------


def test_sealing_a_spec_replaces_its_key_and_opening_gives_it_back() -> None:
    box = SecretBox([NEW])
    data = spec_data()
    sealed = seal_secrets(data, SECRET_FIELDS, box, context="s1")
    assert sealed.outcomes == ["sealed"] and sealed.changed
    assert API_KEY not in json.dumps(sealed.data)
    stored = json.loads(json.dumps(sealed.data))
    opened = open_secrets(stored, SECRET_FIELDS, box, context="s1")
    assert opened.data == spec_data() and opened.unreadable == []
    assert data == spec_data() and stored == sealed.data  # the inputs are left alone


def test_a_spec_without_a_key_is_left_as_it_is() -> None:
    for data in (spec_data(None), {"bots": [{"name": "Alice"}]}, {"llm": None}):
        sealed = seal_secrets(data, SECRET_FIELDS, SecretBox([]), context="s1")
        assert sealed.data == data and sealed.outcomes == [] and not sealed.changed


def test_a_secret_of_an_older_key_is_sealed_again_under_the_first() -> None:
    old = seal_secrets(spec_data(), SECRET_FIELDS, SecretBox([OLD]), context="s1").data
    box = SecretBox([NEW, OLD])
    again = seal_secrets(old, SECRET_FIELDS, box, context="s1")
    assert again.outcomes == ["resealed"]
    assert sealed_value(again.data).key_id == box.key_ids[0]
    assert seal_secrets(again.data, SECRET_FIELDS, box, context="s1").outcomes == ["current"]


def test_strict_sealing_raises_and_lenient_sealing_leaves_what_it_cannot_do() -> None:
    with pytest.raises(SecretKeyMissing):
        seal_secrets(spec_data(), SECRET_FIELDS, SecretBox([]), context="s1")
    plain = seal_secrets(spec_data(), SECRET_FIELDS, SecretBox([]), context="s1", lenient=True)
    assert plain.outcomes == ["left_plain"] and plain.data == spec_data()

    foreign = seal_secrets(spec_data(), SECRET_FIELDS, SecretBox([STRANGER]), context="s1").data
    with pytest.raises(SecretUnreadable):
        seal_secrets(foreign, SECRET_FIELDS, SecretBox([NEW, OLD]), context="s1")
    kept = seal_secrets(foreign, SECRET_FIELDS, SecretBox([NEW, OLD]), context="s1", lenient=True)
    assert kept.outcomes == ["unreadable"] and kept.data == foreign


def test_a_damaged_stored_value_is_unreadable_never_sealed_as_text() -> None:
    damaged = spec_data({"cipher": "rot13", "data": "x"})
    opened = open_secrets(damaged, SECRET_FIELDS, SecretBox([NEW]), context="s1")
    assert opened.data["llm"]["api_key"] is None
    assert "damaged" in opened.unreadable[0].message
    with pytest.raises(SecretUnreadable, match="damaged"):
        seal_secrets(damaged, SECRET_FIELDS, SecretBox([NEW]), context="s1")
    kept = seal_secrets(damaged, SECRET_FIELDS, SecretBox([NEW]), context="s1", lenient=True)
    assert kept.outcomes == ["unreadable"] and kept.data == damaged


def test_an_unreadable_secret_opens_as_none_with_its_reason() -> None:
    sealed = seal_secrets(spec_data(), SECRET_FIELDS, SecretBox([OLD]), context="s1").data
    opened = open_secrets(sealed, SECRET_FIELDS, SecretBox([NEW]), context="s1")
    assert opened.data["llm"]["api_key"] is None
    assert [p.code for p in opened.unreadable] == ["secret_unreadable"]


# --- every stored spec ----------


async def stored(store: MemoryStore, session_id: str, data: dict[str, Any]) -> None:
    await store.save_session(
        SessionRecord.model_validate(
            {
                "id": session_id,
                "spec_json": json.dumps(data),
                "full_token_hash": f"f-{session_id}",
                "observer_token_hash": f"o-{session_id}",
                "created_at": "2030-01-02T03:04:05Z",
            }
        )
    )


async def specs(store: MemoryStore) -> dict[str, dict[str, Any]]:
    return {r.id: json.loads(r.spec_json) for r in await store.load_sessions(include_ended=True)}


async def test_the_start_up_pass_seals_plain_keys_and_leaves_unreadable_ones() -> None:
    store = MemoryStore()
    await stored(store, "plain", spec_data())
    await stored(store, "none", spec_data(None))
    foreign = seal_secrets(spec_data(), SECRET_FIELDS, SecretBox([STRANGER]), context="lost").data
    await stored(store, "lost", foreign)
    report = await seal_stored(store, SecretBox([NEW]), SECRET_FIELDS)
    assert (report.sealed, report.unreadable, report.left_plain) == (["plain"], ["lost"], [])
    after = await specs(store)
    assert API_KEY not in json.dumps(after)
    assert after["lost"] == foreign and after["none"] == spec_data(None)


async def test_the_start_up_pass_without_a_key_keeps_plain_keys_working() -> None:
    store = MemoryStore()
    await stored(store, "plain", spec_data())
    report = await seal_stored(store, SecretBox([]), SECRET_FIELDS)
    assert report.left_plain == ["plain"]
    assert (await specs(store))["plain"] == spec_data()


async def test_rotation_moves_every_key_or_none() -> None:
    store = MemoryStore()
    for session_id in ("a", "b"):
        data = seal_secrets(spec_data(), SECRET_FIELDS, SecretBox([OLD]), context=session_id)
        await stored(store, session_id, data.data)
    before = await specs(store)

    lost = seal_secrets(spec_data(), SECRET_FIELDS, SecretBox([STRANGER]), context="lost")
    await stored(store, "lost", lost.data)
    with pytest.raises(SecretUnreadable, match="session lost"):
        await rotate_stored(store, SecretBox([NEW, OLD]), SECRET_FIELDS)
    assert {k: v for k, v in (await specs(store)).items() if k != "lost"} == before

    await store.delete_session("lost")
    report = await rotate_stored(store, SecretBox([NEW, OLD]), SECRET_FIELDS)
    assert report.resealed == ["a", "b"]
    only_new = SecretBox([NEW])
    for session_id, data in (await specs(store)).items():
        opened = open_secrets(data, SECRET_FIELDS, only_new, context=session_id)
        assert opened.data["llm"]["api_key"] == API_KEY


# --- the setting and make run's key ----------


def test_secret_key_takes_a_comma_separated_list_and_refuses_a_malformed_key() -> None:
    settings = load_settings(_env_file=None, secret_key=f"{NEW}, {OLD}")
    assert [k.get_secret_value() for k in settings.secret_key] == [NEW, OLD]
    assert load_settings(_env_file=None).secret_key == []
    with pytest.raises(ConfigError) as caught:
        load_settings(_env_file=None, secret_key="not-a-key-at-all")
    assert "SECRET_KEY" in str(caught.value) and "not-a-key-at-all" not in str(caught.value)


def env_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / ".env"
    path.write_text(text, encoding="utf-8")
    return path


def assignments(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.startswith("SECRET_KEY=")]


def test_make_run_fills_the_empty_key_of_a_fresh_env_file_readable_by_its_owner_only(
    tmp_path: Path,
) -> None:
    path = env_file(tmp_path, "# a comment\nPORT=8000\nSECRET_KEY=\nDEBUG=false\n")
    written = ensure_secret_key(path, {})
    [line] = assignments(path)
    key = line.removeprefix("SECRET_KEY=")
    assert written == key_id(base64.urlsafe_b64decode(key))
    assert load_settings(_env_file=path).secret_key[0].get_secret_value() == key
    assert path.read_text().splitlines()[:2] == ["# a comment", "PORT=8000"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # Later starts keep that key.
    assert ensure_secret_key(path, {}) is None
    assert assignments(path) == [line]


def test_make_run_adds_a_key_to_an_env_file_without_one(tmp_path: Path) -> None:
    path = env_file(tmp_path, "PORT=8000")
    assert ensure_secret_key(path, {}) is not None
    assert len(assignments(path)) == 1 and "PORT=8000" in path.read_text()


def test_make_run_leaves_a_key_set_in_the_environment_or_the_file_alone(tmp_path: Path) -> None:
    path = env_file(tmp_path, "SECRET_KEY=\n")
    assert ensure_secret_key(path, {"SECRET_KEY": NEW}) is None
    assert path.read_text() == "SECRET_KEY=\n"
    kept = env_file(tmp_path, f"export SECRET_KEY='{OLD}'\n")
    assert ensure_secret_key(kept, {}) is None
    assert kept.read_text() == f"export SECRET_KEY='{OLD}'\n"
