"""The OpenAPI 3.1 document at `/openapi.json`: what the HTTP API does, exactly.

quart-schema builds the document from the routes (docstrings and `document_*`
decorators). This provider makes it exact where quart-schema cannot:

- every answer a route can give is listed with its body: the route's own errors
  (`document_errors`), 429 and 503 on every `/v1` route (the guard in `server.app` runs
  before any of them), and 500 everywhere, all as `ErrorBody`;
- every model is a component referenced by name, so a generated client gets one class
  per model rather than one per route;
- parameters say what the server checks: an absent value is never `null`, a query
  value may be empty (`allowEmptyValue`: the server reads `?since=` as no `since`), and
  limits that come from the settings are filled in;
- the SSE stream is `text/event-stream` whose `schema` describes one frame, as OpenAPI
  3.1 tools read it: `data` is a string of JSON whose `contentSchema` is the event of
  the frame's `event` type;
- the WebSocket endpoint is not an HTTP operation: its path item carries a summary, a
  description and an `x-websocket` object (query parameters, message schemas), but no
  operation that a generated HTTP client or a fuzzer would call and fail on.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Iterable
from typing import Any, Final, TypeVar, get_args

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from quart_schema import Info, OpenAPIProvider, Tag
from quart_schema.conversion import model_schema
from quart_schema.openapi import PATH_RE, QUART_SCHEMA_HIDDEN_ATTRIBUTE
from quart_schema.typing import Model
from quart_schema.validation import QUART_SCHEMA_QUERYSTRING_ATTRIBUTE, DataSource
from werkzeug.routing import BaseConverter, Rule

from engine import events
from engine.config import Settings
from engine.transcript import Transcript
from server.api_models import ErrorBody, PingFrame, UserMessageFrame
from server.conversions import RESERVED_TOKENS, TokenConverter
from server.state import EXTENSION_KEY, ServerState

F = TypeVar("F", bound=Callable[..., Any])

PATH_PARAMETER_HELP: Final = (
    "The session's full-control `token` or its read-only `observer_token`, as returned by "
    "create. An unknown token answers 404 (on the WebSocket: close code 4004)."
)
YAML_TYPES: Final = ("application/yaml", "application/x-yaml", "text/yaml")
METRICS_MEDIA_TYPE: Final = "text/plain"
COMPONENTS: Final = "#/components/schemas/"

# Every member of the engine's `Event` union (`Annotated[A | B | ..., discriminator]`),
# so a new event type is documented without touching this file.
EVENT_MODELS: Final[tuple[type[BaseModel], ...]] = get_args(get_args(events.Event)[0])
CLIENT_FRAME_MODELS: Final[tuple[type[BaseModel], ...]] = (UserMessageFrame, PingFrame)

# What each error status means, wherever it is answered (codes as in docs/api.md).
ERROR_DESCRIPTIONS: Final[dict[int, str]] = {
    400: "Bad input: a parameter or the body cannot be understood (`invalid_parameters`, "
    "`malformed_spec` with line and column, `unknown_format`, `bad_request`).",
    401: "A missing or wrong token: the admin token of `/v1/cluster` (`cluster_token`), or "
    "the metrics token when this server sets METRICS_TOKEN (`unauthorized`); with "
    "`WWW-Authenticate`.",
    403: "The observer token on a route that needs the full token (`observer_token`).",
    404: "Unknown token, unknown library spec, or a history position the session does not "
    "have (`not_found`, `spec_not_found`, `turn_not_found`); on `/v1/cluster`, the server "
    "has no CLUSTER_ADMIN_TOKEN (the route is off: `not_found`).",
    405: "The token is a reserved word: `/v1/session/create` is the create route, which "
    "takes POST only (`method_not_allowed`, with `Allow`).",
    408: "The request body took too long to arrive (`request_timeout`).",
    409: "Not allowed in the session's current state (`invalid_state`, `session_ended`, "
    "`turn_in_flight`).",
    413: "The body is larger than MAX_SPEC_BYTES (`spec_too_large`).",
    422: "The spec is well-formed but invalid, or cannot run on this server; `details` "
    "lists every problem (`invalid_spec`).",
    429: "Too many sessions (`too_many_sessions`), or too many requests from this address "
    "(`rate_limited`, with `Retry-After`).",
    500: "A bug: the server log has the details, the answer does not (`internal`).",
    503: "The server is shutting down, or a dependency is unavailable (`shutting_down`, "
    "`unavailable`); in cluster mode also when no node answers for the session in time "
    "(`owner_unreachable`): try again.",
}
# The guard in `server.app` refuses any `/v1` request during shutdown or over the rate
# limit, before the route runs; and any route can fail with a bug.
GUARDED_PREFIX: Final = "/v1/"
GUARD_STATUSES: Final = (429, 503)
ALWAYS_STATUSES: Final = (500,)
# The rule of `/v1/session/<token>` ends so (see `server.conversions.TokenConverter`).
SESSION_ITEM_RULE_END: Final = "/<token:token>"
ERROR_HEADERS: Final[dict[int, dict[str, Any]]] = {
    401: {
        "WWW-Authenticate": {
            "description": "Always `Bearer`: the scheme the token is expected in.",
            "schema": {"type": "string"},
        }
    },
    405: {
        "Allow": {
            "description": "The methods the path does serve.",
            "schema": {"type": "string"},
        }
    },
    429: {
        "Retry-After": {
            "description": "Seconds to wait before trying again (only with `rate_limited`).",
            "schema": {"type": "integer", "minimum": 1},
        }
    },
}

API_DESCRIPTION: Final = """\
Fellowship runs multi-bot conversations over any OpenAI-compatible LLM backend.

**Tokens.** `POST /v1/session/create` returns a full-control `token` and a read-only
`observer_token`; both go in the path (`/v1/session/{token}/...`). The observer token
can read status and history, stream, and connect as an observer; control routes answer
403 to it. Keep the full token secret.

**Errors** are JSON `ErrorBody` objects `{"error": "...", "code": "..."}` (plus
`details` for spec problems). Every route lists the statuses it can answer: 400 bad
input, 401 missing metrics token, 403 observer token on a control route, 404 unknown
token, 409 wrong state, 413 too large, 422 invalid spec, 429 too many, 500 a bug, 503
shutting down.

**Live events** come over Server-Sent Events (`GET /v1/session/{token}/stream`,
`text/event-stream`: read it with any SSE client, such as a browser's EventSource) or
over the WebSocket `/v1/session/{token}/connect`. A WebSocket is not an HTTP operation,
so that endpoint has no operation here: its path item has a description and an
`x-websocket` object with its query parameters and message schemas. Every event has
`type`, `seq` (per session, strictly increasing) and `ts`; the `Event` component lists
them all. Clients must ignore unknown event types and fields.
"""

TAGS: Final[list[Tag | dict[Any, Any]]] = [
    Tag(name="sessions", description="Create, inspect and control sessions."),
    Tag(
        name="streams",
        description="Live events as Server-Sent Events. The same events also come over the "
        "WebSocket `/v1/session/{token}/connect` (talkers send messages there too); see "
        "that path's `x-websocket` entry in /openapi.json, and docs/api.md.",
    ),
    Tag(name="library", description="Named specs kept by the server."),
    Tag(name="server", description="Health and metrics of the server."),
    Tag(name="cluster", description="Nodes and the sessions each runs (admin)."),
]

CLUSTER_ADMIN_SCHEME: Final = "clusterAdmin"
"""The security scheme of `GET /v1/cluster`: CLUSTER_ADMIN_TOKEN as a Bearer token."""
SECURITY_SCHEMES: Final[dict[str, dict[str, str]]] = {
    CLUSTER_ADMIN_SCHEME: {
        "type": "http",
        "scheme": "bearer",
        "description": "CLUSTER_ADMIN_TOKEN of the server's configuration: 401 without "
        "it or with another token; 404 when the server has none (the route is off).",
    }
}

# --- forks and transcripts (SPEC §23) ---

TRANSCRIPT_HELP: Final = (
    "The transcript, in the format asked for: `text/markdown`, `application/json` (a "
    "`Transcript`) or `text/html` (a standalone page)."
)
TRANSCRIPT_CONTENT: Final[dict[str, Any]] = {
    "text/markdown": {"schema": {"type": "string", "description": "A Markdown document."}},
    "application/json": {"schema": {"$ref": f"{COMPONENTS}Transcript"}},
    "text/html": {
        "schema": {
            "type": "string",
            "description": "A standalone HTML page: inline CSS, no script, no external "
            "resource.",
        }
    },
}
TRANSCRIPT_HEADERS: Final[dict[str, Any]] = {
    "Content-Disposition": {
        "description": "`attachment` with a file name: `<name>-<session id>.md`, `.json` or "
        "`.html`.",
        "required": True,
        "schema": {"type": "string"},
    }
}
# Extra models that are components without being a route's JSON body.
EXTRA_MODELS: Final[tuple[type[BaseModel], ...]] = (Transcript,)

_RAW_RESPONSES_ATTRIBUTE: Final = "_fellowship_raw_responses"
_ERRORS_ATTRIBUTE: Final = "_fellowship_errors"


def document_raw_response(
    status: int,
    description: str,
    content: dict[str, Any] | None = None,
    *,
    headers: dict[str, Any] | None = None,
) -> Callable[[F], F]:
    """Document an answer that is not one JSON model (an event stream, a 204, a file)."""

    def decorate(func: F) -> F:
        # Integer keys, like quart-schema's own (the document is dumped with sorted keys).
        responses: dict[int, dict[str, Any]] = getattr(func, _RAW_RESPONSES_ATTRIBUTE, {})
        response: dict[str, Any] = {"description": description}
        if content is not None:
            response["content"] = content
        if headers is not None:
            response["headers"] = headers
        responses[status] = response
        setattr(func, _RAW_RESPONSES_ATTRIBUTE, responses)
        return func

    return decorate


def document_errors(*statuses: int) -> Callable[[F], F]:
    """Document the error statuses a route answers itself, each with `ErrorBody`.

    429, 503 (every `/v1` route) and 500 (every route) are added by the provider.
    """

    def decorate(func: F) -> F:
        known: set[int] = getattr(func, _ERRORS_ATTRIBUTE, set())
        setattr(func, _ERRORS_ATTRIBUTE, known | set(statuses))
        return func

    return decorate


def reference(name: str) -> dict[str, str]:
    """A `$ref` to the component schema `name`."""
    return {"$ref": f"{COMPONENTS}{name}"}


def api_info(version: str) -> Info:
    """Title, version and overview of the API."""
    return Info(title="Fellowship", version=version, description=API_DESCRIPTION)


class FellowshipOpenAPI(OpenAPIProvider):
    """quart-schema's provider, made exact: errors, references, parameters, streams."""

    def generate_rules(self) -> Iterable[Rule]:
        for rule in self._app.url_map.iter_rules():
            func = self._app.view_functions[rule.endpoint]
            hidden = getattr(func, QUART_SCHEMA_HIDDEN_ATTRIBUTE, False)
            if not hidden and not rule.websocket and rule.endpoint != "static":
                yield rule

    def build_paths(self, rule: Rule) -> tuple[dict[str, Any], dict[str, Any]]:
        paths, components = super().build_paths(rule)
        func = self._app.view_functions[rule.endpoint]
        raw: dict[int, dict[str, Any]] = getattr(func, _RAW_RESPONSES_ATTRIBUTE, {})
        statuses = set(getattr(func, _ERRORS_ATTRIBUTE, set())) | set(ALWAYS_STATUSES)
        if rule.rule.startswith(GUARDED_PREFIX):
            statuses |= set(GUARD_STATUSES)
        if rule.rule.endswith(SESSION_ITEM_RULE_END):
            # `/v1/session/<token>` shares its shape with the reserved routes.
            statuses.add(405)
        for operations in paths.values():
            for operation in operations.values():
                operation["description"] = operation.get("description", "").strip()
                # A copy per operation: quart-schema shares one dict between methods.
                responses = dict(operation["responses"])
                responses.update(raw)
                responses.update({status: _error_response(status) for status in statuses})
                operation["responses"] = dict(sorted(responses.items()))
        return paths, components

    def build_path_parameter(self, name: str, converter: BaseConverter) -> dict[str, Any]:
        parameter = super().build_path_parameter(name, converter)
        if isinstance(converter, TokenConverter):
            parameter["description"] = PATH_PARAMETER_HELP
            # `/v1/session/create` is the create route, never a token (see TokenConverter).
            parameter["schema"] = {
                "type": "string",
                "minLength": 1,
                "not": {"enum": list(RESERVED_TOKENS)},
            }
        return parameter

    def build_querystring_parameters(
        self, model: type[Model]
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        parameters, components = super().build_querystring_parameters(model)
        limits = _setting_limits(self._settings())
        for parameter in parameters:
            parameter["schema"] = _parameter_schema(parameter["schema"])
            parameter["schema"].update(limits.get(parameter["name"], {}))
            # `parse_params` reads an empty value as an absent one.
            parameter["allowEmptyValue"] = True
        return parameters, components

    def build_headers_parameters(
        self, model: type[Model]
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        # Header names as the model's aliases spell them (`Last-Event-ID`), not kebab-cased.
        preference = self._app.config["QUART_SCHEMA_CONVERSION_PREFERENCE"]
        schema = model_schema(model, preference=preference)
        parameters = []
        for name, field in schema["properties"].items():
            description = field.pop("description", "")
            parameters.append(
                {
                    "name": name,
                    "in": "header",
                    "description": description,
                    "schema": _parameter_schema(field),
                }
            )
        return parameters, schema.get("$defs", {})

    def build_request_body(
        self, model: type[Model], source: DataSource
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        body, components = super().build_request_body(model, source)
        name = _model_name(model)
        # Titled by its component name: generated clients name their classes by title.
        components[name] = {**body["content"]["application/json"]["schema"], "title": name}
        # The server reads JSON or YAML by Content-Type (JSON is YAML too).
        media_types = ("application/json", *YAML_TYPES)
        content = {media: {"schema": reference(name)} for media in media_types}
        return {"required": True, "content": content}, components

    def build_response_object(
        self, model: type[Model], headers_model: type[Model] | None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        response, components = super().build_response_object(model, headers_model)
        name = _model_name(model)
        components[name] = response["content"]["application/json"]["schema"]
        response["content"]["application/json"]["schema"] = reference(name)
        return response, components

    def schema(self) -> dict[str, Any]:
        document = super().schema()
        models: list[type[BaseModel]] = [
            *EVENT_MODELS,
            *CLIENT_FRAME_MODELS,
            ErrorBody,
            *EXTRA_MODELS,
        ]
        _, definitions = models_json_schema(
            [(model, "serialization") for model in models],
            ref_template=COMPONENTS + "{model}",
        )
        schemas = document["components"]["schemas"]
        schemas.update(definitions.get("$defs", {}))
        schemas["Event"] = _union(
            EVENT_MODELS, "Any event a member receives, told apart by its `type`."
        )
        schemas["ClientFrame"] = _union(
            CLIENT_FRAME_MODELS, "Any frame a WebSocket client may send, told apart by its `type`."
        )
        schemas["ServerSentEvent"] = server_sent_event_schema()
        document["components"]["securitySchemes"] = SECURITY_SCHEMES
        _add_spec_limits(schemas, self._settings())
        _add_spec_overrides(schemas)
        for schema in schemas.values():
            _describe_constants(schema)
        document["paths"].update(self._websocket_paths())
        return document

    def _websocket_paths(self) -> dict[str, Any]:
        """A path item per WebSocket route: described, but with no HTTP operation."""
        paths: dict[str, Any] = {}
        for rule in self._app.url_map.iter_rules():
            func = self._app.view_functions[rule.endpoint]
            if not rule.websocket or getattr(func, QUART_SCHEMA_HIDDEN_ATTRIBUTE, False):
                continue
            summary, _, description = inspect.getdoc(func).partition("\n")  # type: ignore[union-attr]
            parameters = [
                self.build_path_parameter(name, converter)
                for name, converter in rule._converters.items()
            ]
            query_model = getattr(func, QUART_SCHEMA_QUERYSTRING_ATTRIBUTE, None)
            if query_model is not None:
                parameters.extend(self.build_querystring_parameters(query_model)[0])
            path = PATH_RE.sub(r"{\1}", rule.rule)
            paths[path] = {
                "summary": summary,
                "description": description.strip(),
                "x-websocket": {
                    "parameters": parameters,
                    "serverMessages": reference("Event"),
                    "clientMessages": reference("ClientFrame"),
                },
            }
        return paths

    def _settings(self) -> Settings:
        state: ServerState = self._app.extensions[EXTENSION_KEY]
        return state.settings


def server_sent_event_schema() -> dict[str, Any]:
    """One frame of the SSE stream, as an SSE parser reads it: `id`, `event`, `data`.

    Under OpenAPI 3.1 the `schema` of a `text/event-stream` response describes each event.
    `data` is a string holding one line of JSON; `contentMediaType` and `contentSchema`
    say which event it is, one branch per `event` type.
    """
    branches = [
        {
            "title": f"{model.__name__}Frame",
            "properties": {
                "event": {"const": _event_type(model)},
                "data": {
                    "contentMediaType": "application/json",
                    "contentSchema": reference(model.__name__),
                },
            },
        }
        for model in EVENT_MODELS
    ]
    return {
        "type": "object",
        "description": "One Server-Sent Events frame. Keep-alive and closing comment lines "
        "(starting with `:`) carry no event and are skipped by SSE parsers.",
        "required": ["id", "event", "data"],
        "properties": {
            "id": {
                "type": "string",
                "pattern": "^[0-9]+$",
                "description": "The event's `seq`. EventSource sends the last one back as "
                "`Last-Event-ID` when it reconnects.",
            },
            "event": {"type": "string", "description": "The event's `type`."},
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": reference("Event"),
                "description": "The event as one line of JSON: the same a WebSocket member gets.",
            },
        },
        "oneOf": branches,
    }


def _model_name(model: type[Model]) -> str:
    name: str = getattr(model, "__name__", "")
    assert name, model
    return name


def _event_type(model: type[BaseModel]) -> str:
    # Every event and frame model has `type: Literal["..."]`.
    (value,) = get_args(model.model_fields["type"].annotation)
    assert isinstance(value, str), model
    return value


def _union(models: Iterable[type[BaseModel]], description: str) -> dict[str, Any]:
    listed = list(models)
    return {
        "description": description,
        "oneOf": [reference(model.__name__) for model in listed],
        "discriminator": {
            "propertyName": "type",
            "mapping": {_event_type(model): f"{COMPONENTS}{model.__name__}" for model in listed},
        },
    }


def _error_response(status: int) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": ERROR_DESCRIPTIONS[status],
        "content": {"application/json": {"schema": reference(ErrorBody.__name__)}},
    }
    if status in ERROR_HEADERS:
        response["headers"] = ERROR_HEADERS[status]
    return response


def _parameter_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A parameter's schema without pydantic's `null` branch, `null` default and title.

    An optional parameter is left out to mean "not set"; `null` is not a value a query
    string or a header can carry.
    """
    cleaned = {k: v for k, v in schema.items() if k not in ("title", "anyOf")}
    if cleaned.get("default", ...) is None:
        del cleaned["default"]
    branches = [b for b in schema.get("anyOf", []) if b != {"type": "null"}]
    if len(branches) == 1:
        cleaned.update(branches[0])
    elif branches:
        cleaned["anyOf"] = branches
    return cleaned


def _add_spec_limits(schemas: dict[str, Any], settings: Settings) -> None:
    """The spec limits this server's settings set, for the schema to refuse what it refuses.

    At most MAX_BOTS_PER_SESSION bots, and MAX_PROMPT_CHARS characters in any text field
    (`engine.spec.checking` applies the cap to every string of a known field).
    """
    spec = schemas.get("SessionSpec")
    if spec is None:
        return
    spec["properties"]["bots"]["maxItems"] = settings.max_bots_per_session
    cap = settings.max_prompt_chars
    for name in ("SessionSpec", "BotSpec", "SessionOptions", "LLMOverride"):
        for field in schemas[name]["properties"].values():
            for branch in [field, *field.get("anyOf", [])]:
                if branch.get("type") == "string":
                    branch["maxLength"] = min(branch.get("maxLength", cap), cap)


def _add_spec_overrides(schemas: dict[str, Any]) -> None:
    """`SpecOverrides`, what a fork's `overrides` may hold: a spec with nothing required.

    Drawn from `SessionSpec` (limits included), so it follows the spec as it grows.
    Rules about the merged result — bots ignoring case, at most MAX_BOTS_PER_SESSION, the
    orchestrated minimum — are checked on the merged spec (422) rather than here.
    """
    spec = schemas.get("SessionSpec")
    fork = schemas.get("ForkRequest")
    if spec is None or fork is None:
        return
    overrides = copy.deepcopy(spec)
    for key in ("required", "if", "then", "examples"):
        overrides.pop(key, None)
    bots = overrides["properties"]["bots"]
    bots.pop("minItems", None)
    bots.pop("maxItems", None)
    bots["description"] = (
        "Bot changes, matched by name ignoring case: an entry naming a bot of the session "
        "changes only the fields it sets (the name keeps its spelling); an entry with a new "
        "name adds a bot at the end."
    )
    overrides["title"] = "SpecOverrides"
    overrides["description"] = (
        "Changes to a session's spec for its fork: any part of a spec, merged over it."
    )
    schemas["SpecOverrides"] = overrides
    field = fork["properties"]["overrides"]
    fork["properties"]["overrides"] = {
        "$ref": f"{COMPONENTS}SpecOverrides",
        "description": field.get("description", ""),
    }


def _setting_limits(settings: Settings) -> dict[str, dict[str, Any]]:
    """Parameter limits that come from the settings, by parameter name."""
    return {"name": {"maxLength": settings.max_name_chars}}


def _describe_constants(schema: dict[str, Any]) -> None:
    """Give fixed-value fields (an event's `type`) a description if they lack one."""
    for field in schema.get("properties", {}).values():
        if "const" in field and "description" not in field:
            field["description"] = f"Always `{field['const']}`."
