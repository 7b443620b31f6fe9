"""The OpenAPI document at `/openapi.json`, built by quart-schema from the routes.

quart-schema documents HTTP routes from their docstrings and `document_*` decorators.
This provider adds what it leaves out: the WebSocket endpoint (as a GET with a `101`
answer and its query string), YAML as a second body type of `create`, a description of
the `token` path parameter, and the schemas of every event and client frame as
components, so a client generator sees the whole protocol.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Final, TypeVar, get_args

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from quart_schema import Info, OpenAPIProvider, Tag
from quart_schema.openapi import QUART_SCHEMA_HIDDEN_ATTRIBUTE
from quart_schema.validation import QUART_SCHEMA_REQUEST_ATTRIBUTE
from werkzeug.routing import BaseConverter, Rule

from engine import events
from server.api_models import ErrorBody, PingFrame, UserMessageFrame

F = TypeVar("F", bound=Callable[..., Any])

PATH_PARAMETER_HELP: Final = (
    "The session's full-control `token` or its read-only `observer_token`, as returned by "
    "create. An unknown token answers 404."
)
_YAML_TYPES: Final = ("application/yaml", "application/x-yaml", "text/yaml")

# Every member of the engine's `Event` union (`Annotated[A | B | ..., discriminator]`),
# so a new event type is documented without touching this file.
EVENT_MODELS: Final[tuple[type[BaseModel], ...]] = get_args(get_args(events.Event)[0])
CLIENT_FRAME_MODELS: Final[tuple[type[BaseModel], ...]] = (UserMessageFrame, PingFrame)

API_DESCRIPTION: Final = """\
Fellowship runs multi-bot conversations over any OpenAI-compatible LLM backend.

**Tokens.** `POST /v1/session/create` returns a full-control `token` and a read-only
`observer_token`; both go in the path (`/v1/session/{token}/...`). The observer token
can read status and history, stream, and connect as an observer; control routes answer
403 to it. Keep the full token secret.

**Errors** are JSON `{"error": "...", "code": "..."}` (plus `details` for spec
problems): 400 bad input, 403 observer token on a control route, 404 unknown token or
route, 409 wrong state, 413 too large, 422 invalid spec, 429 too many, 503 shutting down.

**Live events** come over the WebSocket `connect` endpoint or the SSE `stream`
endpoint. Every event has `type`, `seq` (per session, strictly increasing) and `ts`;
their schemas are the `*Event`-like components below (`HistoryEvent`, `BotMessage`,
...). Clients must ignore unknown event types and fields.
"""

TAGS: Final[list[Tag | dict[Any, Any]]] = [
    Tag(name="sessions", description="Create, inspect and control sessions."),
    Tag(name="streams", description="Live events over WebSocket and Server-Sent Events."),
    Tag(name="library", description="Named specs kept by the server."),
    Tag(name="server", description="Health of the server."),
]


_RAW_RESPONSES_ATTRIBUTE: Final = "_fellowship_raw_responses"


def document_raw_response(
    status: int, description: str, media_type: str | None = None
) -> Callable[[F], F]:
    """Document an answer that is not a JSON model (a stream, a WebSocket upgrade, 204)."""

    def decorate(func: F) -> F:
        # Integer keys, like quart-schema's own (the document is dumped with sorted keys).
        responses: dict[int, dict[str, Any]] = getattr(func, _RAW_RESPONSES_ATTRIBUTE, {})
        response: dict[str, Any] = {"description": description}
        if media_type is not None:
            response["content"] = {media_type: {"schema": {"type": "string"}}}
        responses[status] = response
        setattr(func, _RAW_RESPONSES_ATTRIBUTE, responses)
        return func

    return decorate


def api_info(version: str) -> Info:
    """Title, version and overview of the API."""
    return Info(title="Fellowship", version=version, description=API_DESCRIPTION)


class FellowshipOpenAPI(OpenAPIProvider):
    """quart-schema's provider, extended to the WebSocket endpoint and the event schemas."""

    def generate_rules(self) -> Iterable[Rule]:
        # The parent skips WebSocket rules; documenting `connect` matters here.
        for rule in self._app.url_map.iter_rules():
            func = self._app.view_functions[rule.endpoint]
            hidden = getattr(func, QUART_SCHEMA_HIDDEN_ATTRIBUTE, False)
            if not hidden and rule.endpoint != "static":
                yield rule

    def build_paths(self, rule: Rule) -> tuple[dict[str, Any], dict[str, Any]]:
        paths, components = super().build_paths(rule)
        func = self._app.view_functions[rule.endpoint]
        request_model = getattr(func, QUART_SCHEMA_REQUEST_ATTRIBUTE, (None,))[0]
        raw: dict[int, dict[str, Any]] = getattr(func, _RAW_RESPONSES_ATTRIBUTE, {})
        for operations in paths.values():
            for operation in operations.values():
                operation["description"] = operation.get("description", "").strip()
                operation["responses"].update(raw)
                if request_model is not None:
                    _body_by_reference(operation, request_model.__name__, components)
        return paths, components

    def build_path_parameter(self, name: str, converter: BaseConverter) -> dict[str, Any]:
        parameter = super().build_path_parameter(name, converter)
        if name == "token":
            parameter["description"] = PATH_PARAMETER_HELP
        return parameter

    def schema(self) -> dict[str, Any]:
        document = super().schema()
        models: list[type[BaseModel]] = [*EVENT_MODELS, *CLIENT_FRAME_MODELS, ErrorBody]
        _, definitions = models_json_schema(
            [(model, "serialization") for model in models],
            ref_template="#/components/schemas/{model}",
        )
        schemas = document["components"]["schemas"]
        schemas.update(definitions.get("$defs", {}))
        for schema in schemas.values():
            _describe_constants(schema)
        return document


def _describe_constants(schema: dict[str, Any]) -> None:
    """Give fixed-value fields (an event's `type`) a description if they lack one."""
    for field in schema.get("properties", {}).values():
        if "const" in field and "description" not in field:
            field["description"] = f"Always `{field['const']}`."


def _body_by_reference(operation: dict[str, Any], name: str, components: dict[str, Any]) -> None:
    """Move the request body's schema to a component, and accept YAML as well as JSON."""
    content = operation.get("requestBody", {}).get("content", {})
    schema = content.get("application/json", {}).get("schema")
    if schema is None:
        return
    components[name] = schema
    reference = {"schema": {"$ref": f"#/components/schemas/{name}"}}
    for media in ("application/json", *_YAML_TYPES):
        content[media] = reference
