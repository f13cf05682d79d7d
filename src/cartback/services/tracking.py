"""Tracked links, open pixels and one-click unsubscribe: tokens minted with each message, and
what happens when a shopper (or a bot) follows one."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, select, update

from cartback.core.consent import ConsentSource
from cartback.core.links import (
    ClickKind,
    LinkRejected,
    checked_destination,
    classify_click,
    new_token,
)
from cartback.core.links import is_valid_token as valid_syntax
from cartback.core.model import Channel, Purpose
from cartback.services.consent import record_consent
from cartback.store import tables as t

TOKEN_BYTES = 12  # 96 bits, 17 base62 characters


class LinkPurpose(StrEnum):
    CLICK = "click"
    OPEN = "open"
    UNSUBSCRIBE = "unsubscribe"


@dataclass(frozen=True, slots=True)
class MintedLinks:
    """The URLs a message shows and the rows that make them resolvable."""

    click_url: str
    open_url: str | None
    unsubscribe_url: str | None
    rows: tuple[dict[str, Any], ...]


def mint(
    *,
    base_url: str,
    store_id: int,
    enrollment_id: int,
    step_id: str,
    cart_id: int,
    contact_id: int,
    channel: Channel,
    destination: str,
    now: datetime,
) -> MintedLinks:
    base = base_url.rstrip("/")
    common = {
        "store_id": store_id,
        "enrollment_id": enrollment_id,
        "step_id": step_id,
        "cart_id": cart_id,
        "contact_id": contact_id,
        "channel": str(channel),
        "created_at": now,
    }
    click = new_token(os.urandom(TOKEN_BYTES))
    rows = [
        {**common, "token": click, "purpose": str(LinkPurpose.CLICK), "destination": destination}
    ]
    open_url = unsubscribe_url = None
    if channel is Channel.EMAIL:
        opened, leave = new_token(os.urandom(TOKEN_BYTES)), new_token(os.urandom(TOKEN_BYTES))
        rows.append(
            {**common, "token": opened, "purpose": str(LinkPurpose.OPEN), "destination": None}
        )
        rows.append(
            {**common, "token": leave, "purpose": str(LinkPurpose.UNSUBSCRIBE), "destination": None}
        )
        open_url = f"{base}/o/{opened}.gif"
        unsubscribe_url = f"{base}/u/{leave}"
    return MintedLinks(f"{base}/l/{click}", open_url, unsubscribe_url, tuple(rows))


def _link(conn: Connection, token: str, purpose: LinkPurpose) -> Mapping[Any, Any] | None:
    if not valid_syntax(token):
        return None
    return (
        conn.execute(
            select(t.links).where(t.links.c.token == token, t.links.c.purpose == str(purpose))
        )
        .mappings()
        .first()
    )


def _record(
    conn: Connection,
    link: Mapping[Any, Any],
    kind: ClickKind,
    user_agent: str | None,
    now: datetime,
) -> None:
    conn.execute(
        t.clicks.insert().values(
            link_id=link["id"], kind=str(kind), user_agent=(user_agent or "")[:300] or None, at=now
        )
    )


def _mark_message(conn: Connection, link: Mapping[Any, Any], column: str, now: datetime) -> None:
    """First human click or open of a message: flow conditions (`email1.clicked`) read this."""
    o = t.outbox.c
    conn.execute(
        update(t.outbox)
        .where(
            o.enrollment_id == link["enrollment_id"],
            o.step_id == link["step_id"],
            t.outbox.c[column].is_(None),
        )
        .values({column: now, "updated_at": now})
    )


def follow(
    conn: Connection,
    token: str,
    *,
    method: str,
    user_agent: str | None,
    headers: Mapping[str, str],
    now: datetime,
) -> str | None:
    """The destination to redirect to, or None (unknown token, or a destination that is no
    longer on the store's domains). Every request is recorded; only a person's counts."""
    link = _link(conn, token, LinkPurpose.CLICK)
    if link is None or not link["destination"]:
        return None
    domains = conn.execute(
        select(t.stores.c.domains).where(t.stores.c.id == link["store_id"])
    ).scalar()
    try:
        destination = checked_destination(link["destination"], domains or ())
    except LinkRejected:
        return None
    kind = classify_click(method, user_agent, headers)
    _record(conn, link, kind, user_agent, now)
    if kind is ClickKind.HUMAN:
        _mark_message(conn, link, "clicked_at", now)
    return destination


def opened(
    conn: Connection,
    token: str,
    *,
    user_agent: str | None,
    headers: Mapping[str, str],
    now: datetime,
) -> bool:
    link = _link(conn, token, LinkPurpose.OPEN)
    if link is None:
        return False
    kind = classify_click("GET", user_agent or "mail-client", headers)
    _record(conn, link, kind, user_agent, now)
    if kind is ClickKind.HUMAN:
        _mark_message(conn, link, "opened_at", now)
    return True


def unsubscribe_target(conn: Connection, token: str) -> Mapping[Any, Any] | None:
    link = _link(conn, token, LinkPurpose.UNSUBSCRIBE)
    if link is None or link["contact_id"] is None:
        return None
    return link


def unsubscribe(conn: Connection, token: str, *, now: datetime, user_agent: str | None) -> bool:
    """One-click unsubscribe (RFC 8058): revoke marketing on the message's channel. Repeating it
    is harmless: the shopper stays unsubscribed."""
    link = unsubscribe_target(conn, token)
    if link is None:
        return False
    record_consent(
        conn,
        store_id=link["store_id"],
        contact_id=link["contact_id"],
        channel=Channel(link["channel"]),
        purpose=Purpose.MARKETING,
        granted=False,
        source=ConsentSource.UNSUBSCRIBE_LINK,
        # The shopper's own act, observed by cartback: its time is the receive time.
        at=now,
        received_at=now,
        user_agent=(user_agent or "")[:400] or None,
    )
    return True
