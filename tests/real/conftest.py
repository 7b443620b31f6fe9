"""Fixtures of the real-backend tier: llama.cpp servers and a real model on loopback.

`tests/real/build.sh` builds everything once into a cache outside the work tree
(`FELLOWSHIP_REAL_CACHE`, default `~/.cache/fellowship/real`): `bin/llama-server`, a
venv with llama-cpp-python's server, and `model.gguf` (SmolLM2-135M-Instruct). The
fixtures here start those servers as subprocesses bound to 127.0.0.1 on free ports,
wait until they answer, and stop them at the end of the run. Without the cache the
tier is skipped, unless `FELLOWSHIP_REAL_REQUIRED=1` (set by `make test-real`), which
turns that into a failure.

Measurements worth keeping (rungs, token ratios, server versions) go into `REPORT`;
they are printed at the end of the run and written to `test-artifacts/real/results.json`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

import httpx
import pytest
from pydantic import BaseModel, Field, SecretStr

from engine.config import Settings
from engine.errors import LLMError
from engine.events import BaseEvent
from engine.llm.client import Backend, LLMClient, RetryCallback, TokenCallback
from engine.llm.types import ChatRequest, Completion
from engine.manager import Handle, SessionManager
from engine.spec.models import SessionSpec
from engine.summarizer import SUMMARY_INSTRUCTIONS
from engine.tokens import get_counter
from tests.support.engine import Watcher, make_settings, watch

log = logging.getLogger("fellowship.tests.real")

ROOT: Final = Path(__file__).resolve().parents[2]
CACHE: Final = Path(
    os.environ.get("FELLOWSHIP_REAL_CACHE")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fellowship" / "real"
)
LLAMA_SERVER: Final = CACHE / "bin" / "llama-server"
PYTHON_SERVER: Final = CACHE / "venv" / "bin" / "python"
MODEL: Final = CACHE / "model.gguf"
TEMPLATES: Final = Path(__file__).parent / "templates"
ARTIFACTS: Final = ROOT / "test-artifacts" / "real"
REQUIRED: Final = os.environ.get("FELLOWSHIP_REAL_REQUIRED") == "1"

# Upper bounds so that a broken run fails instead of hanging; never speed checks.
STARTUP_SECONDS: Final = 180.0
SESSION_SECONDS: Final = 420.0
STOP_SECONDS: Final = 15.0
POLL_SECONDS: Final = 0.2
# Per-test bound for pytest-timeout (the project default is too short for a real model).
TEST_TIMEOUT: Final = 900

# Server settings shared by every backend: 2 slots (what CI's 2 cores serve well), a
# context of 4096 per slot, and a fixed sampling seed.
SLOTS: Final = 2
CONTEXT_PER_SLOT: Final = 4096
SEED: Final = 42

# Template tokens of the common chat formats: none may ever reach a message.
TEMPLATE_TOKENS: Final = (
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<start_of_turn>",
    "<end_of_turn>",
    "[INST]",
    "[/INST]",
    "<<SYS>>",
    "<</SYS>>",
    "<s>",
    "</s>",
)


# Role words chat templates write after their turn markers: never a line of a message.
ROLE_WORDS: Final = ("model", "user", "assistant", "system")
TEMPLATE_MISMATCH: Final = "backend_template_mismatch"


# --- what the run measured ----------------------------------------------------------------


class CallRecord(BaseModel):
    """One chat-completions call as the engine made it, with the server's answer."""

    backend: str = Field(description="Which real backend served it.")
    purpose: str = Field(description="bot, orchestrator or summary.")
    streamed: bool = Field(description="Whether the reply was streamed.")
    estimated_prompt_tokens: int = Field(description="tiktoken's count of the prompt.")
    prompt_tokens: int | None = Field(description="The server's usage.prompt_tokens.")
    completion_tokens: int | None = Field(description="The server's usage.completion_tokens.")
    tool_calls: list[str] = Field(
        default_factory=list, description="Tool calls in the reply, as `name(arguments)`."
    )
    finish_reason: str | None = Field(None, description="Why generation stopped.")
    reply: str = Field("", description="The raw reply text, before Fellowship's hygiene.")
    retry: bool = Field(False, description="A retry of an empty or repeated reply (a nudge).")
    structured: bool = Field(False, description="Asked for structured output (a JSON schema).")
    error: str | None = Field(None, description="LLMError code, when the call failed.")
    status: int | None = Field(None, description="HTTP status of a failed call.")


FIGURES: Final = ("replies", "exact_duplicates", "echoes", "cuts", "retries", "lost_turns")


@dataclass
class Report:
    """Findings of the run, written out at the end."""

    backends: dict[str, dict[str, Any]] = field(default_factory=dict)
    sessions: list[dict[str, Any]] = field(default_factory=list)
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add_session(self, **data: Any) -> None:
        self.sessions.append(data)
        log.info("real session: %s", json.dumps(data, default=str))
        if "backend" not in data:
            return
        totals = self.figures.setdefault(
            str(data["backend"]), {"sessions": 0, "rungs": {}, **dict.fromkeys(FIGURES, 0)}
        )
        totals["sessions"] += 1
        for name in FIGURES:
            value = data.get(name, 0)
            totals[name] += len(value) if isinstance(value, list) else int(value)
        for rung, count in (data.get("rungs") or {}).items():
            totals["rungs"][rung] = totals["rungs"].get(rung, 0) + count

    def as_json(self) -> str:
        return json.dumps(
            {"backends": self.backends, "figures": self.figures, "sessions": self.sessions},
            indent=2,
            default=str,
        )


REPORT: Final = Report()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print what the real tier measured and keep it under test-artifacts/."""
    if not REPORT.sessions:
        return
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "results.json").write_text(REPORT.as_json())
    terminalreporter.section("real backends")
    for name, info in REPORT.backends.items():
        terminalreporter.write_line(f"{name}: {info.get('version', '?')}")
    for entry in REPORT.sessions:
        summary = {k: v for k, v in entry.items() if k not in ("messages", "calls")}
        terminalreporter.write_line(json.dumps(summary, default=str))
    for name, figures in REPORT.figures.items():
        terminalreporter.write_line(f"figures {name}: {json.dumps(figures)}")
    terminalreporter.write_line(f"details: {ARTIFACTS / 'results.json'}")


# --- the servers --------------------------------------------------------------------------


@dataclass
class RealBackend:
    """A real OpenAI-compatible server running as a subprocess on loopback."""

    name: str
    kind: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    version: str = ""

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_SECONDS)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _require(path: Path) -> None:
    if path.exists():
        return
    message = f"{path} is missing: run tests/real/build.sh (or make test-real) first"
    if REQUIRED:
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    """A port on 127.0.0.1 nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(backend: RealBackend, path: str) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if backend.process.poll() is not None:
            raise RuntimeError(
                f"{backend.name} exited with {backend.process.returncode}:\n{backend.log_tail()}"
            )
        try:
            if httpx.get(f"{backend.root_url}{path}", timeout=STOP_SECONDS).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(POLL_SECONDS)
    backend.stop()
    raise RuntimeError(f"{backend.name} did not get ready:\n{backend.log_tail()}")


def _launch(
    name: str, kind: str, command: Callable[[int], list[str]], ready_path: str
) -> RealBackend:
    """Start a server on a free port (trying again if another process took it first)."""
    logs = CACHE / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{name}.log"
    last_error: Exception | None = None
    for _ in range(3):
        port = free_port()
        with log_path.open("wb") as sink:
            process = subprocess.Popen(
                command(port), stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        backend = RealBackend(name, kind, port, process, log_path)
        try:
            _wait_ready(backend, ready_path)
            return backend
        except RuntimeError as exc:
            backend.stop()
            last_error = exc
    raise RuntimeError(f"could not start {name}") from last_error


def start_llama_server(name: str, *extra: str) -> RealBackend:
    """`llama-server` on the model with `extra` flags (template choice, jinja on/off)."""
    _require(LLAMA_SERVER)
    _require(MODEL)

    def command(port: int) -> list[str]:
        return [
            str(LLAMA_SERVER),
            "--model", str(MODEL),
            "--host", "127.0.0.1",
            "--port", str(port),
            "--parallel", str(SLOTS),
            "--ctx-size", str(SLOTS * CONTEXT_PER_SLOT),
            "--seed", str(SEED),
            "--threads", str(os.cpu_count() or SLOTS),
            "--no-webui",
            *extra,
        ]  # fmt: skip

    backend = _launch(name, "llama-server", command, "/health")
    version = subprocess.run(
        [str(LLAMA_SERVER), "--version"], capture_output=True, text=True, check=False
    )
    # Built from an sdist without git metadata: the package version names the source.
    found = re.search(r"version: (\S+)", version.stdout + version.stderr)
    source = (CACHE / "llama-server.stamp").read_text().split()[0]
    backend.version = f"llama-server {found.group(1) if found else '?'} ({source})"
    REPORT.backends[name] = {"version": backend.version, "flags": list(extra)}
    return backend


def start_python_server(name: str, *extra: str) -> RealBackend:
    """llama-cpp-python's OpenAI-compatible server on the model."""
    _require(PYTHON_SERVER)
    _require(MODEL)

    def command(port: int) -> list[str]:
        return [
            str(PYTHON_SERVER), "-m", "llama_cpp.server",
            "--model", str(MODEL),
            "--host", "127.0.0.1",
            "--port", str(port),
            "--n_ctx", str(CONTEXT_PER_SLOT),
            "--seed", str(SEED),
            *extra,
        ]  # fmt: skip

    backend = _launch(name, "llama-cpp-python", command, "/v1/models")
    version = subprocess.run(
        [str(PYTHON_SERVER), "-c", "import llama_cpp; print(llama_cpp.__version__)"],
        capture_output=True,
        text=True,
        check=False,
    )
    backend.version = f"llama-cpp-python {version.stdout.strip() or '?'}"
    REPORT.backends[name] = {"version": backend.version, "flags": list(extra)}
    return backend


@pytest.fixture(scope="session")
def llama_server() -> Iterator[RealBackend]:
    """llama-server with `--jinja`: the model's own (ChatML) template from the GGUF."""
    backend = start_llama_server("llama-server-jinja", "--jinja")
    yield backend
    backend.stop()


@pytest.fixture(scope="session")
def strict_server() -> Iterator[RealBackend]:
    """llama-server with `--jinja` and a template that raises on any layout slip."""
    backend = start_llama_server(
        "llama-server-strict",
        "--jinja",
        "--chat-template-file",
        str(TEMPLATES / "strict-alternation.jinja"),
    )
    yield backend
    backend.stop()


@pytest.fixture(scope="session")
def function_calling_server() -> Iterator[RealBackend]:
    """llama-cpp-python with `--chat_format chatml-function-calling` (real tool calls)."""
    backend = start_python_server("llama-cpp-python-fc", "--chat_format", "chatml-function-calling")
    yield backend
    backend.stop()


@pytest.fixture(scope="session")
def python_server() -> Iterator[RealBackend]:
    """llama-cpp-python with the template from the GGUF."""
    backend = start_python_server("llama-cpp-python")
    yield backend
    backend.stop()


# --- the engine against them --------------------------------------------------------------


def purpose_of(request: ChatRequest) -> str:
    """What a call was for, told from its shape."""
    if request.tools or request.response_format or "format" in request.extra:
        return "orchestrator"
    if request.messages and request.messages[0].content == SUMMARY_INSTRUCTIONS:
        return "summary"
    return "bot"


_State = TypeVar("_State")


class RecordingClient:
    """The real LLM client, keeping a `CallRecord` of every call it makes (a `ChatClient`)."""

    def __init__(self, settings: Settings, backend_name: str) -> None:
        self.real = LLMClient(settings)
        self.backend_name = backend_name
        self.calls: list[CallRecord] = []
        self._counter = get_counter(settings.tokenizer)
        nudges = []
        for nudge in (settings.empty_reply_nudge, settings.duplicate_reply_nudge):
            before, _, after = nudge.partition("{name}")
            nudges.append(rf"{re.escape(before)}.+{re.escape(after)}")
        self._nudge = re.compile(rf"(?:{'|'.join(nudges)})\Z", re.DOTALL)

    @property
    def default_backend(self) -> Backend:
        return self.real.default_backend

    def resolve_backend(self, base_url: str | None, api_key: SecretStr | None) -> Backend:
        return self.real.resolve_backend(base_url, api_key)

    def state_for(self, backend: Backend, kind: type[_State]) -> _State:
        return self.real.state_for(backend, kind)

    async def aclose(self) -> None:
        await self.real.aclose()

    async def chat(
        self,
        request: ChatRequest,
        *,
        backend: Backend,
        on_token: TokenCallback | None = None,
        on_retry: RetryCallback | None = None,
        queue_key: str | None = None,
    ) -> Completion:
        record: dict[str, Any] = {
            "backend": self.backend_name,
            "purpose": purpose_of(request),
            "streamed": request.stream,
            "estimated_prompt_tokens": self._counter.count_chat(request.messages),
            "retry": bool(request.messages and self._nudge.search(request.messages[-1].content)),
            "structured": purpose_of(request) == "orchestrator" and not request.tools,
        }
        try:
            completion = await self.real.chat(
                request, backend=backend, on_token=on_token, on_retry=on_retry, queue_key=queue_key
            )
        except LLMError as exc:
            self.calls.append(
                CallRecord(
                    **record, prompt_tokens=None, completion_tokens=None, error=exc.code,
                    status=exc.status,
                )
            )  # fmt: skip
            raise
        usage = completion.usage
        self.calls.append(
            CallRecord(
                **record,
                prompt_tokens=usage.prompt_tokens if usage else None,
                completion_tokens=usage.completion_tokens if usage else None,
                tool_calls=[f"{t.name}({t.arguments})" for t in completion.tool_calls],
                finish_reason=completion.finish_reason,
                reply=completion.content,
            )
        )
        return completion


@dataclass
class Engine:
    """A session manager whose every LLM call goes to one real backend."""

    manager: SessionManager
    client: RecordingClient
    backend: RealBackend


EngineFactory = Callable[..., Awaitable[Engine]]


def real_settings(tmp_path: Path, backend: RealBackend, **overrides: Any) -> Settings:
    """Settings for a real backend: no retries (an HTTP error must show), its slot count."""
    values: dict[str, Any] = {
        "llm_max_concurrency": SLOTS,
        "llm_timeout": SESSION_SECONDS,
        "llm_read_timeout": SESSION_SECONDS,
        "llm_stream_idle_timeout": SESSION_SECONDS,
        # make_settings turns the duplicate guard off for the mock; real models keep it.
        "duplicate_window": Settings.model_fields["duplicate_window"].default,
    }
    values.update(overrides)
    return make_settings(tmp_path, backend.base_url, **values)


@pytest.fixture
async def engine_factory(tmp_path: Path) -> AsyncIterator[EngineFactory]:
    """Make engines bound to a real backend; all are closed after the test."""
    made: list[Engine] = []

    async def make(backend: RealBackend, **overrides: Any) -> Engine:
        settings = real_settings(tmp_path, backend, **overrides)
        client = RecordingClient(settings, backend.name)
        manager = SessionManager(settings, llm=client)
        await manager.start()
        engine = Engine(manager, client, backend)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        await engine.manager.close()


@dataclass
class Finished:
    """A session run to its end, as one observer saw it."""

    handle: Handle
    watcher: Watcher
    calls: list[CallRecord]

    def of_type(self, *types: str) -> list[Any]:
        return self.watcher.of_type(*types)

    @property
    def events(self) -> list[BaseEvent]:
        return self.watcher.events


async def run_session(engine: Engine, session_spec: SessionSpec) -> Finished:
    """Create a session, observe it from the start, and wait until it has ended."""
    created = await engine.manager.create(session_spec)
    handle = engine.manager.open(created.token)
    watcher = watch(engine.manager, handle)
    await asyncio.wait_for(handle.loop.ended.wait(), SESSION_SECONDS)
    await watcher.until_closed()
    return Finished(handle, watcher, list(engine.client.calls))


async def eventually(predicate: Callable[[], bool], what: str) -> None:
    """Wait until `predicate()` holds, bounded by SESSION_SECONDS."""
    deadline = time.monotonic() + SESSION_SECONDS
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(POLL_SECONDS)


# --- specs and checks ---------------------------------------------------------------------

CAST: Final = (
    ("Alice", "You are Alice, a cheerful baker who loves bread and mornings."),
    ("Bob", "You are Bob, a fisherman who prefers the sea to small talk."),
    ("Carol", "You are Carol, a curious teacher who likes to ask questions."),
)
SCENE: Final = (
    "Three neighbours chat about their plans for the weekend. Reply in one or two short sentences."
)
REPLY_TOKENS: Final = 48
# Greedy decoding (temperature 0) makes a 135M model repeat one line for every bot, which
# exercises nothing; a moderate temperature with the servers' fixed seed stays repeatable.
TEMPERATURE: Final = 0.7


def real_spec(**options: Any) -> SessionSpec:
    """Three bots with short replies at TEMPERATURE, and the given options."""
    return SessionSpec.model_validate(real_spec_data(**options))


def real_spec_data(**options: Any) -> dict[str, Any]:
    """`real_spec` as JSON-ready data, for the HTTP API."""
    return {
        "name": "real backend test",
        "system_prompt": SCENE,
        "bots": [
            {
                "name": name,
                "system_prompt": prompt,
                "temperature": TEMPERATURE,
                "max_tokens": REPLY_TOKENS,
            }
            for name, prompt in CAST
        ],
        "options": {"debug": True, **options},
    }


def check_coherent(finished: Finished, turns: int, order: Sequence[str] | None = None) -> None:
    """Positions, events and history agree, and the session ended by max_turns.

    Every position holds a reply or a tombstone; a tombstone must come from a reply
    that was empty after hygiene (`empty_reply`), never from a failed HTTP call.
    `order` is the bots' speaking order to expect (round robin), if known.
    """
    history = finished.watcher.manager.history(finished.handle)
    assert [m.turn for m in history] == list(range(1, turns + 1))
    assert {m.status for m in history} <= {"complete", "failed"}
    if order is not None:
        assert [m.speaker for m in history] == [order[i % len(order)] for i in range(turns)]
    failed = [m.turn for m in history if m.status == "failed"]
    errors = [e for e in finished.of_type("error") if e.turn is not None]
    assert [(e.turn, e.code) for e in errors] == [(t, "empty_reply") for t in failed]
    # Errors without a turn: only a reported template mismatch, at most once.
    loose = [e.code for e in finished.of_type("error") if e.turn is None]
    assert loose in ([], [TEMPLATE_MISMATCH]), loose
    messages = finished.of_type("bot_message")
    assert [(e.turn, e.bot, e.content) for e in messages] == [
        (m.turn, m.speaker, m.content) for m in history if m.status == "complete"
    ]
    assert [e.turn for e in finished.of_type("turn_start")] == list(range(1, turns + 1))
    ends = finished.of_type("turn_end")
    assert [(e.turn, e.status) for e in ends] == [(m.turn, m.status) for m in history]
    assert all(e.tokens > 0 for e in ends if e.status == "complete")
    assert [e.reason for e in finished.of_type("session_end")] == ["max_turns"]
    seqs = [e.seq for e in finished.events[1:]]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


def reply_problems(content: str, own: str, others: Sequence[str]) -> list[str]:
    """What is wrong with a recorded reply (empty when it is clean)."""
    problems = []
    if not content.strip():
        problems.append("empty")
    for token in TEMPLATE_TOKENS:
        if token in content:
            problems.append(f"template token {token}")
    for line in content.splitlines():
        if line.strip().casefold() in ROLE_WORDS:
            problems.append(f"role word {line.strip()!r}")
    for name in others:
        if re.search(rf"(?im)^[\s*_]*{re.escape(name)}[\s*_]*:", content):
            problems.append(f"speaks as {name}")
    if re.match(rf"(?i)[\s*_]*{re.escape(own)}[\s*_]*:", content):
        problems.append("own name prefix")
    return problems


def check_clean_replies(finished: Finished, names: Sequence[str] | None = None) -> None:
    """Every recorded reply is non-empty and free of template tokens and others' lines."""
    everyone = list(names or [name for name, _ in CAST])
    bad = {}
    for event in finished.of_type("bot_message"):
        others = [n for n in everyone if n != event.bot]
        problems = reply_problems(event.content, event.bot, others)
        if problems:
            bad[event.turn] = (problems, event.content)
    assert bad == {}


EMPTY_REPLY_RETRIES: Final = int(Settings.model_fields["empty_reply_retries"].default)
RETRIES: Final = EMPTY_REPLY_RETRIES + int(Settings.model_fields["duplicate_reply_retries"].default)
# A speaker nobody listed, as hygiene recognises one: up to three capitalised words.
UNLISTED_NAME: Final = r"[A-Z][\w'.\-]*(?:[ \t]+[A-Z][\w'.\-]*){0,2}"


def turn_attempts(
    calls: Sequence[CallRecord], starts: Sequence[int]
) -> dict[int, list[CallRecord]]:
    """The bot calls of each turn (`starts`, in order): the first call, then its retries."""
    groups: list[list[CallRecord]] = []
    for call in calls:
        if call.purpose != "bot":
            continue
        if call.retry and groups:
            groups[-1].append(call)
        else:
            groups.append([call])
    return dict(zip(starts, groups, strict=True))


def check_calls(calls: Sequence[CallRecord], turns: int) -> None:
    """Every call got an answer; there is one first bot call per turn (plus retries)."""
    assert [(c.error, c.status) for c in calls] == [(None, None)] * len(calls)
    assert len([c for c in calls if c.purpose == "bot" and not c.retry]) == turns


def expect_every_turn_answered(finished: Finished, names: Sequence[str] | None = None) -> None:
    """Every turn was answered, or lost for the one accepted reason (see `expect_answered`)."""
    expect_answered(
        [e.turn for e in finished.of_type("turn_start")],
        [e.turn for e in finished.of_type("turn_end") if e.status == "failed"],
        finished.calls,
        names,
    )


def expect_answered(
    starts: Sequence[int],
    failed: Sequence[int],
    calls: Sequence[CallRecord],
    names: Sequence[str] | None = None,
) -> None:
    """`failed` turns (of `starts`, made by `calls`) are none, or lost the accepted way.

    A small model sometimes writes another participant's line first. Fellowship then
    asks again (EMPTY_REPLY_RETRIES) and, if every attempt opened with someone else's
    `Name:` or was blank, leaves a tombstone rather than put words in the wrong mouth.
    Such a loss is right; anything else, or losing more than a third of the turns, fails.
    """
    attempts = turn_attempts(calls, starts)
    lost = {turn: [c.reply for c in attempts[turn]] for turn in failed}
    everyone = list(names or [name for name, _ in CAST])
    listed = "|".join([*map(re.escape, everyone), *ROLE_WORDS])
    prefix = re.compile(rf"^[\s*_]*(?:(?i:{listed})|{UNLISTED_NAME})[\s*_]*:")
    for turn, replies in lost.items():
        assert 1 + EMPTY_REPLY_RETRIES <= len(replies) <= 1 + RETRIES, (turn, replies)
        assert all(nothing_of_its_own(text, prefix) for text in replies), (turn, replies)
    assert len(lost) * 3 <= len(starts), lost


def nothing_of_its_own(text: str, prefix: re.Pattern[str]) -> bool:
    """Whether a raw reply holds nothing the bot said itself: blank, a role word or
    template marker only, another speaker's `Name:` first, or a recited `You are` line."""
    for token in TEMPLATE_TOKENS:
        text = text.replace(token, "\n")
    lines = [line for line in text.splitlines() if line.strip()]
    while lines and lines[0].strip().casefold() in ROLE_WORDS:
        lines.pop(0)
    if not lines:
        return True
    return bool(prefix.match(lines[0])) or lines[0].lstrip().startswith("You are ")


def check_no_mismatch(finished: Finished) -> None:
    """A backend whose template works is never reported as mismatched."""
    assert [e for e in finished.of_type("error") if e.code == TEMPLATE_MISMATCH] == []


def check_streamed_tokens(finished: Finished) -> None:
    """The `token` events of each recorded turn, after its last `token_reset`, add up to
    exactly the recorded reply (a reset comes with a retry, or when a whole-reply rule
    changed what was streamed)."""
    for message in finished.of_type("bot_message"):
        streamed = [e for e in finished.of_type("token", "token_reset") if e.turn == message.turn]
        resets = [i for i, e in enumerate(streamed) if e.type == "token_reset"]
        tokens = [e.token for e in streamed[resets[-1] + 1 if resets else 0 :]]
        assert tokens, f"turn {message.turn} streamed nothing"
        assert "".join(tokens) == message.content


def token_ratios(calls: Sequence[CallRecord]) -> dict[str, Any]:
    """Server prompt tokens over tiktoken's estimate, across the calls that report usage."""
    ratios = [
        c.prompt_tokens / c.estimated_prompt_tokens
        for c in calls
        if c.prompt_tokens is not None and c.estimated_prompt_tokens > 0
    ]
    if not ratios:
        return {"calls_with_usage": 0}
    return {
        "calls_with_usage": len(ratios),
        "ratio_min": round(min(ratios), 3),
        "ratio_max": round(max(ratios), 3),
        "ratio_mean": round(sum(ratios) / len(ratios), 3),
    }


def exact_duplicates(finished: Finished) -> list[int]:
    """Turns whose stored reply repeats an earlier message word for word (case and
    punctuation aside)."""
    seen: set[tuple[str, ...]] = set()
    repeated = []
    for message in finished.of_type("bot_message", "talker_message"):
        words = tuple(re.findall(r"\w+", message.content.casefold()))
        if words in seen:
            repeated.append(message.turn)
        seen.add(words)
    return repeated


def hygiene_events(finished: Finished) -> list[dict[str, Any]]:
    """The data of every `hygiene` debug event (one per reply a rule changed)."""
    return [e.data for e in finished.of_type("debug") if e.category == "hygiene"]


def describe(finished: Finished, backend: RealBackend, test: str, **extra: Any) -> None:
    """Add what a finished session showed to the run's report.

    Figures: `exact_duplicates` (stored replies repeating an earlier message), `echoes`
    (leading lines dropped as recitals of a system prompt), `cuts` (replies cut at
    another speaker's turn or ended at their last sentence), `retries` (calls asked again
    for an empty or repeated reply).
    """
    cleaned = hygiene_events(finished)
    REPORT.add_session(
        test=test,
        backend=backend.name,
        version=backend.version,
        turns=len(finished.of_type("turn_end")),
        lost_turns=[e.turn for e in finished.of_type("turn_end") if e.status == "failed"],
        replies=len(finished.of_type("bot_message")),
        exact_duplicates=exact_duplicates(finished),
        echoes=sum(d["recited"] for d in cleaned),
        cuts=sum(bool({"speaker_cut", "sentence_end"} & set(d["rules"])) for d in cleaned),
        retries=sum(c.retry for c in finished.calls),
        errors=[(e.code, e.message) for e in finished.of_type("error")],
        finish_reasons=sorted({str(c.finish_reason) for c in finished.calls}),
        tokens=token_ratios(finished.calls),
        messages=[f"{e.bot}: {e.content}" for e in finished.of_type("bot_message")],
        calls=[c.model_dump() for c in finished.calls],
        **extra,
    )
