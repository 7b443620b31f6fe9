"""The event hub: one interface (`Hub`), and `LocalHub` for a single process."""

from engine.hub.base import (
    CLOSE_LEFT,
    CLOSE_RECONNECT,
    CLOSE_SESSION_ENDED,
    CLOSE_SHUTDOWN,
    CLOSE_TOO_SLOW,
    Frame,
    Hub,
    HubFactory,
    HubOptions,
    Persist,
    Snapshot,
    Subscription,
)
from engine.hub.local import LocalHub, local_hub

__all__ = [
    "CLOSE_LEFT",
    "CLOSE_RECONNECT",
    "CLOSE_SESSION_ENDED",
    "CLOSE_SHUTDOWN",
    "CLOSE_TOO_SLOW",
    "Frame",
    "Hub",
    "HubFactory",
    "HubOptions",
    "LocalHub",
    "Persist",
    "Snapshot",
    "Subscription",
    "local_hub",
]
