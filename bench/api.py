"""The few API calls benchmarks make, typed with the engine's own response models."""

from __future__ import annotations

from typing import Any, Final

import httpx

from engine.history import Message
from engine.manager import CreatedSession
from engine.status import SessionStatus

BOTS: Final = ("Alice", "Bob", "Carol")
BENCH_CONTEXT_TOKENS: Final = 1_000_000
"""A context limit no benchmark reaches: sessions end by the limits the benchmark sets."""


def bench_spec(**options: Any) -> dict[str, Any]:
    """A three-bot spec whose sessions end only by the given options (or a DELETE)."""
    return {
        "name": "benchmark",
        "bots": [
            {"name": name, "system_prompt": f"You are {name}. Keep every reply short."}
            for name in BOTS
        ],
        "options": {"max_context_tokens": BENCH_CONTEXT_TOKENS, **options},
    }


async def create(http: httpx.AsyncClient, spec: dict[str, Any]) -> CreatedSession:
    """POST /v1/session/create; raise with the server's answer if it is not 201."""
    response = await http.post("/v1/session/create", json=spec)
    if response.status_code != httpx.codes.CREATED:
        raise RuntimeError(f"create failed: {response.status_code} {response.text}")
    return CreatedSession.model_validate(response.json())


async def status(http: httpx.AsyncClient, token: str) -> SessionStatus:
    """GET /v1/session/{token}."""
    response = await http.get(f"/v1/session/{token}")
    response.raise_for_status()
    return SessionStatus.model_validate(response.json())


async def history(http: httpx.AsyncClient, token: str) -> list[Message]:
    """GET /v1/session/{token}/history."""
    response = await http.get(f"/v1/session/{token}/history")
    response.raise_for_status()
    return [Message.model_validate(item) for item in response.json()["messages"]]


async def control(http: httpx.AsyncClient, token: str, action: str) -> None:
    """POST pause or resume, or DELETE (action "end")."""
    if action == "end":
        response = await http.delete(f"/v1/session/{token}")
    else:
        response = await http.post(f"/v1/session/{token}/{action}")
    response.raise_for_status()
