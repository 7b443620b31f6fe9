"""Storage behind one interface: in memory for tests, SQLite for one server, PostgreSQL
for a cluster."""

from engine.config import Settings
from engine.store.base import SessionRecord, Store
from engine.store.in_memory import MemoryStore


def configured_store(settings: Settings) -> Store:
    """The store the settings select: PostgreSQL when `DATABASE_URL` is set, else the
    SQLite file at `DATABASE_PATH`."""
    # Imported here: a server on one of them need not load the other's driver.
    if settings.database_url.get_secret_value():
        from engine.store.postgres import PostgresStore

        return PostgresStore.from_settings(settings)
    from engine.store.sqlite import SqliteStore

    return SqliteStore.from_settings(settings)


__all__ = ["MemoryStore", "SessionRecord", "Store", "configured_store"]
