"""The one place a store is chosen: by the config's ``[store] url``."""

from __future__ import annotations

from kubeca_server.config import StoreConfig
from kubeca_server.store.roles import Store


def open_store(config: StoreConfig, *, migrate: bool = False, read_only: bool = False) -> Store:
    """The configured store. Only ``init`` and ``migrate`` pass ``migrate``; ``serve``
    refuses a schema that is behind instead of changing it silently."""
    if config.sqlite_path is None:
        # Imported here: an SQLite deployment never needs psycopg installed.
        from kubeca_server.store.postgres import PostgresStore

        return PostgresStore(
            config.url, password=config.read_password(), migrate=migrate, read_only=read_only
        )
    from kubeca_server.store.sqlite import SQLiteStore

    return SQLiteStore(config.sqlite_path, migrate=migrate, read_only=read_only)
