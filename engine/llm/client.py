"""The LLM client: the only code in Fellowship that talks HTTP to a backend.

One `LLMClient` serves the whole server. For each backend base URL it keeps one pooled
`httpx.AsyncClient` and one `FairLimiter`, so at most `LLM_MAX_CONCURRENCY` calls are in
flight per backend, granted in arrival order across all sessions.

`chat()` sends one chat-completions request, streamed or not, and returns a typed
`Completion`. Behaviour worth knowing:

- Only fields that are set are sent (`engine.llm.payload`); a base URL a session
  chose must pass the SSRF guard (`engine.llm.url_guard`).
- A legacy `function_call` is read only when the reply has no `tool_calls` (some
  servers send both, the legacy one with a wrong name).
- Reasoning never reaches the reply: `<think>…</think>` blocks (also when a tag is cut
  across stream chunks) and `reasoning_content` / `reasoning` fields go to
  `Completion.reasoning`; `on_token` only ever sees reply text.
- Timeouts: `LLM_CONNECT_TIMEOUT` to connect; `LLM_READ_TIMEOUT` for the reply to start
  (and between bytes of a non-streamed reply); `LLM_STREAM_IDLE_TIMEOUT` for the longest
  silent gap once a stream has started; `LLM_TIMEOUT` bounds each *attempt* as a whole,
  so a retry always gets a fresh budget (the worst case for one call is therefore
  `(LLM_RETRIES + 1) * LLM_TIMEOUT` plus the retry delays).
- Retries: connection errors, timeouts, 429, 5xx, malformed JSON, replies without
  choices and streams cut short are tried again, `LLM_RETRIES` more times, after
  `LLM_RETRY_DELAY` or the backend's `Retry-After` (capped by `LLM_MAX_RETRY_AFTER`).
  Other 4xx answers are not retried. A slot is held per attempt, never during the wait.
  After the last try one `LLMError` is raised whose `code` says what went wrong.
- The API key is sent as `Authorization: Bearer …` only when one is set, and never
  appears in an error message (redacted here) or a log line (the server registers
  `LLM_API_KEY` and the keys of `LLM_BACKENDS` with the log filter when it sets up
  logging). A backend whose stored
  key could not be decrypted (`Backend.unreadable_key`) is never called:
  `secret_unreadable` at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar, cast

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from engine.config import Settings
from engine.errors import (
    LLM_BAD_RESPONSE,
    LLM_SECRET_UNREADABLE,
    LLM_SERVER_ERROR,
    LLM_TIMEOUT,
    LLMError,
)
from engine.llm.attempts import (
    AttemptFailed,
    Progress,
    Reply,
    status_failure,
    transport_failure,
)
from engine.llm.backend_replies import WireMessage, WireResponse
from engine.llm.limiter import Limiter, LimiterFactory, local_limiter
from engine.llm.payload import build_payload
from engine.llm.stream import ThinkSplitter, ToolCallAssembler, split_think, sse_data
from engine.llm.transport import lean_transport
from engine.llm.types import ChatRequest, Completion, Usage
from engine.llm.url_guard import check_backend_url, display_url, normalise_url
from engine.logs import secret_filter
from engine.metrics import NO_METRICS, Metrics

logger = logging.getLogger(__name__)

_State = TypeVar("_State")

TokenCallback = Callable[[str], Awaitable[None]]
"""Receives each piece of reply text as it streams in (never reasoning)."""

_DONE = "[DONE]"
_EVENT_STREAM = "text/event-stream"
_JSON = "application/json"

ERROR_DETAIL_CHARS: Final = 300
"""Longest excerpt of a backend's own error message kept in an `LLMError`: enough to
read the backend's reason, short enough that a page of HTML stays out of events."""


class Backend(BaseModel):
    """One OpenAI-compatible server: where to send calls and which key to send."""

    model_config = ConfigDict(frozen=True)

    base_url: str = Field(description="Base URL, ending in /v1 (no trailing slash).")
    api_key: SecretStr | None = Field(None, description="Bearer key, if the server needs one.")
    unreadable_key: str | None = Field(
        None,
        description="Why this backend's key cannot be had (its stored copy does not "
        "decrypt): every call then fails at once with `secret_unreadable`, sending nothing.",
    )
    name: str | None = Field(
        None, description="Its name in LLM_BACKENDS; None for the default or a spec's own URL."
    )
    model: str | None = Field(
        None, description="The model LLM_BACKENDS gives it, for calls whose spec names none."
    )

    @property
    def display_url(self) -> str:
        """The base URL without user info, query or fragment: safe for logs and messages."""
        return display_url(self.base_url)


def named_backend(settings: Settings, name: str) -> Backend | None:
    """The backend `name` stands for in `LLM_BACKENDS`, or None when there is none.

    Its URL passed the SSRF guard when the settings were loaded.
    """
    entry = settings.llm_backends.get(name)
    if entry is None:
        return None
    return Backend(
        base_url=normalise_url(entry.base_url),
        api_key=_key(entry.api_key),
        name=name,
        model=entry.model,
    )


class RetryNotice(BaseModel):
    """What `chat()` tells `on_retry` before it tries again."""

    attempt: int = Field(description="The attempt that failed (1 for the first try).")
    code: str = Field(description="Failure kind, one of the LLM_* codes.")
    status: int | None = Field(None, description="HTTP status, when the backend sent one.")
    delay: float = Field(description="Seconds the client waits before the next attempt.")
    message: str = Field(description="Why the attempt failed (no secrets).")
    streamed: bool = Field(
        description="Whether on_token already received text from the failed attempt; "
        "the next attempt streams the reply again from its start."
    )


RetryCallback = Callable[[RetryNotice], Awaitable[None]]
"""Told about each failed attempt that will be retried (e.g. to emit a debug event)."""


class LLMClient:
    """Chat completions against any number of OpenAI-compatible backends.

    `sleep` and `clock` are injectable so tests can observe retry delays without waiting;
    `transport` replaces the network (tests replay recorded backend answers with it);
    `limiters` builds each backend's concurrency bound; `metrics` counts calls, errors
    and tokens by backend (its display URL).
    Close with `await client.aclose()` (or `async with LLMClient(...)`).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        transport: httpx.AsyncBaseTransport | None = None,
        limiters: LimiterFactory = local_limiter,
        metrics: Metrics = NO_METRICS,
    ) -> None:
        self._settings = settings
        self._sleep = sleep
        self._clock = clock
        self._transport = transport
        self._http: dict[str, httpx.AsyncClient] = {}
        self._new_limiter = limiters
        self._limiters: dict[str, Limiter] = {}
        self._states: dict[tuple[str, type[Any]], Any] = {}
        self._metrics = metrics

    async def __aenter__(self) -> LLMClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every pooled connection."""
        clients, self._http = list(self._http.values()), {}
        for http in clients:
            await http.aclose()

    @property
    def default_backend(self) -> Backend:
        """The server's own backend (`LLM_BASE_URL`, `LLM_API_KEY`)."""
        return self.resolve_backend(None, None)

    def resolve_backend(self, base_url: str | None, api_key: SecretStr | None) -> Backend:
        """The backend a session should use, after the SSRF guard.

        No `base_url` means the default backend (always allowed), with `api_key` if given
        or else `LLM_API_KEY`. A `base_url` must pass `check_backend_url`; the default key
        is never sent to it, only the `api_key` given with it.
        """
        if base_url is None:
            key = api_key if api_key is not None else self._settings.llm_api_key
            return Backend(base_url=normalise_url(self._settings.llm_base_url), api_key=_key(key))
        return Backend(base_url=check_backend_url(base_url, self._settings), api_key=_key(api_key))

    def limiter_for(self, backend: Backend) -> Limiter:
        """The concurrency bound shared by every call to this backend."""
        limiter = self._limiters.get(backend.base_url)
        if limiter is None:
            limiter = self._new_limiter(backend.base_url, self._settings.llm_max_concurrency)
            self._limiters[backend.base_url] = limiter
        return limiter

    def limiters(self) -> dict[str, Limiter]:
        """Every backend's concurrency bound so far, by display URL (for the metrics)."""
        return {display_url(url): limiter for url, limiter in self._limiters.items()}

    def state_for(self, backend: Backend, kind: type[_State]) -> _State:
        """What callers learn about one backend, kept for as long as the client lives.

        One `kind()` instance per backend and kind (the orchestrator keeps which way of
        asking for structured output a backend honours). Callers own the contents.
        """
        key = (backend.base_url, kind)
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = kind()
        return cast(_State, state)

    async def chat(
        self,
        request: ChatRequest,
        *,
        backend: Backend,
        on_token: TokenCallback | None = None,
        on_retry: RetryCallback | None = None,
        queue_key: str | None = None,
    ) -> Completion:
        """Run one chat completion, retrying transient failures; raise `LLMError` if it fails.

        With `request.stream`, `on_token` receives each piece of reply text as it arrives
        (without it, or from a server that ignores `stream`, the whole text at once).
        `on_retry` hears about each failed attempt before the next one (a retried stream
        starts over, so a caller relaying tokens may want to reset). `queue_key` names the
        caller, normally the session id: it tags the log lines and the limiter's grants.
        """
        if backend.unreadable_key is not None:
            # Never another key in its place (the server's own would leak to this URL).
            self._metrics.llm_error(backend.display_url, LLM_SECRET_UNREADABLE)
            raise LLMError(
                f"this session cannot reach its backend: {backend.unreadable_key}",
                code=LLM_SECRET_UNREADABLE,
            )
        settings = self._settings
        started = self._clock()
        http = self._http_for(backend)
        limiter = self.limiter_for(backend)
        payload = build_payload(request, settings)
        headers = _headers(backend, stream=request.stream)
        log_extra = {"session": queue_key or "-"}
        queued = 0.0
        attempt = 0
        while True:
            attempt += 1
            progress = Progress()
            try:
                waiting_since = self._clock()
                async with limiter.slot(queue_key):
                    queued += self._clock() - waiting_since
                    reply = await self._attempt(
                        http, backend, payload, headers, request.stream, on_token, progress
                    )
            except AttemptFailed as failure:
                detail = self._redact(failure.detail, backend)
                if not failure.retryable or attempt > settings.llm_retries:
                    where = backend.display_url
                    self._metrics.llm_call(where, self._clock() - started, ok=False)
                    self._metrics.llm_error(where, failure.code)
                    raise failure.final_error(detail, where=where, attempts=attempt) from None
                delay = settings.llm_retry_delay
                if failure.retry_after is not None:
                    delay = min(failure.retry_after, settings.llm_max_retry_after)
                logger.warning(
                    "LLM call to %s failed (%s%s), retry %d of %d in %.2fs: %s",
                    backend.display_url,
                    failure.code,
                    f", HTTP {failure.status}" if failure.status else "",
                    attempt,
                    settings.llm_retries,
                    delay,
                    detail,
                    extra=log_extra,
                )
                self._metrics.llm_retry(backend.display_url, failure.code)
                if on_retry is not None:
                    await on_retry(
                        RetryNotice(
                            attempt=attempt,
                            code=failure.code,
                            status=failure.status,
                            delay=delay,
                            message=detail,
                            streamed=progress.streamed,
                        )
                    )
                await self._sleep(delay)
                continue
            latency_ms = (self._clock() - started) * 1000
            self._metrics.llm_call(backend.display_url, latency_ms / 1000, ok=True)
            self._metrics.llm_tokens(backend.display_url, reply.usage)
            logger.debug(
                "LLM call to %s done: model=%s attempts=%d latency=%.0fms finish=%s",
                backend.display_url,
                reply.model or request.model,
                attempt,
                latency_ms,
                reply.finish_reason,
                extra=log_extra,
            )
            return Completion(
                content=reply.content,
                reasoning=reply.reasoning,
                tool_calls=reply.tool_calls,
                finish_reason=reply.finish_reason,
                usage=reply.usage,
                model=reply.model or request.model,
                latency_ms=latency_ms,
                attempts=attempt,
                queue_ms=queued * 1000,
            )

    # --- one attempt -------------------------------------------------------------

    async def _attempt(
        self,
        http: httpx.AsyncClient,
        backend: Backend,
        payload: dict[str, Any],
        headers: dict[str, str],
        stream: bool,
        on_token: TokenCallback | None,
        progress: Progress,
    ) -> Reply:
        settings = self._settings
        url = backend.base_url + "/chat/completions"
        response: httpx.Response | None = None
        # For a stream, `gap` bounds the wait for the first event, then each silence;
        # a whole reply is bounded by the socket read timeout instead.
        first_event = settings.llm_read_timeout if stream else None
        try:
            async with (
                asyncio.timeout(settings.llm_timeout) as deadline,
                asyncio.timeout(first_event) as gap,
            ):
                timeout = _http_timeout(settings, stream=stream)
                request = http.build_request(
                    "POST", url, json=payload, headers=headers, timeout=timeout
                )
                response = await http.send(request, stream=True)
                if not 200 <= response.status_code < 300:
                    raise await status_failure(response)
                content_type = response.headers.get("content-type", "").lower()
                # Some servers label a stream loosely; only a JSON body means "not streamed".
                if stream and not content_type.startswith(_JSON):
                    return await self._read_stream(response, gap, on_token, progress)
                # Not streamed (or a server that ignored stream=true): one whole body.
                gap.reschedule(None)
                reply = _parse_whole(await response.aread())
                if on_token is not None and reply.content:
                    progress.streamed = True
                    await on_token(reply.content)
                return reply
        except TimeoutError:
            if deadline.expired():
                detail = f"no complete reply within LLM_TIMEOUT ({settings.llm_timeout:g}s)"
            elif progress.started:
                detail = (
                    "the stream was silent for longer than LLM_STREAM_IDLE_TIMEOUT "
                    f"({settings.llm_stream_idle_timeout:g}s)"
                )
            else:
                detail = f"no reply within LLM_READ_TIMEOUT ({settings.llm_read_timeout:g}s)"
            raise AttemptFailed(LLM_TIMEOUT, detail) from None
        except httpx.HTTPError as exc:
            raise transport_failure(exc) from exc
        finally:
            if response is not None:
                await response.aclose()

    async def _read_stream(
        self,
        response: httpx.Response,
        gap: asyncio.Timeout,
        on_token: TokenCallback | None,
        progress: Progress,
    ) -> Reply:
        idle = self._settings.llm_stream_idle_timeout
        loop = asyncio.get_running_loop()
        splitter = ThinkSplitter()
        tools = ToolCallAssembler()
        content: list[str] = []
        reasoning: list[str] = []
        thinking: list[str] = []
        finish_reason: str | None = None
        usage: Usage | None = None
        model = ""
        saw_choice = done = False

        async def emit(text: str) -> None:
            content.append(text)
            if on_token is not None:
                progress.streamed = True
                gap.reschedule(None)  # the caller's time is not the backend's silence
                await on_token(text)
                gap.reschedule(loop.time() + idle)

        async for line in response.aiter_lines():
            progress.started = True
            gap.reschedule(loop.time() + idle)
            data = sse_data(line)
            if data is None:
                continue
            if data.strip() == _DONE:
                done = True
                break
            try:
                chunk = WireResponse.model_validate_json(data)
            except ValidationError:
                failure = AttemptFailed(LLM_BAD_RESPONSE, "the stream carried malformed JSON")
                raise failure from None
            error = chunk.error_text()
            if error is not None:
                raise AttemptFailed(LLM_SERVER_ERROR, f"the backend reported an error: {error}")
            model = chunk.model or model
            if chunk.usage is not None:
                usage = chunk.usage.to_usage()
            for choice in chunk.choices or ():
                if choice.index != 0:
                    continue
                saw_choice = True
                delta = choice.delta or choice.message
                if delta is not None:
                    reasoning.append(delta.reasoning_text())
                    visible, hidden = splitter.feed(delta.content_text())
                    thinking.append(hidden)
                    if visible:
                        await emit(visible)
                    _add_tool_calls(tools, delta)
                if choice.finish_reason:
                    finish_reason = choice.finish_reason
        if not done and finish_reason is None:
            raise AttemptFailed(LLM_BAD_RESPONSE, "the stream ended before the reply was complete")
        if not saw_choice:
            raise AttemptFailed(LLM_BAD_RESPONSE, "the reply had no choices")
        visible, hidden = splitter.flush()
        thinking.append(hidden)
        if visible:
            await emit(visible)
        return Reply(
            content="".join(content),
            reasoning=_join_reasoning("".join(reasoning), "".join(thinking)),
            tool_calls=tools.calls(),
            finish_reason=finish_reason,
            usage=usage,
            model=model,
        )

    # --- helpers ---------------------------------------------------------------------

    def _http_for(self, backend: Backend) -> httpx.AsyncClient:
        http = self._http.get(backend.base_url)
        if http is None:
            settings = self._settings
            # The limiter bounds calls in flight; the pool only keeps them warm.
            limits = httpx.Limits(
                max_connections=None, max_keepalive_connections=settings.llm_max_concurrency
            )
            http = httpx.AsyncClient(
                timeout=_http_timeout(settings, stream=False),
                limits=limits,
                follow_redirects=False,  # a redirect must not lead around the SSRF guard
                transport=self._transport or lean_transport(limits),
            )
            self._http[backend.base_url] = http
        return http

    def _redact(self, text: str, backend: Backend) -> str:
        """Strip secrets from text that came from a backend or a transport error."""
        for key in (backend.api_key, self._settings.llm_api_key):
            secret = key.get_secret_value() if key is not None else ""
            if secret:
                text = text.replace(secret, "***")
        text = secret_filter.redact(text)
        limit = ERROR_DETAIL_CHARS
        return text if len(text) <= limit else text[:limit] + "…"


def _parse_whole(body: bytes) -> Reply:
    try:
        data = WireResponse.model_validate_json(body)
    except ValidationError:
        raise AttemptFailed(LLM_BAD_RESPONSE, "the reply was not valid JSON") from None
    error = data.error_text()
    if error is not None:
        raise AttemptFailed(LLM_SERVER_ERROR, f"the backend reported an error: {error}")
    if not data.choices:
        raise AttemptFailed(LLM_BAD_RESPONSE, "the reply had no choices")
    choice = data.choices[0]
    message = choice.message or choice.delta or WireMessage()
    content, thinking = split_think(message.content_text())
    tools = ToolCallAssembler()
    _add_tool_calls(tools, message)
    return Reply(
        content=content,
        reasoning=_join_reasoning(message.reasoning_text(), thinking),
        tool_calls=tools.calls(),
        finish_reason=choice.finish_reason,
        usage=data.usage.to_usage() if data.usage is not None else None,
        model=data.model or "",
    )


def _add_tool_calls(tools: ToolCallAssembler, message: WireMessage) -> None:
    for fragment in message.tool_calls or ():
        tools.add(fragment)
    if message.function_call is not None:
        tools.add_legacy(message.function_call.name, message.function_call.arguments_text())


def _join_reasoning(*parts: str) -> str:
    return "\n".join(part.strip() for part in parts if part.strip())


def _http_timeout(settings: Settings, *, stream: bool) -> httpx.Timeout:
    # For streams the client's own timers enforce first-byte and idle limits exactly;
    # the socket timeout is only a backstop that must not fire before them.
    read = settings.llm_read_timeout
    if stream:
        read = max(read, settings.llm_stream_idle_timeout)
    return httpx.Timeout(
        connect=settings.llm_connect_timeout,
        read=read,
        write=settings.llm_read_timeout,
        pool=settings.llm_connect_timeout,
    )


def _headers(backend: Backend, *, stream: bool) -> dict[str, str]:
    headers = {"Accept": _EVENT_STREAM if stream else _JSON}
    if backend.api_key is not None:
        headers["Authorization"] = f"Bearer {backend.api_key.get_secret_value()}"
    return headers


def _key(key: SecretStr | None) -> SecretStr | None:
    if key is None or not key.get_secret_value():
        return None
    return key
