"""Each session's hub comes from the factory the engine is given (where a cluster hub plugs in)."""

from __future__ import annotations

from pathlib import Path

from engine.hub import Hub, HubOptions, local_hub
from engine.llm.mock import MockLLM
from engine.manager import SessionManager
from engine.store.sqlite import SqliteStore
from tests.support.engine import make_settings, spec


class RecordingHubs:
    """A hub factory that builds in-process hubs and remembers what it was asked for."""

    def __init__(self) -> None:
        self.built: list[tuple[HubOptions, Hub]] = []

    def __call__(self, options: HubOptions) -> Hub:
        hub = local_hub(options)
        self.built.append((options, hub))
        return hub


async def test_sessions_take_their_hub_from_the_factory_and_go_on_from_the_stored_seq(
    tmp_path: Path, mock: MockLLM
) -> None:
    settings = make_settings(tmp_path, mock.base_url)
    hubs = RecordingHubs()
    first = SessionManager(settings, store=SqliteStore.from_settings(settings), hubs=hubs)
    await first.start()
    created = await first.create(spec(["A"], participation="reactive"))
    handle = first.open(created.token)
    [(options, hub)] = hubs.built
    assert handle.session.hub is hub
    assert (options.session_id, options.first_seq) == (created.id, 0)
    assert options.buffer_size == settings.event_buffer_size
    assert options.member_queue_size == settings.member_queue_size
    await first.close()
    last_seq = hub.durable_seq
    assert last_seq > 0

    again = RecordingHubs()
    second = SessionManager(settings, store=SqliteStore.from_settings(settings), hubs=again)
    await second.start()
    try:
        [(options, hub)] = again.built
        assert second.open(created.token).session.hub is hub
        assert (options.session_id, options.first_seq) == (created.id, last_seq)
    finally:
        await second.close()
