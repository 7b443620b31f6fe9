"""Does a backend answer? One cheap `GET <base URL>/models`, never a chat call.

Used to tell "the backend is down" from "this call failed": the session loop asks after
a call could not connect, and the server's health view asks every few seconds. Any
HTTP answer below 500 counts as an answer (a 401 from a server that wants a key is
still a server that is up); 5xx means it is up but not serving yet (llama-server says
503 while it loads its model). The probe sends no key and follows no redirect.
"""

from __future__ import annotations

import httpx
from pydantic import BaseModel, Field

_SERVER_ERROR = 500


class ProbeResult(BaseModel):
    """What one probe found."""

    answers: bool = Field(description="Whether the backend gave an HTTP answer below 500.")
    models: list[str] = Field(
        default_factory=list, description="Model ids the backend lists, when it lists any."
    )
    detail: str | None = Field(None, description="Why it does not answer, in plain words.")


async def probe(base_url: str, *, timeout: float) -> ProbeResult:  # noqa: ASYNC109
    """Ask `base_url` (ending in /v1) for its models; never raises.

    `timeout` bounds each phase of the request (httpx's own timeouts), so a probe of a
    host that drops packets gives up as a connection attempt would.
    """
    url = f"{base_url.rstrip('/')}/models"
    try:
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as http:
            response = await http.get(url)
    except httpx.TimeoutException:
        return ProbeResult(answers=False, detail=f"no answer within {timeout:g} s")
    except httpx.HTTPError as exc:
        return ProbeResult(answers=False, detail=_reason(exc))
    if response.status_code >= _SERVER_ERROR:
        return ProbeResult(answers=False, detail=f"it answers HTTP {response.status_code}")
    return ProbeResult(answers=True, models=_model_ids(response))


def _reason(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.ConnectError):
        return "nothing accepts connections there"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _model_ids(response: httpx.Response) -> list[str]:
    """The `id`s of an OpenAI-style `{"data": [{"id": ...}]}` list; empty for anything else."""
    try:
        body = response.json()
    except ValueError:
        return []
    entries = body.get("data") if isinstance(body, dict) else None
    if not isinstance(entries, list):
        return []
    return [e["id"] for e in entries if isinstance(e, dict) and isinstance(e.get("id"), str)]
