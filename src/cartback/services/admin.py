"""Stores and API keys. Keys are shown once and stored only as a SHA-256 hash."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select, update

from cartback.core.model import Store
from cartback.store import tables as t
from cartback.store.rows import store_from_row

KEY_PREFIX = "cbk_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class NewStore:
    slug: str
    name: str
    brand: str
    flow_name: str
    default_zone: str = "UTC"
    default_locale: str = "en"
    currency: str = "USD"
    domains: tuple[str, ...] = ()
    postal_address: str | None = None
    support_contact: str | None = None
    platform: str = "generic"


def create_store(conn: Connection, spec: NewStore, now: datetime) -> Store:
    result = conn.execute(
        t.stores.insert().values(
            slug=spec.slug,
            name=spec.name,
            brand=spec.brand,
            flow_name=spec.flow_name,
            default_zone=spec.default_zone,
            default_locale=spec.default_locale,
            currency=spec.currency,
            domains=list(spec.domains),
            postal_address=spec.postal_address,
            support_contact=spec.support_contact,
            platform=spec.platform,
            created_at=now,
        )
    )
    store_id = int(result.inserted_primary_key[0])  # type: ignore[index]
    return get_store(conn, store_id)


def get_store(conn: Connection, store_id: int) -> Store:
    row = conn.execute(select(t.stores).where(t.stores.c.id == store_id)).mappings().one()
    return store_from_row(row)


def store_by_slug(conn: Connection, slug: str) -> Store | None:
    row = conn.execute(select(t.stores).where(t.stores.c.slug == slug)).mappings().first()
    return store_from_row(row) if row is not None else None


def set_store_policy(conn: Connection, store_id: int, settings: dict[str, Any]) -> None:
    """Save checked policy settings (core.storepolicy.check has validated them)."""
    conn.execute(update(t.stores).where(t.stores.c.id == store_id).values(policy=settings or None))


def issue_api_key(
    conn: Connection, store_id: int, now: datetime, label: str = "default", key: str | None = None
) -> str:
    """Create a key and return it; only its hash is kept, so it cannot be shown again."""
    key = key or KEY_PREFIX + secrets.token_urlsafe(32)
    conn.execute(
        t.api_keys.insert().values(
            store_id=store_id,
            key_hash=hash_key(key),
            prefix=key[:10],
            label=label,
            created_at=now,
        )
    )
    return key


def store_for_key(conn: Connection, key: str) -> Store | None:
    # The lookup is by hash, so comparing the secret itself never happens in user-timed code.
    row = (
        conn.execute(
            select(t.stores)
            .join(t.api_keys, t.api_keys.c.store_id == t.stores.c.id)
            .where(t.api_keys.c.key_hash == hash_key(key), t.api_keys.c.revoked_at.is_(None))
        )
        .mappings()
        .first()
    )
    return store_from_row(row) if row is not None else None
