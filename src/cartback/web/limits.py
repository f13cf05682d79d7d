"""Body size caps, enforced before and while a body is read: a client never makes the server
hold more than the cap, whether it declares the size (Content-Length) or streams (chunked)."""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cartback.web import problems
from cartback.web.problems import Problem

EVENTS_BODY_BYTES = 8 * 1024 * 1024
# A shop webhook: Shopify checkouts with many lines run to a few hundred KiB.
SHOP_HOOK_BODY_BYTES = 2 * 1024 * 1024
# Unsubscribe posts and anything else: a one-click form is a few dozen bytes.
OTHER_BODY_BYTES = 64 * 1024


def body_limit(path: str) -> int:
    if path.startswith("/v1/events"):
        return EVENTS_BODY_BYTES
    if path.startswith("/hooks/shop/"):
        return SHOP_HOOK_BODY_BYTES
    return OTHER_BODY_BYTES


class BodyTooLarge(Problem):
    def __init__(self, limit: int) -> None:
        too_large = problems.too_large(limit)
        super().__init__(
            413, too_large.title, too_large.detail, slug=too_large.slug, errors=too_large.errors
        )


class BodyLimit:
    """ASGI middleware: 413 for a declared length over the cap before anything is read, and a
    stop (413) as soon as a streamed body passes it."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int] = body_limit) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await BodyTooLarge(limit).response(scope["path"])(scope, receive, send)
            return
        received = 0
        started = False

        async def capped_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, capped_receive, watched_send)
        except BodyTooLarge as error:
            # Normally the app's problem handler answers; this covers a reader outside a route.
            if started:
                raise
            await error.response(scope["path"])(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            digits = value.strip()
            if not digits.isdigit():
                return None
            # Past 18 digits it is over any cap; int() would refuse past 4,300.
            return int(digits) if len(digits) <= 18 else 10**18
    return None


# A request turned away for load may come back this soon.
BUSY_RETRY_AFTER_SECONDS = 1


class ConcurrencyLimit:
    """ASGI middleware: at most `limit` requests at once. The database pool has a connection
    for each of them (App.pool_size), so load waits in clients' retries, answered 503 with
    Retry-After, rather than in a pool queue that ends in timeouts."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.running = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.running >= self.limit:
            busy = Problem(
                503,
                "Busy",
                f"more than {self.limit} requests at once; nothing was applied, retry shortly",
                slug="unavailable",
                headers={"Retry-After": str(BUSY_RETRY_AFTER_SECONDS)},
            )
            await busy.response(scope["path"])(scope, receive, send)
            return
        # One event loop: the count needs no lock.
        self.running += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.running -= 1
