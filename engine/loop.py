"""The per-session driver: one asyncio task that walks the session chart.

In every loop state the driver does the one thing that state is for (rest after a
turn, ask the orchestrator, run a turn, summarize, wait for a talker or a resume),
then sends the chart `next`; the chart's guards decide where the loop goes, and its
actions emit events and end the session (engine/chart.py). At most one LLM call is
in flight per session. A session with `max_time` also has a deadline task that ends
it wherever the loop is, as a DELETE would. The driver never
dies of an exception: it logs it, emits `error` and goes on, unless the error is
unrecoverable (storage failure, or internal errors repeating) — then the session
ends with reason `error`. A turn whose backend cannot be reached at all is held, not
failed, until the backend answers again (see `engine.outage`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Final

from engine.chart import SessionChart
from engine.errors import FellowshipError, InternalError, InvalidState, SessionEnded, TurnCancelled
from engine.events import (
    BaseEvent,
    BotMessage,
    ErrorEvent,
    SessionEnd,
    SessionPaused,
    SessionResumed,
    StateChanged,
    TalkerMessage,
    TokenReset,
    TurnEnd,
    TurnStart,
)
from engine.history import Message
from engine.hub import CLOSE_SESSION_ENDED
from engine.llm.client import Backend
from engine.metrics import TurnResult
from engine.outage import answers, is_outage, outage_notice, retry_delays
from engine.rectifier import Slot
from engine.session import Member, Session
from engine.speakers import Decision, RoundRobin, SpeakerSelector
from engine.store.base import Fenced, StorageError, StorageFailure
from engine.template_watch import TemplateWatch
from engine.turns import TurnOutcome, run_turn

Summarizer = Callable[[Session], Awaitable[bool]]

# An internal error is retried after a short pause; this many in a row end the session.
LOOP_ERROR_BACKOFF: Final = 0.5
LOOP_MAX_CONSECUTIVE_ERRORS: Final = 5


class SessionLoop:
    """Drives one session through its chart."""

    def __init__(
        self,
        session: Session,
        *,
        selector: SpeakerSelector | None = None,
        summarizer: Summarizer | None = None,
        on_end: Callable[[Session], None] | None = None,
        restored: str | None = None,
        gives_up: Callable[[StorageError], bool] | None = None,
    ) -> None:
        self.session = session
        # Asked first when a write fails: True means the session goes on elsewhere (a
        # cluster node that cannot reach the store), so this loop stops without ending it.
        self._gives_up = gives_up or _never
        self.selector: SpeakerSelector = selector or RoundRobin()
        self._summarizer = summarizer
        self._on_end = on_end
        options = session.options
        # Autonomous sessions start at once; the others at the first talker message.
        self.started = options.participation == "autonomous"
        self.replies_owed = 0
        self.unanswered = 0  # talker messages not yet answered by a batch
        self._signal = asyncio.Event()
        self._slot: Slot | None = None
        self._decision: Decision | None = None  # the orchestrator's last choice
        self._seen = 0  # talker messages the orchestrator saw when it chose
        self._after_bot_turn = False
        self._resting = False
        self._summary_failed = False
        self._task: asyncio.Task[None] | None = None
        self._deadline: asyncio.Task[None] | None = None
        self._errors_in_a_row = 0
        self.template_watch = TemplateWatch(session.deps.counter)
        self.ended = asyncio.Event()
        self._changed = asyncio.Event()
        self._ending: asyncio.Task[None] | None = None
        self._end_reason = ""
        # A session restored from the store starts where it was left: paused or ended.
        # An ended one only needs its chart to refuse a command, so it is built then:
        # restarts with many ended sessions stay fast.
        self._chart = None if restored == "ended" else SessionChart(self, start=restored)
        session.loop_state = self.loop_state
        self._work: dict[str, Callable[[], Awaitable[None]]] = {
            "idle": self._idle,
            "awaiting_talker": self._until_movable,
            "orchestrating": self._orchestrate,
            "dispatching": self._run_turn,
            "summarizing": self._summarize,
            "paused": self._until_movable,
        }
        session.hub.on_persist_error = self._events_not_stored

    # --- reading ----------
    @property
    def chart(self) -> SessionChart:
        """The session's chart (built on first use for a session restored as ended)."""
        if self._chart is None:
            self._chart = SessionChart(self, start="ended")
        return self._chart

    @property
    def state(self) -> str:
        """The session as clients see it: "active", "paused" or "ended"."""
        return "ended" if self._chart is None else self._chart.lifecycle

    @property
    def loop_state(self) -> str:
        """What the loop is doing (the `state` event's value)."""
        return "ended" if self._chart is None else self._chart.loop

    # --- task ----------
    def start(self) -> None:
        """Start the driver task, and the `max_time` deadline if the spec sets one."""
        self._task = asyncio.create_task(self._run(), name=f"loop-{self.session.id}")
        if self.session.options.max_time is not None and self.state != "ended":
            self._deadline = asyncio.create_task(
                self._end_at_max_time(self.session.options.max_time),
                name=f"deadline-{self.session.id}",
            )

    async def _run(self) -> None:
        while self.loop_state != "ended":
            try:
                await self._step()
                self._errors_in_a_row = 0
            except asyncio.CancelledError:
                raise
            except Fenced:
                # Another node runs the session now: this one stops, writing nothing.
                self.session.log.warning("lease lost: this node no longer runs the session")
                return
            except StorageError as exc:
                if self._gives_up(exc):
                    self.session.log.warning("storage unreachable, session given up: %s",
                                             exc.message)  # fmt: skip
                    return
                self.session.log.error("storage failure, ending session: %s", exc.message)
                await self._finish("error", exc.message)
            except Exception as exc:
                self._errors_in_a_row += 1
                self.session.log.exception("loop error in state %s", self.loop_state)
                self.session.emit(
                    ErrorEvent(message=f"internal error: {exc}", code=InternalError.code)
                )
                if self._errors_in_a_row >= LOOP_MAX_CONSECUTIVE_ERRORS:
                    await self._finish("error", "internal errors repeated")
                else:
                    await asyncio.sleep(LOOP_ERROR_BACKOFF)

    async def _step(self) -> None:
        """Do the work of the current loop state, then let the chart take its next move."""
        await self._work[self.loop_state]()
        self.chart.fire("next")
        if self.loop_state == "ended":
            await self._closed()

    async def _end_at_max_time(self, max_time: float) -> None:
        # Wherever the loop is (waiting for a talker, paused, in a turn), the session ends
        # at `max_time` as a DELETE would; in `idle` the chart's limit rule may come first.
        await asyncio.sleep(max_time - self.session.elapsed)
        with contextlib.suppress(InvalidState):
            await self.end("max_time")

    # --- the work of each loop state ----------
    async def _idle(self) -> None:
        if self._resting:
            # The chart checks again after the delay: a pause or limit may have come meanwhile.
            self._resting = False
            await asyncio.sleep(self.session.options.turn_delay)

    async def _orchestrate(self) -> None:
        self._seen = self.unanswered
        self._decision = None
        self._decision = await self.selector.select(self.session.turn_view())

    async def _dispatch(self) -> Slot:
        """Reserve the chosen bot's slot (round robin: the next in turn) and announce it."""
        decision, self._decision = self._decision, None
        if decision is None:
            decision = await self.selector.select(self.session.turn_view())
        bot = decision.bot
        assert decision.action == "speak" and bot is not None

        def place() -> tuple[Message | None, list[BaseEvent]]:
            session = self.session
            slot, reserved = session.rectifier.dispatch(bot)
            self._slot = slot
            session.record.bot_turns += 1
            session.debug("rectification", action="reserve", bot=bot, turn=slot.turn)
            return reserved, [TurnStart(bot=bot, turn=slot.turn)]

        await self._record(place)
        assert self._slot is not None
        return self._slot

    async def _run_turn(self) -> None:
        # A turn retried after an internal error keeps the slot it reserved.
        slot = self._slot or await self._dispatch()
        view = self.session.turn_view()
        outcome = await run_turn(view, slot, self.template_watch)
        backend = view.backend_for("bot", slot.bot)
        if await is_outage(outcome.error, backend, self.session.deps.settings):
            outcome = await self._wait_out_outage(slot, outcome, backend)
        await self._settle(slot, outcome)
        self._after_bot_turn = True

    async def _wait_out_outage(
        self, slot: Slot, outcome: TurnOutcome, backend: Backend
    ) -> TurnOutcome:
        """The bot's backend is down: say so once, then try the turn again whenever it answers.

        The slot stays reserved meanwhile. A pause gives the turn up (a tombstone, with no
        second error); ending the session cancels this wait like any other.
        """
        session = self.session
        assert outcome.error is not None
        notice = outage_notice(outcome.error, backend)
        session.log.warning("%s", notice.message)
        session.emit(ErrorEvent(message=notice.message, code=notice.code, turn=slot.turn))
        # Kept in status meanwhile, for members who connect after the one notice.
        session.outage = notice.message
        try:
            return await self._retry_until_answered(slot, outcome, notice, backend)
        finally:
            session.outage = None

    async def _retry_until_answered(
        self, slot: Slot, outcome: TurnOutcome, notice: FellowshipError, backend: Backend
    ) -> TurnOutcome:
        session = self.session
        settings = session.deps.settings
        delays = retry_delays(settings)
        while True:
            if outcome.shown:
                session.emit(TokenReset(bot=slot.bot, turn=slot.turn))
            if not await self._sleep_unless_paused(next(delays)):
                return TurnOutcome(error=notice, reported=True)
            if not await answers(backend, settings):
                outcome = TurnOutcome(error=outcome.error)
                continue
            outcome = await run_turn(session.turn_view(), slot, self.template_watch)
            if not await is_outage(outcome.error, backend, settings):
                session.log.info("the LLM backend answers again")
                return outcome

    async def _sleep_unless_paused(self, seconds: float) -> bool:
        """Wait `seconds`, but return False as soon as the session is paused."""
        try:
            async with asyncio.timeout(seconds):
                while self.state != "paused":
                    await self._wait_signal()
        except TimeoutError:
            return True
        return False

    async def _settle(self, slot: Slot, outcome: TurnOutcome) -> None:
        """Fill the slot with the reply or a tombstone, then broadcast it."""
        session = self.session

        def place() -> tuple[Message | None, list[BaseEvent]]:
            if outcome.ok:
                message = session.rectifier.reply(
                    slot, outcome.content, outcome.tokens, outcome.usage
                )
                events: list[BaseEvent] = [
                    BotMessage(bot=slot.bot, turn=message.turn, content=message.content),
                    TurnEnd(bot=slot.bot, turn=message.turn, tokens=message.tokens),
                ]
            else:
                assert outcome.error is not None
                message = session.rectifier.fail(slot, outcome.usage)
                events = [
                    ErrorEvent(
                        message=outcome.error.message, code=outcome.error.code, turn=message.turn
                    ),
                    TurnEnd(bot=slot.bot, turn=message.turn, tokens=0, status="failed"),
                ]
                if outcome.reported:  # an outage: members were told once already
                    del events[0]
            return message, events

        await self._record(place)
        session.deps.metrics.turn_finished(_result_of(outcome))
        self._slot = None
        if self.replies_owed > 0:
            self.replies_owed -= 1
        session.debug(
            "context_tokens",
            context_tokens=session.context_tokens,
            limit=session.context_limit,
            history_tokens=session.history.tokens,
        )
        await session.save(bot_turns=session.record.bot_turns)

    async def _summarize(self) -> None:
        assert self._summarizer is not None
        self._summary_failed = not await self._summarizer(self.session)

    async def _until_movable(self) -> None:
        """Wait (for a talker message, a pause or a resume) until the chart can move on."""
        while not self.chart.allows("next"):
            await self._wait_signal()

    async def _wait_signal(self) -> None:
        self._signal.clear()
        await self._signal.wait()

    # --- guards (LoopDriver) ----------
    def limit_reached(self) -> str | None:
        session, options = self.session, self.session.options
        if options.max_turns is not None and session.record.bot_turns >= options.max_turns:
            return "max_turns"
        if options.max_time is not None and session.elapsed >= options.max_time:
            return "max_time"
        if not options.summarize_context and session.context_tokens >= session.context_limit:
            return "max_context"
        return None

    def needs_summary(self) -> bool:
        session, options = self.session, self.session.options
        if not options.summarize_context or self._summarizer is None:
            return False
        threshold = options.summarize_threshold or session.deps.settings.summarize_threshold
        return session.context_tokens >= threshold * session.context_limit

    def owes_turn(self) -> bool:
        if not self.started:
            return False
        if self.session.options.participation == "reactive":
            return self.replies_owed > 0
        return True

    def turn_delay_due(self) -> bool:
        return self._after_bot_turn and self.session.options.turn_delay > 0

    def orchestrated(self) -> bool:
        return self.selector.deliberates

    def talker_waiting(self) -> bool:
        return self.unanswered > 0

    def choice(self) -> Decision | None:
        return self._decision

    def summary_failed(self) -> bool:
        return self._summary_failed

    # --- actions (LoopDriver) ----------
    def rest(self) -> None:
        self._after_bot_turn = False
        self._resting = True

    def wake(self) -> None:
        # A batch of talker messages is answered by `replies_per_message` bot turns.
        self.replies_owed = self.session.options.replies_per_message
        self.unanswered = 0

    def hold(self) -> None:
        # Messages the orchestrator already saw do not end its hold; only newer ones do.
        self.unanswered -= self._seen
        self._decision = None

    def state_changed(self, region: str, source: str, target: str, event: str) -> None:
        session = self.session
        session.log.debug("%s: %s -> %s (%s)", region, source, target, event)
        if region == "loop":
            session.loop_state = target
            self._changed.set()
        if session.hub.closed:
            return  # the end was announced by `finished`; nothing may follow session_end
        if region == "loop":
            session.emit(StateChanged(state=target))
        session.debug("loop", machine=region, source=source, target=target, event=event)

    def finished(self, reason: str, detail: str | None) -> None:
        session = self.session
        self._end_reason = reason
        session.presence.stop()  # a pending presence event must not follow session_end
        session.loop_state = "ended"
        session.emit(StateChanged(state="ended"))
        session.emit(SessionEnd.model_validate({"reason": reason, "detail": detail}))
        session.hub.close(CLOSE_SESSION_ENDED)
        session.log.info("session ended: %s", reason)
        self.ended.set()

    async def wait_until(self, predicate: Callable[[SessionLoop], bool]) -> None:
        """Wait until `predicate(self)` holds; it is checked after every loop state change."""
        while not predicate(self):
            self._changed.clear()
            await self._changed.wait()

    def at_rest(self) -> bool:
        """Whether the loop is waiting for a talker with nothing left to answer, or ended."""
        state = self.loop_state
        return state == "ended" or (state == "awaiting_talker" and self.unanswered == 0)

    # --- commands from clients ----------
    async def post(self, member: Member, content: str) -> Message:
        """Place a talker message in history and wake the loop."""
        session = self.session
        if self.state == "ended":
            raise SessionEnded("the session has ended")
        placed: list[Message] = []

        def place() -> tuple[Message | None, list[BaseEvent]]:
            tokens = session.deps.counter.count(content)
            message = session.rectifier.talker(member.name or "Talker", member.id, content, tokens)
            placed.append(message)
            if self._slot is not None:
                session.debug(
                    "rectification",
                    action="after_reserved",
                    reserved=self._slot.turn,
                    turn=message.turn,
                )
            event = TalkerMessage(
                talker=message.speaker, talker_id=member.id, turn=message.turn, content=content
            )
            return message, [event]

        try:
            await self._record(place)
        except Fenced:
            raise  # another node runs the session now; the sender retries there
        except StorageError as exc:
            if self._gives_up(exc):
                raise  # the session goes on elsewhere, once the store answers again
            # As in the driver: never go on with a history that could not be stored.
            session.log.error("storage failure, ending session: %s", exc.message)
            if self.state != "ended":
                await self.end("error", exc.message)
            raise
        session.touch()
        self.started = True
        self.unanswered += 1
        self._signal.set()
        return placed[0]

    def pause(self) -> None:
        """Stop new LLM calls; a reply being generated is still finished and recorded."""
        self.chart.fire("pause")
        self.session.emit(SessionPaused())
        self._signal.set()

    def resume(self) -> None:
        """Let the loop go on from where it stopped."""
        self.chart.fire("resume")
        self.session.emit(SessionResumed())
        self._signal.set()

    async def end(self, reason: str, detail: str | None = None) -> None:
        """End the session now: stop the driver, tombstone a turn in flight, emit session_end."""
        if self.state == "ended":
            raise SessionEnded("the session has already ended")
        self.chart.fire("end")
        await self._stop_task()
        if self._slot is not None:
            slot, self._slot = self._slot, None
            error = TurnCancelled("the session ended during generation")
            with contextlib.suppress(StorageError):
                await self._settle(slot, TurnOutcome(error=error))
        await self._finish(reason, detail)

    def _events_not_stored(self, exc: Exception) -> None:
        # As with history: never go on with events that could not be stored.
        if self.state == "ended" or self._ending is not None or isinstance(exc, Fenced):
            return
        if isinstance(exc, StorageError) and self._gives_up(exc):
            return
        self.session.log.error("storage failure (events), ending session: %s", exc)
        self._ending = asyncio.create_task(self._end_quietly("error", f"events not stored: {exc}"))

    async def _end_quietly(self, reason: str, detail: str) -> None:
        with contextlib.suppress(InvalidState):
            await self.end(reason, detail)

    async def stop(self) -> None:
        """Stop the driver without ending the session (server shutdown)."""
        self.session.presence.stop()  # nothing is announced while the process stops
        if self._deadline is not None:
            self._deadline.cancel()
        await self._stop_task()

    async def wait_stopped(self) -> None:
        """Wait for the driver task to finish on its own (e.g. its final save after an end)."""
        task = self._task
        if task is not None and not task.done() and task is not asyncio.current_task():
            await asyncio.wait([task])

    async def _stop_task(self) -> None:
        task = self._task
        if task is None or task.done() or task is asyncio.current_task():
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _finish(self, reason: str, detail: str | None = None) -> None:
        if self.loop_state == "ended":
            return
        self.chart.fire("finish", reason=reason, detail=detail)
        await self._closed()

    async def _closed(self) -> None:
        """After the end: stop the deadline, let the manager know, store the end."""
        deadline = self._deadline
        if deadline is not None and deadline is not asyncio.current_task():
            deadline.cancel()
        session = self.session
        with contextlib.suppress(Exception):
            await session.save(state="ended", ended_at=session.now(), end_reason=self._end_reason)
        if self._on_end is not None:
            self._on_end(session)

    async def _record(self, place: Callable[[], tuple[Message | None, list[BaseEvent]]]) -> None:
        try:
            await self.session.commit(place)
        except FellowshipError:
            raise
        except Exception as exc:
            raise StorageFailure(f"could not store the history: {exc}", problem="other") from exc


def _never(error: StorageError) -> bool:
    """One process: a session whose writes fail always ends (nobody else could run it)."""
    return False


def _result_of(outcome: TurnOutcome) -> TurnResult:
    """How a settled turn counts in the metrics."""
    if outcome.ok:
        return "ok"
    return "cancelled" if isinstance(outcome.error, TurnCancelled) else "failed"
