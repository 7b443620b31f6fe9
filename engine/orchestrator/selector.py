"""The orchestrator's speaker selector: asks the LLM who speaks next, down the ladder.

`Orchestrator.select` makes up to three calls (structured output, tool call, retry),
reads each reply with `engine.orchestrator.reading`, and falls back to round robin; it
reports the decision in one `orchestrator` debug event.
"""

from __future__ import annotations

import re
from typing import Final

from pydantic import BaseModel, Field

from engine.errors import LLM_REJECTED, LLMError
from engine.llm.types import ChatRequest, Completion
from engine.metrics import NO_METRICS, Metrics
from engine.orchestrator.prompt import corrected, orchestrator_request
from engine.orchestrator.reading import Action, Reading, Rung, read_reply, read_structured
from engine.orchestrator.tools import Menu, menu_for
from engine.speakers import Decision, round_robin_next
from engine.structured import StructuredMode, StructuredOutputProbe
from engine.turn_view import TurnView

_NAMES_THE_FIELD: Final = re.compile(r"response_format|json_schema|\bformat\b", re.IGNORECASE)


class Routing(BaseModel):
    """One decision of the orchestrator, as reported in its debug event."""

    action: Action = Field(description="speak, hold or end.")
    bot: str | None = Field(None, description="The bot that speaks next, for speak.")
    reason: str | None = Field(None, description="Why the session ends, for end.")
    tool: str | None = Field(None, description="The tool the answer amounts to (none on fallback).")
    rung: Rung = Field(description="The rung of the robustness ladder that gave the answer.")
    attempts: int = Field(description="Orchestrator calls made for this decision (1 to 3).")
    structured_output: StructuredMode | None = Field(
        None, description="How structured output was asked for, if it was."
    )
    errors: list[str] = Field(default_factory=list, description="LLM error codes met, if any.")
    model: str = Field(description="The model asked.")


class Orchestrator:
    """Picks the next speaker with a hidden LLM call (a `SpeakerSelector`)."""

    deliberates = True

    def __init__(self, metrics: Metrics = NO_METRICS) -> None:
        self._metrics = metrics

    async def select(self, view: TurnView) -> Decision:
        """Ask the model who speaks next; never raises, falls back to round robin."""
        try:
            routing = await self._route(view)
        except Exception:
            # A bug here must not stop the conversation: fall back like any failed reply.
            view.log.exception("orchestrator failed unexpectedly; falling back to round robin")
            routing = Routing(
                action="speak",
                bot=round_robin_next(view),
                rung="round_robin",
                attempts=0,
                model=view.model_for("orchestrator"),
            )
        view.log.debug(
            "orchestrator: %s %s (rung %s, %d call(s))",
            routing.action,
            routing.bot or routing.reason or "",
            routing.rung,
            routing.attempts,
        )
        view.debug("orchestrator", **routing.model_dump())
        self._metrics.orchestrator_decision(routing.rung, routing.action)
        return Decision(routing.action, bot=routing.bot, reason=routing.reason)

    async def _route(self, view: TurnView) -> Routing:
        menu = menu_for(view)
        errors: list[str] = []
        attempts = 0
        way = structured_way(view)
        mode = way[0] if way is not None else None
        if way is not None:
            attempts += 1
            reading = await _ask_structured(view, menu, way, errors)
            if reading is not None:
                return _routed(reading, attempts, errors, view.model_for("orchestrator"), mode)
        request = orchestrator_request(view, menu)
        completion = await _ask(view, request, errors)
        reading = _read(completion, menu)
        attempts += 1
        if reading is None:
            attempts += 1
            retry = request if completion is None else corrected(request, completion, menu)
            completion = await _ask(view, retry, errors)
            again = _read(completion, menu)
            if again is not None:
                reading = again.model_copy(update={"rung": "retry"})
        if reading is None:
            bot = round_robin_next(view)
            view.log.warning(
                "orchestrator gave no usable answer in %d calls; round robin picks %s",
                attempts,
                bot,
            )
            return Routing(
                action="speak",
                bot=bot,
                rung="round_robin",
                attempts=attempts,
                errors=errors,
                model=request.model,
                structured_output=mode,
            )
        return _routed(reading, attempts, errors, request.model, mode)


async def _ask(view: TurnView, request: ChatRequest, errors: list[str]) -> Completion | None:
    try:
        backend = view.backend_for("orchestrator")
        return await view.llm.chat(request, backend=backend, queue_key=view.session_id)
    except LLMError as exc:
        view.log.warning("orchestrator call failed: %s (%s)", exc.code, exc.message)
        errors.append(exc.code)
        return None


def _routed(
    reading: Reading,
    attempts: int,
    errors: list[str],
    model: str,
    mode: StructuredMode | None,
) -> Routing:
    """The decision a usable reading amounts to."""
    return Routing(
        **reading.model_dump(),
        attempts=attempts,
        errors=errors,
        model=model,
        structured_output=mode,
    )


def _read(completion: Completion | None, menu: Menu) -> Reading | None:
    if completion is None:
        return None
    return read_reply(completion.content, completion.tool_calls, menu)


def structured_way(
    view: TurnView,
) -> tuple[StructuredMode, StructuredOutputProbe | None] | None:
    """How to ask the orchestrator's backend for structured output now, or None for not at all.

    The spec's `llm.structured_output` wins over `LLM_STRUCTURED_OUTPUT`. A fixed way
    comes without a probe; `auto` comes with the backend's probe, which may have given up.
    """
    llm = view.spec.llm
    setting = (llm.structured_output if llm else None) or (view.settings.llm_structured_output)
    if setting == "off":
        return None
    if setting != "auto":
        return setting, None
    probe = view.llm.state_for(view.backend_for("orchestrator"), StructuredOutputProbe)
    mode = probe.mode()
    return (mode, probe) if mode is not None else None


async def _ask_structured(
    view: TurnView,
    menu: Menu,
    way: tuple[StructuredMode, StructuredOutputProbe | None],
    errors: list[str],
) -> Reading | None:
    """Rung 0: the decision asked for as JSON; None when the answer is not usable."""
    mode, probe = way
    request = orchestrator_request(view, menu, structured=mode)
    refused = False
    reading = None
    backend = view.backend_for("orchestrator")
    try:
        completion = await view.llm.chat(request, backend=backend, queue_key=view.session_id)
    except LLMError as exc:
        view.log.warning("structured orchestrator call failed: %s (%s)", exc.code, exc.message)
        errors.append(exc.code)
        # A 4xx, or a server that chokes on the field (llama-cpp-python answers an unknown
        # response_format type with a 500 naming it): this way is not understood.
        refused = exc.code == LLM_REJECTED or _NAMES_THE_FIELD.search(exc.message) is not None
    else:
        reading = read_structured(completion.content, menu)
    if probe is not None:
        probe.note(
            usable=reading is not None,
            refused=refused,
            backend=backend.display_url,
        )
    return reading
