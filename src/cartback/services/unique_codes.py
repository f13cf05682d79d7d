"""Per-cart unique discount codes (`discount: {unique: true}`), issued ahead of their step and
removed from the shop once they expired unused.

The timer composes messages inside its transaction, where no network call may happen, so it
never calls a shop. Instead the worker's issuer loop looks a little ahead: for each active
enrollment whose next step (or a held one) asks for a unique code and is due within `LEAD`, it
asks the shop's API for a code with no transaction open, then stores it for the cart in a short
one. At compose time the timer only reads the stored code (`stored_code`); when none is there
yet the step is held for `PENDING_WAIT`, up to `PENDING_LIMIT` times, then skipped
(`services/tick.py`).

The cleanup (`prune_expired`) deletes from the shop the codes whose expiry has passed and whose
cart was never ordered, again with no transaction open, and marks each `removed_at` in a short
one. A code the shop no longer has counts as removed; one refusal never holds up the others.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Engine, and_, exists, select, update
from sqlalchemy.dialects import postgresql, sqlite

from cartback.core.flows import Discount, Step, with_exclusions
from cartback.core.model import Cart, CartStatus, EnrollmentState
from cartback.core.money import Rates
from cartback.core.storepolicy import store_exclusions, store_rates
from cartback.ports import DiscountIssuer, IssuedCode
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
__all__ = [
    "PENDING_RULE",
    "UNIQUE_POOL",
    "issue_due",
    "prune_expired",
    "shop_issuers",
    "stored_code",
]
UNIQUE_RULE = "discount.unique"
# Platforms whose connection can issue codes (with an API token), in the order tried when a
# store is connected to more than one.
ISSUING_PLATFORMS = ("shopify", "woocommerce")

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
    email: str | None = None


@dataclass
class IssueStats:
    issued: int = 0
    failed: int = 0


@dataclass(frozen=True, slots=True)
class Expired:
    id: int
    store_id: int
    platform: str
    ref: str


@dataclass
class PruneStats:
    removed: int = 0
    # Already deleted in the shop (by hand, or by a run that stopped before its write).
    gone: int = 0
    failed: int = 0
    # Platform ids of the codes that failed, for the operator; no shopper data.
    failures: list[str] = field(default_factory=list)


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
            t.contacts.c.email.label("contact_email"),
            t.stores.c.policy.label("store_policy"),
        )
        .join(t.enrollments, e.cart_id == c.id)
        .outerjoin(t.contacts, t.contacts.c.id == c.contact_id)
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
        rates = store_rates(row["store_policy"])
        spec = _unique_wanted(steps, row["step_index"], row["holds"], cart, rates)
        if spec is None:
            continue
        amount = spec.amount_for(cart.currency, rates)
        if spec.amount is not None and amount is None:
            continue  # the timer skips this step (flow.currency): no code is needed
        expires = now + spec.expires_after if spec.expires_after is not None else None
        carts.add(cart.id)
        found.append(
            Wanted(
                cart.store_id,
                cart.id,
                cart.token,
                spec.percent,
                amount,
                cart.currency,
                expires,
                row["contact_email"],
            )
        )
    return found


def _unique_wanted(
    steps: Sequence[Step],
    index: int,
    holds: Mapping[str, Any] | None,
    cart: Cart,
    rates: Rates | None,
) -> Discount | None:
    """The unique discount the cart's next steps ask for: the step on its turn, or a held one."""
    held = dict((holds or {}).get("held") or {})
    waiting = [step for step in steps if step.id in held]
    if 0 <= index < len(steps):
        waiting.insert(0, steps[index])
    for step in waiting:
        spec = step.discount
        if spec is not None and spec.unique and spec.offered_for(cart, rates):
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
    with _Issuers(issuer_for) as issuers:
        for want in wants:
            if stop is not None and stop.is_set():
                break  # the rest are asked for after the restart; their steps wait meanwhile
            link = links.get(want.store_id)
            if link is None:
                continue
            try:
                issuer = issuers.get(link)
                made = issuer.issue(
                    cart_token=want.cart_token,
                    percent=want.percent,
                    amount=want.amount,
                    currency=want.currency,
                    expires_at=want.expires_at,
                    email=want.email,
                )
            except Exception as error:
                stats.failed += 1
                # The class and the shop's answer only: no shopper data is in either.
                log.warning("store %d: issuing a unique code failed: %s", want.store_id, error)
                continue
            with engine.begin() as conn:
                kept = _store_code(conn, want, link.platform, made, now)
            if kept:
                stats.issued += 1
            else:
                # Another worker gave this cart its code meanwhile: this one is not needed.
                _remove_quietly(issuer, want.store_id, made)
    return stats


def _store_code(
    conn: Connection, want: Wanted, platform: str, made: IssuedCode, now: datetime
) -> bool:
    """Keep the cart's code; False when the cart already has one (the unique index)."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    row = {
        "store_id": want.store_id,
        "pool": UNIQUE_POOL,
        "code": made.code,
        "cart_id": want.cart_id,
        "assigned_at": now,
        "created_at": now,
        "platform": platform,
        "platform_ref": made.ref,
        "expires_at": want.expires_at,
    }
    statement = dialect.insert(t.discount_codes).values(**row).on_conflict_do_nothing()
    return conn.execute(statement.returning(t.discount_codes.c.id)).scalar() is not None


def _remove_quietly(issuer: DiscountIssuer, store_id: int, made: IssuedCode) -> None:
    try:
        issuer.remove(made.ref)
    except Exception as error:
        # It expires on its own; the cleanup does not know it, so say so.
        log.warning("store %d: removing a surplus code %s failed: %s", store_id, made.ref, error)


def expired_unused(
    conn: Connection, now: datetime, *, after_id: int = 0, limit: int
) -> list[Expired]:
    """Shop-issued codes past their expiry, not removed yet, whose cart was never ordered (an
    ordered cart's code may be on the order: the shop keeps it for its own records)."""
    d, c, o = t.discount_codes.c, t.carts.c, t.orders.c
    ordered = exists().where(o.cart_id == d.cart_id)
    rows = conn.execute(
        select(d.id, d.store_id, d.platform, d.platform_ref)
        .outerjoin(t.carts, c.id == d.cart_id)
        .where(
            d.pool == UNIQUE_POOL,
            d.removed_at.is_(None),
            d.expires_at <= now,
            d.platform.is_not(None),
            d.platform_ref.is_not(None),
            d.id > after_id,
            ~ordered,
            c.status.is_distinct_from(str(CartStatus.ORDERED)),
        )
        .order_by(d.id)
        .limit(limit)
    )
    return [Expired(row.id, row.store_id, row.platform, row.platform_ref) for row in rows]


def prune_expired(
    engine: Engine,
    now: datetime,
    issuer_for: IssuerFactory,
    *,
    batch: int = 200,
    stop: threading.Event | None = None,
) -> PruneStats:
    """Delete from the shops the per-cart codes that expired unused, and mark them removed.
    Idempotent: a removed code is not asked for again, and one the shop no longer has is
    marked too. A failure is counted and logged; that code is tried again on the next run.
    Codes are visited in id order, a batch at a time, so codes that keep failing never keep
    the others from their turn."""
    stats = PruneStats()
    after_id = 0
    with _Issuers(issuer_for) as issuers:
        while stop is None or not stop.is_set():
            with engine.connect() as conn:
                found = expired_unused(conn, now, after_id=after_id, limit=batch)
                links = {
                    (code.store_id, code.platform): shop_service.connection(
                        conn, code.store_id, code.platform
                    )
                    for code in found
                }
            for code in found:
                if stop is not None and stop.is_set():
                    break
                _remove_expired(engine, now, code, links, issuers, stats)
            if len(found) < batch:
                break
            after_id = found[-1].id
    return stats


def _remove_expired(
    engine: Engine,
    now: datetime,
    code: Expired,
    links: dict[tuple[int, str], shop_service.ShopConnection | None],
    issuers: _Issuers,
    stats: PruneStats,
) -> None:
    link = links.get((code.store_id, code.platform))
    try:
        if link is None or link.api_token_ref is None:
            raise shop_service.SecretError(
                f"the store has no {code.platform} connection with an API token"
            )
        was_there = issuers.get(link).remove(code.ref)
    except Exception as error:
        stats.failed += 1
        stats.failures.append(f"{code.platform} {code.ref}: {error}")
        log.warning(
            "store %d: removing expired code %s from %s failed: %s",
            code.store_id,
            code.ref,
            code.platform,
            error,
        )
        return
    d = t.discount_codes.c
    with engine.begin() as conn:
        conn.execute(
            update(t.discount_codes)
            .where(d.id == code.id, d.removed_at.is_(None))
            .values(removed_at=now)
        )
    if was_there:
        stats.removed += 1
    else:
        stats.gone += 1


class _Issuers:
    """One issuer per store and platform for a run, each closed at its end."""

    def __init__(self, build: IssuerFactory) -> None:
        self._build = build
        self._made: dict[tuple[int, str], DiscountIssuer] = {}

    def get(self, link: shop_service.ShopConnection) -> DiscountIssuer:
        key = (link.store_id, link.platform)
        if key not in self._made:
            self._made[key] = self._build(link)
        return self._made[key]

    def __enter__(self) -> _Issuers:
        return self

    def __exit__(self, *_: object) -> None:
        for issuer in self._made.values():
            close = getattr(issuer, "close", None)
            if callable(close):
                close()


def _issuing_link(conn: Connection, store_id: int) -> shop_service.ShopConnection | None:
    for platform in ISSUING_PLATFORMS:
        link = shop_service.connection(conn, store_id, platform)
        if link is not None and link.api_token_ref is not None:
            return link
    return None


def shop_issuers(
    api_base: str | None = None, clock: Callable[[], datetime] | None = None
) -> IssuerFactory:
    """Issuers that talk to each shop's API: Shopify's Admin API or WooCommerce's REST API, as
    the store's connection says (`api_base` replaces the shop's address in tests)."""
    from cartback.shops import shopify_admin, woocommerce_rest

    def build(link: shop_service.ShopConnection) -> DiscountIssuer:
        if link.api_token_ref is None:
            raise shop_service.SecretError(f"the {link.platform} connection has no API token")
        token = shop_service.resolve(link.api_token_ref)
        base = api_base or f"https://{link.shop_domain}"
        if link.platform == "woocommerce":
            return woocommerce_rest.WooCouponIssuer(woocommerce_rest.client(base, token))
        if link.platform != "shopify":
            raise ValueError(f"{link.platform} cannot issue discount codes")
        http = shopify_admin.client(base, token)
        if clock is None:
            return shopify_admin.ShopifyDiscountIssuer(http)
        return shopify_admin.ShopifyDiscountIssuer(http, clock=clock)

    return build
