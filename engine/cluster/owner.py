"""What a cluster node does for the sessions it runs (SPEC §21).

`Ownership` is the manager's side of `ClusterNode`'s callbacks:

- `run` answers a request another node forwarded over the command bus (status,
  history, transcript, the controls, a talker's message, a remote member's arrival or
  departure, a `touch`) with the manager's own methods, so that it behaves exactly as
  on one server;
- `take_over` runs a session whose lease this node just took, from the store, with the
  members it followed the session for;
- `lose` stops a session whose lease this node lost, writing nothing more;
- `give_up` decides, when a write fails, whether the session is let go (the store
  cannot be reached: another node takes it over once it answers) rather than ended.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any

from pydantic import JsonValue

from engine.cluster.bus import Command
from engine.cluster.node import TRANSIENT_PROBLEMS, ClusterNode
from engine.errors import NotOwner
from engine.fork import ForkStart
from engine.hub import CLOSE_RECONNECT
from engine.hub.redis import RedisHub
from engine.registry import Handle, SessionRegistry
from engine.restore import Adopt, restore_session
from engine.session import Member, Session
from engine.store.base import StorageError

if TYPE_CHECKING:
    from engine.manager import SessionManager

Background = Callable[[Coroutine[Any, Any, Any], str], None]
"""Runs work in the background under a name (the manager keeps the task)."""


class Ownership:
    """The sessions one node runs, as the rest of the cluster sees them."""

    def __init__(
        self,
        manager: SessionManager,
        sessions: SessionRegistry,
        adopt: Adopt,
        background: Background,
    ) -> None:
        self._manager = manager
        self._sessions = sessions
        self._adopt = adopt
        self._background = background

    @property
    def _cluster(self) -> ClusterNode:
        cluster = self._manager.cluster
        assert cluster is not None
        return cluster

    # --- requests from other nodes ----------
    async def run(self, command: Command) -> JsonValue:
        """Answer a request another node forwarded for a session this node runs (that
        node checked the token's access); `NotOwner` when this node does not run it."""
        manager = self._manager
        loop = self._sessions.get(command.session)
        owned = self._cluster.keeper.epoch_of(command.session) is not None
        if loop is None or (loop.loop_state != "ended" and not owned):
            raise NotOwner(f"session {command.session} runs on another node")
        handle = Handle(loop.session, loop, "full")
        payload = command.payload
        match command.kind:
            case "status":
                return manager.status(handle).model_dump(mode="json")
            case "history":
                return [m.model_dump(mode="json") for m in manager.history(handle)]
            case "transcript":
                format = payload.get("format")
                done = manager.transcript(handle, format if isinstance(format, str) else None)
                return {"body": done.body, "media_type": done.media_type,
                        "filename": done.filename}  # fmt: skip
            case "pause":
                await manager.pause(handle)
            case "resume":
                await manager.resume(handle)
            case "end" | "delete":
                await manager.end(handle)
            case "fork":
                overrides = payload.get("overrides")
                start: ForkStart = "running" if payload.get("start") == "running" else "paused"
                created = await manager.fork(
                    handle,
                    int(str(payload["at_turn"])),
                    overrides if isinstance(overrides, dict) else {},
                    start,
                )
                return created.model_dump(mode="json")
            case "talk":
                talker = _member(handle, payload) or _remote_talker(handle, payload)
                message = await manager.post(handle, talker, str(payload["content"]))
                return message.model_dump(mode="json")
            case "join":
                _remote_talker(handle, payload)
            case "leave":
                if (leaving := _member(handle, payload)) is not None:
                    loop.session.leave(leaving)
            case "touch":
                loop.session.touch()
        return None

    # --- leases changing hands ----------
    async def take_over(self, session_id: str, epoch: int) -> None:
        """This node took the session's lease: run it from the store, with the members
        it followed it for, who go on without a gap."""
        cluster, store = self._cluster, self._manager.deps.store
        follower = cluster.unfollow(session_id)
        if follower is not None:
            await follower.catch_up()
            cluster.events.unregister(follower)
        if self._sessions.get(session_id) is not None:  # run here before, lost since
            self._sessions.forget(session_id)
        stored = await store.load_session(session_id)
        if stored is None or stored.record.state == "ended":
            await cluster.release(session_id)
            return

        def keep_members(session: Session) -> None:
            if follower is not None and isinstance(session.hub, RedisHub):
                session.hub.adopt(follower.hand_over())

        await restore_session(
            stored, self._manager.deps, self._manager.secret_box, self._adopt,
            taken_over=True, before_start=keep_members,
        )  # fmt: skip

    async def lose(self, session_id: str) -> None:
        """This node lost the session's lease: stop its loop without writing; members
        here reconnect (to any node) and go on where they were."""
        loop = self._sessions.get(session_id)
        if loop is None or loop.loop_state == "ended":
            return
        self._sessions.forget(session_id)
        await loop.stop()
        loop.session.hub.close(CLOSE_RECONNECT)

    def give_up(self, session_id: str, error: StorageError) -> bool:
        """A write of the session failed because the store cannot be reached: rather
        than end it (which could not be stored either), let it go as if its lease were
        lost; a node takes it over from the store once the store answers."""
        if error.problem not in TRANSIENT_PROBLEMS:
            return False
        self._background(self._let_go(session_id), f"let-go-{session_id}")
        return True

    async def _let_go(self, session_id: str) -> None:
        await self.lose(session_id)
        await self._cluster.release(session_id)


def _member(handle: Handle, payload: Mapping[str, JsonValue]) -> Member | None:
    return handle.session.members.get(str(payload["member"]))


def _remote_talker(handle: Handle, payload: Mapping[str, JsonValue]) -> Member:
    """A talker connected to another node, counted here (and announced) as a member."""
    name = payload.get("name")
    return handle.session.join(
        "talker", name if isinstance(name, str) else None, None,
        remote_id=str(payload["member"]),
    )  # fmt: skip
