"""`FellowshipClient`: the HTTP calls of the API, and the streams of `observe` and `talk`."""

from __future__ import annotations

import json
import weakref
from typing import Any, Final
from urllib.parse import quote

import httpx
from pydantic import Field

from engine.history import Message
from engine.manager import CreatedSession as _ServerCreatedSession
from engine.spec.library import LibraryEntry
from engine.spec.models import SessionSpec
from engine.status import SessionStatus
from fellowship.client import _redact
from fellowship.client.backoff import Reconnect
from fellowship.client.errors import ConnectionFailed, error_for
from fellowship.client.streams import EventStream, Talk, Transport, sse_opener, ws_opener

_YAML: Final = "application/yaml"
_JSON: Final = "application/json"


class CreatedSession(_ServerCreatedSession):
    """What `create` returns: the session's id and its two tokens (shown only this once).

    The server's own model, with the tokens left out of `repr()` so that printing or
    logging the object does not leak them.
    """

    token: str = Field(repr=False, description="Full-control token. Keep it secret.")
    observer_token: str = Field(
        repr=False, description="Read-only token: observe, stream, status, history."
    )


Spec = dict[str, Any] | str | bytes | SessionSpec
"""A session spec: JSON-ready data, YAML (or JSON) text, or the server's `SessionSpec` model."""


class FellowshipClient:
    """An async client of one Fellowship server.

    ```python
    async with FellowshipClient("http://127.0.0.1:8000") as fc:
        session = await fc.create(spec)
        async for event in fc.observe(session.observer_token):
            ...
    ```

    Every call raises a typed error (`fellowship.client.errors`) when the server refuses
    it; nothing is retried except the streams' reconnections. Tokens never appear in the
    client's log lines or error messages, nor in those httpx and websockets write for it.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 30.0,
        reconnect: Reconnect | None = None,
        sse_read_timeout: float | None = 60.0,
        ws_ping_interval: float | None = 20.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        """Talk to the server at `base_url` (`http://host:port`, or with a path prefix).

        `timeout` bounds each HTTP call. `reconnect` is the streams' policy. A stream
        counts as dropped when SSE sends nothing (not even its keep-alive comment) for
        `sse_read_timeout` seconds, or the WebSocket misses a protocol pong for
        `ws_ping_interval` (None turns either check off). `http` is an httpx client to
        use instead of the client's own (its base URL is ignored; it is not closed).
        """
        _redact.install()
        self.base_url = base_url.rstrip("/")
        self.reconnect = reconnect or Reconnect()
        self._sse_read_timeout = sse_read_timeout
        self._ws_ping_interval = ws_ping_interval
        self._own_http = http is None
        self._http = http or httpx.AsyncClient(timeout=timeout)
        self._timeout = timeout
        self._streams: weakref.WeakSet[EventStream] = weakref.WeakSet()

    async def __aenter__(self) -> FellowshipClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every stream this client opened, then its HTTP connections."""
        for stream in list(self._streams):
            await stream.aclose()
        if self._own_http:
            await self._http.aclose()

    # --- HTTP routes ----------

    async def create(
        self, spec: Spec | None = None, *, library: str | None = None
    ) -> CreatedSession:
        """Create a session from `spec`, or from the server's library spec `library`.

        A dict (or `SessionSpec`) goes as JSON, text as YAML (JSON is YAML too). With
        `library`, `spec` is optional and holds overrides merged over the library spec.
        Raises `InvalidSpec` / `MalformedSpec` with `issues`, `SpecNotFound`,
        `TooManySessions`, ...
        """
        content, content_type = _encode_spec(spec)
        headers = {"Content-Type": content_type} if content_type else {}
        params = {"library": library} if library is not None else None
        body = await self._call(
            "POST", "/v1/session/create", content=content, headers=headers, params=params
        )
        return CreatedSession.model_validate(body)

    async def status(self, token: str) -> SessionStatus:
        """State, counters, members, usage and warnings (either token)."""
        return SessionStatus.model_validate(await self._call("GET", _session(token)))

    async def history(self, token: str) -> list[Message]:
        """Every history position, reserved slots and tombstones included (either token)."""
        body = await self._call("GET", _session(token, "history"))
        return [Message.model_validate(m) for m in body["messages"]]

    async def pause(self, token: str) -> SessionStatus:
        """Stop starting LLM calls (full token); `InvalidState` unless active."""
        return SessionStatus.model_validate(await self._call("POST", _session(token, "pause")))

    async def resume(self, token: str) -> SessionStatus:
        """Carry on where it stopped (full token); `InvalidState` unless paused."""
        return SessionStatus.model_validate(await self._call("POST", _session(token, "resume")))

    async def end(self, token: str) -> SessionStatus:
        """End the session for everyone (full token); `SessionEnded` if it already has."""
        return SessionStatus.model_validate(await self._call("DELETE", _session(token)))

    async def library(self) -> list[LibraryEntry]:
        """The server's spec library (names to pass as `create(library=...)`)."""
        body = await self._call("GET", "/v1/specs")
        return [LibraryEntry.model_validate(s) for s in body["specs"]]

    # --- streams ----------

    def observe(
        self,
        token: str,
        *,
        transport: Transport = "sse",
        name: str | None = None,
        since: int | None = None,
    ) -> EventStream:
        """Follow a session as an observer (either token): an async iterator of events.

        `transport` is `"sse"` (the stream route) or `"ws"` (the WebSocket as an
        observer); both deliver the same events. `name` is an optional display name.
        `since` resumes after a `seq` the application kept from an earlier run (the
        first event is then the missed events, or a fresh `history`).
        """
        stream: EventStream
        if transport == "sse":
            opener = sse_opener(
                self._http,
                self.base_url + _session(token, "stream"),
                name=name,
                policy=self.reconnect,
                read_timeout=self._sse_read_timeout,
            )
            stream = EventStream(opener, self.reconnect, since=since)
        elif transport == "ws":
            params = {"role": "observer"} | ({"name": name} if name else {})
            stream = EventStream(self._ws_opener(token, params), self.reconnect, since=since)
        else:
            raise ValueError(f"transport must be 'sse' or 'ws', not {transport!r}")
        self._streams.add(stream)
        return stream

    def talk(self, token: str, name: str, *, since: int | None = None) -> Talk:
        """Join as a talker named `name` (full token): events to iterate, and `send(text)`.

        Nothing happens until the first `send` or the first event is awaited; the
        refusals of joining (`ObserverToken`, `TalkersNotAllowed`, `TooManyTalkers`,
        `BadRequest` for a bad name) are raised there.
        """
        params = {"role": "talker", "name": name}
        stream = Talk(self._ws_opener(token, params), self.reconnect, since=since)
        self._streams.add(stream)
        return stream

    def _ws_opener(self, token: str, params: dict[str, str]) -> Any:
        url = _ws_base(self.base_url) + _session(token, "connect")
        return ws_opener(url, params, policy=self.reconnect, ping_interval=self._ws_ping_interval)

    # --- plumbing ----------

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        """One HTTP call; the JSON body of a 2xx answer, else the typed error."""
        try:
            response = await self._http.request(
                method, self.base_url + path, timeout=self._timeout, **kwargs
            )
        except httpx.TransportError as exc:
            detail = _redact.redact(str(exc)) or type(exc).__name__
            raise ConnectionFailed(f"{method} failed: {detail}") from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.is_success:
            return body
        retry_after = response.headers.get("Retry-After")
        raise error_for(
            body if isinstance(body, dict) else None,
            status=response.status_code,
            retry_after=float(retry_after) if retry_after and retry_after.isdigit() else None,
        )


def _session(token: str, action: str | None = None) -> str:
    path = f"/v1/session/{quote(token, safe='')}"
    return path if action is None else f"{path}/{action}"


def _ws_base(base_url: str) -> str:
    if base_url.startswith("https://"):
        return "wss://" + base_url.removeprefix("https://")
    if base_url.startswith("http://"):
        return "ws://" + base_url.removeprefix("http://")
    return base_url


def _encode_spec(spec: Spec | None) -> tuple[bytes, str | None]:
    if spec is None:
        return b"", None
    if isinstance(spec, SessionSpec):
        return json.dumps(_spec_data(spec)).encode(), _JSON
    if isinstance(spec, dict):
        return json.dumps(spec).encode(), _JSON
    if isinstance(spec, str):
        return spec.encode(), _YAML
    return bytes(spec), _YAML


def _spec_data(spec: SessionSpec) -> dict[str, Any]:
    """The spec as the server reads it: what was set, with its API key revealed."""
    data: dict[str, Any] = spec.model_dump(mode="json", exclude_unset=True)
    if spec.llm is not None and spec.llm.api_key is not None and "llm" in data:
        data["llm"]["api_key"] = spec.llm.api_key.get_secret_value()
    return data
