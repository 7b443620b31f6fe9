"""A reactive conversation with a talker and a tombstone, for the fork and export tests.

`six_positions` plays, against the real server and the mock backend:

    1 Dana (talker)  "first"
    2 Alice          failed: the backend refused the call (a tombstone)
    3 Dana (talker)  "second <b>bold</b> & \"quoted\""
    4 Bob            a reply
    5 Dana (talker)  "third"
    6 Carol          a reply

The session is reactive (one reply per talker message), so nothing else happens until
the talker speaks again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from engine.llm.mock import MockLLM, MockReply
from tests.integration.conftest import RunningServer, WsMember, create_session, ws_join

TALKER = "Dana"
SECOND = 'second <b>bold</b> & "quoted"'


@dataclass
class Conversation:
    """A created session (the create answer) and its connected talker."""

    created: dict[str, Any]
    talker: WsMember

    @property
    def token(self) -> str:
        token: str = self.created["token"]
        return token

    @property
    def observer_token(self) -> str:
        token: str = self.created["observer_token"]
        return token


async def history(client: httpx.AsyncClient, token: str) -> list[dict[str, Any]]:
    """The session's history, as the history route gives it."""
    response = await client.get(f"/v1/session/{token}/history")
    assert response.status_code == 200, response.text
    messages: list[dict[str, Any]] = response.json()["messages"]
    return messages


async def six_positions(
    server: RunningServer, client: httpx.AsyncClient, mock: MockLLM, members: list[WsMember]
) -> Conversation:
    """Play the conversation of this module's docstring; return it with its talker."""
    mock.enqueue(MockReply(status=400, error_message="bad model"))
    created = await create_session(client, participation="reactive")
    talker = await ws_join(server, created["token"], role="talker", name=TALKER)
    members.append(talker)
    await talker.say("first")
    await talker.wait_type("turn_end", 1)
    await talker.say(SECOND)
    await talker.wait_type("turn_end", 2)
    await talker.say("third")
    await talker.wait_type("turn_end", 3)
    messages = await history(client, created["token"])
    assert [(m["kind"], m["speaker"], m["status"]) for m in messages] == [
        ("talker", TALKER, "complete"),
        ("bot", "Alice", "failed"),
        ("talker", TALKER, "complete"),
        ("bot", "Bob", "complete"),
        ("talker", TALKER, "complete"),
        ("bot", "Carol", "complete"),
    ]
    return Conversation(created, talker)
