"""What the engine needs from an LLM client, as a protocol.

`LLMClient` (HTTP, retries, the SSRF guard, one concurrency limit per backend) is the
implementation the server runs with. Anything else with these members will do as well:
tests and benchmarks pass a client that answers at once, or one that records every call
around the real client, without inheriting the HTTP machinery.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, TypeVar

if TYPE_CHECKING:
    from pydantic import SecretStr

    from engine.llm.client import Backend, RetryCallback, TokenCallback
    from engine.llm.types import ChatRequest, Completion

_State = TypeVar("_State")


class ChatClient(Protocol):
    """Chat completions on OpenAI-compatible backends, as sessions use them."""

    @property
    def default_backend(self) -> Backend:
        """The server's own backend (`LLM_BASE_URL`, `LLM_API_KEY`)."""
        ...

    def resolve_backend(self, base_url: str | None, api_key: SecretStr | None) -> Backend:
        """The backend a session with this `llm.base_url` and key should use.

        No `base_url` means the default backend; any other must be allowed
        (`ALLOWED_LLM_HOSTS`), else `BackendNotAllowed` is raised.
        """
        ...

    def state_for(self, backend: Backend, kind: type[_State]) -> _State:
        """One `kind()` per backend, kept as long as the client (what callers learn of it)."""
        ...

    async def chat(
        self,
        request: ChatRequest,
        *,
        backend: Backend,
        on_token: TokenCallback | None = None,
        on_retry: RetryCallback | None = None,
        queue_key: str | None = None,
    ) -> Completion:
        """One chat completion; raises `LLMError` when it fails for good.

        `on_token` receives streamed reply text, `on_retry` hears of each retried
        attempt, `queue_key` names the caller (normally the session id).
        """
        ...

    async def aclose(self) -> None:
        """Release connections; the engine calls it once, when it closes."""
        ...
