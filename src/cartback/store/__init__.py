"""Storage adapter: SQLAlchemy Core tables, Alembic migrations and the SQL store."""
