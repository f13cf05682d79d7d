"""The ASGI app and its one route table."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Annotated, Any

from anyio import to_thread
from fastapi import Depends, FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Connection, select
from sqlalchemy.exc import (
    DBAPIError,
    DisconnectionError,
    IntegrityError,
    InterfaceError,
    OperationalError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.concurrency import run_in_threadpool
from starlette.routing import Match, Route

from cartback import __version__
from cartback.app import App
from cartback.core.model import Store, format_duration
from cartback.services import admin, store_flows, tracking
from cartback.services import consent as consent_service
from cartback.services.providers import ChannelResolver
from cartback.store import tables as t
from cartback.web import dashboard, pages, problems
from cartback.web.accept import EventIntake
from cartback.web.channel_hooks import channel_hooks
from cartback.web.intake import parse_event_rows
from cartback.web.keys import KeyCache
from cartback.web.limits import BodyLimit, ConcurrencyLimit
from cartback.web.metrics_route import metrics_router
from cartback.web.problems import Problem
from cartback.web.reports_api import reports_router
from cartback.web.schemas import (
    ID_MAX,
    LINE,
    DecisionOut,
    EventBatchIn,
    EventsOut,
    EventWindow,
    FlowAssignmentOut,
    ProblemOut,
    StoreFlowsIn,
    StoreFlowsOut,
    column_length,
)
from cartback.web.shop_hooks import shop_router

log = logging.getLogger("cartback.web")
# Events may be stamped up to this far ahead of the server's clock (ingest clamps them).
MAX_AHEAD = timedelta(days=1)
# PostgreSQL's serialization failure and deadlock: two requests raced, and a retry will pass.
_RACES = frozenset({"40001", "40P01"})
_UNAVAILABLE = (OperationalError, InterfaceError, DisconnectionError, PoolTimeout)
_DESCRIPTIONS = {
    401: "No API key, or an unknown or revoked one; for shop hooks, a bad signature",
    404: "No such cart, contact, store or route",
    405: "Method not allowed; the `Allow` header lists the methods this path takes",
    413: "Body over the size limit",
    422: "An invalid field, named in `field` and `errors`",
    503: "The database is out of reach; retry after `Retry-After` seconds",
}


def _problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the problem+json answers a route gives."""
    schema = {"$ref": "#/components/schemas/ProblemOut"}
    return {
        status: {
            "description": _DESCRIPTIONS[status],
            "content": {problems.PROBLEM_TYPE: {"schema": schema}},
        }
        for status in statuses
    }


CartToken = Annotated[str, Path(max_length=column_length(t.carts.c.token)), LINE]
ContactId = Annotated[int, Path(ge=1, le=ID_MAX)]
_EVENTS_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "oneOf": [
                    {"$ref": "#/components/schemas/EventBatchIn"},
                    {"$ref": "#/components/schemas/CheckoutUpdatedIn"},
                    {"$ref": "#/components/schemas/CartUpdatedIn"},
                    {"$ref": "#/components/schemas/OrderPlacedIn"},
                    {"$ref": "#/components/schemas/CartEmptiedIn"},
                    {"$ref": "#/components/schemas/ConsentChangedIn"},
                ]
            }
        }
    },
}


def create_app(app: App) -> FastAPI:
    intake = EventIntake(app)

    @asynccontextmanager
    async def lifespan(_api: FastAPI) -> AsyncIterator[None]:
        # Blocking database work runs on this thread pool: one thread per request taken at once.
        to_thread.current_default_thread_limiter().total_tokens = app.settings.web_concurrency
        yield
        intake.close()

    api = FastAPI(
        title="cartback",
        version=__version__,
        description="Self-hosted abandoned-cart recovery: event API and tracked links.",
        lifespan=lifespan,
    )
    api.state.cartback = app
    api.add_middleware(BodyLimit)
    api.add_middleware(ConcurrencyLimit, limit=app.settings.web_concurrency)
    _install_error_handlers(api)
    _publish_schemas(api)
    # Provider callbacks build each store's provider channel (no global default: a store
    # without its own provider has no callback routes).
    resolver = ChannelResolver(
        {}, base_url=app.settings.base_url, timeout=app.settings.send_timeout_seconds
    )
    api.state.channel_resolver = resolver
    api.include_router(channel_hooks(app, resolver))
    bearer = HTTPBearer(auto_error=False, description="The store's API key")

    def _key_of(credentials: HTTPAuthorizationCredentials | None) -> str:
        key = credentials.credentials.strip() if credentials is not None else ""
        if not key:
            raise Problem(
                401,
                "Missing API key",
                "send the store's key as `Authorization: Bearer <key>`",
                slug="unauthorized",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return key

    def _store_for(key: str) -> Store:
        with app.engine.connect() as conn:
            store = admin.store_for_key(conn, key)
        if store is None:
            raise Problem(
                401,
                "Invalid API key",
                "the key is unknown or revoked",
                slug="unauthorized",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return store

    def current_store(
        credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
    ) -> Store:
        return _store_for(_key_of(credentials))

    keys: KeyCache[Store] = KeyCache()

    async def ingesting_store(
        credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
    ) -> Store:
        """The key's store for the event API, remembered briefly (web/keys.py): the append
        needs only its id, and the lookup would cost more than the append."""
        key = _key_of(credentials)
        store = keys.get(key)
        if store is None:
            store = await run_in_threadpool(_store_for, key)
            keys.put(key, store)
        return store

    api.include_router(shop_router(app, intake, _problems(401, 404, 405, 413, 422, 503)))
    api.include_router(reports_router(app, current_store, _problems(401, 404, 405, 422, 503)))
    api.include_router(metrics_router(app))

    @api.get("/healthz", tags=["ops"], responses=_problems(405, 503))
    def healthz() -> dict[str, str]:
        with app.engine.connect() as conn:
            conn.execute(select(1))
        return {"status": "ok", "version": __version__}

    @api.post(
        "/v1/events",
        tags=["events"],
        response_model=EventsOut,
        openapi_extra={"requestBody": _EVENTS_BODY},
        summary="Report shop events: one event, or a batch of up to 1,000",
        responses=_problems(401, 405, 413, 422, 503),
    )
    async def post_events(request: Request, store: Store = Depends(ingesting_store)) -> Response:
        window = EventWindow(
            now=app.clock.now(),
            max_age=timedelta(days=app.settings.event_max_age_days),
            max_ahead=MAX_AHEAD,
        )
        events = parse_event_rows(await request.body(), window)
        return await intake.accept(store, events, window.now)

    @api.get(
        "/v1/flows",
        tags=["flows"],
        response_model=StoreFlowsOut,
        summary="The flows the key's store runs, best priority first",
        responses=_problems(401, 405, 503),
    )
    def get_flows(store: Store = Depends(current_store)) -> StoreFlowsOut:
        with app.engine.connect() as conn:
            return _store_flows_out(conn, store)

    @api.put(
        "/v1/flows",
        tags=["flows"],
        response_model=StoreFlowsOut,
        summary="Set the flows the key's store runs, with triggers and priorities",
        responses=_problems(401, 405, 413, 422, 503),
    )
    def put_flows(body: StoreFlowsIn, store: Store = Depends(current_store)) -> StoreFlowsOut:
        wanted = [
            store_flows.Assignment(item.name, item.priority, item.trigger) for item in body.flows
        ]
        try:
            window = None
            if body.suppression_window is not None:
                window = store_flows.parse_window(body.suppression_window)
            # A refused entry raises inside the transaction: nothing of the request is kept.
            with app.engine.begin() as conn:
                store_flows.replace_all(conn, app.registry, store, wanted, window, app.clock.now())
                return _store_flows_out(conn, store)
        except store_flows.AssignmentError as error:
            raise _field_problem(error.field, error.message) from None

    @api.get(
        "/v1/carts/{token}/decisions",
        tags=["carts"],
        response_model=list[DecisionOut],
        summary="Why a cart got (or did not get) each message",
        responses=_problems(401, 404, 405, 422, 503),
    )
    def cart_decisions(
        token: CartToken, store: Store = Depends(current_store)
    ) -> list[DecisionOut]:
        with app.engine.connect() as conn:
            cart_id = conn.execute(
                select(t.carts.c.id).where(t.carts.c.store_id == store.id, t.carts.c.token == token)
            ).scalar()
            if cart_id is None:
                raise Problem(
                    404, "Unknown cart", f"no cart with token {token!r}", slug="not-found"
                )
            d = t.decisions.c
            rows = conn.execute(
                select(d.at, d.step_id, d.outcome, d.rule, d.reason)
                .where(d.cart_id == cart_id)
                .order_by(d.at, d.id)
            ).all()
        return [DecisionOut(**row._asdict()) for row in rows]

    @api.get(
        "/v1/contacts/{contact_id}/consent",
        tags=["contacts"],
        summary="A contact's consent ledger, oldest first, and what each event changed",
        responses=_problems(401, 404, 405, 422, 503),
    )
    def contact_consent(
        contact_id: ContactId, store: Store = Depends(current_store)
    ) -> dict[str, Any]:
        with app.engine.connect() as conn:
            found = consent_service.contact_history(conn, store.id, contact_id)
        if found is None:
            raise Problem(404, "Unknown contact", f"no contact {contact_id}", slug="not-found")
        return found

    @api.api_route("/l/{token}", methods=["GET", "HEAD"], include_in_schema=False)
    def follow_link(token: str, request: Request) -> Response:
        with app.engine.begin() as conn:
            destination = tracking.follow(
                conn,
                token,
                method=request.method,
                user_agent=request.headers.get("user-agent"),
                headers=dict(request.headers),
                now=app.clock.now(),
            )
        if destination is None:
            return pages.not_found()
        return RedirectResponse(destination, status_code=302, headers=pages.PRIVATE)

    @api.get("/o/{token}.gif", include_in_schema=False)
    def open_pixel(token: str, request: Request) -> Response:
        with app.engine.begin() as conn:
            tracking.opened(
                conn,
                token,
                user_agent=request.headers.get("user-agent"),
                headers=dict(request.headers),
                now=app.clock.now(),
            )
        # Always the pixel: a broken image would tell nobody anything useful.
        return Response(pages.PIXEL, media_type="image/gif", headers=pages.PRIVATE)

    # HEAD like GET (link checkers and mail scanners ask it); neither changes anything.
    @api.api_route(
        "/u/{token}", methods=["GET", "HEAD"], response_class=HTMLResponse, include_in_schema=False
    )
    def unsubscribe_page(token: str) -> Response:
        with app.engine.connect() as conn:
            target = tracking.unsubscribe_target(conn, token)
        if target is None:
            return pages.not_found()
        return pages.unsubscribe_form(token)

    @api.post("/u/{token}", response_class=HTMLResponse, include_in_schema=False)
    def unsubscribe(token: str, request: Request) -> Response:
        # RFC 8058: the POST alone unsubscribes; no login, no cookie, no confirmation step.
        with app.engine.begin() as conn:
            done = tracking.unsubscribe(
                conn, token, now=app.clock.now(), user_agent=request.headers.get("user-agent")
            )
        return pages.unsubscribed() if done else pages.not_found()

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    def home() -> str:
        return _HOME

    dashboard.install(api, app)
    return api


def _store_flows_out(conn: Connection, store: Store) -> StoreFlowsOut:
    return StoreFlowsOut(
        flows=[
            FlowAssignmentOut(name=a.flow_name, priority=a.priority, trigger=a.trigger)
            for a in store_flows.assignments(conn, store)
        ],
        suppression_window=format_duration(store_flows.suppression(conn, store.id)),
    )


def _field_problem(field: str, message: str) -> Problem:
    return problems.invalid(
        [{"field": field, "message": message}], title="Invalid flows", slug="invalid-flows"
    )


def _raced(error: DBAPIError) -> bool:
    if isinstance(error, IntegrityError):
        return True
    return getattr(error.orig, "sqlstate", None) in _RACES


def _install_error_handlers(api: FastAPI) -> None:
    @api.exception_handler(Problem)
    async def _problem(request: Request, problem: Problem) -> Response:
        return problem.response(request.url.path)

    @api.exception_handler(RequestValidationError)
    async def _validation(request: Request, error: RequestValidationError) -> Response:
        errors = [
            {"field": problems.field_path(_parameter(item["loc"])), "message": item["msg"]}
            for item in error.errors()
        ]
        problem = problems.invalid(errors, title="Invalid request", slug="invalid-request")
        return problem.response(request.url.path)

    async def _unavailable(request: Request, error: Exception) -> Response:
        cause = getattr(error, "orig", None) or error
        log.warning("database unavailable on %s: %s", request.url.path, type(cause).__name__)
        return problems.unavailable().response(request.url.path)

    for kind in _UNAVAILABLE:
        api.add_exception_handler(kind, _unavailable)

    @api.exception_handler(404)
    async def _not_found(request: Request, _error: Exception) -> Response:
        return Problem(404, "Not found", f"no route {request.url.path}", slug="not-found").response(
            request.url.path
        )

    @api.exception_handler(405)
    async def _method(request: Request, _error: Exception) -> Response:
        # Starlette names only the first route that matched the path; list every route's.
        allow = ", ".join(_allowed_methods(api, request))
        return Problem(
            405,
            "Method not allowed",
            f"{request.method} is not allowed here" + (f"; use {allow}" if allow else ""),
            slug="method",
            headers={"Allow": allow} if allow else None,
        ).response(request.url.path)

    @api.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> Response:
        log.exception("unhandled error on %s", request.url.path)
        return JSONResponse(
            {
                "type": "/problems/internal",
                "title": "Internal error",
                "status": 500,
                "detail": "the request was not applied; it is safe to retry",
            },
            status_code=500,
            media_type=problems.PROBLEM_TYPE,
        )


def _allowed_methods(api: FastAPI, request: Request) -> list[str]:
    methods: set[str] = set()
    for route in api.router.routes:
        if isinstance(route, Route) and route.matches(request.scope)[0] != Match.NONE:
            methods.update(route.methods or ())
    return sorted(methods)


def _parameter(location: Any) -> tuple[int | str, ...]:
    """('path', 'contact_id') → ('contact_id',): a parameter is named as the route names it."""
    parts = tuple(location)
    if parts and parts[0] in ("path", "query", "header"):
        return parts[1:]
    return parts


def _publish_schemas(api: FastAPI) -> None:
    """Event models are parsed by hand (for field-exact errors), so publish them explicitly."""
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict[str, Any]:
        if api.openapi_schema:
            return api.openapi_schema
        schema = get_openapi(
            title=api.title, version=api.version, description=api.description, routes=api.routes
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        batch = EventBatchIn.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(batch.pop("$defs", {}))
        components["EventBatchIn"] = batch
        problem = ProblemOut.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(problem.pop("$defs", {}))
        components["ProblemOut"] = problem
        api.openapi_schema = schema
        return schema

    api.openapi = openapi  # type: ignore[method-assign]


_HOME = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>cartback</title><meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{font:16px/1.5 system-ui,sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem}
code{background:#f3f3f3;padding:.1rem .3rem;border-radius:3px}</style></head><body>
<h1>cartback is running</h1>
<p>Post shop events to <code>POST /v1/events</code>. The API reference is at
<a href="/docs">/docs</a> and the OpenAPI document at <a href="/openapi.json">/openapi.json</a>.</p>
<p>Health: <a href="/healthz">/healthz</a></p></body></html>"""
