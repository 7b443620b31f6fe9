"""Storage behind one interface: in memory for tests, SQLite for the server."""

from engine.store.base import SessionRecord, Store
from engine.store.in_memory import MemoryStore

__all__ = ["MemoryStore", "SessionRecord", "Store"]
