"""The complete example of docs/client.md runs as written against a real server."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from tests.docs.markdown import DOCS, code_blocks
from tests.integration.conftest import RunningServer
from tests.support.engine import WAIT_SECONDS

EXAMPLE = "# panel_client.py"


def example_text() -> str:
    found = [b for b in code_blocks(DOCS / "client.md") if b.text.startswith(EXAMPLE)]
    assert len(found) == 1, f"expected one block starting {EXAMPLE!r} in client.md"
    return found[0].text


async def test_the_complete_example_runs(server: RunningServer, tmp_path: Path) -> None:
    script = tmp_path / "panel_client.py"
    script.write_text(example_text())
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "FELLOWSHIP_URL": server.base_url},
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), WAIT_SECONDS)
    except TimeoutError:
        process.kill()
        out, err = await process.communicate()
        raise AssertionError(f"did not finish:\n{out.decode()}\n{err.decode()}") from None
    assert process.returncode == 0, f"{out.decode()}\n{err.decode()}"
    lines = out.decode().splitlines()
    assert any(line.startswith("refused: bots[1].name: ") for line in lines), lines
    assert "the observer token cannot pause" in lines
    assert "paused after 2 bot turns" in lines
    assert "ended: client_request" in lines
    # The mock answers "<bot> answers <last speaker>: <words>".
    transcript = [line for line in lines if line[:1].isdigit()]
    assert transcript[0] == "1. Dana: Where should we go for lunch?"
    assert transcript[3] == "4. Dana: Settle it while I am away."
    assert [line.split(":")[0] for line in transcript] == [
        "1. Dana", "2. Ada", "3. Grace", "4. Dana", "5. Ada", "6. Grace"
    ]  # fmt: skip
    assert transcript[1].startswith("2. Ada: Ada answers Dana")
    for token_prefix in ("fsk_", "fso_"):
        assert token_prefix not in out.decode() + err.decode()
