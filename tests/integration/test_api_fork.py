"""`POST /v1/session/{token}/fork` against the real server and the mock backend."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from engine.llm.mock import MockLLM, MockReply, RecordedRequest
from tests.integration.conftest import (
    RunningServer,
    WsMember,
    create_session,
    spec_dict,
    ws_join,
)
from tests.integration.conversations import TALKER, Conversation, history, six_positions
from tests.integration.test_api_sessions import assert_error
from tests.integration.test_summarization import LIMIT, Script
from tests.support.engine import WAIT_SECONDS

# What a copy keeps of every position: everything the history route shows.
COPIED_FIELDS = ("turn", "kind", "speaker", "content", "status", "ts", "tokens", "usage")


async def fork(client: httpx.AsyncClient, token: str, at_turn: int, **body: Any) -> dict[str, Any]:
    response = await client.post(f"/v1/session/{token}/fork", json={"at_turn": at_turn, **body})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def copied(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{field: m[field] for field in COPIED_FIELDS} for m in messages]


async def status_of(client: httpx.AsyncClient, token: str) -> dict[str, Any]:
    response = await client.get(f"/v1/session/{token}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.fixture
async def conversation(
    server: RunningServer, client: httpx.AsyncClient, mock: MockLLM, members: list[WsMember]
) -> Conversation:
    return await six_positions(server, client, mock, members)


# --- what a fork is ----------------------------------------------------------------------------


@pytest.mark.parametrize("at_turn", [1, 4, 6], ids=["first", "middle", "last"])
async def test_a_fork_copies_the_history_up_to_its_turn_and_both_go_on_apart(
    server: RunningServer,
    client: httpx.AsyncClient,
    conversation: Conversation,
    members: list[WsMember],
    at_turn: int,
) -> None:
    source = await history(client, conversation.token)
    created = await fork(client, conversation.token, at_turn)
    assert created["id"] != conversation.created["id"]
    assert {created["token"], created["observer_token"]}.isdisjoint(
        {conversation.token, conversation.observer_token}
    )
    assert created["spec"] == conversation.created["spec"]
    assert created["spec"]["llm"] is None
    assert created["warnings"] == []

    forked = await history(client, created["token"])
    if at_turn == 1:
        # A fork that ends on an unanswered talker message answers it (reactive).
        watcher = await ws_join(server, created["observer_token"], since=0)
        members.append(watcher)
        await watcher.wait_type("turn_end")
        forked = await history(client, created["token"])
        assert [(m["turn"], m["speaker"], m["status"]) for m in forked[1:]] == [
            (2, "Alice", "complete")  # the source's position 2 is a tombstone
        ]
    assert copied(forked[:at_turn]) == copied(source[:at_turn])
    assert all(m["talker_id"] == s["talker_id"] for m, s in zip(forked, source, strict=False))

    # Each session goes on by itself: a talker message in one is never in the other.
    fork_talker = await ws_join(server, created["token"], role="talker", name="Eve")
    members.append(fork_talker)
    await fork_talker.say("only in the fork")
    await fork_talker.wait_type("turn_end")
    await conversation.talker.say("only in the source")
    await conversation.talker.wait_type("turn_end", 4)

    after_source = await history(client, conversation.token)
    after_fork = await history(client, created["token"])
    assert copied(after_source[:6]) == copied(source)
    assert [m["content"] for m in after_source[6:7]] == ["only in the source"]
    assert all("only in the source" not in m["content"] for m in after_fork)
    assert all("only in the fork" not in m["content"] for m in after_source)
    fork_start = len(forked)
    new_in_fork = after_fork[fork_start:]
    assert [m["turn"] for m in new_in_fork] == list(
        range(fork_start + 1, fork_start + 1 + len(new_in_fork))
    )
    assert new_in_fork[0]["speaker"] == "Eve" and new_in_fork[0]["content"] == "only in the fork"
    assert new_in_fork[-1]["kind"] == "bot" and new_in_fork[-1]["status"] == "complete"

    # Round robin goes on from the copied bot turns: the bot after the last one copied.
    bots = ["Alice", "Bob", "Carol"]
    copied_bot_turns = sum(1 for m in after_fork[:fork_start] if m["kind"] == "bot")
    assert new_in_fork[-1]["speaker"] == bots[copied_bot_turns % 3]
    status = await status_of(client, created["token"])
    assert status["bot_turns"] == copied_bot_turns + 1
    assert status["messages"] == len(after_fork)


async def test_a_paused_fork_starts_paused_and_runs_once_resumed(
    server: RunningServer, client: httpx.AsyncClient, members: list[WsMember], mock: MockLLM
) -> None:
    source = await create_session(client, participation="autonomous", max_turns=4)
    watcher = await ws_join(server, source["observer_token"], since=0)
    members.append(watcher)
    await watcher.wait_type("session_end")
    requests_before = len(mock.requests)

    created = await fork(client, source["token"], 2, start="paused")
    status = await status_of(client, created["token"])
    assert (status["state"], status["loop_state"], status["bot_turns"]) == ("paused", "paused", 2)
    fork_watcher = await ws_join(server, created["observer_token"])
    members.append(fork_watcher)
    snapshot = (await fork_watcher.wait_type("history"))[0]
    assert [m["turn"] for m in snapshot["messages"]] == [1, 2]
    await asyncio.sleep(0.2)
    assert len(mock.requests) == requests_before  # no call while paused

    assert (await client.post(f"/v1/session/{created['token']}/resume")).status_code == 200
    end = (await fork_watcher.wait_type("session_end"))[0]
    # max_turns counts the copied bot turns: the fork plays what the source had left.
    assert end["reason"] == "max_turns"
    forked = await history(client, created["token"])
    assert [m["turn"] for m in forked] == [1, 2, 3, 4]
    assert [m["speaker"] for m in forked] == ["Alice", "Bob", "Carol", "Alice"]
    source_status = await status_of(client, source["token"])
    assert (source_status["state"], source_status["messages"]) == ("ended", 4)


async def test_an_ended_session_forks_with_overrides_merged_by_bot_name(
    server: RunningServer, client: httpx.AsyncClient, members: list[WsMember], mock: MockLLM
) -> None:
    source = await create_session(client, participation="autonomous", max_turns=3)
    watcher = await ws_join(server, source["observer_token"], since=0)
    members.append(watcher)
    await watcher.wait_type("session_end")

    created = await fork(
        client,
        source["token"],
        1,
        overrides={
            "name": "what if Bob were a pirate",
            "bots": [
                {"name": "bob", "system_prompt": "You are Bob, a pirate.", "temperature": 0.3},
                {"name": "Dave", "system_prompt": "You are Dave."},
            ],
            "options": {"max_turns": 4, "sparkle": True},
        },
    )
    spec = created["spec"]
    assert spec["name"] == "what if Bob were a pirate"
    assert [b["name"] for b in spec["bots"]] == ["Alice", "Bob", "Carol", "Dave"]
    assert spec["bots"][1]["system_prompt"] == "You are Bob, a pirate."
    assert spec["bots"][1]["temperature"] == 0.3
    assert spec["bots"][0] == source["spec"]["bots"][0]
    assert spec["options"]["max_turns"] == 4
    assert spec["options"]["participation"] == "autonomous"
    assert created["warnings"] == ["options.sparkle: unknown option, ignored"]

    fork_watcher = await ws_join(server, created["observer_token"], since=0)
    members.append(fork_watcher)
    await fork_watcher.wait_type("session_end")
    forked = await history(client, created["token"])
    assert [m["speaker"] for m in forked] == ["Alice", "Bob", "Carol", "Dave"]
    bob_calls = [r for r in mock.requests if "You are Bob, a pirate." in r.system_prompt]
    assert len(bob_calls) == 1 and bob_calls[0].temperature == 0.3


async def test_a_fork_keeps_the_sources_api_key_without_showing_it(
    server: RunningServer, client: httpx.AsyncClient, members: list[WsMember], mock: MockLLM
) -> None:
    spec = spec_dict(participation="reactive")
    spec["llm"] = {"base_url": mock.base_url, "api_key": "sk-source-key"}
    source = await create_session(client, spec)
    talker = await ws_join(server, source["token"], role="talker", name=TALKER)
    members.append(talker)
    await talker.say("hello")
    await talker.wait_type("turn_end")

    created = await fork(client, source["token"], 1)
    assert created["spec"]["llm"]["api_key"] is None
    assert created["spec"]["llm"]["base_url"] == mock.base_url
    watcher = await ws_join(server, created["observer_token"], since=0)
    members.append(watcher)
    await watcher.wait_type("turn_end")
    calls: list[RecordedRequest] = list(mock.requests)
    assert [c.authorization for c in calls] == ["Bearer sk-source-key"] * 2

    # Another key in the overrides replaces it.
    other = await fork(client, source["token"], 1, overrides={"llm": {"api_key": "sk-other"}})
    other_watcher = await ws_join(server, other["observer_token"], since=0)
    members.append(other_watcher)
    await other_watcher.wait_type("turn_end")
    assert mock.requests[-1].authorization == "Bearer sk-other"


async def test_a_fork_copies_the_summary_only_up_to_its_turn(
    server: RunningServer, client: httpx.AsyncClient, members: list[WsMember], mock: MockLLM
) -> None:
    mock.set_handler(Script())  # long replies, then summaries
    source = await create_session(
        client,
        participation="autonomous",
        max_turns=12,
        summarize_context=True,
        max_context_tokens=LIMIT,
        summary_tail=2,
    )
    watcher = await ws_join(server, source["observer_token"], since=0)
    members.append(watcher)
    await watcher.wait_type("session_end")
    manager = server.manager
    session = manager.open(source["token"]).session
    upto = session.summary_upto
    assert session.summary is not None and upto > 1, "the source should have summarized"

    carried = await fork(client, source["token"], upto, start="paused")
    dropped = await fork(client, source["token"], upto - 1, start="paused")
    not_summarizing = await fork(
        client,
        source["token"],
        upto,
        start="paused",
        overrides={"options": {"summarize_context": False, "max_context_tokens": 100000}},
    )
    assert manager.open(carried["token"]).session.summary == session.summary
    assert manager.open(carried["token"]).session.summary_upto == upto
    assert manager.open(dropped["token"]).session.summary is None
    assert manager.open(not_summarizing["token"]).session.summary is None
    stored = await manager.deps.store.load_summary(carried["id"])
    assert stored == (upto, session.summary)
    assert await manager.deps.store.load_summary(dropped["id"]) is None


async def test_a_fork_survives_a_restart_as_stored(
    server_factory: Any, members: list[WsMember], mock: MockLLM
) -> None:
    first = await server_factory()
    async with httpx.AsyncClient(base_url=first.base_url, timeout=WAIT_SECONDS) as http:
        conversation = await six_positions(first, http, mock, members)
        created = await fork(http, conversation.token, 4)
        forked = await history(http, created["token"])
        await conversation.talker.close()
    await first.stop()
    second = await server_factory()
    async with httpx.AsyncClient(base_url=second.base_url, timeout=WAIT_SECONDS) as http:
        assert copied(await history(http, created["token"])) == copied(forked)
        status = await status_of(http, created["token"])
        assert (status["state"], status["bot_turns"]) == ("paused", 2)


# --- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize("at_turn", [0, 7, 10**12])
async def test_a_turn_the_session_does_not_have_is_refused(
    client: httpx.AsyncClient, conversation: Conversation, at_turn: int
) -> None:
    response = await client.post(
        f"/v1/session/{conversation.token}/fork", json={"at_turn": at_turn}
    )
    body = assert_error(response, 404, "turn_not_found")
    assert "1 to 6" in body["error"]


async def test_an_empty_session_has_nothing_to_fork(client: httpx.AsyncClient) -> None:
    created = await create_session(client, participation="reactive")
    response = await client.post(f"/v1/session/{created['token']}/fork", json={"at_turn": 1})
    assert_error(response, 404, "turn_not_found")


async def test_the_observer_token_cannot_fork(
    client: httpx.AsyncClient, conversation: Conversation
) -> None:
    response = await client.post(
        f"/v1/session/{conversation.observer_token}/fork", json={"at_turn": 2}
    )
    assert_error(response, 403, "observer_token")
    unknown = await client.post("/v1/session/fsk_nothing/fork", json={"at_turn": 2})
    assert_error(unknown, 404, "not_found")


async def test_a_reserved_slot_cannot_be_forked_at_or_over(
    server: RunningServer, client: httpx.AsyncClient, mock: MockLLM, members: list[WsMember]
) -> None:
    release = asyncio.Event()

    async def hold(request: RecordedRequest) -> MockReply | None:
        await release.wait()
        return None

    mock.set_handler(hold)
    created = await create_session(client, participation="reactive")
    talker = await ws_join(server, created["token"], role="talker", name=TALKER)
    members.append(talker)
    await talker.say("hello")
    await talker.wait_type("turn_start")
    await talker.say("are you there?")  # lands after the reserved slot
    await talker.wait_type("talker_message", 2)
    assert [m["status"] for m in await history(client, created["token"])] == [
        "complete",
        "reserved",
        "complete",
    ]
    for at_turn in (2, 3):
        response = await client.post(
            f"/v1/session/{created['token']}/fork", json={"at_turn": at_turn}
        )
        body = assert_error(response, 409, "turn_in_flight")
        assert "position 2" in body["error"]
    # Before the slot, a fork is fine.
    await fork(client, created["token"], 1, start="paused")
    release.set()
    await talker.wait_type("turn_end")
    await fork(client, created["token"], 3, start="paused")


async def test_invalid_overrides_are_refused_with_the_path_of_each_problem(
    client: httpx.AsyncClient, conversation: Conversation
) -> None:
    live = (await client.get("/healthz")).json()["live_sessions"]
    response = await client.post(
        f"/v1/session/{conversation.token}/fork",
        json={
            "at_turn": 4,
            "overrides": {
                "bots": [{"name": "Bob", "temperature": 5}, {"name": "alice "}],
                "options": {"max_turns": 0, "turn_order": "orchestrated"},
            },
        },
    )
    body = assert_error(response, 422, "invalid_spec")
    paths = {detail["path"] for detail in body["details"]}
    assert {"bots[1].temperature", "options.max_turns"} <= paths
    assert (await client.get("/healthz")).json()["live_sessions"] == live  # nothing created


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"at_turn": "2"}, "at_turn"),
        ({"at_turn": True}, "at_turn"),
        ({}, "at_turn"),
        ({"at_turn": 2, "start": "later"}, "start"),
        ({"at_turn": 2, "overrides": ["bots"]}, "overrides"),
    ],
)
async def test_a_body_of_the_wrong_shape_is_a_400_naming_the_field(
    client: httpx.AsyncClient, conversation: Conversation, body: dict[str, Any], path: str
) -> None:
    response = await client.post(f"/v1/session/{conversation.token}/fork", json=body)
    answer = assert_error(response, 400, "invalid_parameters")
    assert [d["path"] for d in answer["details"]] == [path]


@pytest.mark.parametrize("raw", [b"", b"not json", b"[1, 2]", b'{"at_turn": 1,}'])
async def test_a_body_that_is_not_a_json_object_is_a_400(
    client: httpx.AsyncClient, conversation: Conversation, raw: bytes
) -> None:
    response = await client.post(
        f"/v1/session/{conversation.token}/fork",
        content=raw,
        headers={"Content-Type": "application/json"},
    )
    assert_error(response, 400, "invalid_parameters")
