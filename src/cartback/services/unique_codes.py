"""Per-cart unique discount codes (`discount: {unique: true}`), issued ahead of their step.

The timer composes messages inside its transaction, where no network call may happen, so it
never calls a shop. Instead the worker's issuer loop looks a little ahead: for each active
enrollment whose next step (or a held one) asks for a unique code and is due within `LEAD`, it
asks the shop's API for a code with no transaction open, then stores it for the cart in a short
one. At compose time the timer only reads the stored code (`stored_code`); when none is there
yet the step is held for `PENDING_WAIT`, up to `PENDING_LIMIT` times, then skipped
(`services/tick.py`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Engine, and_, select

from cartback.core.flows import Discount, Step, with_exclusions
from cartback.core.model import Cart, EnrollmentState
from cartback.core.storepolicy import store_exclusions
from cartback.ports import DiscountIssuer
from cartback.services import shops as shop_service
from cartback.services.compose import PENDING_RULE, UNIQUE_POOL
from cartback.services.flows import FlowRegistry, UnknownFlow
from cartback.store import tables as t
from cartback.store.rows import cart_from_row

log = logging.getLogger("cartback.unique_codes")

# How far ahead of its step a code is asked for.
LEAD = timedelta(minutes=10)
# A due step whose code is not there yet waits this long, at most this many times.
PENDING_WAIT = timedelta(minutes=2)
PENDING_LIMIT = 5
__all__ = ["PENDING_RULE", "UNIQUE_POOL", "issue_due", "shopify_issuers", "stored_code"]
UNIQUE_RULE = "discount.unique"
# Platforms whose connection can issue codes (with an API token).
ISSUING_PLATFORMS = ("shopify",)

# Builds the issuer for a store's connection; the caller closes what it opened via `close`.
IssuerFactory = Callable[[shop_service.ShopConnection], DiscountIssuer]


@dataclass(frozen=True, slots=True)
class Wanted:
    store_id: int
    cart_id: int
    cart_token: str
    percent: Decimal | None
    amount: Decimal | None
    currency: str
    expires_at: datetime | None


@dataclass
class IssueStats:
    issued: int = 0
    failed: int = 0


def stored_code(conn: Connection, store_id: int, cart_id: int) -> str | None:
    d = t.discount_codes.c
    return conn.execute(
        select(d.code)
        .where(d.store_id == store_id, d.pool == UNIQUE_POOL, d.cart_id == cart_id)
        .order_by(d.id)
        .limit(1)
    ).scalar()


def can_issue(conn: Connection, store_id: int) -> bool:
    """True when the store has a shop connection that can create codes."""
    c = t.shop_connections.c
    return (
        conn.execute(
            select(c.id).where(
                c.store_id == store_id,
                c.platform.in_(ISSUING_PLATFORMS),
                c.api_token_ref.is_not(None),
            )
        ).first()
        is not None
    )


def pending_count(conn: Connection, enrollment_id: int, step_id: str) -> int:
    d = t.decisions.c
    return len(
        conn.execute(
            select(d.id).where(
                d.enrollment_id == enrollment_id, d.step_id == step_id, d.rule == PENDING_RULE
            )
        ).all()
    )


def wanted(
    conn: Connection, registry: FlowRegistry, now: datetime, *, lead: timedelta, limit: int
) -> list[Wanted]:
    """Carts whose next step asks for a unique code, due within `lead`, with none stored yet,
    in stores that can issue one."""
    e, c, d, s = t.enrollments.c, t.carts.c, t.discount_codes.c, t.shop_connections.c
    rows = conn.execute(
        select(
            t.carts,
            e.flow_name,
            e.flow_version,
            e.step_index,
            e.holds,
            e.wake_at,
            t.stores.c.policy.label("store_policy"),
        )
        .join(t.enrollments, e.cart_id == c.id)
        .join(t.stores, t.stores.c.id == e.store_id)
        .join(
            t.shop_connections,
            and_(
                s.store_id == e.store_id,
                s.platform.in_(ISSUING_PLATFORMS),
                s.api_token_ref.is_not(None),
            ),
        )
        .outerjoin(
            t.discount_codes,
            and_(d.store_id == e.store_id, d.pool == UNIQUE_POOL, d.cart_id == c.id),
        )
        .where(
            e.state == str(EnrollmentState.ACTIVE),
            e.wake_at <= now + lead,
            d.id.is_(None),
        )
        .order_by(e.wake_at)
        .limit(limit)
    ).mappings()
    found: list[Wanted] = []
    # A cart in several flows gets one code, which every flow's message then shows.
    carts: set[int] = set()
    for row in rows:
        if row["id"] in carts:
            continue
        try:
            flow = registry.get(row["flow_name"], row["flow_version"], conn)
            steps = with_exclusions(flow, store_exclusions(row["store_policy"])).steps
            cart = cart_from_row(row)
        except (UnknownFlow, ValueError, KeyError):
            continue  # the timer names and parks such an enrollment
        spec = _unique_wanted(steps, row["step_index"], row["holds"], cart)
        if spec is None:
            continue
        expires = now + spec.expires_after if spec.expires_after is not None else None
        carts.add(cart.id)
        found.append(
            Wanted(
                cart.store_id,
                cart.id,
                cart.token,
                spec.percent,
                spec.amount,
                cart.currency,
                expires,
            )
        )
    return found


def _unique_wanted(
    steps: Sequence[Step], index: int, holds: Mapping[str, Any] | None, cart: Cart
) -> Discount | None:
    """The unique discount the cart's next steps ask for: the step on its turn, or a held one."""
    held = dict((holds or {}).get("held") or {})
    waiting = [step for step in steps if step.id in held]
    if 0 <= index < len(steps):
        waiting.insert(0, steps[index])
    for step in waiting:
        spec = step.discount
        if spec is not None and spec.unique and spec.offered_for(cart):
            return spec
    return None


def issue_due(
    engine: Engine,
    registry: FlowRegistry,
    now: datetime,
    issuer_for: IssuerFactory,
    *,
    lead: timedelta = LEAD,
    limit: int = 100,
    stop: threading.Event | None = None,
) -> IssueStats:
    """Issue the codes soon needed. One cart's failure is logged and the others go on; the
    failed cart is tried again on the next run (its step is deferred meanwhile)."""
    with engine.connect() as conn:
        wants = wanted(conn, registry, now, lead=lead, limit=limit)
        links = {want.store_id: _issuing_link(conn, want.store_id) for want in wants}
    # The read transaction is closed: from here on, shop calls and short writes alternate.
    stats = IssueStats()
    issuers: dict[int, DiscountIssuer] = {}
    for want in wants:
        if stop is not None and stop.is_set():
            break  # the rest are asked for after the restart; their steps wait meanwhile
        link = links.get(want.store_id)
        if link is None:
            continue
        try:
            issuer = issuers.get(want.store_id) or issuers.setdefault(
                want.store_id, issuer_for(link)
            )
            code = issuer.issue(
                cart_token=want.cart_token,
                percent=want.percent,
                amount=want.amount,
                currency=want.currency,
                expires_at=want.expires_at,
            )
        except Exception as error:
            stats.failed += 1
            # The class and the shop's answer only: no shopper data is in either.
            log.warning("store %d: issuing a unique code failed: %s", want.store_id, error)
            continue
        with engine.begin() as conn:
            conn.execute(
                t.discount_codes.insert().values(
                    store_id=want.store_id,
                    pool=UNIQUE_POOL,
                    code=code,
                    cart_id=want.cart_id,
                    assigned_at=now,
                    created_at=now,
                )
            )
        stats.issued += 1
    for issuer in issuers.values():
        close = getattr(issuer, "close", None)
        if callable(close):
            close()
    return stats


def _issuing_link(conn: Connection, store_id: int) -> shop_service.ShopConnection | None:
    for platform in ISSUING_PLATFORMS:
        link = shop_service.connection(conn, store_id, platform)
        if link is not None and link.api_token_ref is not None:
            return link
    return None


def shopify_issuers(
    api_base: str | None = None, clock: Callable[[], datetime] | None = None
) -> IssuerFactory:
    """Issuers that talk to each shop's Admin API (`api_base` replaces the shop's address in
    tests)."""
    from cartback.shops import shopify_admin

    def build(link: shop_service.ShopConnection) -> DiscountIssuer:
        assert link.api_token_ref is not None
        token = shop_service.resolve(link.api_token_ref)
        http = shopify_admin.client(api_base or f"https://{link.shop_domain}", token)
        if clock is None:
            return shopify_admin.ShopifyDiscountIssuer(http)
        return shopify_admin.ShopifyDiscountIssuer(http, clock=clock)

    return build
