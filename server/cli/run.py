"""`fellowship run SPEC`: a session in the terminal.

The conversation is printed live (names coloured on a terminal, tokens as they
stream when the spec asks for it). With an empty LLM_BASE_URL it runs on the embedded
backend, as `fellowship serve` does (built first if need be); `--mock` uses the mock.
In reactive and collaborative sessions every line typed on stdin is sent as a talker
message; at end of input the session ends once the bots have answered. Ctrl-C ends
the session cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TextIO

from engine.config import Settings, get_settings
from engine.default_backend import open_default_backend
from engine.embedded.recipe import cache_root
from engine.errors import BackendFailed, FellowshipError
from engine.events import parse_event
from engine.llm.mock import MockLLM
from engine.loop import SessionLoop
from engine.manager import Handle, SessionManager
from engine.session import Member
from engine.spec.loader import load_spec
from engine.store.in_memory import MemoryStore
from server.cli.progress import BuildDisplay

COLOURS = ("\033[36m", "\033[35m", "\033[33m", "\033[32m", "\033[34m", "\033[31m")
RESET, DIM = "\033[0m", "\033[2m"


def register(sub: Any) -> None:
    """Add the `run` sub-command."""
    parser = sub.add_parser("run", help="run a session in the terminal")
    parser.add_argument("spec", type=Path, help="spec file (YAML or JSON)")
    parser.add_argument("--mock", action="store_true", help="use the built-in mock backend")
    parser.add_argument("--name", default=None, help="your display name as a talker")
    parser.set_defaults(handler=_handle)


def _handle(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_run(args))
    except KeyboardInterrupt:
        return 130


async def _run(args: argparse.Namespace) -> int:
    settings = get_settings()
    result = load_spec(args.spec.read_bytes(), content_type=None, settings=settings)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if result.spec is None:
        for error in result.errors:
            print(f"error: {error}", file=sys.stderr)
        return 1
    try:
        async with _backend(settings, args.mock) as settings:
            manager = SessionManager(settings, store=MemoryStore())
            await manager.start()
            try:
                created = await manager.create(result.spec, [str(w) for w in result.warnings])
                handle = manager.open(created.token)
                return await _converse(manager, handle, args.name)
            finally:
                await manager.close()
    except FellowshipError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1


@contextlib.asynccontextmanager
async def _backend(settings: Settings, mock: bool) -> AsyncIterator[Settings]:
    if mock:
        # The echo replies: predictable lines, which scripts and tests read.
        async with MockLLM() as server:
            yield settings.model_copy(update={"llm_base_url": server.base_url})
        return
    if settings.llm_base_url.strip():
        yield settings
        return
    # LLM_BASE_URL is empty: the embedded backend, as `fellowship serve` runs it.
    display = BuildDisplay(sys.stderr, cache=cache_root(settings))
    async with open_default_backend(settings, display=display) as backend:
        status = await backend.board.settled()
        if status.state == "failed":
            raise BackendFailed(f"the embedded LLM backend is not available: {status.detail}")
        yield backend.settings


async def _converse(manager: SessionManager, handle: Handle, name: str | None) -> int:
    talks = handle.session.options.participation != "autonomous"
    display = name or os.environ.get("USER") or "You"
    member = manager.connect(handle, "talker" if talks else "observer", display, None)
    printer = asyncio.create_task(_print_events(member, sys.stdout))
    reader = asyncio.create_task(_read_stdin(manager, handle, member)) if talks else None
    try:
        await printer
    except asyncio.CancelledError:
        pass
    finally:
        if reader is not None:
            reader.cancel()
        if handle.loop.state != "ended":
            with contextlib.suppress(FellowshipError):
                await manager.end(handle)
    return 0


async def _read_stdin(manager: SessionManager, handle: Handle, member: Member) -> None:
    while True:
        line = await asyncio.to_thread(sys.stdin.readline)
        if not line:
            break
        if line.strip():
            try:
                await manager.post(handle, member, line.rstrip("\n"))
            except FellowshipError as exc:
                print(f"error: {exc.message}", file=sys.stderr)
    # End of input: let the bots answer what was said, then end.
    loop = handle.loop
    await loop.wait_until(SessionLoop.at_rest)
    if loop.state != "ended":
        await manager.end(handle)


async def _print_events(member: Member, out: TextIO) -> None:
    colour_of: dict[str, str] = {}
    tty = out.isatty()
    streaming: set[int | None] = set()

    def paint(name: str) -> str:
        if not tty:
            return name
        colour = colour_of.setdefault(name, COLOURS[len(colour_of) % len(COLOURS)])
        return f"{colour}{name}{RESET}"

    async for frame in member.subscription:
        event = parse_event(frame.data)
        if event.type == "history":
            for message in event.messages:
                if message.status == "complete":
                    print(f"{paint(message.speaker)}: {message.content}", file=out)
        elif event.type == "token":
            if event.turn not in streaming:
                streaming.add(event.turn)
                print(f"{paint(event.bot)}: ", end="", file=out)
            print(event.token, end="", file=out, flush=True)
        elif event.type == "bot_message":
            if event.turn in streaming or None in streaming:
                streaming.discard(event.turn)
                streaming.discard(None)
                print(file=out)
            else:
                print(f"{paint(event.bot)}: {event.content}", file=out)
        elif event.type == "talker_message" and event.talker_id != member.id:
            print(f"{paint(event.talker)}: {event.content}", file=out)
        elif event.type == "error":
            print(
                f"{DIM if tty else ''}[error {event.code}] {event.message}{RESET if tty else ''}",
                file=out,
            )
        elif event.type == "session_end":
            print(f"-- session ended: {event.reason}", file=out)
        out.flush()
