"""The web console: the page at `/`, its static files, and the little it needs besides the API.

The console is a static page (plain JavaScript, no CDN, no build step) that talks to the
public API like any other client. This blueprint serves it and adds four read-only
helpers that exist only for the page:

- `GET /console/config` — the limits and intervals the page should honour;
- `GET /console/specs` — the spec library (names, titles, summaries);
- `GET /console/specs/<name>` — one library spec's YAML text, to edit before creating;
- `GET /console/diagram/<machine>.svg` — a state diagram, so the page can light the
  current state.

No route here takes a session token, so nothing here can leak one. The diagrams are the
files `fellowship diagrams` writes into the repository's `docs/diagrams/` (present when
the package is installed editable or run from a checkout); without them they are drawn
from the machine classes with Graphviz, and without Graphviz the page shows the state
as text.
"""

from __future__ import annotations

import asyncio
from functools import lru_cache
from pathlib import Path
from typing import Final

from pydantic import BaseModel, Field
from quart import Blueprint, Response, request, send_from_directory
from quart_schema import hide

from engine.auth import FULL_PREFIX, OBSERVER_PREFIX
from engine.config import Settings
from engine.diagrams import MACHINES, dot_source, dot_to_svg, graphviz_available
from engine.errors import NotFound
from engine.spec.library import list_specs, read_library_spec
from server.api_models import SpecLibraryResponse
from server.conversions import json_response
from server.state import current_state

CONSOLE_DIR: Final = Path(__file__).parent / "static" / "console"
DIAGRAMS_DIR: Final = Path(__file__).resolve().parents[1] / "docs" / "diagrams"

_SVG_TYPE: Final = "image/svg+xml; charset=utf-8"
_YAML_TYPE: Final = "application/yaml; charset=utf-8"

blueprint = Blueprint("console", __name__)


class ConsoleConfig(BaseModel):
    """What the console page needs to know about this server."""

    poll_seconds: float = Field(description="How often the page refreshes a session's status.")
    max_message_chars: int = Field(description="Longest talker message in characters.")
    max_name_chars: int = Field(description="Longest talker display name.")
    max_spec_bytes: int = Field(description="Largest accepted spec in bytes.")
    full_token_prefix: str = Field(description="How a full-control token starts.")
    observer_token_prefix: str = Field(description="How a read-only observer token starts.")
    machines: list[str] = Field(description="State machines whose diagram can be fetched.")


class DiagramUnavailable(NotFound):
    """The diagram is neither in `docs/diagrams/` nor drawable (Graphviz missing)."""

    code = "diagram_unavailable"


def console_config(settings: Settings) -> ConsoleConfig:
    """The page's configuration, taken from the server's settings."""
    return ConsoleConfig(
        poll_seconds=settings.console_poll_seconds,
        max_message_chars=settings.max_message_chars,
        max_name_chars=settings.max_name_chars,
        max_spec_bytes=settings.max_spec_bytes,
        full_token_prefix=FULL_PREFIX,
        observer_token_prefix=OBSERVER_PREFIX,
        machines=list(MACHINES),
    )


def diagram_svg(machine: str, diagrams_dir: Path = DIAGRAMS_DIR) -> str:
    """The SVG of one state machine: the generated file if present, else drawn now.

    Raises `DiagramUnavailable` for an unknown machine, or when neither the file nor
    Graphviz is there.
    """
    if machine not in MACHINES:
        raise DiagramUnavailable("there is no state machine by that name")
    try:
        return (diagrams_dir / f"{machine}.svg").read_text(encoding="utf-8")
    except OSError:
        pass
    if not graphviz_available():
        raise DiagramUnavailable("the state diagram is not available (Graphviz is not installed)")
    return _drawn_svg(machine)


@lru_cache(maxsize=len(MACHINES))
def _drawn_svg(machine: str) -> str:
    # The machines are classes: their picture cannot change while the server runs.
    return dot_to_svg(dot_source(machine))


def _page_headers(response: Response) -> Response:
    """Security headers for the page: our own scripts only, sockets to this host only."""
    host = request.host
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        f"connect-src 'self' ws://{host} wss://{host}; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'; object-src 'none'"
    )
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "no-cache"
    return response


@blueprint.get("/")
@hide
async def page() -> Response:
    """The console page."""
    response = await send_from_directory(CONSOLE_DIR, "index.html")
    return _page_headers(response)


@blueprint.get("/console/config")
@hide
async def config() -> Response:
    """Limits and intervals for the page."""
    return json_response(console_config(current_state().settings))


@blueprint.get("/console/specs")
@hide
async def specs() -> Response:
    """The spec library, for the page's picker."""
    return json_response(SpecLibraryResponse(specs=list_specs(current_state().settings)))


@blueprint.get("/console/specs/<name>")
@hide
async def spec_text(name: str) -> Response:
    """One library spec's YAML text, for the page's editor."""
    data = read_library_spec(name, current_state().settings)
    text = data.decode("utf-8", errors="replace")
    return Response(text, content_type=_YAML_TYPE, headers={"Cache-Control": "no-cache"})


@blueprint.get("/console/diagram/<machine>.svg")
@hide
async def diagram(machine: str) -> Response:
    """A state machine's diagram as SVG."""
    # Drawing may start Graphviz: keep that off the event loop.
    svg = await asyncio.to_thread(diagram_svg, machine)
    return Response(svg, content_type=_SVG_TYPE, headers={"Cache-Control": "no-cache"})


@blueprint.get("/console/<path:filename>")
@hide
async def static_file(filename: str) -> Response:
    """The page's scripts and styles."""
    response = await send_from_directory(CONSOLE_DIR, filename)
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
