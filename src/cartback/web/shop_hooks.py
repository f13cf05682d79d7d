"""POST /hooks/shop/{platform}/{store}: shop webhooks, verified and parsed in the request, then
appended to the inbox (answered once durable) and applied by the worker; a platform whose
parse calls its API (BigCommerce) is applied here, after the call (services/shop_inbox.py)."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError, OperationalError
from starlette.concurrency import run_in_threadpool

from cartback.app import App
from cartback.core.events import ContactErasureRequested, StoreErasureRequested
from cartback.core.model import Store
from cartback.services import admin, erasure, shop_inbox, store_flows
from cartback.services import shops as shop_service
from cartback.shops.base import (
    Adapter,
    DeliveryMeta,
    LinkError,
    PayloadError,
    ShopItem,
    ShopLink,
    shop_name,
)
from cartback.shops.registry import adapter as find_adapter
from cartback.web.accept import EventIntake
from cartback.web.keys import KeyCache
from cartback.web.problems import Problem, invalid

log = logging.getLogger("cartback.web.shops")
# PostgreSQL's serialization failure and deadlock: two deliveries raced; a retry will pass.
_RACES = frozenset({"40001", "40P01"})


def shop_router(
    app: App, intake: EventIntake, responses: dict[int | str, dict[str, Any]]
) -> APIRouter:
    """`intake`: the web server's inbox writer. `responses`: the problem+json answers,
    described as the app describes all of them."""
    router = APIRouter(tags=["shops"])
    connections: KeyCache[tuple[Store, shop_service.ShopConnection]] = KeyCache()

    @router.post(
        "/hooks/shop/{platform}/{store}",
        summary="A shop platform's webhook delivery (Shopify, WooCommerce, CartFlows, "
        "BigCommerce, generic)",
        responses=responses,
    )
    async def shop_hook(platform: str, store: str, request: Request) -> JSONResponse:
        adapter = find_adapter(platform)
        if adapter is None:
            raise Problem(404, "Unknown platform", f"no adapter for {platform!r}", slug="not-found")
        key = f"{platform}/{store}"
        remembered = connections.get(key)
        found, connection = remembered or await _look_up(app, adapter, connections, key, store)
        secrets, link = _resolved(app, adapter, found, connection)
        body = await request.body()
        headers = dict(request.headers)
        if adapter.ping(headers, body):
            return JSONResponse({"status": "ping"})
        query = dict(request.query_params)
        verified = adapter.verify(headers, body, secrets, query)
        if not verified and remembered is not None:
            # The connection may have a new secret since it was remembered: read it again.
            found, connection = await _look_up(app, adapter, connections, key, store)
            secrets, link = _resolved(app, adapter, found, connection)
            verified = adapter.verify(headers, body, secrets, query)
        if not verified:
            raise Problem(
                401,
                "Bad signature",
                "the signature does not match the store's webhook secret",
                slug="unauthorized",
            )
        meta = _meta(adapter, headers, body)
        if meta.shop_domain and meta.shop_domain != shop_name(link.shop_domain):
            raise Problem(
                401,
                "Wrong shop",
                "the delivery is for another shop than this store is connected to",
                slug="unauthorized",
            )
        if meta.topic not in adapter.TOPICS:
            return JSONResponse({"status": "ignored", "topic": meta.topic})
        try:
            if adapter.CALLS_API:
                # Outside any transaction: BigCommerce's parse fetches the cart from its API.
                items = await run_in_threadpool(adapter.parse, headers, body, link)
            else:
                # Pure and quick: on the event loop, so a bad payload is a 422 before anything
                # is written. The worker parses the kept payload again when it applies it.
                items = adapter.parse(headers, body, link)
        except PayloadError as error:
            raise invalid([{"field": error.field, "message": error.message}]) from None
        except LinkError as error:
            log.error("store %s: %s delivery not applied: %s", store, platform, error)
            raise _unavailable(str(error)) from None
        if adapter.CALLS_API:
            outcome = await run_in_threadpool(_apply, app, found, platform, meta, body, items)
            if outcome.duplicate:
                return JSONResponse({"status": "duplicate", "delivery_id": meta.delivery_id})
            return JSONResponse(
                {"status": "accepted", "delivery_id": meta.delivery_id, "results": outcome.results}
            )
        if app.settings.suppression_key is None and any(
            isinstance(item, ContactErasureRequested | StoreErasureRequested) for item in items
        ):
            raise _erasure_not_configured()
        now = link.received_at or app.clock.now()
        entry = shop_inbox.encode(adapter, meta, headers, body)
        queued = await intake.append_delivery(found, platform, meta.delivery_id, entry, now)
        answer: dict[str, Any] = {"status": queued.status, "delivery_id": meta.delivery_id}
        if queued.results is not None:
            answer["results"] = queued.results
        return JSONResponse(answer)

    return router


def _meta(adapter: Adapter, headers: dict[str, str], body: bytes) -> DeliveryMeta:
    try:
        return adapter.meta(headers, body)
    except PayloadError as error:
        raise invalid([{"field": error.field, "message": error.message}]) from None


def _unavailable(detail: str) -> Problem:
    return Problem(
        503, "Shop unavailable", detail, slug="unavailable", headers={"Retry-After": "60"}
    )


def _erasure_not_configured() -> Problem:
    return Problem(
        503,
        "Erasure not configured",
        "set CARTBACK_SUPPRESSION_KEY; nothing was applied",
        slug="unavailable",
        headers={"Retry-After": "600"},
    )


async def _look_up(
    app: App,
    adapter: Adapter,
    connections: KeyCache[tuple[Store, shop_service.ShopConnection]],
    key: str,
    slug: str,
) -> tuple[Store, shop_service.ShopConnection]:
    """The store and its connection, remembered for a few seconds (web/keys.py) when the
    delivery is only appended: a database round trip would cost more than the append. A
    connection during a secret rotation (with a previous secret) is read every time, so ending
    the rotation ends the previous secret at once; a new secret is read as soon as a delivery
    is signed with it. A platform whose parse calls its API reads it every time: the call costs
    far more, and the connection names the API."""
    found = await run_in_threadpool(_connection, app, adapter.PLATFORM, slug)
    if found[1].previous_secret_ref is None and not adapter.CALLS_API:
        connections.put(key, found)
    return found


def _connection(app: App, platform: str, slug: str) -> tuple[Store, shop_service.ShopConnection]:
    with app.engine.connect() as conn:
        store = admin.store_by_slug(conn, slug)
        link = shop_service.connection(conn, store.id, platform) if store is not None else None
    if store is None or link is None:
        raise Problem(
            404, "Unknown store", f"no store {slug!r} connected to {platform}", slug="not-found"
        )
    return store, link


def _resolved(
    app: App, adapter: Adapter, store: Store, link: shop_service.ShopConnection
) -> tuple[list[bytes], ShopLink]:
    """The connection's secrets (and API token or mapping), read from the environment or their
    files on each delivery: they may change without the connection changing."""
    try:
        secrets = shop_service.secrets_for(link)
        document = (
            shop_service.resolve(link.api_token_ref)
            if adapter.USES_DOCUMENT and link.api_token_ref
            else None
        )
    except shop_service.SecretError as error:
        log.error(
            "store %s: a secret of its %s connection is unreadable: %s",
            store.id,
            link.platform,
            error,
        )
        raise Problem(
            503,
            "Secret unavailable",
            "the store's webhook secret cannot be read; nothing was applied",
            slug="unavailable",
            headers={"Retry-After": "60"},
        ) from None
    return secrets, ShopLink(link.shop_domain, store.currency, document, app.clock.now())


def _apply(
    app: App,
    store: Store,
    platform: str,
    meta: DeliveryMeta,
    body: bytes,
    items: list[ShopItem],
) -> shop_service.Outcome:
    ctx = shop_service.Context(
        store=store,
        flow=store_flows.lineup_for(app.engine, app.registry, store),
        now=app.clock.now(),
        future_skew=timedelta(seconds=app.settings.future_skew_seconds),
        suppression_key=app.settings.suppression_key,
    )
    try:
        outcome = _commit(app, ctx, platform, meta, body, items)
    except erasure.SuppressionKeyMissing as error:
        log.error("store %s: %s", store.id, error)
        raise _erasure_not_configured() from None
    # Files are written after the commit: a failed write never undoes the delivery.
    try:
        shop_service.write_exports(app.settings.export_dir, outcome.exports)
    except OSError as error:
        log.error("store %s: cannot write a data-request export: %s", store.id, error.strerror)
    return outcome


def _commit(
    app: App,
    ctx: shop_service.Context,
    platform: str,
    meta: DeliveryMeta,
    body: bytes,
    items: list[ShopItem],
) -> shop_service.Outcome:
    attempts = 3
    for attempt in range(1, attempts + 1):
        try:
            with app.engine.begin() as conn:
                return shop_service.handle_delivery(conn, ctx, platform, meta, body, items)
        except (IntegrityError, OperationalError) as error:
            # Two deliveries raced on one cart or contact; the whole delivery is retried. An
            # outage is not: it answers 503 at once.
            raced = isinstance(error, IntegrityError) or (
                getattr(error.orig, "sqlstate", None) in _RACES
            )
            if attempt == attempts or not raced:
                raise
    raise AssertionError("unreachable: the last attempt returns or raises")
