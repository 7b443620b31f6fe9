"""A cluster node reduced to its leases, as a process of its own (partition and race tests).

    python -m tests.support.lease_node URL NODE_ID race
        For each `acquire SESSION` line read, tries to take the session's lease and
        prints `epoch N` or `none`.
    python -m tests.support.lease_node URL NODE_ID hold SESSION LEASE_SECONDS
        Takes the session's lease under a `LeaseKeeper` (which renews it), then writes one
        history position after another, as a loop that does not stop would: prints
        `holding EPOCH`, then `wrote TURN` or `fenced TURN db|local` for each try, and
        `lost` when the keeper notices the lease is gone. A refused position is tried
        again. Ends when its standard input closes.

Every line is flushed at once, so the test reads what happened as it happens.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime

from engine.cluster.leases import LeaseKeeper
from engine.errors import Fenced
from engine.history import Message
from engine.store.postgres import PostgresStore

WRITE_EVERY = 0.02  # seconds between two writes of `hold`


def say(line: str) -> None:
    print(line, flush=True)


async def stdin_lines() -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def race(store: PostgresStore) -> None:
    lines = await stdin_lines()
    while line := (await lines.readline()).decode().split():
        epoch = await store.acquire_lease(line[1], 30.0)
        say("none" if epoch is None else f"epoch {epoch}")


async def hold(store: PostgresStore, session_id: str, lease_seconds: float) -> None:
    async def lost(lost_id: str) -> None:
        say("lost")

    keeper = LeaseKeeper(store, lease_seconds=lease_seconds, on_lost=lost, take_over=False)
    await keeper.start()
    epoch = await keeper.acquire(session_id)
    say(f"holding {epoch}")
    lines = await stdin_lines()
    closed = asyncio.ensure_future(lines.read())
    turn = 1
    while not closed.done():
        message = Message(
            turn=turn, kind="talker", speaker=store.node_id, content="x", ts=datetime.now(UTC)
        )
        try:
            await store.save_message(session_id, message)
            say(f"wrote {turn}")
            turn += 1
        except Fenced as refused:
            say(f"fenced {turn} {'local' if 'no lease' in refused.message else 'db'}")
        await asyncio.wait([closed], timeout=WRITE_EVERY)
    await keeper.stop()


async def main(url: str, node_id: str, mode: str, *args: str) -> None:
    store = PostgresStore(url, node_id=node_id, pool_size=2)
    await store.open()
    try:
        if mode == "race":
            await race(store)
        else:
            await hold(store, args[0], float(args[1]))
    finally:
        await store.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
