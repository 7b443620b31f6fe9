"""Backend URLs: the SSRF guard for a session's own base URL, and safe forms of a URL.

A session may point its bots at another OpenAI-compatible server (`llm.base_url`). The
server then makes HTTP calls to a URL a client chose, so the host must be one the
operator allowed (`ALLOWED_LLM_HOSTS`). URLs shown in logs and messages drop user info,
query and fragment, where credentials may hide.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit, urlunsplit

from engine.errors import BackendNotAllowed

if TYPE_CHECKING:  # engine.config checks LLM_BACKENDS with this module at load time
    from engine.config import Settings

_SCHEMES: Final = ("http", "https")


def check_backend_url(url: str, settings: Settings) -> str:
    """Apply the SSRF guard to a per-session base URL; return it normalised.

    The scheme must be http or https and the host must be listed in
    `ALLOWED_LLM_HOSTS` (exact, case-insensitive match; IPv6 written without brackets).
    Raises `BackendNotAllowed` otherwise; its message names the host, never a key.
    """
    return check_url_host(url, settings.allowed_llm_hosts)


def check_url_host(url: str, allowed_hosts: Iterable[str]) -> str:
    """The SSRF guard against a list of allowed hosts (`check_backend_url` without settings).

    The named backends of `LLM_BACKENDS` pass it at start-up, the same as a session's
    `llm.base_url` does at creation.
    """
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - parsing the port validates it
    except ValueError:
        raise BackendNotAllowed("the LLM base URL is not a valid URL") from None
    if parts.scheme.lower() not in _SCHEMES:
        raise BackendNotAllowed(
            f"the LLM base URL must use http or https, not {parts.scheme or 'no scheme'!r}"
        )
    host = (parts.hostname or "").lower()
    if not host:
        raise BackendNotAllowed("the LLM base URL has no host")
    allowed = {entry.strip().strip("[]").lower() for entry in allowed_hosts}
    if host not in allowed:
        raise BackendNotAllowed(
            f"LLM host {host!r} is not allowed; the server admin can add it to ALLOWED_LLM_HOSTS"
        )
    return normalise_url(url)


def normalise_url(url: str) -> str:
    """A base URL as calls are built from it: no surrounding spaces, no trailing slash."""
    return url.strip().rstrip("/")


def display_url(url: str) -> str:
    """The URL without user info, query or fragment: safe for logs and messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{host}:{port}" if port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
