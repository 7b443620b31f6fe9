"""The REST routes under `/v1`, plus `/healthz`: wire in, engine call, wire out.

Each handler reads its parameters into a model, calls one `SessionManager` method and
answers JSON. Errors are raised as the engine's typed errors and turned into JSON
answers by `server.errors`; nothing here decides anything about sessions.

`GET /metrics` serves the engine's Prometheus metrics (docs/operations.md), behind
`METRICS_TOKEN` when one is set.

Tokens travel in the path. The full token opens every route; the observer token opens
status, history, transcript, stream and observer connections, and gets 403 elsewhere. An unknown
token gets the same 404 whether or not a session ever existed.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from pydantic import ValidationError
from quart import Blueprint, Response, request
from quart_schema import (
    document_querystring,
    document_request,
    document_response,
    security_scheme,
    tag,
)
from werkzeug.exceptions import RequestEntityTooLarge

from engine.auth import hashes_match, token_hash
from engine.cluster.view import ClusterView, cluster_view
from engine.config import Settings
from engine.errors import (
    ClusterTokenInvalid,
    InvalidSpec,
    MalformedSpec,
    NotFound,
    SpecIssue,
    SpecTooLarge,
    Unauthorized,
)
from engine.manager import CreatedSession
from engine.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from engine.spec.library import list_specs, load_named_spec
from engine.spec.loader import load_spec, read_spec_document
from engine.spec.models import SessionSpec
from engine.status import SessionStatus
from server.api_models import (
    CreateQuery,
    ErrorDetail,
    ForkRequest,
    HealthResponse,
    HistoryResponse,
    SpecLibraryResponse,
    TranscriptQuery,
)
from server.conversions import json_response, parse_params
from server.errors import ParameterError
from server.openapi import (
    CLUSTER_ADMIN_SCHEME,
    METRICS_MEDIA_TYPE,
    TRANSCRIPT_CONTENT,
    TRANSCRIPT_HEADERS,
    TRANSCRIPT_HELP,
    document_errors,
    document_raw_response,
)
from server.state import current_state

blueprint = Blueprint("sessions", __name__)

SESSION_PATH = "/v1/session/<token:token>"


def api_version() -> str:
    """The installed Fellowship version."""
    try:
        return version("fellowship")
    except PackageNotFoundError:
        return "unknown"


@blueprint.get("/healthz")
@tag(["server"])
@document_response(HealthResponse)
async def healthz() -> Response:
    """Health check.

    Answers 200 with `status: ok` while the server runs; also reports the version, how
    many sessions are live, and the default LLM backend: its kind (`embedded`, `mock`,
    `external`), address, model, state (`building`, `starting`, `ready`, `unreachable`,
    ...) and whether it answered its last check, with build progress while the embedded
    backend is being built. The backend is checked in the background (every
    BACKEND_PROBE_SECONDS, or by the embedded backend's supervisor), never by this call.
    """
    state = current_state()
    return json_response(
        HealthResponse(
            status="ok",
            version=api_version(),
            live_sessions=state.manager.live_sessions(),
            backend=state.backend.snapshot(),
        )
    )


@blueprint.get("/v1/specs")
@tag(["library"])
@document_response(SpecLibraryResponse)
async def library() -> Response:
    """List the spec library.

    Every named spec in the server's SPECS_DIR, with its title and a one-line summary.
    Start one with `POST /v1/session/create?library=<name>`.
    """
    settings = current_state().settings
    return json_response(SpecLibraryResponse(specs=list_specs(settings)))


@blueprint.post("/v1/session/create")
@tag(["sessions"])
@document_querystring(CreateQuery)
@document_request(SessionSpec)
@document_response(CreatedSession, 201)
@document_errors(400, 404, 408, 413, 422)
async def create_session() -> Response:
    """Create a session.

    The body is a session spec as JSON (`Content-Type: application/json`) or YAML
    (`application/yaml`, `application/x-yaml`, `text/yaml`); without a known content
    type the format is detected. To start a spec from the server's library instead,
    pass `?library=<name>`: the body is then optional and, when given, is a JSON or YAML
    mapping of overrides merged over the library spec (`options` and `llm` key by key,
    other keys replaced).

    A spec that uses the server's default backend is refused with 503 while that backend
    is the embedded one and has not come up yet: `backend_starting` during its first
    build or start, `backend_failed` if it could not be built (the message says why).

    Answers 201 with the public session `id`, the full-control `token`, the read-only
    `observer_token` (the only time either is shown), the normalized spec with secrets
    removed, and `warnings` (unknown keys, options not built yet). Errors: 400 malformed
    or empty document (with line and column), 404 unknown library name, 413 larger than
    MAX_SPEC_BYTES, 422 invalid spec (every problem with its path in `details`), 429
    too many sessions.

    The schema below is this server's (MAX_BOTS_PER_SESSION and MAX_PROMPT_CHARS are
    filled in), yet a body that fits it can still be refused with 422 for the rules a
    JSON Schema cannot state: bot names unique ignoring case, `memory: inherit:<token>`
    naming an existing session (by its full token), `llm.base_url` pointing to a
    host in ALLOWED_LLM_HOSTS with a valid port, and every `backend` name being one of
    the server's LLM_BACKENDS.
    """
    state = current_state()
    settings = state.settings
    query = parse_params(CreateQuery, request.args)
    body = await _read_body(settings.max_spec_bytes)
    content_type = request.headers.get("Content-Type")
    if query.library is not None:
        overrides = None
        if body.strip():
            document = read_spec_document(body, content_type=content_type, settings=settings)
            overrides = document.data
        result = load_named_spec(query.library, settings=settings, overrides=overrides)
    else:
        result = load_spec(body, content_type=content_type, settings=settings)
    spec = result.raise_for_errors()
    if spec.uses_default_backend():
        refusal = state.backend.refusal()
        if refusal is not None:
            raise refusal
    created = await state.manager.create(spec, [str(w) for w in result.warnings])
    return json_response(created, 201)


async def _read_body(limit: int) -> bytes:
    # Quart refuses a body over MAX_CONTENT_LENGTH from its Content-Length, or as soon
    # as the streamed bytes pass it, without reading the rest.
    try:
        return await request.get_data(cache=True, as_text=False, parse_form_data=False)
    except RequestEntityTooLarge:
        raise SpecTooLarge(
            [SpecIssue(path="", message=f"the spec is larger than {limit} bytes (MAX_SPEC_BYTES)")]
        ) from None


@blueprint.get(SESSION_PATH)
@tag(["sessions"])
@document_response(SessionStatus)
@document_errors(404)
async def session_status(token: str) -> Response:
    """Session status.

    State (active, paused, ended), loop state, counters, connected members, token
    usage (Fellowship's count and the backend's), limits and warnings. Either token.
    """
    manager = current_state().manager
    return json_response(await manager.status_of(await manager.find(token)))


@blueprint.delete(SESSION_PATH)
@tag(["sessions"])
@document_response(SessionStatus)
@document_errors(403, 404, 409)
async def end_session(token: str) -> Response:
    """End a session.

    Ends the session with reason `client_request`: a reply being generated is dropped
    (its slot becomes a failed tombstone), `session_end` is broadcast and live
    connections close. The session stays readable. Full token only; 409 if it has
    already ended. Answers the final status.
    """
    manager = current_state().manager
    handle = await manager.find(token)
    await manager.end(handle)
    return json_response(await manager.status_of(await manager.find(token)))


@blueprint.post(f"{SESSION_PATH}/pause")
@tag(["sessions"])
@document_response(SessionStatus)
@document_errors(403, 404, 409)
async def pause_session(token: str) -> Response:
    """Pause a session.

    No new LLM calls start while paused; a reply already being generated is completed
    and recorded. Talker messages sent while paused are kept and answered after resume.
    Broadcasts `session_paused`. Full token only; 409 unless the session is active.
    """
    manager = current_state().manager
    handle = await manager.find(token)
    await manager.pause(handle)
    return json_response(await manager.status_of(handle))


@blueprint.post(f"{SESSION_PATH}/resume")
@tag(["sessions"])
@document_response(SessionStatus)
@document_errors(403, 404, 409)
async def resume_session(token: str) -> Response:
    """Resume a paused session.

    The loop picks up where it stopped. Broadcasts `session_resumed`. Full token only;
    409 unless the session is paused.
    """
    manager = current_state().manager
    handle = await manager.find(token)
    await manager.resume(handle)
    return json_response(await manager.status_of(handle))


@blueprint.get(f"{SESSION_PATH}/history")
@tag(["sessions"])
@document_response(HistoryResponse)
@document_errors(404)
async def session_history(token: str) -> Response:
    """Full history.

    Every history position in order: bot and talker messages, a reserved slot while a
    reply is generated, and failed tombstones. Either token.
    """
    manager = current_state().manager
    messages = await manager.history_of(await manager.find(token))
    return json_response(HistoryResponse(messages=messages))


# --- the cluster (admin) --------------------------------------------------------------------------


@blueprint.get("/v1/cluster")
@tag(["cluster"])
@security_scheme([{CLUSTER_ADMIN_SCHEME: []}])
@document_response(ClusterView)
@document_errors(401, 404)
async def cluster() -> Response:
    """Nodes and their sessions (admin).

    Every node of the cluster (alive or not), the sessions each holds a lease on, and
    each lease's epoch, age (`held_seconds`) and time left (`expires_in_seconds`, by the
    database's clock). One process (no cluster) answers itself as the only node, with
    every live session. Send CLUSTER_ADMIN_TOKEN as `Authorization: Bearer <token>`:
    401 `cluster_token` without a Bearer token or with another one; 404 `not_found` to a
    Bearer token when the server has no CLUSTER_ADMIN_TOKEN (the route is off).
    """
    state = current_state()
    _check_admin_token(state.settings, request.headers.get("Authorization", ""))
    store = state.manager.deps.store
    return json_response(await cluster_view(store, lease_seconds=state.settings.lease_seconds))


def _check_admin_token(settings: Settings, authorization: str) -> None:
    refused = ClusterTokenInvalid("GET /v1/cluster needs CLUSTER_ADMIN_TOKEN as a Bearer token")
    given = _bearer(authorization)
    if given is None:
        raise refused  # no credential at all: 401, as for any protected route
    expected = settings.cluster_admin_token.get_secret_value()
    if not expected:
        raise NotFound("no such route")
    if not _same_token(given, expected):
        raise refused


def _bearer(authorization: str) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (scheme in any case), if any."""
    scheme, _, given = authorization.partition(" ")
    token = given.strip()
    return token if scheme.lower() == "bearer" and token else None


def _same_token(given: str, expected: str) -> bool:
    # Compared as hashes: equal lengths, constant time, whatever was sent.
    return hashes_match(token_hash(given), token_hash(expected))


# --- metrics ---------------------------------------------------------------------------------


@blueprint.get("/metrics")
@tag(["server"])
@document_raw_response(
    200,
    "Every metric of this process in the Prometheus text exposition format (0.0.4).",
    {METRICS_MEDIA_TYPE: {"schema": {"type": "string"}}},
)
@document_errors(401)
async def metrics() -> Response:
    """Prometheus metrics.

    What this process counts and holds: sessions by state, turns, LLM call latency,
    errors, retries and tokens by backend, events delivered, members dropped as too
    slow, members, queue depths, store write latency and orchestrator decisions
    (docs/operations.md lists each one). Each server process, each node of a cluster,
    serves its own. When the server sets METRICS_TOKEN, the request must carry
    `Authorization: Bearer <METRICS_TOKEN>`; 401 `unauthorized` otherwise.
    """
    state = current_state()
    _check_metrics_token(state.settings.metrics_token.get_secret_value())
    body = state.manager.metrics.exposition()
    return Response(body, status=200, content_type=METRICS_CONTENT_TYPE)


def _check_metrics_token(expected: str) -> None:
    """Refuse the scrape unless it carries the metrics token (none set: anyone may)."""
    if not expected:
        return
    given = _bearer(request.headers.get("Authorization", ""))
    if given is None or not _same_token(given, expected):
        raise Unauthorized("this server's metrics need `Authorization: Bearer <METRICS_TOKEN>`")


# --- forks and transcripts (SPEC §23) ------------------------------------------------------------


@blueprint.post(f"{SESSION_PATH}/fork")
@tag(["sessions"])
@document_request(ForkRequest)
@document_response(CreatedSession, 201)
@document_errors(400, 403, 404, 409, 413, 422)
async def fork_session(token: str) -> Response:
    """Fork a session at a message.

    Creates a new session (its own `id` and tokens) whose history is a copy of this one's
    positions 1 to `at_turn` — talker messages and failed tombstones as they are — and
    whose spec is this one's with `overrides` merged over it, checked like a new spec.
    The fork starts `running` (the default) or `paused`; this session goes on untouched,
    and an ended session can be forked too. The fork takes this session's summary only
    when it covers nothing past `at_turn`, and its inherited memory (docs/api.md, "Forking
    a session").

    The body is JSON or YAML, read by `Content-Type` as create reads a spec. Answers 201
    like create: `id`, `token`, `observer_token` (the only time either is shown), the
    fork's spec with secrets removed, and `warnings`. Full token only (403
    `observer_token`). Errors: 400 a body that is not a mapping of this shape
    (`invalid_parameters`, each problem in `details`), 404 `turn_not_found` for a position
    this session does not have, 409 `turn_in_flight` when the copy would take a reply
    still being written, 413 a body over MAX_SPEC_BYTES, 422 `invalid_spec` for overrides
    that make the spec invalid (every problem with its path in the merged spec), 429 too
    many sessions.
    """
    state = current_state()
    manager = state.manager
    handle = await manager.find(token)
    manager.require_full(handle)
    body = await _read_body(state.settings.max_spec_bytes)
    fork = _fork_request(body, request.headers.get("Content-Type"), state.settings)
    created = await manager.fork(handle, fork.at_turn, fork.overrides, fork.start)
    return json_response(created, 201)


def _fork_request(body: bytes, content_type: str | None, settings: Settings) -> ForkRequest:
    if not body.strip():
        raise ParameterError(
            "the body must be a mapping with at least `at_turn`",
            [ErrorDetail(path="at_turn", message="Field required")],
        )
    # Read like a spec (JSON or YAML by Content-Type), with the same safety: size, depth,
    # aliases, duplicate keys, lone surrogates.
    try:
        document = read_spec_document(body, content_type=content_type, settings=settings)
    except (MalformedSpec, InvalidSpec) as exc:
        details = [
            ErrorDetail(path=i.path, message=i.message, line=i.line, column=i.column)
            for i in exc.issues
        ]
        raise ParameterError(f"the body must be a mapping: {exc.message}", details) from None
    try:
        return ForkRequest.model_validate(document.data)
    except ValidationError as exc:
        details = [
            ErrorDetail(path=".".join(str(part) for part in error["loc"]), message=error["msg"])
            for error in exc.errors(include_url=False)
        ]
        summary = "; ".join(f"{d.path}: {d.message}" for d in details)
        raise ParameterError(f"invalid request body: {summary}", details) from None


@blueprint.get(f"{SESSION_PATH}/transcript")
@tag(["sessions"])
@document_querystring(TranscriptQuery)
@document_raw_response(200, TRANSCRIPT_HELP, TRANSCRIPT_CONTENT, headers=TRANSCRIPT_HEADERS)
@document_errors(400, 404)
async def session_transcript(token: str) -> Response:
    """Export the conversation.

    The whole history as a document to keep or share, with the spec's name, its bots
    (name, role, model), and every position's number, speaker and time; failed turns
    (tombstones) are marked, as is a reply still being written. `format`: `markdown` (the
    default), `json` (the `Transcript` model) or `html` (one standalone page: inline CSS,
    no script, nothing loaded from elsewhere, all text escaped). Offered as a download
    (`Content-Disposition: attachment` with a file name). Either token. 400
    `unknown_format` for any other format.
    """
    manager = current_state().manager
    query = parse_params(TranscriptQuery, request.args)
    rendered = await manager.transcript_of(await manager.find(token), query.format)
    response = Response(rendered.body, status=200, content_type=rendered.media_type)
    response.headers["Content-Disposition"] = rendered.content_disposition
    return response
