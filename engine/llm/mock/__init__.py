"""A scriptable OpenAI-compatible backend for tests, demos and benchmarks.

`MockLLM` is a real HTTP server (asyncio + h11) that answers chat completions,
streamed or not, with deterministic default replies (see `replies`), scripted
`MockReply`s, or faults. `fellowship mock-llm` runs it from the command line.
"""

from engine.llm.mock.models import Fault, FaultRate, MockReply, RecordedRequest
from engine.llm.mock.replies import bot_name, default_text, last_speaker
from engine.llm.mock.server import MockLLM

__all__ = [
    "Fault",
    "FaultRate",
    "MockLLM",
    "MockReply",
    "RecordedRequest",
    "bot_name",
    "default_text",
    "last_speaker",
]
