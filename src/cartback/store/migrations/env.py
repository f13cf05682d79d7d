"""Alembic environment: runs against the connection cartback hands it."""

from __future__ import annotations

from alembic import context

from cartback.store.tables import metadata

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "cartback migrations run through `cartback migrate`, which passes a connection"
    )

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
