"""The Quart application: routes, transports, error mapping, CORS, limits and docs.

`create_app` wires the pieces together; it holds no logic of its own beyond the
cross-cutting HTTP concerns (CORS headers, the per-client rate limit, refusing work
during shutdown) and the masking of tokens wherever Quart would log a path.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import TracebackType
from typing import Final

from quart import Quart, Response, request, send_from_directory, websocket
from quart.ctx import has_request_context, has_websocket_context
from quart_schema import QuartSchema, hide

from engine.backend_status import BackendBoard
from engine.config import Settings
from engine.default_backend import external_board
from engine.manager import SessionManager
from engine.store import configured_store
from server import console, errors, routes, sse, ws
from server.conversions import TokenConverter
from server.openapi import TAGS, FellowshipOpenAPI, api_info
from server.ratelimit import RateLimiter
from server.state import EXTENSION_KEY, ServerState, current_state

STATIC_DIR: Final = Path(__file__).parent / "static"
DOCS_DIR: Final = STATIC_DIR / "docs"

# `/v1/session/<token>...`: the token is masked wherever a path is logged.
_SESSION_PATH: Final = re.compile(r"(/v1/session/)(?!create\b)[^/?\s\"]+")
MASKED_PATH_SEGMENT: Final = r"\1***"

_CORS_METHODS: Final = "GET, POST, DELETE, OPTIONS"
_CORS_DEFAULT_HEADERS: Final = "Content-Type, Last-Event-ID"


def mask_path(text: str) -> str:
    """`text` with every session token in a `/v1/session/<token>` path replaced by `***`."""
    return _SESSION_PATH.sub(MASKED_PATH_SEGMENT, text)


class FellowshipApp(Quart):
    """Quart, except that uncaught errors are logged without the token-bearing path."""

    def log_exception(
        self,
        exception_info: tuple[type, BaseException, TracebackType] | tuple[None, None, None],
    ) -> None:
        if has_request_context():
            where = f"request {request.method} {mask_path(request.path)}"
        elif has_websocket_context():
            where = f"websocket {mask_path(websocket.path)}"
        else:
            where = "background task"
        self.logger.error("unhandled error in %s", where, exc_info=exception_info)


def create_app(
    settings: Settings,
    *,
    manager: SessionManager | None = None,
    backend: BackendBoard | None = None,
) -> Quart:
    """Build the app; the engine starts with the server and stops with it.

    `backend` reports on the default backend (`engine.default_backend`); without it the
    app probes LLM_BASE_URL itself.
    """
    app = FellowshipApp(__name__, static_folder=str(STATIC_DIR), static_url_path="/static")
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_spec_bytes,
        # Never answer with a traceback page, even in debug.
        PROPAGATE_EXCEPTIONS=False,
        TRAP_HTTP_EXCEPTIONS=False,
    )
    state = ServerState(
        settings,
        manager or SessionManager(settings, store=configured_store(settings)),
        RateLimiter(settings.rate_limit_per_minute),
        backend or external_board(settings),
    )
    app.extensions[EXTENSION_KEY] = state
    QuartSchema(
        app,
        openapi_path="/openapi.json",
        swagger_ui_path=None,  # ours is vendored: see /docs below
        redoc_ui_path=None,
        scalar_ui_path=None,
        info=api_info(routes.api_version()),
        tags=TAGS,
        openapi_provider_class=FellowshipOpenAPI,
    )
    errors.install(app)
    # Before the blueprints: their rules name this converter.
    app.url_map.converters["token"] = TokenConverter
    for blueprint in (routes.blueprint, ws.blueprint, sse.blueprint, console.blueprint):
        app.register_blueprint(blueprint)
    app.add_url_rule("/docs", "docs", _docs_page)
    _install_guards(app, settings)

    @app.before_serving
    async def start_engine() -> None:
        await state.start()

    @app.after_serving
    async def stop_engine() -> None:
        await state.shutdown()

    return app


@hide
async def _docs_page() -> Response:
    """The interactive API documentation (Swagger UI, served from local files)."""
    return await send_from_directory(DOCS_DIR, "index.html")


def _install_guards(app: Quart, settings: Settings) -> None:
    origins = set(settings.cors_origins)

    @app.before_request
    async def guard_request() -> None:
        # WebSocket connects are checked in `server.ws`, after accepting, so that a
        # browser can read the refusal.
        if request.method == "OPTIONS" or not request.path.startswith("/v1/"):
            return
        state = current_state()
        state.refuse_if_closing()
        state.limiter.check(request.remote_addr or "-")

    @app.after_request
    async def cors(response: Response) -> Response:
        origin = request.headers.get("Origin")
        if not origin or not origins or ("*" not in origins and origin not in origins):
            return response
        response.headers["Access-Control-Allow-Origin"] = "*" if "*" in origins else origin
        response.vary.add("Origin")
        if request.method == "OPTIONS":
            response.headers["Access-Control-Allow-Methods"] = _CORS_METHODS
            response.headers["Access-Control-Allow-Headers"] = request.headers.get(
                "Access-Control-Request-Headers", _CORS_DEFAULT_HEADERS
            )
        return response
