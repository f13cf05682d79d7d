"""Provider callbacks: `/hooks/channel/{provider}/{store}/status` and `/inbound`.

Each request is rebuilt as a `WebhookRequest` with the public URL (CARTBACK_BASE_URL + path +
query, as the provider called it, so signatures check out behind a proxy), handed to the
store's provider channel to `verify` (401, nothing changed), then `parse_status` /
`parse_inbound` (422 naming the field), and applied in one transaction. GET is accepted as well
as POST for providers that call back with GET (Kannel's dlr-url, Vonage): the query is then the
payload. The answer is 200, or what the provider expects (Twilio: empty TwiML for inbound).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from cartback.app import App
from cartback.ports import ProviderChannel, WebhookRequest
from cartback.services import admin
from cartback.services.delivery import apply_delivery
from cartback.services.providers import (
    ChannelResolver,
    ProviderUnavailable,
    StoreProvider,
    provider_for_route,
)
from cartback.services.replies import receive_reply
from cartback.web.problems import Problem

log = logging.getLogger("cartback.web.hooks")

STATUS_PATH = "/hooks/channel/{provider}/{store}/status"
INBOUND_PATH = "/hooks/channel/{provider}/{store}/inbound"


def webhook_request(request: Request, body: bytes, base_url: str) -> WebhookRequest:
    query = request.url.query
    url = base_url.rstrip("/") + request.url.path + (f"?{query}" if query else "")
    return WebhookRequest(
        method=request.method,
        url=url,
        headers={name.lower(): value for name, value in request.headers.items()},
        body=body,
        query=dict(request.query_params),
    )


def channel_hooks(app: App, resolver: ChannelResolver) -> APIRouter:
    router = APIRouter(tags=["provider callbacks"])

    @router.api_route(STATUS_PATH, methods=["GET", "POST"], include_in_schema=False)
    async def status(provider: str, store: str, request: Request) -> Response:
        hook = webhook_request(request, await request.body(), app.settings.base_url)
        return await run_in_threadpool(_status, app, resolver, provider, store, hook)

    @router.api_route(INBOUND_PATH, methods=["GET", "POST"], include_in_schema=False)
    async def inbound(provider: str, store: str, request: Request) -> Response:
        hook = webhook_request(request, await request.body(), app.settings.base_url)
        return await run_in_threadpool(_inbound, app, resolver, provider, store, hook)

    return router


def _verified(
    app: App, resolver: ChannelResolver, provider: str, store: str, hook: WebhookRequest
) -> tuple[StoreProvider, ProviderChannel]:
    with app.engine.connect() as conn:
        setting = provider_for_route(conn, store, provider)
    if setting is None:
        raise Problem(
            404,
            "Unknown provider route",
            f"store {store!r} has no provider {provider!r}",
            slug="not-found",
        )
    try:
        channel = resolver.build(setting)
    except ProviderUnavailable as error:
        log.error("callback for %s/%s: %s", provider, store, error)
        raise Problem(
            503,
            "Provider settings unusable",
            "the store's provider cannot be built here (a secret does not resolve); "
            "nothing was applied, so it is safe to retry",
            slug="unavailable",
            headers={"Retry-After": "60"},
        ) from None
    if not channel.verify(hook):
        raise Problem(
            401,
            "Invalid signature",
            "the callback's signature or shared secret does not match; nothing was applied",
            slug="unauthorized",
        )
    return setting, channel


def _malformed(error: ValueError) -> Problem:
    text = str(error)
    field, _, message = text.partition(":")
    field = field.strip() if message else "body"
    return Problem(
        422,
        "Invalid callback",
        text,
        slug="invalid-callback",
        errors=[{"field": field, "message": (message or text).strip()}],
    )


def _status(
    app: App, resolver: ChannelResolver, provider: str, store: str, hook: WebhookRequest
) -> Response:
    setting, channel = _verified(app, resolver, provider, store, hook)
    try:
        updates = channel.parse_status(hook)
    except ValueError as error:
        raise _malformed(error) from None
    if updates:
        with app.engine.begin() as conn:
            apply_delivery(conn, admin.get_store(conn, setting.store_id), updates, app.clock.now())
    return _answer(channel, "status_answer")


def _inbound(
    app: App, resolver: ChannelResolver, provider: str, store: str, hook: WebhookRequest
) -> Response:
    setting, channel = _verified(app, resolver, provider, store, hook)
    try:
        replies = channel.parse_inbound(hook)
    except ValueError as error:
        raise _malformed(error) from None
    for reply in replies:
        receive_reply(
            app.engine,
            setting.store_id,
            reply,
            app.clock.now,
            timeout=app.settings.send_timeout_seconds,
        )
    return _answer(channel, "inbound_answer")


def _answer(channel: Any, name: str) -> Response:
    """The provider's expected answer (`inbound_answer()` -> (body, media type)), else 200."""
    expected = getattr(channel, name, None)
    if expected is None:
        return Response(status_code=200)
    body, media_type = expected()
    return Response(body, status_code=200, media_type=media_type)
