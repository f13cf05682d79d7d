"""`GET /metrics`: Prometheus text, open unless CARTBACK_METRICS_TOKEN asks for a bearer token."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

from cartback import metrics
from cartback.app import App
from cartback.web.problems import Problem


def metrics_router(app: App) -> APIRouter:
    router = APIRouter()
    token = app.settings.metrics_token
    # Made at the first scrape: building the routes needs no database.
    backlogs: list[metrics.BacklogCollector] = []

    @router.get("/metrics", include_in_schema=False)
    async def scrape(request: Request) -> Response:
        if token is not None:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                raise Problem(
                    401,
                    "Missing or wrong metrics token",
                    "send CARTBACK_METRICS_TOKEN as `Authorization: Bearer <token>`",
                    slug="unauthorized",
                    headers={"WWW-Authenticate": "Bearer"},
                )
        if not backlogs:
            backlogs.append(metrics.BacklogCollector(app.engine, app.clock.now))
        # The backlog is read from the database: off the event loop.
        body = await run_in_threadpool(metrics.exposition, backlogs[0])
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return router
