"""An async Python client of a Fellowship server.

```python
from fellowship.client import FellowshipClient

async with FellowshipClient("http://127.0.0.1:8000") as fc:
    session = await fc.create({"bots": [{"name": "Ada"}, {"name": "Grace"}]})
    async for event in fc.observe(session.observer_token):
        print(event.type, event.seq)
```

`observe` and `talk` give the server's own event models (re-exported here from
`engine.events`) and reconnect by themselves; errors are the typed classes of
`fellowship.client.errors`. docs/client.md has the whole story.
"""

from engine.events import (
    BotMessage,
    DebugEvent,
    ErrorEvent,
    Event,
    HistoryEvent,
    MemberJoined,
    MemberLeft,
    PresenceEvent,
    SessionEnd,
    SessionPaused,
    SessionResumed,
    StateChanged,
    TalkerMessage,
    TokenEvent,
    TokenReset,
    TurnEnd,
    TurnStart,
)
from engine.history import Message
from engine.spec.models import SessionSpec
from engine.status import SessionStatus
from fellowship.client.backoff import Reconnect
from fellowship.client.client import CreatedSession, FellowshipClient
from fellowship.client.errors import (
    BadRequest,
    ConnectionFailed,
    FellowshipClientError,
    Forbidden,
    InvalidSpec,
    InvalidState,
    MalformedSpec,
    NotFound,
    ObserverToken,
    PayloadTooLarge,
    RateLimited,
    SendUncertain,
    ServerError,
    SessionEnded,
    ShuttingDown,
    SpecIssue,
    SpecNotFound,
    SpecRejected,
    SpecTooLarge,
    StreamClosed,
    TalkersNotAllowed,
    TooMany,
    TooManySessions,
    TooManyTalkers,
    Unavailable,
)
from fellowship.client.streams import EventStream, Talk, Transport

__all__ = [
    "BadRequest",
    "BotMessage",
    "ConnectionFailed",
    "CreatedSession",
    "DebugEvent",
    "ErrorEvent",
    "Event",
    "EventStream",
    "FellowshipClient",
    "FellowshipClientError",
    "Forbidden",
    "HistoryEvent",
    "InvalidSpec",
    "InvalidState",
    "MalformedSpec",
    "MemberJoined",
    "MemberLeft",
    "Message",
    "NotFound",
    "ObserverToken",
    "PayloadTooLarge",
    "PresenceEvent",
    "RateLimited",
    "Reconnect",
    "SendUncertain",
    "ServerError",
    "SessionEnd",
    "SessionEnded",
    "SessionPaused",
    "SessionResumed",
    "SessionSpec",
    "SessionStatus",
    "ShuttingDown",
    "SpecIssue",
    "SpecNotFound",
    "SpecRejected",
    "SpecTooLarge",
    "StateChanged",
    "StreamClosed",
    "Talk",
    "TalkerMessage",
    "TalkersNotAllowed",
    "TokenEvent",
    "TokenReset",
    "TooMany",
    "TooManySessions",
    "TooManyTalkers",
    "Transport",
    "TurnEnd",
    "TurnStart",
    "Unavailable",
]
