"""Migrations build exactly the schema the code declares, on both databases, both ways."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from cartback.store.db import make_engine
from cartback.store.migrate import current_revision, downgrade, head_revision, upgrade
from cartback.store.tables import metadata


def test_upgrade_reaches_head_and_matches_the_declared_tables(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        upgrade(engine)
        assert current_revision(engine) == head_revision()
        upgrade(engine)  # a second run is a no-op
        with engine.connect() as conn:
            differences = compare_metadata(MigrationContext.configure(conn), metadata)
        assert differences == []
    finally:
        engine.dispose()


def test_downgrade_to_nothing_and_back_up(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        upgrade(engine)
        downgrade(engine, "base")
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        upgrade(engine)
        assert {"enrollments", "outbox", "links", "discount_codes"} <= set(
            inspect(engine).get_table_names()
        )
    finally:
        engine.dispose()
